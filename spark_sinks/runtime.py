"""One run: start the sinks, feed them from the source, shut down cleanly, report.

Shutdown order is fixed: the source stops, pending envelopes are dispatched,
each sink is flushed (bounded by its ``flush_timeout``) and only then closed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .assembly import Assembler
from .config import Config, SinkSpec
from .dispatch import ActiveSink, Dispatcher
from .errors import SinkError
from .pipeline import Pipeline, Rejects
from .sink import SinkContext
from .spool import Spool, SpooledSink

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
EXIT_REJECTED_INPUT = 3


def start_sink(spec: SinkSpec, host: str, check: bool = True) -> ActiveSink:
    """Instantiate, open and (optionally) check one sink; raises ``SinkError`` naming it."""
    cls = spec.provided.cls
    ctx = SinkContext(spec.name, host, spec.config.dead_letter)
    label = f"sink {spec.name!r} ({cls.type_name} from {spec.provided.plugin.distribution})"
    try:
        sink = cls(spec.config, ctx)
    except Exception as exc:
        raise SinkError(f"{label} failed to initialise: {type(exc).__name__}: {exc}") from exc
    if spec.config.spool is not None:
        sink = SpooledSink(sink, Spool(spec.config.spool.path, spec.name, spec.config.spool))
    active = ActiveSink(spec.name, sink, spec.provided.plugin, spec.config.flush_timeout)
    active.call("open", sink.open)
    if check:
        try:
            active.call("check", sink.check)
        except SinkError:
            stop_sink(active)
            raise
    return active


def stop_sink(active: ActiveSink) -> None:
    """Flush, then close; never raises (failures are logged and counted)."""
    try:
        active.call("flush", active.sink.flush, active.flush_timeout)
    except SinkError as exc:
        log.error("%s", exc)
    try:
        active.call("close", active.sink.close)
    except SinkError as exc:
        log.error("%s", exc)


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
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.dispatcher = Dispatcher()
        self.assembler = Assembler(config.machines, config.host, config.on_incomplete)
        self.rejects = Rejects(config.source.dead_letter)
        self.pipeline = Pipeline(self.assembler, self.dispatcher, self.rejects)
        self._finished: dict[str, dict[str, object]] = {}

    def start(self) -> None:
        started: list[ActiveSink] = []
        try:
            for spec in self.config.sinks.values():
                if spec.config.enabled:
                    started.append(start_sink(spec, self.config.host))
        except SinkError:
            for active in started:
                stop_sink(active)
            raise
        for active in started:
            self.dispatcher.add(active)
        if not started:
            log.warning("no sink is enabled: records are assembled and discarded")

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

    def force(self) -> None:
        """A second signal: stop waiting on retries and flushes."""
        for a in self.dispatcher.sinks:
            a.sink.context.stopping.set()

    def shutdown(self) -> None:
        for a in self.dispatcher.sinks:
            stop_sink(a)
            self.dispatcher.remove(a.name)
            self._finished[a.name] = a.stats.snapshot()
        self.rejects.close()

    def report(self) -> Report:
        return Report(
            items=self.pipeline.items,
            envelopes=self.pipeline.envelopes,
            rejected=self.rejects.count,
            incomplete_dropped=self.assembler.incomplete_dropped,
            sinks=dict(self._finished),
        )
