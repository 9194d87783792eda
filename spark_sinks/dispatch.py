"""Where envelopes are dispatched: every active sink gets every envelope.

Each sink is called on its own and its exceptions are caught here, so one
failing or buggy sink never takes the others down. Errors name the sink and
the plugin that provided it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    _last_log: float = field(default=0.0, repr=False)
    _suppressed: int = field(default=0, repr=False)

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


class Dispatcher:
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
        n = len(envelopes)
        if not n:
            return
        for a in self._order:
            sink = a.sink
            ctx = sink.context
            ctx.stats.add("accepted", n)
            ctx.watch_aside()
            try:
                sink.write(envelopes)
            except Exception as exc:
                ctx.stats.add("failed", _kept(envelopes, ctx.set_aside()))
                self._report(a, exc, n)
            else:
                if not sink.buffered:
                    ctx.stats.add("delivered", _kept(envelopes, ctx.set_aside()))
                else:
                    ctx.set_aside()
            ctx.retry_dead_letters()
        if self._compact:
            for e in envelopes:
                e.compact()

    def _report(self, a: ActiveSink, exc: Exception, n: int) -> None:
        msg = f"{a.label()} failed in write: {a.describe(exc)}"
        a.stats.error(msg)
        now = time.monotonic()
        if now - a._last_log < _LOG_EVERY:
            a._suppressed += n
            return
        extra = f" (and {a._suppressed} more since the last report)" if a._suppressed else ""
        log.error("%s; %d envelopes not delivered%s", msg, n, extra)
        a._last_log = now
        a._suppressed = 0


def _kept(envelopes: list[Envelope], aside: set[int]) -> int:
    """How many of a batch the sink did not set aside (dead letters count on their own)."""
    if not aside:
        return len(envelopes)
    return sum(1 for e in envelopes if id(e) not in aside)
