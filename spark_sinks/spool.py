"""The durable spool: a sink's envelopes on disk until the sink has delivered them.

Why SQLite in WAL mode: it is in the standard library, a committed
transaction survives ``kill -9`` (and, with ``sync: full``, power loss), a
torn write is rolled back rather than half-read, and deleting delivered rows
is cheap. One file per sink: ``<path>/<sink name>.spool.sqlite3``, created 0600.

With a spool the path is ``source -> spool (disk) -> feeder thread -> sink``:
the source waits when the spool is full *or cannot be written* (disk full, I/O
error), memory holds only what the sink itself buffers, and rows are deleted
when the sink acknowledges them (``context.delivered``/``dead_letter``).
At-least-once: what was handed to the sink but not acknowledged before a crash
is sent again on the next start.

Next to the spool file:

- ``<sink>.spool.lock``: one process per spool (``flock``); a second one refuses
  to start, naming the holder's pid, instead of sending everything twice.
- ``<sink>.spool.reserve``: a little disk space set aside at open and given back
  when deleting delivered rows fails for lack of space, so that a full disk
  cannot wedge the spool (deleting in SQLite needs space for its log first).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from . import files
from .envelope import Envelope
from .errors import SinkError, SparkSinksError
from .sink import Sink, SpoolConfig

log = logging.getLogger(__name__)

_READ = 500
_RESERVE = 512 * 1024
"""Bytes kept free for deletes: room to checkpoint a full log and to log a delete."""
_MARGIN = 512 * 1024
"""Free bytes the spool never fills: appends wait, so that deletes and checkpoints work."""
_WAL_PAGES = 64
"""Pages in the write-ahead log before a checkpoint (SQLite's default is 1000)."""
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_LOG_EVERY = 10.0


class SpoolError(SparkSinksError):
    """The spool cannot be used safely (in use by another process, unreadable): the run
    refuses to start rather than double-send or throw away what it holds."""


class _Corrupt(Exception):
    pass


class Row(NamedTuple):
    id: int
    machine: str | None
    body: bytes


class Spool:
    """Rows ``(id, machine, body)`` in insertion order; ``id`` order is delivery order.

    ``_lock`` guards the connection and every field below it: the source thread
    appends, the feeder reads, sender threads delete, the reporter reads ``rows``.
    """

    def __init__(self, directory: Path, name: str, config: SpoolConfig) -> None:
        self.file = directory / f"{name}.spool.sqlite3"
        self.lock_file = directory / f"{name}.spool.lock"
        self.reserve_file = directory / f"{name}.spool.reserve"
        self.config = config
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.bytes = 0
        """Envelope bytes in the spool (the ``max_bytes`` bound applies to these)."""
        self.rows = 0
        """Envelopes in the spool file, including delivered ones not yet deleted."""
        self.replayed = 0
        """Envelopes found at open: left by an earlier run (or instance)."""
        self.left = 0
        """Envelopes left in the file at close, for the next start."""
        self.corrupt = 0
        """Corrupt spool files set aside at open, and the envelopes counted in them."""
        self.lost = 0
        self._undeleted: list[int] = []
        """Rows delivered whose delete failed (disk full): retried, never read again."""
        self._last_log = 0.0

    # -- opening ----------------------------------------------------------------------

    def open(self) -> int:
        """Lock, open (or create) the file; return how many envelopes wait from before.

        Raises ``SpoolError`` when another process holds the spool or the file cannot be
        read (permissions, I/O errors): nothing is changed then. A *corrupt* file is set
        aside (``*.corrupt-<time>``), its loss counted in ``corrupt``/``lost``, and a
        fresh spool is started."""
        files.private_dir(self.file.parent)
        self._take_lock()
        try:
            try:
                waiting = self._connect()
            except _Corrupt as exc:
                self._set_aside(str(exc))
                waiting = self._connect()
        except BaseException:
            self.close()
            raise
        self.replayed = waiting
        self._make_reserve()
        return waiting

    def _take_lock(self) -> None:
        try:
            fd = files.open_private(self.lock_file, os.O_RDWR)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool lock {self.lock_file}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolError(f"cannot lock the spool {self.file}: {exc}") from None
            raise SpoolError(
                f"spool {self.file} is in use by another spark-sinks process (pid {holder}, "
                f"lock {self.lock_file.name}): two processes on one spool would send "
                "everything twice; refusing to start"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _readable(self) -> None:
        """Refuse what cannot be read before SQLite sees it: an unreadable file is not a
        corrupt one, and must not be moved aside."""
        for path in (self.file, Path(f"{self.file}-wal"), Path(f"{self.file}-shm")):
            if path == self.file or path.exists():
                try:
                    os.close(files.open_private(path, os.O_RDWR))
                except OSError as exc:
                    raise SpoolError(
                        f"cannot read spool file {path}: {exc.strerror or exc}; refusing "
                        "to start (the file is left as it is)"
                    ) from None

    def _connect(self) -> int:
        self._readable()
        db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None)
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.config.sync.upper()}")
            # A short log, checkpointed often: rows live in the main file, and a full disk
            # leaves a log that the reserve can always checkpoint (see ``delete``).
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 4096}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(f"integrity check failed: {check}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, machine TEXT, size INTEGER, body BLOB)"
            )
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM spool"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            self._db = None
            if getattr(exc, "sqlite_errorcode", None) in _CORRUPT:
                raise _Corrupt(str(exc)) from None
            raise SpoolError(
                f"cannot open spool {self.file}: {exc}; refusing to start "
                "(the file is left as it is)"
            ) from None
        self.bytes = size
        self.rows = count
        return int(count)

    def _set_aside(self, why: str) -> None:
        """Move a corrupt file (and its log) aside and count what it held, if it says."""
        aside = self.file.with_name(f"{self.file.name}.corrupt-{int(time.time())}")
        self.file.rename(aside)
        for suffix in ("-wal", "-shm"):
            p = Path(f"{self.file}{suffix}")
            if p.exists():
                p.rename(Path(f"{aside}{suffix}"))
        counted = _count_rows(aside)
        self.corrupt += 1
        self.lost += counted or 0
        held = f"the {counted} envelopes in it are" if counted is not None else "what it held is"
        log.error(
            "spool %s is corrupt (%s): moved it to %s and started a fresh spool; %s LOST",
            self.file,
            why,
            aside.name,
            held,
        )

    def _make_reserve(self) -> None:
        if self.reserve_file.exists():
            return
        try:
            fd = files.open_private(self.reserve_file, os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, _RESERVE)
            finally:
                os.close(fd)
        except OSError as exc:
            self.reserve_file.unlink(missing_ok=True)
            log.warning("cannot set aside %d bytes next to the spool: %s", _RESERVE, exc)

    # -- rows -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SinkError(f"spool {self.file} is closed")
        return self._db

    def append(self, envelopes: Sequence[Envelope]) -> None:
        """Store envelopes in one transaction; raises (and stores nothing) on any error,
        and when the filesystem would keep less than ``_MARGIN`` bytes free."""
        rows = [(e.machine, len(b), b) for e in envelopes for b in (e.to_json(),)]
        need = sum(r[1] for r in rows)
        with self._lock:
            db = self._conn()
            free = self._free_bytes(db)
            if free < 2 * need + _MARGIN:  # the rows go to the log, then to the main file
                raise OSError(
                    errno.ENOSPC,
                    f"disk nearly full: {free} bytes free, {_MARGIN} kept for deleting "
                    "delivered rows",
                )
            try:
                db.execute("BEGIN")
                db.executemany("INSERT INTO spool (machine, size, body) VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self.bytes += need
            self.rows += len(rows)

    def _free_bytes(self, db: sqlite3.Connection) -> int:
        """Free space on the filesystem plus free pages inside the spool file (deleted
        rows leave those; the file does not shrink, new rows reuse them)."""
        st = os.statvfs(self.file.parent)
        pages = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int(st.f_bavail * st.f_frsize + pages * size)

    def read_after(self, cursor: int, limit: int = _READ) -> list[Row]:
        with self._lock:
            return [
                Row(*r)
                for r in self._conn().execute(
                    "SELECT id, machine, body FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                    (cursor, limit),
                )
            ]

    def delete(self, ids: Sequence[int]) -> None:
        """Delete settled rows. When the disk is full, the reserve is given back and the
        rows are kept in memory and deleted later (they are never read again)."""
        with self._lock:
            self._undeleted.extend(ids)
            if self._db is None:
                return  # closed: they stay for the next start (sent again: at-least-once)
            try:
                self._delete_undeleted()
            except sqlite3.Error as first:
                # a full disk: give back the reserve, checkpoint the log into the main
                # file (the log then restarts in place), and delete again
                self.reserve_file.unlink(missing_ok=True)
                try:
                    self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    self._delete_undeleted()
                except sqlite3.Error:
                    self._complain(first)

    def _delete_undeleted(self) -> None:
        db = self._conn()
        while self._undeleted:
            chunk = self._undeleted[:_READ]
            marks = ",".join("?" * len(chunk))
            freed = db.execute(
                f"DELETE FROM spool WHERE id IN ({marks}) RETURNING size", chunk
            ).fetchall()
            del self._undeleted[: len(chunk)]
            self.bytes -= sum(r[0] for r in freed)
            self.rows -= len(freed)

    def _complain(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            log.error(
                "cannot delete %d delivered envelopes from spool %s (%s): retrying; "
                "they are not sent again unless the process stops first",
                len(self._undeleted),
                self.file,
                exc,
            )

    def tidy(self) -> None:
        """Retry deletes that failed; put the disk reserve back once the spool is empty."""
        if self._undeleted:
            self.delete(())
        if not self.rows and self._db is not None:
            self._make_reserve()

    def drop_oldest_after(self, cursor: int, need: int, limit: int) -> int:
        """Delete the oldest rows not yet handed to the sink until ``need`` bytes fit
        under ``limit``."""
        dropped = 0
        with self._lock:
            db = self._conn()
            while self.bytes + need > limit:
                rows = db.execute(
                    "DELETE FROM spool WHERE id IN "
                    "(SELECT id FROM spool WHERE id > ? ORDER BY id LIMIT 100) RETURNING size",
                    (cursor,),
                ).fetchall()
                if not rows:
                    break
                dropped += len(rows)
                self.bytes -= sum(r[0] for r in rows)
                self.rows -= len(rows)
        return dropped

    def count(self) -> int:
        """Rows in the file, as SQLite counts them (``rows`` is the running figure)."""
        with self._lock:
            return int(self._conn().execute("SELECT count(*) FROM spool").fetchone()[0])

    def last_id(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT coalesce(max(id), 0) FROM spool").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                if self._undeleted:
                    try:
                        self._delete_undeleted()
                    except sqlite3.Error as exc:
                        log.error(
                            "%d delivered envelopes stay in spool %s (%s): they are sent "
                            "again on the next start",
                            len(self._undeleted),
                            self.file,
                            exc,
                        )
                self.left = self.rows
                self._db.close()
                self._db = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None


def _count_rows(path: Path) -> int | None:
    """Rows a corrupt spool file still admits to holding, if it can say."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM spool").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


class SpooledSink(Sink):
    """Wraps any sink with a spool; the dispatcher sees it as a buffered sink.

    ``_cond`` guards ``_cursor``, ``_writing``, ``_closing``, ``_rowids`` and ``_held``
    (source thread in ``write``, the feeder thread, the sink's threads in ``_settled``).
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
        """Rows whose envelope waits to be dead-lettered: not handed to the sink again."""
        self._cursor = 0
        self._previous = 0
        """The cursor before the batch the feeder holds (restored when its write fails)."""
        self._closing = False
        self._writing = False
        self._opened = False
        self._feeder: threading.Thread | None = None
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
        if self._feeder is not None:
            self._feeder.join(self.config.flush_timeout)
            if self._feeder.is_alive():
                self.log.error(
                    "the spool feeder is still in the sink's write after %.0fs; closing anyway",
                    self.config.flush_timeout,
                )
        try:
            self.inner.close()
        finally:
            self.spool.close()
            if self.spool.left:
                self.log.warning(
                    "%d envelopes stay in the spool for the next start", self.spool.left
                )

    # -- feeding ----------------------------------------------------------------------------

    def _ending(self) -> bool:
        return self.context.shutdown.is_set() or self.context.stopping.is_set()

    def _start_feeder(self) -> None:
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
            try:
                rows = [r for r in self.spool.read_after(self._cursor) if r.id not in self._held]
            except (sqlite3.Error, SinkError) as exc:
                self._loud("read", f"cannot read spool {self.spool.file}: {exc}")
                self._cond.wait(1.0)
                return []
            if not rows:
                self._cond.wait(0.5)
                self.spool.tidy()
                return []
            # claim the rows before writing, so drop_oldest never drops what the sink holds
            self._previous, self._cursor = self._cursor, rows[-1].id
            self._writing = True
            batch = [Envelope.from_json(r.body, r.machine) for r in rows]
            for env, r in zip(batch, rows, strict=True):
                self._rowids[id(env)] = r.id
        return batch

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

    def _loud(self, kind: str, message: str, level: int = logging.ERROR) -> None:
        """Log a repeating problem at most every ``_LOG_EVERY`` seconds per kind."""
        now = time.monotonic()
        if now - self._last_log.get(kind, 0.0) >= _LOG_EVERY:
            self._last_log[kind] = now
            self.log.log(level, "%s", message)
