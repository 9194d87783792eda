"""Where envelopes are dispatched: every active sink gets every envelope.

``Dispatcher.dispatch`` only hands each batch to every sink's inlet (``buffer.py``):
each sink's own worker thread calls its ``write``, so one slow sink never holds up
another. Every call into a sink goes through ``ActiveSink``, which catches its
exceptions, so one failing or buggy sink never takes the others down. Errors name the
sink and the plugin that provided it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .buffer import Batch, Inlet, make_inlet
from .envelope import Envelope
from .errors import SinkError
from .plugins import PluginInfo
from .sink import Sink, SinkStats

log = logging.getLogger(__name__)
T = TypeVar("T")

_LOG_EVERY = 10.0  # seconds between repeated error lines of one sink


@dataclass(eq=False)
class ActiveSink:
    name: str
    sink: Sink
    plugin: PluginInfo
    flush_timeout: float
    checked: str = ""
    """What the connection check reported (e.g. stream state and shard count)."""
    direct: bool = False
    """Write on the dispatching thread instead of a worker (disk buffer, ``check``)."""
    inlet: Inlet = field(init=False, repr=False)
    # The rate limit of write errors: owned by the thread that calls ``write``.
    _last_log: float = field(default=0.0, repr=False)
    _suppressed: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.inlet = make_inlet(self, self.direct)

    @property
    def stats(self) -> SinkStats:
        return self.sink.stats

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, SinkError):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"

    def label(self) -> str:
        dist = self.plugin.distribution or self.plugin.name
        return f"sink {self.name!r} ({self.sink.type_name} from {dist})"

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a lifecycle method, turning any exception into a ``SinkError`` that names us."""
        try:
            return fn(*args)
        except Exception as exc:
            msg = f"{self.label()} failed in {what}: {self.describe(exc)}"
            self.stats.error(msg)
            raise SinkError(msg) from exc

    def write(self, envelopes: list[Envelope]) -> None:
        """Hand one batch to the sink and count the outcome: an unbuffered sink's batch is
        delivered when ``write`` returns, failed when it raises (counted ``accepted``
        already, by the inlet), except the envelopes it dead-lettered meanwhile; then
        retry dead letters whose file could not be written."""
        sink = self.sink
        ctx = sink.context
        n = len(envelopes)
        ctx.watch_aside()
        try:
            sink.write(envelopes)
        except Exception as exc:
            ctx.stats.add("failed", _kept(envelopes, ctx.set_aside()))
            self._report(exc, n)
        else:
            kept = _kept(envelopes, ctx.set_aside())
            if not sink.buffered:
                ctx.stats.add("delivered", kept)
        ctx.retry_dead_letters()

    def flush(self, timeout: float | None) -> bool:
        """The sink's ``flush``; False (logged, counted) when it raised."""
        try:
            self.call("flush", self.sink.flush, timeout)
        except SinkError as exc:
            log.error("%s", exc)
            return False
        return True

    def close(self) -> None:
        """The sink's ``close``; never raises (a failure is logged and counted)."""
        try:
            self.call("close", self.sink.close)
        except SinkError as exc:
            log.error("%s", exc)

    def _report(self, exc: Exception, n: int) -> None:
        msg = f"{self.label()} failed in write: {self.describe(exc)}"
        self.stats.error(msg)
        now = time.monotonic()
        if now - self._last_log < _LOG_EVERY:
            self._suppressed += n
            return
        extra = f" (and {self._suppressed} more since the last report)" if self._suppressed else ""
        log.error("%s; %d envelopes not delivered%s", msg, n, extra)
        self._last_log = now
        self._suppressed = 0


class Dispatcher:
    """Hands each batch to every active sink's inlet.

    Owner: the pipeline thread alone adds, removes and dispatches (a reload runs on it
    too). Other threads (signal handlers, the reporter, the metrics server) only read
    ``sinks``: a tuple replaced whole on each change, never changed in place, so a reader
    sees the set before or after a change (``Runtime`` also holds its ``_lock`` around a
    reload's changes, so that its snapshot sees a sink either running or finished)."""

    def __init__(self) -> None:
        self._sinks: dict[str, ActiveSink] = {}
        self._order: tuple[ActiveSink, ...] = ()
        self._compact = False
        """A buffered sink is active: compact envelopes once every sink has them."""

    @property
    def sinks(self) -> tuple[ActiveSink, ...]:
        return self._order

    def add(self, active: ActiveSink) -> None:
        self._sinks[active.name] = active
        self._order = tuple(self._sinks.values())
        self._compact = any(a.sink.buffered for a in self._order)

    def remove(self, name: str) -> ActiveSink | None:
        active = self._sinks.pop(name, None)
        self._order = tuple(self._sinks.values())
        self._compact = any(a.sink.buffered for a in self._order)
        return active

    def dispatch(self, envelopes: list[Envelope]) -> None:
        """Hand the batch to every sink's inlet; returns once each has taken it (a full
        buffer with ``when_full: block`` makes this wait)."""
        if not envelopes:
            return
        order = self._order
        if not order:
            return
        batch = Batch(envelopes, len(order), self._compact)
        for a in order:
            a.inlet.put(batch)


def _kept(envelopes: list[Envelope], aside: set[int]) -> int:
    """How many of a batch the sink did not set aside (dead letters count on their own)."""
    if not aside:
        return len(envelopes)
    return sum(1 for e in envelopes if id(e) not in aside)
