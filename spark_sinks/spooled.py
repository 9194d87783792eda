"""A sink fed from its spool (``spool.py``): the dispatcher writes to the spool, a feeder
thread hands the rows to the sink, and rows are deleted when the sink settles them.

With a spool the path is ``source -> spool (disk) -> feeder thread -> sink``:
the source waits when the spool is full *or cannot be written* (disk full, I/O
error), memory holds only what the sink itself buffers, and rows are deleted
when the sink acknowledges them (``context.delivered``/``dead_letter``).
At-least-once: what was handed to the sink but not acknowledged before a crash
is sent again on the next start.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from . import files
from .envelope import Envelope
from .errors import SinkError
from .sink import Sink
from .spool import LOG_EVERY, Row, Spool


class _Damaged(NamedTuple):
    """A spool row that holds no envelope, and why."""

    row: Row
    reason: str

    def entry(self) -> dict[str, Any]:
        """Its line in the damaged-rows file: the bytes exactly, as base64 (a number or
        NULL in the body's place as ``body``)."""
        body: object = self.row.body
        if isinstance(body, str):
            body = body.encode(errors="surrogatepass")
        entry: dict[str, Any] = {
            "row": self.row.id,
            "machine": self.row.machine if isinstance(self.row.machine, str) else None,
            "reason": self.reason,
        }
        if isinstance(body, bytes):
            entry["body_base64"] = base64.b64encode(body).decode()
        else:
            entry["body"] = body  # SQLite's other values (integer, real, NULL) are JSON
        return entry


class SpooledSink(Sink):
    """Wraps any sink with a spool; the dispatcher sees it as a buffered sink.

    Shared state and its owners: ``_cond`` guards ``_cursor``, ``_previous``,
    ``_writing``, ``_closing``, ``_rowids``, ``_held`` and ``_feeder`` (the source thread
    in ``write``, the feeder thread, the sink's threads in ``_settled``, the runtime in
    ``check``/``close``); ``_log_lock`` guards ``_last_log`` (any of them logs);
    ``_opened`` belongs to the thread that opens the sink. The spool's own counters are
    guarded by its lock (``spool.py``).
    """

    buffered = True

    def __init__(self, inner: Sink, spool: Spool) -> None:
        super().__init__(inner.config, inner.context)
        self.inner = inner
        self.type_name = inner.type_name  # type: ignore[misc]
        self.spool = spool
        self._cond = threading.Condition()
        self._rowids: dict[int, int] = {}
        """id(envelope) -> spool row id, for envelopes handed to the sink, not yet settled."""
        self._held: set[int] = set()
        """Rows whose envelope waits to be dead-lettered, or is kept for the next start
        (``_keep``): not handed to the sink again."""
        self._cursor = 0
        self._previous = 0
        """The cursor before the batch the feeder holds (restored when its write fails)."""
        self._closing = False
        self._writing = False
        self._opened = False
        self._feeder: threading.Thread | None = None
        self._log_lock = threading.Lock()
        self._last_log: dict[str, float] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def open_spool(self) -> None:
        """Open the spool (raises ``SpoolError``: the run must not start then)."""
        if self._opened:
            return
        waiting = self.spool.open()
        self._opened = True
        stats = self.stats
        if self.spool.corrupt:
            stats.add("corrupt_spools", self.spool.corrupt)
            stats.add("lost_in_corrupt_spool", self.spool.lost)
            stats.error(f"spool {self.spool.file} was corrupt and set aside")
        if waiting:
            # accepted by an earlier run: counted once here, as accepted and replayed
            stats.add("replayed", waiting)
            self.log.warning("replaying %d envelopes left in the spool by an earlier run", waiting)

    def open(self) -> None:
        self.open_spool()
        self.context.on_settled = self._settled
        self.context.on_kept = self._keep
        try:
            self.inner.open()
        except BaseException:
            self.spool.close()
            raise

    def check(self) -> str:
        result = self.inner.check()
        self._start_feeder()
        return result

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self._start_feeder()
        need = sum(len(e.to_json()) for e in envelopes)
        cfg = self.spool.config
        with self._cond:
            # an empty spool always takes a batch, however big: a bound must not become a wedge
            while (
                self.spool.bytes and self.spool.bytes + need > cfg.max_bytes and not self._ending()
            ):
                if cfg.on_full == "drop_oldest" and self._drop(need, cfg.max_bytes):
                    break
                # block: wait for the sink to acknowledge and free space
                self._cond.wait(0.5)
            self._append(envelopes, need)
            self._cond.notify_all()

    def _append(self, envelopes: Sequence[Envelope], need: int) -> None:
        """Store the batch; while the disk refuses (full, I/O error) the source waits.
        The caller holds ``_cond``."""
        failing_since: float | None = None
        while True:
            try:
                self.spool.append(envelopes)
                return
            except (sqlite3.Error, OSError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                given_up = self.context.stopping.is_set() or (
                    self.context.shutdown.is_set()
                    and now - failing_since > self.config.flush_timeout
                )
                if given_up:
                    raise SinkError(
                        f"spool {self.spool.file} cannot store {len(envelopes)} envelopes "
                        f"({exc}) and the run is ending"
                    ) from None
                msg = (
                    f"spool {self.spool.file} cannot store {len(envelopes)} envelopes "
                    f"({exc}): the source waits until it can"
                )
                if self.spool.config.on_full == "drop_oldest":
                    self._drop(need, max(self.spool.bytes - need, 0))
                else:
                    msg += " (nothing is dropped)"
                self.stats.error(msg)
                self._loud("append", msg)
                self._cond.wait(0.5)

    def _drop(self, need: int, limit: int) -> bool:
        """``on_full: drop_oldest``: make room; True when the batch now fits."""
        try:
            dropped = self.spool.drop_oldest_after(self._cursor, need, limit)
        except sqlite3.Error as exc:
            self._loud("drop", f"spool {self.spool.file}: cannot drop the oldest: {exc}")
            return False
        if dropped:
            self.stats.add("dropped", dropped)
            self._loud(
                "drop",
                f"spool full ({self.spool.config.max_bytes} bytes): DROPPED the {dropped} "
                f"oldest unsent envelopes (on_full: drop_oldest; {self.stats.dropped} dropped "
                "so far)",
                level=logging.WARNING,
            )
        return self.spool.bytes + need <= limit

    def flush(self, timeout: float | None = None) -> None:
        self._start_feeder()
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.spool.last_id()
        with self._cond:
            while (self._cursor < last or self._writing) and not self.context.stopping.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._cond.wait(0.2 if left is None else min(0.2, left))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.inner.flush(left)
        self.spool.tidy()

    def machines_retired(self, machines: Sequence[str]) -> None:
        """Passed on at once: envelopes still in the spool reach the sink after it."""
        self.inner.machines_retired(machines)

    def close(self) -> None:
        """Bounded by ``flush_timeout`` even during an outage: this instance is ending,
        so a write of the feeder waiting for space in the inner sink is told to stop."""
        self.context.shutdown.set()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            feeder = self._feeder
        if feeder is not None:
            feeder.join(self.config.flush_timeout)
            if feeder.is_alive():
                self.log.error(
                    "the spool feeder is still in the sink's write after %.0fs; closing anyway",
                    self.config.flush_timeout,
                )
        try:
            self.inner.close()
        finally:
            self.spool.close()
            if self.spool.orphaned:
                self.stats.add("failed", self.spool.orphaned)
                msg = (
                    f"spool file {self.spool.file} was removed or replaced while this run "
                    f"used it: the {self.spool.orphaned} envelopes in it are LOST, counted "
                    "failed (no next start can find them)"
                )
                self.stats.error(msg)
                self.log.error("%s", msg)
            if self.spool.left:
                self.log.warning(
                    "%d envelopes stay in the spool for the next start", self.spool.left
                )

    # -- feeding ----------------------------------------------------------------------------

    def _ending(self) -> bool:
        return self.context.shutdown.is_set() or self.context.stopping.is_set()

    def _start_feeder(self) -> None:
        with self._cond:
            if self._feeder is None:
                self._feeder = threading.Thread(
                    target=self._feed, name=f"spool-{self.name}", daemon=True
                )
                self._feeder.start()

    def _feed(self) -> None:
        backoff = 0.5
        while True:
            batch = self._claim()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._hand_over(batch)
            except Exception as exc:
                self._unclaim(batch)
                self.stats.add("retried", len(batch))
                self.stats.error(f"{type(exc).__name__}: {exc}")
                self._loud(
                    "write", f"write failed, retrying from the spool in {backoff:.1f}s: {exc}"
                )
                with self._cond:
                    if not self._closing:
                        self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _claim(self) -> list[Envelope] | None:
        """The next rows for the sink ([] to look again, None to stop)."""
        with self._cond:
            if self._closing:
                return None
            self.spool.watch()
            try:
                read = self.spool.read_after(self._cursor)
            except (sqlite3.Error, SinkError) as exc:
                self._loud("read", f"cannot read spool {self.spool.file}: {exc}")
                self._cond.wait(1.0)
                return []
            rows = [r for r in read if r.id not in self._held]
            if read and not rows:
                # a whole read of held rows (they wait for the next start, or for their
                # dead letters): step past them, or the rows behind would never be read
                self._cursor = read[-1].id
                return []
            if not rows:
                self._cond.wait(0.5)
                self.spool.tidy()
                return []
            # claim the rows before writing, so drop_oldest never drops what the sink holds
            self._previous, self._cursor = self._cursor, rows[-1].id
            batch: list[Envelope] = []
            damaged: list[_Damaged] = []
            for r in rows:
                try:
                    env = Envelope.from_json(
                        r.body, r.machine if isinstance(r.machine, str) else None
                    )
                except ValueError as exc:
                    damaged.append(_Damaged(r, str(exc)))
                    continue
                batch.append(env)
                self._rowids[id(env)] = r.id
            self._writing = bool(batch)
            if damaged:
                self._set_aside(damaged)
        return batch

    def _set_aside(self, damaged: list[_Damaged]) -> None:
        """Rows that hold no envelope (damaged on disk): no sink can ever take them, and
        left in place they would stop every row behind them. Their bytes go to
        ``<sink>.spool.damaged.jsonl`` and they leave the spool, counted failed; when
        that file cannot be written they stay in the spool (pending) for the next start.
        The caller holds ``_cond``."""
        ids = [d.row.id for d in damaged]
        try:
            with files.append_private(self.spool.damaged_file) as out:
                out.write(b"".join(orjson.dumps(d.entry()) + b"\n" for d in damaged))
        except OSError as exc:
            self._held.update(ids)
            self._loud(
                "damaged", f"cannot set damaged spool rows aside ({exc}): they stay in the spool"
            )
            return
        self.spool.delete(ids)
        self.stats.add("failed", len(damaged))
        for d in damaged:
            msg = (
                f"spool {self.spool.file} row {d.row.id} is damaged ({d.reason}): no sink can "
                f"take it; its bytes are kept in {self.spool.damaged_file.name}, counted failed"
            )
            self.stats.error(msg)
            self.log.error("%s", msg)

    def _hand_over(self, batch: list[Envelope]) -> None:
        ctx = self.context
        if self.inner.buffered:
            self.inner.write(batch)
            return
        # unbuffered: a write that returns delivered all it did not set aside
        ctx.watch_aside()
        try:
            self.inner.write(batch)
        finally:
            aside = ctx.set_aside()
        ctx.delivered([e for e in batch if id(e) not in aside] if aside else batch)

    def _unclaim(self, batch: list[Envelope]) -> None:
        """A failed write: its unsettled rows are read again, except those waiting to be
        dead-lettered (they are settled when the dead letter is written)."""
        waiting = self.context.waiting_dead_letters()
        with self._cond:
            for env in batch:
                if id(env) in waiting:
                    row = self._rowids.get(id(env))
                    if row is not None:
                        self._held.add(row)
                else:
                    self._rowids.pop(id(env), None)
            self._cursor = self._previous
            self._writing = False

    def _settled(self, envelopes: Sequence[Envelope]) -> None:
        with self._cond:
            ids = [r for r in (self._rowids.pop(id(e), None) for e in envelopes) if r is not None]
            self._held.difference_update(ids)
        if ids:
            self.spool.delete(ids)
            with self._cond:
                self._cond.notify_all()

    def _keep(self, envelope: Envelope) -> bool:
        """A dead letter the full backlog cannot hold: its row stays in the spool for the
        next start, and is not handed to the sink again in this run."""
        with self._cond:
            row = self._rowids.pop(id(envelope), None)
            if row is None:
                return False
            self._held.add(row)
        return True

    def _loud(self, kind: str, message: str, level: int = logging.ERROR) -> None:
        """Log a repeating problem at most every ``LOG_EVERY`` seconds per kind."""
        now = time.monotonic()
        with self._log_lock:
            if now - self._last_log.get(kind, 0.0) < LOG_EVERY:
                return
            self._last_log[kind] = now
        self.log.log(level, "%s", message)
