"""Operations: per-sink counters as a periodic log line, a status file and Prometheus metrics.

Everything here reads the same ``SinkStats`` snapshots, so the log, the
status file and the metrics endpoint never disagree.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from . import files, logs
from .errors import ConfigError
from .sink import MAX_SECONDS, describe

log = logging.getLogger("spark_sinks.stats")

Snapshot = Callable[[], dict[str, Any]]


class OperationsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stats_interval: float = Field(60.0, ge=0, le=MAX_SECONDS)
    """Seconds between summary log lines (and status file updates); 0 turns them off."""
    status_file: Path | None = None
    """JSON file rewritten every interval; ``spark-sinks status`` reads it."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Serve Prometheus metrics on this port (0 picks a free one)."""
    metrics_addr: str = "127.0.0.1"
    """Address to bind the metrics endpoint to; 0.0.0.0 exposes it on the network."""
    watch_config: bool = False
    """Reload when the config file changes, as if SIGHUP had been sent."""


def summary_line(snap: dict[str, Any]) -> str:
    i = snap["input"]
    parts = [f"input {i['items']} items, {i['rejected']} rejected"]
    for name, s in snap["sinks"].items():
        parts.append(f"{name}: {describe(s)}")
    return "; ".join(parts)


_COMPLAIN_EVERY = 600.0
"""Seconds between repeated error lines about one operational fault that persists."""


class _Complaints:
    """Rate-limits the error lines of one persistent fault: the first, then one every
    ``_COMPLAIN_EVERY`` seconds, each with how often it happened meanwhile."""

    def __init__(self) -> None:
        self.count = 0
        self._last = -_COMPLAIN_EVERY
        self.failing = False

    def fail(self, message: str) -> None:
        self.count += 1
        now = time.monotonic()
        if not self.failing or now - self._last >= _COMPLAIN_EVERY:
            log.error("%s (%d times so far; delivery is not affected)", message, self.count)
            self._last = now
        self.failing = True


class Reporter:
    """A daemon thread: every ``stats_interval`` seconds, one log line and the status file.

    Nothing here may stop delivery: after the start-up checks (``open``), a status file
    that cannot be written, or any error in a report, is one error line (rate-limited) and
    a counter (``status_write_errors``), and the thread goes on."""

    def __init__(self, config: OperationsConfig, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        """Held for a whole report: the reporter thread, the final report and a report of
        a run given up on (main thread) may overlap; the fields below are theirs."""
        self._last_delivered: dict[str, int] = {}
        self._last_flow: dict[str, float] = {}
        self._status_errors = _Complaints()
        self._report_errors = _Complaints()
        self.server: Any = None

    @property
    def status_write_errors(self) -> int:
        return self._status_errors.count

    def open(self, where: str) -> None:
        """Before any data is accepted: bind the metrics port and write a first status, so
        that a port in use or an unwritable status file stops the start (exit 2)."""
        ops = self.config
        if ops.metrics_port is not None:
            try:
                self.server = serve_metrics(ops, self._with_own_counters)
            except OSError as exc:
                raise ConfigError(
                    f"{where}: operations.metrics_port: cannot listen on "
                    f"{ops.metrics_addr}:{ops.metrics_port}: {exc.strerror or exc}"
                ) from None
        if ops.status_file is not None:
            try:
                write_atomically(ops.status_file, orjson.dumps(self._stamp(final=False)))
            except OSError as exc:
                self.stop()
                raise ConfigError(
                    f"{where}: operations.status_file: cannot write {ops.status_file}: "
                    f"{exc.strerror or exc}"
                ) from None

    def start(self) -> None:
        if self.config.stats_interval > 0:
            self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.stats_interval):
            try:
                self.report()
            except Exception as exc:  # a bug here must not end the reports for the run
                self._report_errors.fail(f"the periodic report failed: {type(exc).__name__}: {exc}")

    def _with_own_counters(self) -> dict[str, Any]:
        snap = self.snapshot()
        snap["status_write_errors"] = self.status_write_errors
        return snap

    def report(self, final: bool = False) -> dict[str, Any]:
        with self._lock:
            return self._report(final)

    def _report(self, final: bool) -> dict[str, Any]:
        snap = self._stamp(final)
        if not final:  # at exit the CLI prints its own summary
            log.info("%s", summary_line(snap))
        if self.config.status_file is not None:
            self._write_status(snap)
        return snap

    def _write_status(self, snap: dict[str, Any]) -> None:
        path = self.config.status_file
        assert path is not None
        try:
            text = orjson.dumps(snap, option=orjson.OPT_INDENT_2).decode()
            write_atomically(path, logs.redact(text).encode())
        except OSError as exc:
            self._status_errors.fail(
                f"cannot write the status file {path}: {exc.strerror or exc}; "
                f"retrying every {self.config.stats_interval:g}s"
            )
            return
        if self._status_errors.failing:
            self._status_errors.failing = False
            log.warning("the status file %s is written again", path)

    def _stamp(self, final: bool) -> dict[str, Any]:
        """A snapshot with when each sink last delivered, and the reporter's own fields."""
        snap = self._with_own_counters()
        now = time.time()
        for name, s in snap["sinks"].items():
            if s["delivered"] != self._last_delivered.get(name):
                self._last_delivered[name] = s["delivered"]
                self._last_flow[name] = now
            s["last_delivery_at"] = self._last_flow.get(name)
        snap["time"] = now
        snap["interval"] = self.config.stats_interval
        snap["final"] = final
        return snap

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.server is not None:
            self.server.shutdown()


