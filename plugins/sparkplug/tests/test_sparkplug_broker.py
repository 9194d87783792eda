"""``why_unreachable``: the one phrase the MQTT sink and source give for a broker they
cannot reach, for each kind of failure (the real ones are in their check tests)."""

from __future__ import annotations

import socket
import ssl

import pytest
from spark_sinks_sparkplug.broker import why_unreachable


def untrusted() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate in certificate chain"
    return exc


@pytest.mark.parametrize(
    ("exc", "ca_file", "says"),
    [
        (untrusted(), "/etc/ca.pem", "not trusted by tls.ca_file '/etc/ca.pem': self-signed"),
        (untrusted(), None, "not trusted by the system's CAs: self-signed"),
        (ssl.SSLError(1, "x"), None, "TLS handshake failed"),
        (socket.gaierror(-2, "Name or service not known"), None, "unknown host 'b.plant' (Name"),
        (ConnectionRefusedError(111, "Connection refused"), None, "is the broker running"),
        (TimeoutError(110, "Connection timed out"), None, "Connection timed out"),
        (ValueError(), None, "ValueError"),
    ],
)
def test_each_failure_is_one_phrase_naming_what_to_look_at(
    exc: BaseException, ca_file: str | None, says: str
) -> None:
    assert says in why_unreachable(exc, "b.plant", ca_file)
