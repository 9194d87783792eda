"""One run: start the sinks, feed them from the source, shut down cleanly, report.

Shutdown order is fixed: the source stops, pending envelopes are dispatched,
each sink is flushed (bounded by its ``flush_timeout``) and only then closed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from . import files
from .assembly import Assembler
from .config import Config, SinkSpec, load_config
from .dispatch import ActiveSink, Dispatcher
from .errors import ConfigError, SinkError, SparkSinksError
from .metrics import Reporter
from .names import RULE
from .pipeline import Pipeline, Rejects
from .plugins import Registry, load_registry
from .sink import SinkContext, SinkStats, add_up, identity_holds, lost_anything
from .sources import Source, check_counters
from .spool import Spool
from .spooled import SpooledSink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_REJECTED_INPUT = 3


def path_problems(config: Config) -> list[str]:
    """Data files the config names that could not be written, one line each naming the
    config key. Checked before a run starts, by ``spark-sinks check`` and on reload."""
    problems = []
    if config.source.dead_letter is not None:
        why = files.path_problem(config.source.dead_letter)
        if why:
            problems.append(f"source.dead_letter: {why}")
    for spec in config.sinks.values():
        if not spec.config.enabled:
            continue
        if spec.config.dead_letter is not None:
            why = files.path_problem(spec.config.dead_letter)
            if why:
                problems.append(f"sinks.{spec.name}.dead_letter: {why}")
        buffer = spec.config.buffer
        if buffer.type == "disk" and buffer.path is not None:
            why = files.dir_problem(buffer.path)
            if why:
                key = "spool" if spec.config.spool is not None else "buffer"
                problems.append(f"sinks.{spec.name}.{key}.path: {why}")
    return problems


def start_sink(
    spec: SinkSpec,
    host: str,
    check: bool = True,
    probe: bool = False,
    context: SinkContext | None = None,
) -> ActiveSink:
    """Instantiate, open and (optionally) check one sink; raises ``SinkError`` naming it.

    A sink with a disk buffer whose check fails still starts, since its spool holds what
    it cannot deliver yet. ``probe`` (for ``spark-sinks check``) leaves the spool alone: a
    running process may own it, and a check must not deliver what it holds. ``context``
    lets the caller stop a start-up that hangs (its ``shutdown`` and ``stopping``)."""
    cls = spec.provided.cls
    ctx = context or SinkContext(spec.name, host, spec.config.dead_letter)
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
    if isinstance(sink, SpooledSink):
        sink.open_spool()  # a spool in use or unreadable stops the run (SpoolError)
    # open and check run where the sink's writes will run (its worker), like every call
    active.inlet.run(lambda: active.call("open", sink.open))
    if check:
        _check(active, probe)
    return active


def _check(active: ActiveSink, probe: bool) -> None:
    """Run the sink's connection check on its worker; a failure stops the sink and raises,
    except for a sink with a spool (see ``start_sink``)."""
    sink = active.sink
    try:
        active.checked = str(active.inlet.run(lambda: active.call("check", sink.check)) or "ok")
    except SinkError as exc:
        if isinstance(sink, SpooledSink):
            # A gateway that boots before its network must not refuse to run: the
            # spool keeps everything until the destination answers.
            log.error("%s; starting anyway, the spool keeps everything until it works", exc)
            active.checked = f"not reachable yet: {exc}"
            return
        stop_sink(active)
        raise
    if not probe:  # `spark-sinks check` prints the verdict itself
        log.info("sink %r ready: %s", active.name, active.checked)


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
    incomplete_emitted: int = 0
    """Records sent without every variable (``on_incomplete: emit``)."""
    ignored: int = 0
    """Items of machines that are disabled or do not publish: set aside, not an error."""
    source: dict[str, int] = field(default_factory=dict)
    """The source's own counters (``Source.counters``)."""
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_started: dict[str, str] = field(default_factory=dict)
    """Sinks that could not start (or were stopped while starting), with the reason."""

    @property
    def exit_code(self) -> int:
        """0 only when nothing accepted in this run, or left by an earlier one, was lost."""
        if any(lost_anything(s) for s in self.sinks.values()):
            return EXIT_UNDELIVERED
        if self.rejected:
            return EXIT_REJECTED_INPUT
        return EXIT_OK


class _NotStarted(NamedTuple):
    """A sink that could not start."""

    why: str
    since: int
    """The pipeline's envelope count when it failed: every envelope after it is lost to
    that sink."""


class _Handover(NamedTuple):
    """What a stopped instance left in its spool, for its successor in this run."""

    file: Path
    left: int


