"""Every sink behind a buffer of its own: one slow or stuck sink never stalls another.

The dispatcher hands each batch to every sink's *inlet* on the source thread and moves
on. For the memory buffer (``buffer: {type: memory}``, the default) the inlet is a
``SinkWorker``: a bounded queue and ONE thread per sink that takes the batches in order
and calls the sink's ``write``. So ``write`` is called from exactly one thread and the
order of every machine's envelopes is kept. Every other call into the sink (``open``,
``check``, ``flush``, ``close``) runs on that same thread too, so a sink may hold objects
bound to the thread that made them (a ``sqlite3`` connection); ``flush`` and ``close``
come after the last ``write``.

The worker is not woken for every batch: waking a thread and handing it the GIL costs
the source thread far more than the few microseconds of ``write`` a fast sink needs
(README, Performance). Once it has written everything queued, the worker lingers: for up
to ``LINGER`` (50 ms) further batches only gather, unless they reach 1 MiB (or half of
``max_bytes``) or the queue fills up; then it takes all of them, in order. Only a worker
that found nothing at the end of its linger sleeps until the next batch wakes it. So a
batch waits at most ``LINGER`` before the worker starts on it (after any batches still
ahead of it), never for more input; flushes, stops and other calls wake it at once.

The queue is bounded in bytes of envelope JSON (``max_bytes``; the batch being written
comes on top). When a batch does not fit, ``when_full`` decides:

* ``block`` (default): the source thread waits for space. Only the source waits; the
  other sinks' workers keep going. Once the run is ending (``context.shutdown``) it stops
  waiting, so the last batch goes in over the bound.
* ``drop_newest``: the batch that does not fit is dropped.
* ``drop_oldest``: the oldest waiting batches are dropped until it fits.

Dropped envelopes are counted ``dropped`` and logged as DROPPED (at most one line per
ten seconds and sink); they are never handed to the sink. An empty queue takes any
batch, however big: a bound must not become a wedge.

Counting is what the dispatcher always did: ``accepted`` when the batch is handed over;
for an unbuffered sink ``delivered`` when its ``write`` returns and ``failed`` when it
raises (a buffered sink reports its own outcomes). Envelopes still queued are
``pending`` until written.

Stopping (end of the run, or a reload retiring the sink) drains the queue, then calls
``flush`` and ``close``, all within the sink's ``flush_timeout``: batches the deadline
leaves unwritten stay ``pending`` and are reported. A worker stuck in ``write`` or
``flush`` beyond the deadline is abandoned (a daemon thread): the run goes on or ends
without it, and its sink is never closed behind its back.

For the disk buffer the inlet is ``DirectInlet``: the spool (``SpooledSink``) is appended
to on the source thread, so that accepted means on disk, and the spool's feeder thread is
that sink's worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

from .envelope import Envelope, json_size
from .errors import SinkError
from .sink import BufferConfig

if TYPE_CHECKING:
    from .dispatch import ActiveSink

log = logging.getLogger(__name__)
T = TypeVar("T")

GRACE = 0.5
"""Seconds past a sink's deadline that stopping waits for a worker before abandoning it:
the sink's own ``flush(timeout)`` may return a moment late."""
_LOG_EVERY = 10.0
_POLL = 0.2
"""Seconds between looks at ``context.shutdown`` while the source waits for space."""
LINGER = 0.05
"""Seconds an idle worker lets batches gather before it takes them (module docstring)."""
_WAKE_BYTES = 1 << 20
"""Queued bytes that end a worker's linger early (or half the buffer's bound, if less)."""


class _Idle(Enum):
    """What a sink's worker is doing, for ``put`` to wake it only when that is needed."""

    BUSY = "writing, or about to look at the queue"
    LINGERING = "waiting up to LINGER for more batches"
    ASLEEP = "waiting for anything at all"


