"""The contract between the core and every sink, built-in or third-party.

Lifecycle, always in this order for one sink instance::

    open() -> check() -> write()* -> flush() -> close()

``check`` runs at every start (and for ``spark-sinks check``); ``write`` is
called from one thread only, the sink's own worker (``buffer.py``), which
makes the other calls too (with a disk buffer: ``write`` from the spool's
thread, the others from the main thread; never two at once); ``flush`` may
also be called between writes; ``close`` comes once, after the last ``write``
and a final ``flush``, also when ``check`` failed. ``context.shutdown`` is set
when the run is ending and ``context.stopping`` when waiting must end now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import files, logs
from .envelope import Envelope

MiB = 1024 * 1024

WhenFull = Literal["block", "drop_newest", "drop_oldest"]
MEMORY_BYTES = 8 * MiB
DISK_BYTES = 256 * MiB
DEAD_LETTER_BACKLOG_ENVELOPES = 10_000
DEAD_LETTER_BACKLOG_BYTES = 8 * MiB
"""Bounds of a sink's dead letters waiting for a file that cannot be written (envelope
JSON bytes). A dead letter beyond them stays in the spool (with a disk buffer) or is
counted failed: see ``SinkContext.dead_letter``."""


MAX_SECONDS = 86_400.0
"""The longest duration a setting takes (a day): far below what a thread can wait for
(``threading.TIMEOUT_MAX``, about 292 years; beyond it a wait raises ``OverflowError``),
and longer than any sensible timeout or interval. A plugin's own durations can use it."""


class BufferConfig(BaseModel):
    """A sink's ``buffer:`` block: what holds envelopes between the source and the sink.

    ``type: memory`` (default): a bounded queue in front of the sink's own worker thread
    (``buffer.py``); lost if the process dies. ``type: disk``: the durable SQLite spool
    (``spool.py``) in ``path``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["memory", "disk"] = "memory"
    max_bytes: int | None = Field(None, ge=1024)
    """Bound on the envelope JSON held (default 8 MiB in memory, 256 MiB on disk)."""
    when_full: WhenFull = "block"
    """``block`` the source (default), or drop the newest or the oldest waiting envelopes,
    counted and logged as DROPPED (``drop_newest`` only in memory)."""
    path: Path | None = None
    """disk: directory for the spool file (created if missing)."""
    sync: Literal["full", "normal"] = "full"
    """disk: ``full`` survives power loss; ``normal`` only a process crash, but is faster."""

    @model_validator(mode="after")
    def _fits_its_type(self) -> BufferConfig:
        if self.type == "disk":
            if self.path is None:
                raise ValueError("path is required with type: disk")
            if self.when_full == "drop_newest":
                raise ValueError(
                    "when_full: drop_newest needs type: memory (disk: block, drop_oldest)"
                )
        else:
            only_disk = sorted({"path", "sync"} & self.model_fields_set)
            if only_disk:
                verb = "needs" if len(only_disk) == 1 else "need"
                raise ValueError(f"{' and '.join(only_disk)} {verb} type: disk")
        return self

    @property
    def limit(self) -> int:
        """``max_bytes``, or the default of the type."""
        if self.max_bytes is not None:
            return self.max_bytes
        return DISK_BYTES if self.type == "disk" else MEMORY_BYTES

    def spool(self) -> SpoolConfig:
        """A disk buffer's settings as the spool reads them."""
        assert self.path is not None, "a disk buffer has a path (validated)"
        on_full = "drop_oldest" if self.when_full == "drop_oldest" else "block"
        return SpoolConfig(path=self.path, max_bytes=self.limit, on_full=on_full, sync=self.sync)