@dataclass(frozen=True)
class OperationsCheck:
    """What ``spark-sinks check`` found about the ``operations:`` block."""

    problems: list[str]
    """Each stops a run at start (exit 2): one line naming the config key."""
    notes: list[str]


def check_operations(ops: OperationsConfig) -> OperationsCheck:
    """The start-up checks of ``Reporter.open``, without taking anything: is the metrics port
    free (or already served by a running spark-sinks), can the status file be written?"""
    problems, notes = [], []
    if ops.metrics_port:  # 0 picks a free port: nothing to check
        why = _port_problem(ops.metrics_addr, ops.metrics_port)
        if why is None:
            notes.append(f"metrics port {ops.metrics_port} is free")
        elif _serves_metrics(ops.metrics_addr, ops.metrics_port):
            notes.append(f"metrics port {ops.metrics_port} is served by a running spark-sinks")
        else:
            problems.append(f"operations.metrics_port: {why}")
    if ops.status_file is not None:
        why = files.path_problem(ops.status_file)
        if why is None:
            notes.append(f"status file {ops.status_file} is writable")
        else:
            problems.append(f"operations.status_file: cannot write {ops.status_file}: {why}")
    return OperationsCheck(problems, notes)


def _port_problem(addr: str, port: int) -> str | None:
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[
            0
        ]
    except OSError as exc:
        return f"cannot resolve the metrics address {addr!r}: {exc.strerror or exc}"
    with socket.socket(family, kind, proto) as sock:
        # as the metrics server binds: a port left in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return f"cannot listen on {addr}:{port}: {exc.strerror or exc}"
    return None


def _serves_metrics(addr: str, port: int) -> bool:
    """Is it our own metrics endpoint (a running spark-sinks with this config)?"""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(addr, addr)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
    import urllib.request  # here, not at the top: with http.client and email it costs every start

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return b"spark_sinks_accepted" in resp.read(1 << 20)
    except (OSError, ValueError):
        return False


def write_atomically(path: Path, data: bytes) -> None:
    files.private_dir(path.parent)
    # mkstemp creates the file 0600 whatever the umask, so the status stays private
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- Prometheus ------------------------------------------------------------------------------

_COUNTERS = {
    "accepted": "Envelopes handed to the sink",
    "delivered": "Envelopes the destination accepted",
    "retried": "Envelope send attempts that were retried",
    "dead_lettered": "Envelopes set aside as undeliverable",
    "dropped": "Envelopes dropped by a full buffer (when_full: drop_newest or drop_oldest)",
    "failed": "Envelopes lost to a sink error",
    "throttled": "Requests or entries the destination refused for throttling",
    "replayed": "Envelopes an earlier run left in the spool, accepted again (part of accepted)",
    "overreported": "Outcomes a sink reported for more envelopes than it held (a sink bug)",
    "corrupt_spools": "Corrupt spool files set aside at start",
    "lost_in_corrupt_spool": "Envelopes of an earlier run lost in corrupt spool files",
}
"""Every ``SinkStats`` counter but ``pending`` (a gauge, below): the metrics show what the
status file and the log line show."""


