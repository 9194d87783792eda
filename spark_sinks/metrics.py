"""Operations: per-sink counters as a periodic log line, a status file and Prometheus metrics.

Everything here reads the same ``SinkStats`` snapshots, so the log, the
status file and the metrics endpoint never disagree.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("spark_sinks.stats")

Snapshot = Callable[[], dict[str, Any]]


class OperationsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stats_interval: float = Field(60.0, ge=0)
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
        line = (
            f"{name}: {s['accepted']} accepted, {s['delivered']} delivered, "
            f"{s['pending']} pending, {s['retried']} retried, {s['dead_lettered']} dead-lettered, "
            f"{s['dropped']} dropped"
        )
        if s.get("throttled"):
            line += f", {s['throttled']} throttled"
        if s.get("spool_depth") is not None:
            line += f", spool {s['spool_depth']}"
        parts.append(line)
    return "; ".join(parts)


class Reporter:
    """A daemon thread: every ``stats_interval`` seconds, one log line and the status file."""

    def __init__(self, config: OperationsConfig, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_delivered: dict[str, int] = {}
        self._last_flow: dict[str, float] = {}
        self.server: Any = None

    def start(self) -> None:
        if self.config.metrics_port is not None:
            self.server = serve_metrics(self.config, self.snapshot)
        if self.config.stats_interval > 0:
            self._thread = threading.Thread(target=self._loop, name="reporter", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.stats_interval):
            self.report()

    def report(self, final: bool = False) -> dict[str, Any]:
        snap = self.snapshot()
        now = time.time()
        for name, s in snap["sinks"].items():
            if s["delivered"] != self._last_delivered.get(name):
                self._last_delivered[name] = s["delivered"]
                self._last_flow[name] = now
            s["last_delivery_at"] = self._last_flow.get(name)
        snap["time"] = now
        snap["interval"] = self.config.stats_interval
        snap["final"] = final
        if not final:  # at exit the CLI prints its own summary
            log.info("%s", summary_line(snap))
        if self.config.status_file is not None:
            write_atomically(
                self.config.status_file, orjson.dumps(snap, option=orjson.OPT_INDENT_2)
            )
        return snap

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.server is not None:
            self.server.shutdown()


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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
    "dropped": "Envelopes dropped (spool full with on_full: drop_oldest)",
    "failed": "Envelopes lost to a sink error",
    "throttled": "Requests or entries the destination refused for throttling",
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
            spool = GaugeMetricFamily(
                "spark_sinks_spool_depth", "Envelopes waiting in the spool", labels=["sink"]
            )
            for name, s in snap["sinks"].items():
                pending.add_metric([name], s["pending"])
                if s.get("spool_depth") is not None:
                    spool.add_metric([name], s["spool_depth"])
            yield pending
            yield spool
            i = snap["input"]
            yield CounterMetricFamily(
                "spark_sinks_input_items", "Input items read", value=i["items"]
            )
            yield CounterMetricFamily(
                "spark_sinks_input_rejected", "Input items rejected", value=i["rejected"]
            )

    return Collector()


def serve_metrics(config: OperationsConfig, snapshot: Snapshot) -> Any:
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_collector(snapshot))
    server, _thread = start_http_server(
        config.metrics_port or 0, addr=config.metrics_addr, registry=registry
    )
    port = server.server_address[1]
    log.info("Prometheus metrics on http://%s:%d/metrics", config.metrics_addr, port)
    return server


# -- status ----------------------------------------------------------------------------------


def verdict(snap: dict[str, Any], now: float | None = None) -> tuple[bool, list[str]]:
    """Is data flowing? Stale status, a sink with pending envelopes and no delivery for
    three intervals, or undeliverable envelopes make it unhealthy."""
    now = time.time() if now is None else now
    interval = snap.get("interval") or 60
    lines = []
    ok = True
    age = now - snap["time"]
    if snap.get("final"):
        lines.append("the process has exited (final status)")
        ok = False
    elif age > 3 * interval:
        lines.append(f"status is {age:.0f}s old: is spark-sinks running?")
        ok = False
    for name, s in snap["sinks"].items():
        last = s.get("last_delivery_at")
        since = f"{now - last:.0f}s ago" if last else "never"
        state = "flowing"
        if s["pending"] and (last is None or now - last > 3 * interval):
            state = "STALLED"
            ok = False
        if s["failed"] or s["dropped"]:
            ok = False
        line = (
            f"sink {name}: {state}; last delivery {since}; {s['pending']} pending, "
            f"{s['delivered']} delivered, {s['dead_lettered']} dead-lettered, "
            f"{s['dropped']} dropped, {s['failed']} failed"
        )
        if s.get("spool_depth") is not None:
            line += f", {s['spool_depth']} in spool"
        if s.get("last_error"):
            line += f"; last error: {s['last_error']}"
        lines.append(line)
    return ok, lines