class SpoolConfig(BaseModel):
    """The deprecated ``spool:`` block: the same as ``buffer: {type: disk}``, with
    ``on_full`` for ``when_full``. The spool (``spool.py``) reads its settings in this form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    max_bytes: int = Field(DISK_BYTES, ge=1024)
    on_full: Literal["block", "drop_oldest"] = "block"
    sync: Literal["full", "normal"] = "full"

    def as_buffer(self) -> BufferConfig:
        fields = self.model_dump(exclude={"on_full"}, exclude_unset=True)
        return BufferConfig(type="disk", when_full=self.on_full, **fields)


class SinkConfig(BaseModel):
    """Settings every sink has. A sink type subclasses it with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    enabled: bool = True
    dead_letter: Path | None = None
    """JSON-lines file for envelopes this sink can never deliver (with the reason)."""
    flush_timeout: float = Field(30.0, gt=0, le=MAX_SECONDS)
    """Seconds a flush (e.g. at shutdown) may take, draining the buffer included, before
    what is left is reported."""
    buffer: BufferConfig = BufferConfig()
    """The buffer between the source and the sink's worker: memory (default) or disk."""
    spool: SpoolConfig | None = None
    """Deprecated alias of ``buffer: {type: disk, ...}`` (the loader warns)."""

    @model_validator(mode="after")
    def _spool_is_a_disk_buffer(self) -> SinkConfig:
        if self.spool is None:
            return self
        if "buffer" in self.model_fields_set:
            raise ValueError("give buffer or spool (its deprecated alias), not both")
        # frozen model: set the derived field once, while validating
        object.__setattr__(self, "buffer", self.spool.as_buffer())
        return self


SETTLED = ("delivered", "dead_lettered", "dropped", "failed")
"""The outcomes an accepted envelope can end in; until then it is ``pending``."""

COUNTS = ("accepted", "replayed", *SETTLED, "pending", "retried")
"""The counters a snapshot carries (plus the spool's and ``overreported``, below)."""

SPOOL_LOSSES = ("corrupt_spools", "lost_in_corrupt_spool")
"""Spool files found corrupt at start and set aside, and the envelopes counted in them:
data of an earlier run that is lost, outside this run's identity."""


class SinkStats:
    """Honest per-sink counters, in envelopes, that obey one identity at every moment::

        accepted = delivered + dead_lettered + dropped + failed + pending

    with every term >= 0. ``pending`` is tracked, not derived: ``accepted`` raises it,
    each outcome lowers it. A sink that reports more outcomes than it holds (a bug) has
    the excess counted in ``overreported`` and logged, and the identity still holds.
    ``replayed`` is the part of ``accepted`` that an earlier run left in the spool.

    ``_lock`` guards every field: the dispatcher, a sink's own sender threads, the spool
    feeder and the reporter thread all go through it.
    """

    FIELDS = (*COUNTS, "throttled", "overreported", *SPOOL_LOSSES)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted = 0
        self.replayed = 0
        self.delivered = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.failed = 0
        self.pending = 0
        self.retried = 0
        self.throttled = 0
        """Requests or entries the destination refused for throttling (informational,
        like ``retried``: outside the identity)."""
        self.overreported = 0
        self.corrupt_spools = 0
        self.lost_in_corrupt_spool = 0
        self.last_error: str | None = None

    def add(self, field: str, n: int = 1) -> None:
        """Thread-safe: ``accepted`` and ``replayed`` make envelopes pending, an outcome
        (``SETTLED``) settles pending ones, anything else is a plain count."""
        if n < 0:
            raise ValueError(f"{field} cannot go down (by {n})")
        excess = 0
        with self._lock:
            if field == "accepted" or field == "replayed":
                self.accepted += n
                self.pending += n
                if field == "replayed":
                    self.replayed += n
            elif field in SETTLED:
                settled = min(n, self.pending)
                excess = n - settled
                self.pending -= settled
                setattr(self, field, getattr(self, field) + n)
                self.overreported += excess
            else:
                setattr(self, field, getattr(self, field) + n)
        if excess:
            logging.getLogger("spark_sinks.stats").error(
                "a sink reported %d more %s envelopes than it was given (a bug in the "
                "sink, or a sink used without the core): counted as overreported",
                excess,
                field.replace("_", "-"),
            )

    def unreplay(self, n: int) -> None:
        """These replayed envelopes were counted by an earlier instance in this run."""
        with self._lock:
            self.replayed -= min(n, self.replayed)

    def error(self, message: str) -> None:
        message = logs.redact(message)
        with self._lock:
            self.last_error = message

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = {f: getattr(self, f) for f in self.FIELDS}
            snap["last_error"] = self.last_error
        return snap