_DEPTHS = {
    "spool_depth": "Envelopes waiting in the spool (disk buffer)",
    "buffer_envelopes": "Envelopes waiting in the memory buffer (part of pending)",
    "buffer_bytes": "Bytes of envelope JSON waiting in the memory buffer",
}


def _collector(snapshot: Snapshot) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterator[Any]:
            snap = snapshot()
            for field, doc in _COUNTERS.items():
                fam = CounterMetricFamily(f"spark_sinks_{field}", doc, labels=["sink"])
                for name, s in snap["sinks"].items():
                    fam.add_metric([name], s[field])
                yield fam
            pending = GaugeMetricFamily(
                "spark_sinks_pending", "Envelopes accepted, not yet settled", labels=["sink"]
            )
            for name, s in snap["sinks"].items():
                pending.add_metric([name], s["pending"])
            yield pending
            for field, doc in _DEPTHS.items():
                gauge = GaugeMetricFamily(f"spark_sinks_{field}", doc, labels=["sink"])
                for name, s in snap["sinks"].items():
                    if s.get(field) is not None:  # the sink has that buffer, and runs
                        gauge.add_metric([name], s[field])
                yield gauge
            i = snap["input"]
            yield CounterMetricFamily(
                "spark_sinks_input_items", "Input items read", value=i["items"]
            )
            yield CounterMetricFamily(
                "spark_sinks_input_rejected", "Input items rejected", value=i["rejected"]
            )
            yield _source_counters(i)
            yield CounterMetricFamily(
                "spark_sinks_status_write_errors",
                "Status file writes that failed",
                value=snap.get("status_write_errors", 0),
            )

    return Collector()


def _source_counters(i: dict[str, Any]) -> Any:
    """One family for whatever the source counts of its own (``Source.counters()``): the
    names differ from source to source, so they are a label, not metric names."""
    from prometheus_client.core import CounterMetricFamily

    fam = CounterMetricFamily(
        "spark_sinks_source_events",
        "Events the source counts of its own (Source.counters()), by counter name",
        labels=["source", "counter"],
    )
    for counter, n in i.get("source", {}).items():
        fam.add_metric([i.get("source_type", ""), counter], n)
    return fam


def serve_metrics(config: OperationsConfig, snapshot: Snapshot) -> Any:
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_collector(snapshot))
    server, _thread = start_http_server(
        config.metrics_port or 0, addr=config.metrics_addr, registry=registry
    )
    _bound(server)
    port = server.server_address[1]
    log.info("Prometheus metrics on http://%s:%d/metrics", config.metrics_addr, port)
    return server


MAX_SCRAPES = 8
"""Metrics connections served at once; one more is closed at once."""
SCRAPE_TIMEOUT = 10.0
"""Seconds a metrics connection may stay silent before it is closed."""


def _bound(server: Any) -> None:
    """prometheus_client serves each connection in a thread of its own, for as long as
    the client keeps it open: idle or slow clients (a port scan, a hostile peer) would
    add threads without end. Here at most ``MAX_SCRAPES`` are served at once, each
    closed after ``SCRAPE_TIMEOUT`` seconds of silence."""
    server.RequestHandlerClass = type(
        "BoundedHandler", (server.RequestHandlerClass,), {"timeout": SCRAPE_TIMEOUT}
    )
    slots = threading.BoundedSemaphore(MAX_SCRAPES)
    serve = server.process_request_thread  # handles the request, then closes it

    def served(request: Any, client_address: Any) -> None:
        try:
            serve(request, client_address)
        finally:
            slots.release()

    def process_request(request: Any, client_address: Any) -> None:
        if not slots.acquire(blocking=False):
            server.shutdown_request(request)
            return
        threading.Thread(target=served, args=(request, client_address), daemon=True).start()

    def handle_error(request: Any, client_address: Any) -> None:
        # a client gone silent (timed out) or away: one debug line, not a traceback
        log.debug("metrics request from %s ended early", client_address)

    server.process_request = process_request
    server.handle_error = handle_error