class BufferDepth(NamedTuple):
    """What a memory buffer holds: part of its sink's ``pending`` (the rest is in the
    sink itself, or being written)."""

    envelopes: int
    bytes: int
    """Bytes of envelope JSON, as ``max_bytes`` counts them."""


class Batch:
    """One dispatched batch, shared by every sink of the run.

    Each inlet calls ``release`` once it is done with the batch (written, dropped or
    abandoned); the last one compacts the envelopes (``Envelope.compact``) if asked to,
    so that what buffered sinks keep holds JSON bytes, not dictionaries."""

    __slots__ = ("_holders", "_lock", "compact", "envelopes", "size")

    def __init__(self, envelopes: list[Envelope], holders: int, compact: bool) -> None:
        self.envelopes = envelopes
        self.size = json_size(envelopes)
        """Bytes of envelope JSON: what the memory bound counts."""
        self.compact = compact
        self._holders = holders
        self._lock = threading.Lock()
        """Guards ``_holders``: the sinks' workers release concurrently."""

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last and self.compact:
            for e in self.envelopes:
                e.compact()


class Inlet(Protocol):
    """How the dispatcher and the runtime reach one sink."""

    def run(self, fn: Callable[[], T], last: bool = False) -> T:
        """Run ``fn`` (a call into the sink, e.g. ``open``) where the sink's calls run;
        returns its result or raises its exception. ``last``: nothing follows (the
        worker, if any, ends after it)."""

    def put(self, batch: Batch) -> None:
        """Accept a batch (counted ``accepted``); called on the source thread only."""

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` where the sink's calls run, after the batches put before it, without
        waiting for it; a ``SinkError`` it raises is logged."""

    def flush(self, timeout: float) -> bool:
        """Deliver everything put so far, within ``timeout``; False if that ran out."""

    def begin_stop(self, timeout: float) -> Callable[[], bool]:
        """Start flushing and closing the sink within ``timeout``; the function returned
        waits for that and says False if the sink was abandoned. (The runtime starts every
        sink's stop before waiting for any, so that they drain side by side.)"""

    def depth(self) -> BufferDepth | None:
        """What waits in the memory buffer for the sink; None without one (written
        straight through)."""


class DirectInlet:
    """Writes on the calling (source) thread: for the disk buffer, whose spool must hold
    a batch before it counts as accepted, and for ``spark-sinks check`` (no writes)."""

    def __init__(self, active: ActiveSink) -> None:
        self.active = active

    def run(self, fn: Callable[[], T], last: bool = False) -> T:
        return fn()

    def post(self, fn: Callable[[], object]) -> None:
        _logged(fn)

    def put(self, batch: Batch) -> None:
        a = self.active
        a.stats.add("accepted", len(batch.envelopes))
        try:
            a.write(batch.envelopes)
        finally:
            batch.release()

    def flush(self, timeout: float) -> bool:
        return self.active.flush(timeout)

    def begin_stop(self, timeout: float) -> Callable[[], bool]:
        def wait() -> bool:
            self.active.flush(timeout)
            self.active.close()
            return True

        return wait

    def depth(self) -> BufferDepth | None:
        return None


@dataclass(eq=False)
class _Flush:
    """A flush request in the queue: done once the batches before it are written and the
    sink's ``flush`` returned (then ``close`` as well, with ``close``)."""

    deadline: float
    close: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


@dataclass(eq=False)
class _Call:
    """A call into the sink to run on its worker, e.g. ``open``; the caller waits."""

    fn: Callable[[], Any]
    last: bool = False
    """The worker ends after this call."""
    waited: bool = True
    """Someone waits for the outcome; else a ``SinkError`` is logged (``post``)."""
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class SinkWorker:
    """A sink's bounded memory queue and the one thread that calls its ``write``,
    ``flush`` and ``close`` (see the module docstring)."""

    def __init__(self, active: ActiveSink, config: BufferConfig) -> None:
        self.active = active
        self.config = config
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        """The worker waits on it for work."""
        self._room = threading.Condition(self._lock)
        """A source blocked by a full queue (``when_full: block``) waits on it for space."""
        # Guarded by _lock: _queue, _bytes, _waiting, _stop_at, _thread, _idle.
        self._queue: deque[Batch | _Flush | _Call] = deque()
        self._bytes = 0
        self._waiting = 0
        """Envelopes in the queue."""
        self._stop_at: float | None = None
        """Deadline of a requested stop: after it, queued batches are no longer written."""
        self._thread: threading.Thread | None = None
        self._idle = _Idle.BUSY
        self._wake_bytes = min(_WAKE_BYTES, config.limit // 2)
        self._unwritten = 0
        """Envelopes left unwritten at a stop (owned by the worker thread)."""
        # Owned by the source thread (``put``): the rate limit of the DROPPED line.
        self._last_drop_log = 0.0
        self._drops_unlogged = 0

    # -- the source side ----------------------------------------------------------------

    def run(self, fn: Callable[[], T], last: bool = False) -> T:
        call = _Call(fn, last)
        self._request(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return cast(T, call.result)

    def post(self, fn: Callable[[], object]) -> None:
        self._request(_Call(fn, waited=False))

    def put(self, batch: Batch) -> None:
        a = self.active
        n = len(batch.envelopes)
        a.stats.add("accepted", n)
        with self._lock:
            self._start()
            full = self._bytes and self._bytes + batch.size > self.config.limit
            if full and not self._make_room(batch):
                batch.release()
                return
            self._queue.append(batch)
            self._bytes += batch.size
            self._waiting += n
            idle = self._idle
            if idle is _Idle.ASLEEP or (
                idle is _Idle.LINGERING and self._bytes >= self._wake_bytes
            ):
                self._wake()

    def _wake(self) -> None:
        """Wake the worker if it waits (called with the lock held)."""
        if self._idle is not _Idle.BUSY:
            self._idle = _Idle.BUSY
            self._more.notify()

    def _make_room(self, batch: Batch) -> bool:
        """Called with the lock held and the queue too full for ``batch``; False when
        ``batch`` itself is dropped."""
        ctx = self.active.sink.context
        limit = self.config.limit
        mode = self.config.when_full
        self._wake()  # a lingering worker frees the space soon
        if mode == "drop_newest":
            self._dropped(len(batch.envelopes))
            return False
        if mode == "drop_oldest":
            lost = 0
            while self._bytes and self._bytes + batch.size > limit:
                old = self._pop_oldest_batch()
                if old is None:
                    break
                lost += len(old.envelopes)
                old.release()
            self._dropped(lost)
            return True
        # block: only the source waits, and only until the run is ending
        while (
            self._bytes
            and self._bytes + batch.size > limit
            and not ctx.shutdown.is_set()
            and not ctx.stopping.is_set()
        ):
            self._room.wait(_POLL)
        return True

    def _pop_oldest_batch(self) -> Batch | None:
        for i, item in enumerate(self._queue):
            if isinstance(item, Batch):
                del self._queue[i]
                self._bytes -= item.size
                self._waiting -= len(item.envelopes)
                return item
        return None

    def _dropped(self, n: int) -> None:
        if not n:
            return
        a = self.active
        a.stats.add("dropped", n)
        self._drops_unlogged += n
        now = time.monotonic()
        if now - self._last_drop_log < _LOG_EVERY:
            return
        log.warning(
            "%s: buffer full (%d bytes, when_full: %s): DROPPED %d envelopes (%d dropped so far)",
            a.label(),
            self.config.limit,
            self.config.when_full,
            self._drops_unlogged,
            a.stats.dropped,
        )
        self._last_drop_log = now
        self._drops_unlogged = 0

    def depth(self) -> BufferDepth:
        with self._lock:
            return BufferDepth(self._waiting, self._bytes)

    # -- flush and stop (the runtime's side) ----------------------------------------------

    def flush(self, timeout: float) -> bool:
        request = _Flush(time.monotonic() + timeout)
        self._request(request)
        return bool(self._wait(request))

    def begin_stop(self, timeout: float) -> Callable[[], bool]:
        """Drain, flush and close within ``timeout`` (plus ``GRACE``); the waiter says False
        when the worker is still busy then: it is abandoned and the sink is not closed."""
        deadline = time.monotonic() + timeout
        request = _Flush(deadline, close=True)
        with self._lock:
            self._stop_at = deadline
        self._request(request)
        return lambda: self._stopped(request, timeout)

    def _stopped(self, request: _Flush, timeout: float) -> bool:
        if self._wait(request) is not None:
            return True
        a = self.active
        log.error(
            "%s did not finish within its flush_timeout of %gs (still in write or flush): "
            "abandoned with %d envelopes still queued for it",
            a.label(),
            timeout,
            self.depth().envelopes,
        )
        a.stats.error(f"abandoned after flush_timeout ({timeout:g}s)")
        return False

    def _request(self, request: _Flush | _Call) -> None:
        with self._lock:
            self._start()
            self._queue.append(request)
            self._wake()

    def _wait(self, request: _Flush) -> bool | None:
        """Wait for a queued flush: None if the worker did not get through it in time,
        else whether the sink's flush succeeded."""
        wait = request.deadline - time.monotonic() + GRACE
        if not request.done.wait(max(0.0, wait)):
            return None
        return request.ok

    # -- the worker thread -------------------------------------------------------------

    def _start(self) -> None:
        """Start the thread on first use (called with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"sink-{self.active.name}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            item, late = self._take()
            if isinstance(item, Batch):
                try:
                    if not late:
                        self.active.write(item.envelopes)
                finally:
                    item.release()
                continue
            if isinstance(item, _Call):
                if not item.waited:
                    _logged(item.fn)
                    continue
                try:
                    item.result = item.fn()
                except BaseException as exc:  # handed to the waiting caller, who raises it
                    item.error = exc
                item.done.set()
                if item.last:
                    return
                continue
            left = max(0.0, item.deadline - time.monotonic())
            item.ok = self.active.flush(left)
            if item.close:
                self._leftover()
                self.active.close()
            item.done.set()
            if item.close:
                return

    def _take(self) -> tuple[Batch | _Flush | _Call, bool]:
        """The next item, and whether it is a batch to leave unwritten: the stop deadline
        has passed, or waiting must end now (``context.stopping``)."""
        with self._lock:
            if not self._queue:
                self._idle = _Idle.LINGERING
                self._more.wait(LINGER)
                while not self._queue:
                    self._idle = _Idle.ASLEEP
                    self._more.wait()
                self._idle = _Idle.BUSY
            item = self._queue.popleft()
            if isinstance(item, Batch):
                self._bytes -= item.size
                self._waiting -= len(item.envelopes)
                self._room.notify()  # a waiting source
            stop_at = self._stop_at
        late = (stop_at is not None and time.monotonic() > stop_at) or (
            self.active.sink.context.stopping.is_set()
        )
        if late and isinstance(item, Batch):
            self._unwritten += len(item.envelopes)
        return item, late

    def _leftover(self) -> None:
        if self._unwritten:
            log.error(
                "%s: %d envelopes were still in its buffer when its flush_timeout ran out; "
                "not delivered",
                self.active.label(),
                self._unwritten,
            )


def _logged(fn: Callable[[], object]) -> None:
    """Run a call nobody waits for; its ``SinkError`` (which names the sink) is logged."""
    try:
        fn()
    except SinkError as exc:
        log.error("%s", exc)


def make_inlet(active: ActiveSink, direct: bool) -> Inlet:
    """The inlet for a sink: its worker, or a straight call (disk buffer, ``check``)."""
    buffer = active.sink.config.buffer
    if direct or buffer.type != "memory":
        return DirectInlet(active)
    return SinkWorker(active, buffer)