def identity_holds(snap: Mapping[str, Any]) -> bool:
    """The accounting identity on a snapshot (every term present and >= 0)."""
    terms: list[int] = [int(snap[k]) for k in ("accepted", *SETTLED, "pending")]
    return min(terms) >= 0 and terms[0] == sum(terms[1:])


def add_up(earlier: Mapping[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
    """Counters of two instances of one sink (before and after a reload) as one."""
    out = dict(later)
    for k in SinkStats.FIELDS:
        out[k] = earlier.get(k, 0) + later.get(k, 0)
    if out.get("last_error") is None:
        out["last_error"] = earlier.get("last_error")
    return out


def describe(s: Mapping[str, Any]) -> str:
    """The one sentence about a sink's counters, for the log, the exit summary and
    ``spark-sinks status``: e.g. ``5 accepted, 3 delivered; 2 NOT delivered (2 pending)``."""
    replayed = f" ({s['replayed']} replayed from the spool)" if s.get("replayed") else ""
    text = f"{s['accepted']} accepted{replayed}, {s['delivered']} delivered"
    if s.get("throttled"):
        text += f" ({s['throttled']} throttled entries retried)"
    missing = s["accepted"] - s["delivered"]
    if missing:
        parts = [
            f"{s[k]} {k.replace('_', '-')}"
            for k in ("dead_lettered", "failed", "dropped", "pending")
            if s.get(k)
        ]
        text += f"; {missing} NOT delivered ({', '.join(parts)})"
    if s.get("retried"):
        text += f"; {s['retried']} retried"
    if s.get("spool_depth") is not None:
        text += f"; {s['spool_depth']} in the spool"
    if s.get("buffer_envelopes"):
        size = s.get("buffer_bytes")
        text += f"; {s['buffer_envelopes']} in the memory buffer"
        text += f" ({size:,} bytes)" if size is not None else ""
    if s.get("lost_in_corrupt_spool") or s.get("corrupt_spools"):
        lost = s.get("lost_in_corrupt_spool") or "an unknown number of"
        text += (
            f"; {lost} envelopes of an earlier run LOST in "
            f"{s.get('corrupt_spools', 0)} corrupt spool file(s)"
        )
    if s.get("overreported"):
        text += f"; {s['overreported']} outcomes over-reported by the sink"
    return text


def lost_anything(s: Mapping[str, Any]) -> bool:
    """Whether a sink's counters show anything not delivered or known lost."""
    return bool(
        s["accepted"] != s["delivered"]
        or s.get("lost_in_corrupt_spool")
        or s.get("corrupt_spools")
        or s.get("overreported")
    )


class DeadLetter(NamedTuple):
    """A dead letter waiting for its file."""

    envelope: Envelope
    reason: str
    size: int
    """Bytes of the envelope's JSON (what ``DEAD_LETTER_BACKLOG_BYTES`` counts)."""


class Backlog(NamedTuple):
    """Bounds of the dead letters waiting for their file."""

    envelopes: int = DEAD_LETTER_BACKLOG_ENVELOPES
    bytes: int = DEAD_LETTER_BACKLOG_BYTES


BACKLOG = Backlog()


class SinkContext:
    """What the core lends a sink instance: identity, logging, counters, dead letters."""

    def __init__(
        self,
        name: str,
        host: str,
        dead_letter_path: Path | None = None,
        stats: SinkStats | None = None,
        backlog: Backlog = BACKLOG,
    ) -> None:
        self.name = name
        self.host = host
        self.log = logging.getLogger(f"spark_sinks.sink.{name}")
        self.stats = stats or SinkStats()
        self.dead_letter_path = dead_letter_path
        self.shutdown = threading.Event()
        """Set when the run is ending (first SIGINT/SIGTERM): a write must not wait for
        buffer space any longer; the final flush, bounded by ``flush_timeout``, follows."""
        self.stopping = threading.Event()
        """Set when waiting must end now (a second SIGINT/SIGTERM): retry loops give up and
        flush returns, leaving what is undelivered to be reported."""
        self._dl_lock = threading.Lock()
        """Guards ``_dl_backlog``, ``_dl_bytes`` and the dead-letter file."""
        self._dl_backlog: list[DeadLetter] = []
        """Dead letters whose file write failed: still pending, retried in order."""
        self._dl_bytes = 0
        self._dl_bound = backlog
        self._dl_last_log = 0.0
        self._dl_lost_log = 0.0
        self._dl_lost_quiet = 0
        """Dead letters lost and not logged since the last line that said so."""
        self._aside = threading.local()
        """Per thread: ids of envelopes set aside during a write (see ``watch_aside``);
        per thread because the spool's feeder and the source thread both write."""
        self.on_settled: Callable[[Sequence[Envelope]], None] | None = None
        """Set by the core (the spool) to learn which envelopes are delivered or set aside."""
        self.on_kept: Callable[[Envelope], bool] | None = None
        """Set by the core (the spool): keeps on disk, for the next start, a dead letter
        that the full backlog cannot hold; False when it cannot (see ``_dead_letter_lost``)."""

    def delivered(self, envelopes: Sequence[Envelope]) -> None:
        """A buffered sink calls this once the destination has accepted these envelopes.

        Pass the envelope objects received in ``write``: the core uses them to
        release durable copies (the spool), not just to count.
        """
        self.stats.add("delivered", len(envelopes))
        hook = self.on_settled
        if hook is not None:
            hook(envelopes)

    def dead_letter(self, envelope: Envelope, reason: str) -> None:
        """Set aside an envelope that can never be delivered, and count it. Never raises.

        Without a configured file the envelope is still counted and logged, so
        the run's exit status reports it. When the file cannot be written, the
        envelope stays pending and the write is retried (``retry_dead_letters``):
        it counts as dead-lettered only once it is on disk. The dead letters waiting
        so are bounded (``Backlog``): beyond that, a new one stays in the spool for the
        next start (with a disk buffer) or is counted failed, named in an error line
        either way, so memory stays bounded and a loss is reported.
        """
        aside: set[int] | None = getattr(self._aside, "ids", None)
        if aside is not None:
            aside.add(id(envelope))
        letter = DeadLetter(envelope, reason, len(envelope.to_json()))
        if not self._queue_dead_letter(letter):
            self.retry_dead_letters()  # the file may work again, making room
            if not self._queue_dead_letter(letter):
                self._dead_letter_lost(letter)
                return
        self.retry_dead_letters()

    def _queue_dead_letter(self, letter: DeadLetter) -> bool:
        """Queue it unless the backlog is full (one letter always fits an empty one)."""
        bound = self._dl_bound
        with self._dl_lock:
            backlog = self._dl_backlog
            if backlog and (
                len(backlog) >= bound.envelopes or self._dl_bytes + letter.size > bound.bytes
            ):
                return False
            backlog.append(letter)
            self._dl_bytes += letter.size
        return True

    def _dead_letter_lost(self, letter: DeadLetter) -> None:
        """The backlog is full. With a spool the envelope stays in it, pending, for the
        next start (where it is dead-lettered again): on disk, within the spool's
        ``max_bytes``, never in memory. Without one it is given up, counted failed, and
        the core told it is settled. Logged at most every 10 s."""
        env = letter.envelope
        keep = self.on_kept
        kept = keep is not None and keep(env)
        quiet = -1  # stays negative unless this one is logged
        with self._dl_lock:
            waiting, held = len(self._dl_backlog), self._dl_bytes
            now = time.monotonic()
            if now - self._dl_lost_log >= 10.0:
                self._dl_lost_log = now
                quiet, self._dl_lost_quiet = self._dl_lost_quiet, 0
            else:
                self._dl_lost_quiet += 1
        fate = (
            "stays in the spool, pending, for the next start" if kept else "is LOST, counted failed"
        )
        msg = (
            f"dead letters cannot be written to {self.dead_letter_path} and {waiting} "
            f"({held} bytes) already wait: a {env.type} envelope of {env.machine} {fate} "
            f"({letter.reason})"
        )
        self.stats.error(msg)
        if quiet >= 0:
            more = f" ({quiet} more since the last report)" if quiet else ""
            self.log.error("%s%s", msg, more)
        if kept:
            return
        self.stats.add("failed")
        hook = self.on_settled
        if hook is not None:
            hook([env])

    def retry_dead_letters(self) -> int:
        """Write waiting dead letters, oldest first; return how many still wait."""
        done: list[DeadLetter] = []
        with self._dl_lock:
            if not self._dl_backlog:
                return 0
            try:
                for letter in self._dl_backlog:
                    self._write_dead_letter(letter.envelope, letter.reason)
                    done.append(letter)
            except OSError as exc:
                self._dead_letter_failed(exc)
            del self._dl_backlog[: len(done)]
            self._dl_bytes -= sum(d.size for d in done)
            left = len(self._dl_backlog)
        for env, reason, _ in done:
            self.stats.add("dead_lettered")
            self.stats.error(reason)
            self.log.error("dead-lettered a %s envelope of %s: %s", env.type, env.machine, reason)
        hook = self.on_settled
        if hook is not None and done:
            hook([d.envelope for d in done])
        return left

    def waiting_dead_letters(self) -> set[int]:
        """ids of envelopes whose dead letter could not be written yet."""
        with self._dl_lock:
            return {id(d.envelope) for d in self._dl_backlog}

    def _write_dead_letter(self, envelope: Envelope, reason: str) -> None:
        if self.dead_letter_path is None:
            return
        line = orjson.dumps(
            {"sink": self.name, "reason": reason, "envelope": orjson.Fragment(envelope.to_json())}
        )
        with files.append_private(self.dead_letter_path) as fh:
            fh.write(line + b"\n")

    def _dead_letter_failed(self, exc: OSError) -> None:
        """Loud, at most every 10 s: the envelope is kept, so nothing is lost yet."""
        msg = (
            f"cannot write dead letters to {self.dead_letter_path}: {exc}; "
            f"{len(self._dl_backlog)} envelopes stay pending and are retried"
        )
        self.stats.error(msg)
        now = time.monotonic()
        if now - self._dl_last_log >= 10.0:
            self._dl_last_log = now
            self.log.error("%s", msg)

    def watch_aside(self) -> None:
        """Start noting which envelopes ``dead_letter`` receives on this thread (for the
        core: an unbuffered write that returns delivered everything it did not set aside)."""
        self._aside.ids = set()

    def set_aside(self) -> set[int]:
        """Stop noting; the ids of envelopes set aside on this thread since ``watch_aside``."""
        aside: set[int] = getattr(self._aside, "ids", None) or set()
        self._aside.ids = None
        return aside


class Sink:
    """Base class for sinks. Subclass it, set ``type_name`` and ``Config``.

    A slow ``write`` holds up only this sink's own worker, never another sink.
    Set ``buffered = True`` when ``write`` only queues envelopes and delivery
    happens later; the sink then reports every outcome itself:
    ``context.delivered(envelopes)``, ``context.dead_letter(envelope, reason)``,
    ``stats.add("retried", n)``.
    For an unbuffered sink, a ``write`` that returns means delivered and one
    that raises means failed; the core counts both.
    """

    type_name: ClassVar[str] = ""
    Config: ClassVar[type[SinkConfig]] = SinkConfig
    buffered: ClassVar[bool] = False

    def __init__(self, config: SinkConfig, context: SinkContext) -> None:
        self.config = config
        self.context = context

    @property
    def name(self) -> str:
        return self.context.name

    @property
    def stats(self) -> SinkStats:
        return self.context.stats

    @property
    def log(self) -> logging.Logger:
        return self.context.log

    def open(self) -> None:
        """Create clients and files. Raise ``SinkError`` when that cannot work."""

    def check(self) -> str:
        """Prove the destination is reachable; raise ``SinkError`` if not.

        Returns a short description for ``spark-sinks check``.
        """
        return "ok"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> None:
        """Deliver everything written so far, waiting at most ``timeout`` seconds."""

    def machines_retired(self, machines: Sequence[str]) -> None:
        """Optional: after a configuration reload, these machines stopped publishing
        (disabled, ``publishDisabled`` or removed). Called between writes, from the thread
        that writes, after everything written before the reload. A sink that keeps
        per-machine state at its destination (a Sparkplug device's birth) ends it here."""

    def close(self) -> None:
        """Release resources. Called once, after the final ``flush``."""
