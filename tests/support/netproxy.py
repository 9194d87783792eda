"""Real network middlemen for tests of proxies and private certificate authorities.

``ForwardProxy`` is an HTTP forward proxy, as corporate networks have: requests for
``http://`` URLs arrive with the absolute URL and are forwarded; ``https://`` traffic
arrives as ``CONNECT host:port`` and is tunnelled byte for byte (the proxy never sees
inside). It can demand Basic credentials (``407`` otherwise), and it records what it
carried::

    with ForwardProxy(auth=("plant", "s3cret")) as proxy:
        ... Config(proxies={"https": proxy.url_with_auth}) ...
        proxy.tunnels      # ["127.0.0.1:4431", ...]: every CONNECT, in order
        proxy.exchanges    # every forwarded http:// request with its answer

Tunnels go only to 127.0.0.1 (this machine has no internet anyway); a CONNECT to any
other host is recorded and answered ``502``, so a test can see which AWS host a client
would have reached (FIPS or dual-stack endpoints) without leaving the machine.

``TlsFront`` is an HTTPS server with a certificate of a test CA (``TestCa``), forwarding
every request to a plain HTTP server (moto): an AWS endpoint behind a private CA. It
records the decrypted requests and answers, so a test sees the signatures and bodies
that went through a tunnel.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import select
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Exchange:
    """One request carried, and its answer."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer: bytes = b""

    @property
    def operation(self) -> str:
        """``Kinesis_20131202.PutRecords`` (JSON protocols) or ``AssumeRole`` (query)."""
        target = self.headers.get("x-amz-target")
        if target:
            return target.rpartition(".")[2]
        form = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))
        return form.get("Action", [""])[0]

    @property
    def access_key(self) -> str:
        """The access key id the request was signed with (``Credential=AKID/...``)."""
        auth = self.headers.get("authorization", "")
        _, _, rest = auth.partition("Credential=")
        return rest.partition("/")[0]


@dataclass
class _Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    exchanges: list[Exchange] = field(default_factory=list)
    tunnels: list[str] = field(default_factory=list)


def _relay(handler: BaseHTTPRequestHandler, host: str, port: int, path: str, log: _Log) -> None:
    """Forward the request being handled to ``host:port`` and relay the answer."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
    seen = Exchange(handler.command, path, {k.lower(): v for k, v in headers.items()}, body)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(handler.command, path, body=body, headers=headers)
        resp = conn.getresponse()
        answer = resp.read()
        seen.status, seen.answer = resp.status, answer
        handler.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)
    finally:
        conn.close()
        with log.lock:
            log.exchanges.append(seen)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    socks = [a, b]
    while True:
        readable, _, broken = select.select(socks, [], socks, 30)
        if broken or not readable:
            return
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Base:
    """A server on 127.0.0.1 in a thread of its own; a context manager."""

    def __init__(self) -> None:
        self._log = _Log()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _wrap(self, server: _Server) -> None:
        """Hook: TLS for ``TlsFront``."""

    def __enter__(self) -> Any:
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._wrap(self._server)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def exchanges(self) -> list[Exchange]:
        with self._log.lock:
            return list(self._log.exchanges)

    @property
    def tunnels(self) -> list[str]:
        with self._log.lock:
            return list(self._log.tunnels)


class ForwardProxy(_Base):
    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.auth = auth

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_auth(self) -> str:
        assert self.auth is not None
        user, password = (urllib.parse.quote(p, safe="") for p in self.auth)
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        log, auth = self._log, self.auth
        expected = None
        if auth is not None:
            expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _authorized(self) -> bool:
                if expected is None or self.headers.get("Proxy-Authorization") == expected:
                    return True
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_CONNECT(self) -> None:
                host, _, port = self.path.rpartition(":")
                with log.lock:
                    log.tunnels.append(self.path)
                if not self._authorized():
                    return
                if host != "127.0.0.1":
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                with contextlib.closing(upstream):
                    _pump(self.connection, upstream)

            def _forward(self) -> None:
                if not self._authorized():
                    return
                url = urllib.parse.urlsplit(self.path)
                path = url.path + (f"?{url.query}" if url.query else "") or "/"
                _relay(self, url.hostname or "", url.port or 80, path, log)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        return Handler


class TlsFront(_Base):
    def __init__(self, target_url: str, cert: Path, key: Path) -> None:
        super().__init__()
        target = urllib.parse.urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.cert, self.key = cert, key

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _wrap(self, server: _Server) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        log, (host, port) = self._log, self.target

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                _relay(self, host, port, self.path, log)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        return Handler


class TestCa:
    """A certificate authority made for one test, and a server certificate it signed for
    127.0.0.1 and localhost. ``ca_pem`` is what ``ca_bundle`` points at."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spark-sinks test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_pem = directory / "test-ca.pem"
        self.ca_pem.write_bytes(ca_cert.public_bytes(pem))
        self.cert = directory / "server.pem"
        self.cert.write_bytes(cert.public_bytes(pem))
        self.key = directory / "server.key"
        self.key.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        self.key.chmod(0o600)
