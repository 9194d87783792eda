"""One run: start the sinks, feed them from the source, shut down cleanly, report.

Shutdown order is fixed: the source stops, pending envelopes are dispatched,
each sink is flushed (bounded by its ``flush_timeout``) and only then closed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from .assembly import Assembler
from .config import Config, SinkSpec, load_config
from .dispatch import ActiveSink, Dispatcher
from .errors import ConfigError, SinkError
from .metrics import Reporter
from .pipeline import Pipeline, Rejects
from .plugins import Registry, load_registry
from .sink import SinkContext, SinkStats
from .spool import Spool, SpooledSink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_REJECTED_INPUT = 3


def start_sink(spec: SinkSpec, host: str, check: bool = True, probe: bool = False) -> ActiveSink:
    """Instantiate, open and (optionally) check one sink; raises ``SinkError`` naming it.

    A sink with a disk buffer whose check fails still starts, since its spool holds what
    it cannot deliver yet. ``probe`` (for ``spark-sinks check``) leaves the spool alone: a
    running process may own it, and a check must not deliver what it holds."""
    cls = spec.provided.cls
    ctx = SinkContext(spec.name, host, spec.config.dead_letter)
    label = f"sink {spec.name!r} ({cls.type_name} from {spec.provided.plugin.distribution})"
    try:
        sink = cls(spec.config, ctx)
    except Exception as exc:
        raise SinkError(f"{label} failed to initialise: {type(exc).__name__}: {exc}") from exc
    buffer = spec.config.buffer
    disk = buffer.type == "disk"
    if disk and not probe:
        spool = buffer.spool()
        sink = SpooledSink(sink, Spool(spool.path, spec.name, spool))
    active = ActiveSink(
        spec.name, sink, spec.provided.plugin, spec.config.flush_timeout, direct=disk or probe
    )
    # open and check run where the sink's writes will run (its worker), like every call
    active.inlet.run(lambda: active.call("open", sink.open))
    if check:
        try:
            active.checked = str(active.inlet.run(lambda: active.call("check", sink.check)) or "ok")
        except SinkError as exc:
            if isinstance(sink, SpooledSink):
                # A gateway that boots before its network must not refuse to run: the
                # spool keeps everything until the destination answers.
                log.error("%s; starting anyway, the spool keeps everything until it works", exc)
                active.checked = f"not reachable yet: {exc}"
                return active
            stop_sink(active)
            raise
        log.info("sink %r ready: %s", spec.name, active.checked)
    return active


def stop_sink(active: ActiveSink) -> bool:
    """Drain its buffer, flush, then close, within its ``flush_timeout``; never raises
    (failures are logged and counted). False when the sink was abandoned in a call that
    did not return in time."""
    return active.inlet.begin_stop(active.flush_timeout)()


@dataclass
class Report:
    items: int = 0
    envelopes: int = 0
    rejected: int = 0
    incomplete_dropped: int = 0
    sinks: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def undelivered(self) -> dict[str, int]:
        return {k: int(v["accepted"]) - int(v["delivered"]) for k, v in self.sinks.items()}

    @property
    def exit_code(self) -> int:
        if any(self.undelivered.values()):
            return EXIT_UNDELIVERED
        if self.rejected:
            return EXIT_REJECTED_INPUT
        return EXIT_OK


class Runtime:
    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.dispatcher = Dispatcher()
        self.assembler = Assembler(config.machines, config.host, config.on_incomplete)
        self.rejects = Rejects(config.source.dead_letter)
        self.pipeline = Pipeline(self.assembler, self.dispatcher, self.rejects)
        self.pipeline.between_batches = self._between_batches
        self.reporter = Reporter(config.operations, self.snapshot)
        self._finished: dict[str, dict[str, Any]] = {}
        self.abandoned: list[str] = []
        """Sinks left still busy in a call after their flush_timeout (see ``buffer.py``)."""
        self._start_failures: dict[str, tuple[str, int]] = {}
        """Sinks that could not start: the error, and the envelope count at that moment."""

    def start(self) -> None:
        """Start every enabled sink. One that cannot start is reported and the others run
        (its envelopes count as not delivered); only when none can start is it fatal."""
        enabled = [spec for spec in self.config.sinks.values() if spec.config.enabled]
        for spec in enabled:
            try:
                self.dispatcher.add(start_sink(spec, self.config.host))
            except SinkError as exc:
                if len(enabled) > 1:
                    log.error("%s; running without it (SIGHUP retries)", exc)
                self._start_failures[spec.name] = (str(exc), 0)
        if enabled and not self.dispatcher.sinks:
            raise SinkError("; ".join(msg for msg, _ in self._start_failures.values()))
        if not enabled:
            log.warning("no sink is enabled: records are assembled and discarded")
        self.reporter.start()
        if self.config.operations.watch_config:
            threading.Thread(target=self._watch, name="config-watch", daemon=True).start()

    def _watch(self) -> None:
        def stamp() -> tuple[float, int] | None:
            try:
                st = self.config.path.stat()
            except OSError:
                return None
            return (st.st_mtime, st.st_size)

        last = stamp()
        while not self.stop.wait(1.0):
            now = stamp()
            if now != last and now is not None:
                last = now
                log.info("config file changed: reloading")
                self.reload_requested.set()

    def run(self) -> Report:
        """Run until the source ends or ``stop`` is set, then shut down."""
        source = self.config.source_type.cls(self.config.source, self.config.machines)
        try:
            self.pipeline.emit(self.assembler.all_metadata())
            source.run(self.pipeline, self.stop)
        finally:
            self.pipeline.flush()
            self.shutdown()
        return self.report()

    def request_stop(self) -> None:
        """A first signal: the source stops, and no sink waits for buffer space any more."""
        self.stop.set()
        for a in self.dispatcher.sinks:
            a.sink.context.shutdown.set()

    def force(self) -> None:
        """A second signal: stop waiting on retries and flushes."""
        for a in self.dispatcher.sinks:
            a.sink.context.stopping.set()

    def shutdown(self) -> None:
        # every sink drains at once; each within its own flush_timeout
        stopping = [(a, a.inlet.begin_stop(a.flush_timeout)) for a in self.dispatcher.sinks]
        for a, wait in stopping:
            self._finish(a, wait())
        self.rejects.close()
        self.reporter.stop()
        if self.config.operations.stats_interval > 0 or self.config.operations.status_file:
            self.reporter.report(final=True)

    def _retire(self, a: ActiveSink) -> None:
        """Flush and close a sink, keeping its final counters for the report."""
        self._finish(a, stop_sink(a))

    def _finish(self, a: ActiveSink, stopped: bool) -> None:
        if not stopped:
            self.abandoned.append(a.name)
        self.dispatcher.remove(a.name)
        snap = a.stats.snapshot()
        prev = self._finished.get(a.name)
        if prev is not None:  # the same name ran before a reload: add the runs up
            for k in (*SinkStats.FIELDS, "pending"):
                snap[k] += prev[k]
        self._finished[a.name] = snap

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        sinks = {k: dict(v) for k, v in self._finished.items()}
        for a in self.dispatcher.sinks:
            snap = a.stats.snapshot()
            spool = getattr(a.sink, "spool", None)
            snap["spool_depth"] = spool.count() if spool is not None else None
            sinks[a.name] = snap
        for name in self._start_failures:
            sinks[name] = {**self._missed(name), "spool_depth": None}
        return {
            "pid": os.getpid(),
            "input": {
                "items": self.pipeline.items,
                "envelopes": self.pipeline.envelopes,
                "rejected": self.rejects.count,
                "incomplete_dropped": self.assembler.incomplete_dropped,
            },
            "sinks": sinks,
        }

    def report(self) -> Report:
        sinks = dict(self._finished)
        for name in self._start_failures:
            sinks[name] = self._missed(name)
        return Report(
            items=self.pipeline.items,
            envelopes=self.pipeline.envelopes,
            rejected=self.rejects.count,
            incomplete_dropped=self.assembler.incomplete_dropped,
            sinks=sinks,
        )

    def _missed(self, name: str) -> dict[str, Any]:
        """Counters of a sink that was not running: everything in between is lost to it."""
        msg, since = self._start_failures[name]
        n = self.pipeline.envelopes - since
        snap: dict[str, Any] = {k: 0 for k in SinkStats.FIELDS}
        snap.update(accepted=n, failed=n, pending=0, last_error=msg)
        prev = self._finished.get(name)
        if prev is not None:
            for k in (*SinkStats.FIELDS, "pending"):
                snap[k] += prev[k]
        return snap

    # -- live reconfiguration ----------------------------------------------------------------

    def _between_batches(self) -> None:
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()

    def reload(self) -> bool:
        """Re-read the config file and apply it; an invalid file changes nothing."""
        old = self.config
        try:
            new = load_config(old.path, self.registry or load_registry())
        except ConfigError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
            return False
        if new.source != old.source:
            log.warning("the source settings changed: that takes a restart to apply")
        running = {a.name: a for a in self.dispatcher.sinks}
        for name, a in running.items():
            spec = new.sinks.get(name)
            if spec is None or not spec.config.enabled or _changed(spec, old.sinks[name]):
                why = (
                    "removed"
                    if spec is None
                    else "disabled"
                    if not spec.config.enabled
                    else "changed"
                )
                log.info("reload: sink %r %s; flushing and stopping it", name, why)
                self._retire(a)
        for name in list(self._start_failures):
            spec = new.sinks.get(name)
            if spec is None or not spec.config.enabled:
                self._finished[name] = self._missed(name)
                del self._start_failures[name]
        self.config = new
        self.assembler.on_incomplete = new.on_incomplete
        host_changed = new.host != self.assembler.host
        self.assembler.host = new.host
        changed = self.assembler.reconfigure(new.machines)
        if host_changed:
            changed = self.assembler.all_metadata()
        # metadata of changed machines to the sinks that kept running ...
        self.pipeline.emit(changed)
        # ... and all metadata to the sinks that start now
        for name, spec in new.sinks.items():
            if not spec.config.enabled or name in {a.name for a in self.dispatcher.sinks}:
                continue
            try:
                active = start_sink(spec, new.host)
            except SinkError as exc:
                log.error("reload: %s", exc)
                if name not in self._start_failures:
                    self._start_failures[name] = (str(exc), self.pipeline.envelopes)
                continue
            if name in self._start_failures:
                self._finished[name] = self._missed(name)
                del self._start_failures[name]
            log.info("reload: sink %r started", name)
            meta = self.assembler.all_metadata()
            single = Dispatcher()
            single.add(active)
            single.dispatch(meta)  # through its own buffer, ahead of anything else
            self.dispatcher.add(active)
        log.info(
            "reload applied: %d machines, sinks running: %s",
            len(new.machines),
            ", ".join(a.name for a in self.dispatcher.sinks) or "none",
        )
        return True


def _changed(new: SinkSpec, old: SinkSpec | None) -> bool:
    return old is None or new.config != old.config or new.provided.cls is not old.provided.cls