class _Starting(NamedTuple):
    """The sink whose open and connection check are running."""

    name: str
    context: SinkContext


class Runtime:
    def __init__(self, config: Config, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        """Set by ``request_reload``; the pipeline thread applies it between batches."""
        self._reloads = threading.RLock()
        """Guards ``_stopping`` together with ``reload_requested``: ``request_reload`` (a
        signal handler on the main thread, or the config watcher) against
        ``_close_reloads`` (pipeline thread). Re-entrant: a second SIGHUP can interrupt the
        handler of the first on the same thread."""
        self._stopping = False
        """Once set (by the pipeline thread, as the final flush begins), no reload is
        applied any more."""
        self.dispatcher = Dispatcher()
        self.assembler = Assembler(config.machines, config.host, config.on_incomplete)
        self.rejects = Rejects(config.source.dead_letter)
        self.pipeline = Pipeline(self.assembler, self.dispatcher, self.rejects)
        self.pipeline.between_batches = self._between_batches
        self.reporter = Reporter(config.operations, self.snapshot)
        self._lock = threading.Lock()
        """Guards ``_finished``, ``_start_failures`` and ``_handover``: ``reload`` (source
        thread) changes them while the reporter thread takes snapshots."""
        self._finished: dict[str, dict[str, Any]] = {}
        """Final counters of sink instances already stopped, by sink name (added up)."""
        self._start_failures: dict[str, _NotStarted] = {}
        """Sinks that could not start, by name."""
        self._handover: dict[str, _Handover] = {}
        """What a stopped instance left in its spool, by sink name."""
        self.stopped_by = ""
        """The signal that stopped the run, for messages."""
        self._starting: _Starting | None = None
        """The sink whose open and check are running (pipeline thread writes, signal reads)."""
        self._busy = "the start-up"
        """What the pipeline thread is doing, for when a signal has to give up on it."""
        self._source: Source | None = None
        """Set once by the pipeline thread before the source runs; others read its counters."""
        self._counters_refused = False
        """Whether the source's odd counters were reported (any thread; a race costs one
        more line)."""

    def start(self) -> None:
        """Start every enabled sink. One that cannot start is reported and the others run
        (its envelopes count as not delivered); only when none can start is it fatal."""
        problems = path_problems(self.config)
        if problems:
            raise ConfigError(f"{self.config.path}: {'; '.join(problems)}")
        # the metrics port and the status file first: a fault there is exit 2 before any
        # sink is opened or any data accepted
        self.reporter.open(str(self.config.path))
        enabled = [spec for spec in self.config.sinks.values() if spec.config.enabled]
        for spec in enabled:
            self._start_first(spec, others=len(enabled) > 1)
        if self.stop.is_set():
            return
        if enabled and not self.dispatcher.sinks:
            raise SinkError("; ".join(f.why for f in self._start_failures.values()))
        if not enabled:
            log.warning("no sink is enabled: records are assembled and discarded")
        self.reporter.start()
        if self.config.operations.watch_config:
            threading.Thread(target=self._watch, name="config-watch", daemon=True).start()

    def _start_first(self, spec: SinkSpec, others: bool) -> None:
        """Start one sink at the run's start; one that cannot start is noted, not fatal
        (``start`` decides), unless its spool refuses (in use, unreadable)."""
        if self.stop.is_set():
            self._not_started(spec.name, f"stopped by {self.stopped_by}")
            return
        try:
            self.dispatcher.add(self._start(spec, self.config.host))
        except SinkError as exc:
            if self.stop.is_set():
                why = f"stopped by {self.stopped_by} during its start-up ({exc})"
                self._not_started(spec.name, why)
                return
            if others:
                log.error("%s; running without it (SIGHUP retries)", exc)
            self._not_started(spec.name, str(exc))
        except SparkSinksError:  # e.g. a spool in use: refuse to start at all
            for a in self.dispatcher.sinks:
                self._retire(a)
            raise

    def _not_started(self, name: str, why: str) -> None:
        with self._lock:
            self._start_failures[name] = _NotStarted(why, 0)

    def _start(self, spec: SinkSpec, host: str) -> ActiveSink:
        """``start_sink``, stoppable by a signal while it runs (see ``request_stop``)."""
        ctx = SinkContext(spec.name, host, spec.config.dead_letter)
        self._starting = _Starting(spec.name, ctx)
        self._busy = f"sink {spec.name!r} to finish its start-up (open and connection check)"
        if self.stop.is_set():  # a signal that came just before _starting was set
            ctx.shutdown.set()
            ctx.stopping.set()
        try:
            return start_sink(spec, host, context=ctx)
        finally:
            self._starting = None

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
                self.request_reload()

    def run(self) -> Report:
        """Run until the source ends or ``stop`` is set, then shut down."""
        source = self.config.source_type.cls(self.config.source, self.config.machines)
        self._source = source
        try:
            if not self.stop.is_set():  # stopped during start-up: nothing is accepted
                self._busy = "the source to stop"
                self.pipeline.emit(self.assembler.all_metadata())
                source.run(self.pipeline, self.stop)
                self.pipeline.emit(self.assembler.finish())
        finally:
            self.pipeline.flush()  # the last point where a requested reload is applied
            self._close_reloads()
            self.shutdown()
        return self.report()

    def request_reload(self) -> None:
        """SIGHUP or a changed config file: applied between batches while the run still
        delivers; once it stops (end of input or a signal), one line says it is not."""
        with self._reloads:
            if self._stopping:
                log.warning("reload requested while stopping: not applied")
            else:
                self.reload_requested.set()

    def _close_reloads(self) -> None:
        """The final flush begins: a reload would restart sinks being stopped."""
        with self._reloads:
            self._stopping = True
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                log.warning("reload requested while stopping: not applied")

    def request_stop(self, by: str = "a signal") -> None:
        """A first signal: the source stops, and no sink waits for buffer space any more;
        a sink still starting stops waiting at once (it is reported as not started)."""
        self.stopped_by = self.stopped_by or by
        self.stop.set()
        for a in self.dispatcher.sinks:
            a.sink.context.shutdown.set()
        starting = self._starting
        if starting is not None:
            starting.context.shutdown.set()
            starting.context.stopping.set()

    def force(self) -> None:
        """A second signal: stop waiting on retries and flushes."""
        for a in self.dispatcher.sinks:
            a.sink.context.stopping.set()

    def flush_bound(self) -> float:
        """Seconds the final flushes may take (every sink drains at once, each within its
        own flush_timeout)."""
        return max((a.flush_timeout for a in self.dispatcher.sinks), default=0.0)

    def busy_with(self) -> str:
        return self._busy

    def abandon(self) -> Report:
        """The pipeline thread is stuck and the process ends now (called by the main thread):
        a sink still starting counts as not started; the others report their counters."""
        starting = self._starting
        if starting is not None:
            why = f"stopped by {self.stopped_by} during its start-up (open and connection check)"
            with self._lock:
                self._start_failures[starting.name] = _NotStarted(why, self.pipeline.envelopes)
        if self.reporter.config.status_file:
            self._final_report()
        report = self.report()
        for a in self.dispatcher.sinks:
            report.sinks.setdefault(a.name, a.stats.snapshot())
        return report

    def shutdown(self) -> None:
        # every sink drains at once; each within its own flush_timeout
        self._busy = "the sinks to flush and close"
        stopping = [(a, a.inlet.begin_stop(a.flush_timeout)) for a in self.dispatcher.sinks]
        for a, wait in stopping:
            wait()  # an abandoned sink is logged by its worker; its counters say the rest
            self._finish(a)
        self._busy = "the sinks to close"
        self.rejects.close()
        self.reporter.stop()
        ops = self.reporter.config  # the start's: a reload does not change them
        if ops.stats_interval > 0 or ops.status_file:
            self._final_report()

    def _final_report(self) -> None:
        try:
            self.reporter.report(final=True)
        except Exception as exc:  # the data is delivered or accounted for: say so anyway
            log.error("the final status report failed: %s: %s", type(exc).__name__, exc)

    def _retire(self, a: ActiveSink) -> None:
        """Flush and close a sink, keeping its final counters for the report."""
        self._busy = f"sink {a.name!r} to flush and close"
        stop_sink(a)
        self._finish(a)

    def _finish(self, a: ActiveSink) -> None:
        """Keep a stopped sink's final counters for the report (added up over reloads)."""
        snap = a.stats.snapshot()
        spool = getattr(a.sink, "spool", None)
        with self._lock:
            self.dispatcher.remove(a.name)
            prev = self._finished.get(a.name)
            # the same name ran before a reload: add the runs up
            self._finished[a.name] = snap if prev is None else add_up(prev, snap)
            if isinstance(spool, Spool) and spool.left:
                self._handover[a.name] = _Handover(spool.file, spool.left)

    def _adopt(self, active: ActiveSink) -> None:
        """A sink that replays what its predecessor in this run left in the same spool
        file: those envelopes were accepted (and are still pending) there, so they move
        over instead of being counted twice. The caller holds ``_lock`` and makes the sink
        visible (``dispatcher.add``) in the same hold: a snapshot in between would miss
        them, and the counters would go down."""
        spool = getattr(active.sink, "spool", None)
        handover = self._handover.pop(active.name, None)
        prev = self._finished.get(active.name)
        if handover is None or prev is None or not isinstance(spool, Spool):
            return
        if handover.file != spool.file:
            return
        moved = min(handover.left, spool.replayed, prev["pending"])
        prev["accepted"] -= moved
        prev["pending"] -= moved
        # they were counted as accepted or replayed by the predecessor already
        active.stats.unreplay(moved)

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            running = self.dispatcher.sinks
            sinks = {k: {**v, **_NOT_RUNNING} for k, v in self._finished.items()}
            live = {a.name: a.stats.snapshot() for a in running}
            for name in self._start_failures:
                sinks[name] = {**self._missed(name), **_NOT_RUNNING}
        for a in running:
            snap = live[a.name]
            snap.update(_depths(a))
            prev = sinks.get(a.name)
            sinks[a.name] = snap if prev is None else add_up(prev, snap)
        for name, s in sinks.items():
            if not identity_holds(s):
                log.error("sink %r: the counters do not add up (a bug): %s", name, s)
        return {
            "pid": os.getpid(),
            "input": {
                "items": self.pipeline.items,
                "envelopes": self.pipeline.envelopes,
                "rejected": self.rejects.count,
                "incomplete_dropped": self.assembler.incomplete_dropped,
                "incomplete_emitted": self.assembler.incomplete_emitted,
                "ignored": self.assembler.ignored,
                "source": self._source_counters(),
                "source_type": self.config.source.type,
            },
            "sinks": sinks,
        }

    def _source_counters(self) -> dict[str, int]:
        source = self._source
        if source is None:
            return {}
        try:
            checked = check_counters(source.counters())
        except Exception as exc:  # a plugin's bug costs its counters, not the report
            log.error("the source's counters failed: %s: %s", type(exc).__name__, exc)
            return {}
        if checked.refused and not self._counters_refused:
            self._counters_refused = True  # once a run: the reporter asks every interval
            log.error(
                "source %r: counters left out of the status and metrics (a name of %s, "
                "and a count that is an int >= 0): %s",
                self.config.source.type,
                RULE,
                ", ".join(checked.refused),
            )
        return checked.valid

    def report(self) -> Report:
        with self._lock:
            sinks = dict(self._finished)
            for name in self._start_failures:
                sinks[name] = self._missed(name)
            not_started = {name: f.why for name, f in self._start_failures.items()}
        return Report(
            items=self.pipeline.items,
            envelopes=self.pipeline.envelopes,
            rejected=self.rejects.count,
            incomplete_dropped=self.assembler.incomplete_dropped,
            incomplete_emitted=self.assembler.incomplete_emitted,
            ignored=self.assembler.ignored,
            source=self._source_counters(),
            sinks=sinks,
            not_started=not_started,
        )

    def _missed(self, name: str) -> dict[str, Any]:
        """Counters of a sink that was not running: everything in between is lost to it.
        The caller holds ``_lock``."""
        failure = self._start_failures[name]
        n = self.pipeline.envelopes - failure.since
        snap: dict[str, Any] = {k: 0 for k in SinkStats.FIELDS}
        snap.update(accepted=n, failed=n, last_error=failure.why)
        prev = self._finished.get(name)
        return snap if prev is None else add_up(prev, snap)

    # -- live reconfiguration ----------------------------------------------------------------

    def _machines_retired(self, names: list[str]) -> None:
        """Tell the sinks that kept running which machines stopped publishing: on each
        sink's worker, after what was written before the reload (nobody waits for it)."""
        for a in self.dispatcher.sinks:
            a.inlet.post(partial(a.call, "machines_retired", a.sink.machines_retired, names))

    def _between_batches(self) -> None:
        # stopped by a signal: the source's last batches are not the time to restart sinks
        if self.reload_requested.is_set() and not self.stop.is_set():
            self.reload_requested.clear()
            self.reload()

    def reload(self) -> bool:
        """Re-read the config file and apply it; an invalid file changes nothing."""
        old = self.config
        new = self._load_for_reload()
        if new is None:
            return False
        if new.source != old.source:
            log.warning("the source settings changed: that takes a restart to apply")
        if new.operations != old.operations:
            log.warning("the operations settings changed: that takes a restart to apply")
        self._retire_changed(new)
        self._forget_failures(new)
        self.config = new
        self._reconfigure_machines(new)
        self._start_new(new)
        log.info(
            "reload applied: %d machines, sinks running: %s",
            len(new.machines),
            ", ".join(a.name for a in self.dispatcher.sinks) or "none",
        )
        return True

    def _load_for_reload(self) -> Config | None:
        """The new config, or None (logged) when it cannot be applied."""
        path = self.config.path
        try:
            new = load_config(path, self.registry or load_registry())
        except ConfigError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
            return None
        except Exception as exc:  # a bug must not end a daemon that runs fine
            log.error(
                "reload rejected, the running configuration stays: internal error: %s: %s",
                type(exc).__name__,
                str(exc)[:300],
            )
            log.debug("traceback", exc_info=True)
            return None
        problems = path_problems(new)
        if problems:
            log.error(
                "reload rejected, the running configuration stays: %s: %s",
                new.path,
                "; ".join(problems),
            )
            return None
        return new

    def _retire_changed(self, new: Config) -> None:
        """Flush and stop the running sinks that ``new`` removes, disables or changes."""
        old = self.config
        for a in self.dispatcher.sinks:  # a tuple: retiring one does not change it
            name = a.name
            spec = new.sinks.get(name)
            if spec is None:
                why = "removed"
            elif not spec.config.enabled:
                why = "disabled"
            elif _changed(spec, old.sinks[name]):
                why = "changed"
            else:
                continue
            log.info("reload: sink %r %s; flushing and stopping it", name, why)
            self._retire(a)

    def _forget_failures(self, new: Config) -> None:
        """Sinks that could not start and that ``new`` removes or disables: their final
        counters are kept, and no start is retried."""
        with self._lock:
            for name in list(self._start_failures):
                spec = new.sinks.get(name)
                if spec is None or not spec.config.enabled:
                    self._finished[name] = self._missed(name)
                    del self._start_failures[name]

    def _reconfigure_machines(self, new: Config) -> None:
        """Open cycles of changed machines, then the metadata of changed machines (of all,
        with a new host), go to the sinks that kept running; they learn which machines
        stopped publishing."""
        self.assembler.on_incomplete = new.on_incomplete
        was_publishing = {n for n, m in self.assembler.machines.items() if m.publishing}
        changed = self.assembler.reconfigure(new.machines, new.host)
        retired = sorted(was_publishing - {n for n, m in new.machines.items() if m.publishing})
        self.pipeline.emit(changed)
        if retired:
            self._machines_retired(retired)

    def _start_new(self, new: Config) -> None:
        """Start the enabled sinks not running (new, changed, or failed before); each gets
        all metadata first."""
        for name, spec in new.sinks.items():
            if not spec.config.enabled or name in {a.name for a in self.dispatcher.sinks}:
                continue
            try:
                active = self._start(spec, new.host)
            except SparkSinksError as exc:
                log.error("reload: %s", exc)
                with self._lock:
                    if name not in self._start_failures:
                        self._start_failures[name] = _NotStarted(str(exc), self.pipeline.envelopes)
                continue
            log.info("reload: sink %r started", name)
            single = Dispatcher()
            single.add(active)
            # through its own buffer, ahead of anything else
            single.dispatch(self.assembler.all_metadata())
            # one hold: a snapshot sees the predecessor's counters or this sink's, never
            # neither (the counters would go down, and Prometheus read a restart)
            with self._lock:
                self._adopt(active)
                if name in self._start_failures:
                    self._finished[name] = self._missed(name)
                    del self._start_failures[name]
                self.dispatcher.add(active)


_NOT_RUNNING: dict[str, int | None] = {
    "spool_depth": None,
    "buffer_envelopes": None,
    "buffer_bytes": None,
}
"""The depths in the snapshot of a sink that is not running."""


def _depths(a: ActiveSink) -> dict[str, int | None]:
    """What waits in a running sink's spool, and in its memory buffer (both part of its
    ``pending``); None for the buffer it does not have."""
    spool = getattr(a.sink, "spool", None)
    depth = a.inlet.depth()
    return {
        "spool_depth": spool.rows if isinstance(spool, Spool) else None,
        "buffer_envelopes": None if depth is None else depth.envelopes,
        "buffer_bytes": None if depth is None else depth.bytes,
    }


def _changed(new: SinkSpec, old: SinkSpec | None) -> bool:
    return old is None or new.config != old.config or new.provided.cls is not old.provided.cls
