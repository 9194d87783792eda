"""What the MQTT sink and source share beyond Sparkplug: why a connection to the broker
could not be made, in one phrase that names what to look at."""

from __future__ import annotations

import socket
import ssl


def why_unreachable(exc: BaseException, host: str, ca_file: object | None) -> str:
    """Why TCP or TLS to ``host`` failed; ``ca_file`` (the configured ``tls.ca_file``, if
    any) is named when the broker's certificate is at fault."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = f"tls.ca_file '{ca_file}'" if ca_file else "the system's CAs"
        return f"TLS: the broker's certificate is not trusted by {ca}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        # ``reason`` is set by the ssl module's C layer only
        return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host '{host}' ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running on that port?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
