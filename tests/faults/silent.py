"""A TCP endpoint that accepts connections and never answers: the kernel completes each
handshake (the listening socket's backlog) and the request bytes are never read. A client
then waits for its read timeout; a test uses it to hold a sink in its connection check."""

from __future__ import annotations

import select
import socket
from types import TracebackType


class SilentServer:
    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def has_client(self, timeout: float) -> bool:
        """True once a client has connected (a connection waits in the backlog)."""
        return bool(select.select([self._sock], [], [], timeout)[0])

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
