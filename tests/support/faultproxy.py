"""A fault-injecting HTTP proxy in front of the moto server, for Kinesis tests.

moto never throttles and never fails, so tests put this proxy between the code
under test and moto and dial in the faults real Kinesis produces::

    with FaultProxy(moto.url) as proxy:
        proxy.set_faults(partial=0.1, error=0.02, reset=0.01, slow=0.05, slow_seconds=0.2)
        ... point the sink's endpoint_url at proxy.url ...
        print(proxy.counters())

Faults (each a share between 0 and 1, drawn per request or per entry):

``partial``
    Share of PutRecords *entries* answered ``ProvisionedThroughputExceededException``
    (or ``partial_code``).
    Those entries are removed from the request before it is forwarded, and failure
    entries are spliced into moto's answer at their positions, so moto never stores
    them: exactly what Kinesis does.
``error``
    Share of requests answered ``500 InternalFailure`` without being forwarded.
``error_after``
    Share of requests forwarded (moto stores the records) and then answered 500:
    the client cannot know it succeeded, so a retry produces duplicates.
``reset``
    Share of requests whose connection is reset (TCP RST) before forwarding.
``reset_after``
    Share of requests forwarded and then reset (duplicates on retry, as above).
``slow`` / ``slow_seconds``
    Share of requests delayed by ``slow_seconds`` before being forwarded.

Faults apply to the operations in ``targets`` (default ``{"PutRecords"}``), so a sink's
start-up check and the tests' own reads are not disturbed; pass ``targets=None`` to hit
every request.

``refuse_connections(True)`` stops listening and cuts the open connections: new ones
are refused, like an endpoint that is down. ``refuse_connections(False)`` listens again
on the same port. Use it for outage tests.

``counters()`` tells how many requests were seen and how many faults of each kind were
injected. Everything is thread-safe and may be changed while traffic flows.

``FaultProxy(..., record_acks=True)`` also keeps every PutRecords entry answered as
stored to the client (``acknowledged()``: shard, sequence number, key and data), so a
test can tell what the sink was told from what the stream holds, and when each
PutRecords was out and on which shards (``puts()``, ``most_at_once``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

THROTTLED = {
    "ErrorCode": "ProvisionedThroughputExceededException",
    "ErrorMessage": "Rate exceeded for shard in stream (injected by faultproxy).",
}
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}


class Ack(NamedTuple):
    """One PutRecords entry the client was told is stored."""

    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


class Put(NamedTuple):
    """One PutRecords answered with stored entries: from its arrival to its answer."""

    arrived: float
    answered: float
    shards: frozenset[str]


def most_at_once(puts: Iterable[Put]) -> int:
    """The most PutRecords that were out at the same moment on one shard."""
    events: dict[str, list[tuple[float, int]]] = {}
    for p in puts:
        for shard in p.shards:
            events.setdefault(shard, []).extend([(p.arrived, 1), (p.answered, -1)])
    most = 0
    for marks in events.values():
        out = 0
        for _, step in sorted(marks):  # an answer before an arrival at the same instant
            out += step
            most = max(most, out)
    return most


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._closed(self.connection)

    def do_GET(self) -> None:
        self.server.proxy._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.proxy._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.proxy._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.proxy._handle(self, "DELETE")


class FaultProxy:
    """See the module docstring. ``url`` is where clients connect."""

    def __init__(
        self, upstream: str, port: int = 0, seed: int | None = None, record_acks: bool = False
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._slowed_now = 0
        """Requests being delayed right now; guarded by ``_lock``."""
        self._faults: dict[str, float] = {}
        self._targets: frozenset[str] | None = frozenset({"PutRecords"})
        self._server: _Server | None = None
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._record_acks = record_acks
        self._acks: list[Ack] = []
        """Guarded by ``_lock``; only filled with ``record_acks``."""
        self._puts: list[Put] = []
        """Guarded by ``_lock``; only filled with ``record_acks``."""
        self.port = port
        self.set_faults()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.proxy = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients see a reset)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refuse_connections(self, refuse: bool = True) -> None:
        """True: stop listening, so new connections are refused. False: listen again."""
        if refuse:
            self.stop()
        elif self._server is None:
            deadline = time.monotonic() + 5
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    # -- control ------------------------------------------------------------------------

    def set_faults(
        self,
        partial: float = 0.0,
        error: float = 0.0,
        error_after: float = 0.0,
        reset: float = 0.0,
        reset_after: float = 0.0,
        slow: float = 0.0,
        slow_seconds: float = 0.0,
        targets: Iterable[str] | None = ("PutRecords",),
        partial_code: str = "ProvisionedThroughputExceededException",
    ) -> None:
        """Replace every fault setting at once (all off by default). ``partial_code`` is
        the ``ErrorCode`` of the failed entries (Kinesis also uses ``InternalFailure``)."""
        with self._lock:
            self._partial_code = partial_code
            self._faults = {
                "partial": partial,
                "error": error,
                "error_after": error_after,
                "reset": reset,
                "reset_after": reset_after,
                "slow": slow,
                "slow_seconds": slow_seconds,
            }
            self._targets = None if targets is None else frozenset(targets)

    def clear_faults(self) -> None:
        self.set_faults()

    def counters(self) -> dict[str, int]:
        """Requests seen and faults injected so far: ``requests``, ``put_records``,
        ``entries_forwarded``, ``entries_throttled``, ``errors``, ``errors_after``,
        ``resets``, ``resets_after``, ``slowed``, ``most_slowed_at_once``."""
        with self._lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.clear()

    def puts(self) -> list[Put]:
        """Every PutRecords answered with stored entries so far (needs
        ``record_acks=True``)."""
        with self._lock:
            return list(self._puts)

    def acknowledged(self) -> list[Ack]:
        """Every PutRecords entry answered as stored so far, in the order answered
        (needs ``record_acks=True``)."""
        with self._lock:
            return list(self._acks)

    # -- the proxy ----------------------------------------------------------------------

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _sleep(self, seconds: float) -> None:
        """Delay one request, keeping ``most_slowed_at_once``: how many requests were
        delayed at the same moment, which tells a test how concurrent its client is
        without timing it."""
        with self._lock:
            self._counters["slowed"] += 1
            self._slowed_now += 1
            most = self._counters["most_slowed_at_once"]
            self._counters["most_slowed_at_once"] = max(most, self._slowed_now)
        try:
            time.sleep(seconds)
        finally:
            with self._lock:
                self._slowed_now -= 1

    def _draw(self, name: str) -> bool:
        with self._lock:
            p = self._faults.get(name, 0.0)
            return p > 0 and self._rng.random() < p

    def _handle(self, h: _Handler, method: str) -> None:
        arrived = time.monotonic()
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        target = (h.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        self._count("requests")
        with self._lock:
            targeted = self._targets is None or target in self._targets
            slow_seconds = self._faults.get("slow_seconds", 0.0)
        if targeted:
            if self._draw("slow") and slow_seconds > 0:
                self._sleep(slow_seconds)
            if self._draw("reset"):
                self._count("resets")
                self._reset(h)
                return
            if self._draw("error"):
                self._count("errors")
                self._reply_error(h)
                return

        throttled: list[int] = []
        if target == "PutRecords" and method == "POST":
            self._count("put_records")
            if targeted and body:
                body, throttled = self._drop_entries(body)

        acks: list[Ack] = []
        if throttled and body is None:  # every entry throttled: moto is not asked
            status, headers, payload = 200, [("Content-Type", "application/x-amz-json-1.1")], b""
            payload = self._splice(None, throttled)
        else:
            status, headers, payload = self._forward(h, method, body or b"")
            if self._record_acks and target == "PutRecords" and status == 200:
                acks = _stored(body or b"", payload)
            if throttled and status == 200:
                payload = self._splice(payload, throttled)

        if targeted:
            if self._draw("reset_after"):
                self._count("resets_after")
                self._reset(h)
                return
            if self._draw("error_after"):
                self._count("errors_after")
                self._reply_error(h)
                return
        if acks:
            put = Put(arrived, time.monotonic(), frozenset(a.shard_id for a in acks))
            with self._lock:
                self._acks.extend(acks)
                self._puts.append(put)
        self._reply(h, status, headers, payload)

    def _drop_entries(self, body: bytes) -> tuple[bytes | None, list[int]]:
        """Remove the entries to throttle; returns the new body (None if empty) and their
        original positions."""
        try:
            req = json.loads(body)
            records = req["Records"]
        except (ValueError, KeyError, TypeError):
            return body, []
        throttled = self._choose_throttled(req, records)
        marks = set(throttled)
        keep = [r for i, r in enumerate(records) if i not in marks]
        if not throttled:
            return body, []
        self._count("entries_throttled", len(throttled))
        self._count("entries_forwarded", len(keep))
        if not keep:
            return None, throttled
        req["Records"] = keep
        return json.dumps(req).encode(), throttled

    def _choose_throttled(self, request: dict[str, Any], records: list[Any]) -> list[int]:
        """Positions of the entries to refuse: a ``partial`` share, drawn per entry.
        ``throttle.ThrottleProxy`` refuses by per-shard budgets instead."""
        return [i for i in range(len(records)) if self._draw("partial")]

    def _splice(self, payload: bytes | None, throttled: list[int]) -> bytes:
        upstream = json.loads(payload) if payload else {"FailedRecordCount": 0, "Records": []}
        ok = iter(upstream.get("Records", []))
        total = len(upstream.get("Records", [])) + len(throttled)
        marks = set(throttled)
        with self._lock:
            code = self._partial_code
        failed = {"ErrorCode": code, "ErrorMessage": f"{code} (injected by faultproxy)"}
        if code == THROTTLED["ErrorCode"]:
            failed = dict(THROTTLED)
        records = [dict(failed) if i in marks else next(ok) for i in range(total)]
        upstream["Records"] = records
        upstream["FailedRecordCount"] = int(upstream.get("FailedRecordCount", 0)) + len(throttled)
        return json.dumps(upstream).encode()

    def _forward(
        self, h: _Handler, method: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            conn.request(method, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_HEADERS]
            return resp.status, out, payload
        finally:
            conn.close()

    @staticmethod
    def _reply(h: _Handler, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            h.send_response(status)
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _reply_error(self, h: _Handler) -> None:
        payload = json.dumps(
            {"__type": "InternalFailure", "message": "injected by faultproxy"}
        ).encode()
        self._reply(h, 500, [("Content-Type", "application/x-amz-json-1.1")], payload)

    @staticmethod
    def _reset(h: _Handler) -> None:
        """Close with RST: the client sees 'connection reset by peer'."""
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass


def _stored(request: bytes, answer: bytes) -> list[Ack]:
    """The entries of a forwarded PutRecords request that moto's answer says it stored
    (answers are in request order)."""
    sent = json.loads(request)["Records"]
    results = json.loads(answer)["Records"]
    return [
        Ack(r["ShardId"], r["SequenceNumber"], e["PartitionKey"], base64.b64decode(e["Data"]))
        for e, r in zip(sent, results, strict=True)
        if not r.get("ErrorCode")
    ]
