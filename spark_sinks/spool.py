"""The durable spool: a sink's envelopes on disk until the sink has delivered them.

This module is the store: the SQLite file, its lock, its private files and what a full
disk or a corrupt file does to it. ``spooled.py`` feeds the sink from it.

Why SQLite in WAL mode: it is in the standard library, a committed
transaction survives ``kill -9`` (and, with ``sync: full``, power loss), a
torn write is rolled back rather than half-read, and deleting delivered rows
is cheap. One file per sink: ``<path>/<sink name>.spool.sqlite3``, created 0600.

Next to the spool file:

- ``<sink>.spool.lock``: one process per spool (``flock``); a second one refuses
  to start, naming the holder's pid, instead of sending everything twice. The spool
  file itself is ``flock``ed too: a lock file removed while a run holds it (a cleaner,
  an operator taking it for stale) would otherwise let a second process in.
- ``<sink>.spool.reserve``: a little disk space set aside at open and given back
  when deleting delivered rows fails for lack of space, so that a full disk
  cannot wedge the spool (deleting in SQLite needs space for its log first).
- ``<sink>.spool.damaged.jsonl``: rows that held no envelope (damaged on disk), set
  aside by the feeder with their bytes, so that one bad row never stops the rest.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from . import files
from .envelope import Envelope
from .errors import SinkError, SparkSinksError
from .sink import SpoolConfig

log = logging.getLogger(__name__)

READ_ROWS = 500
"""Rows read (and deleted) at a time."""
READ_BYTES = 4 * 1024 * 1024
"""Envelope bytes read at a time, at most (one row always): 500 rows of large envelopes
(a line may hold 2 MiB) would otherwise put a gigabyte in memory at once."""
_RESERVE = 512 * 1024
"""Bytes kept free for deletes: room to checkpoint a full log and to log a delete."""
_MARGIN = 512 * 1024
"""Free bytes the spool never fills: appends wait, so that deletes and checkpoints work."""
_WAL_PAGES = 64
"""Pages in the write-ahead log before a checkpoint (SQLite's default is 1000)."""
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_SIZE = "coalesce(length(body), 0)"
"""A row's bytes, as counted against ``max_bytes``: from the body itself, not from the
``size`` column (still written, for older versions), which a damaged or edited file may
hold as NULL, text or a negative number (a negative total would lift the bound)."""
SCHEMA_VERSION = 1
"""The spool's layout, kept in SQLite's ``user_version`` (0: written before it was kept,
the same layout). A spool of a later version is refused, never read or set aside."""
LOG_EVERY = 10.0
"""Seconds between two log lines of one repeating problem."""


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

    Shared state: ``_lock`` guards the connection and every field below it: the source
    thread appends, the feeder reads, sender threads delete, the reporter reads
    ``rows``. ``open`` runs before any other thread has the spool. ``bytes`` and ``rows``
    are also read without the lock (``SpooledSink.write``, ``tidy``): a figure one
    change old only delays a wait by one turn.
    """

    def __init__(self, directory: Path, name: str, config: SpoolConfig) -> None:
        self.file = directory / f"{name}.spool.sqlite3"
        self.lock_file = directory / f"{name}.spool.lock"
        self.reserve_file = directory / f"{name}.spool.reserve"
        self.damaged_file = directory / f"{name}.spool.damaged.jsonl"
        """Rows that held no envelope, set aside by the feeder (``spooled.py``)."""
        self.config = config
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._data_fd: int | None = None
        """Holds the ``flock`` on the spool file; closed only after SQLite's connection
        (closing a descriptor of the file drops the process's POSIX locks on it)."""
        self.bytes = 0
        """Envelope bytes in the spool (the ``max_bytes`` bound applies to these)."""
        self.rows = 0
        """Envelopes in the spool file, including delivered ones not yet deleted."""
        self.replayed = 0
        """Envelopes found at open: left by an earlier run (or instance)."""
        self.left = 0
        """Envelopes left in the file at close, for the next start."""
        self.orphaned = 0
        """Undelivered envelopes at close in a spool file that was removed or replaced
        while the run used it: no next start finds them (``left`` is 0 then)."""
        self._told_replaced = False
        self._watched = 0.0
        """When ``watch`` last looked (the feeder thread's alone)."""
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
            self._lock_data()
            try:
                waiting = self._connect()
            except _Corrupt as exc:
                self._set_aside(str(exc))
                self._lock_data()
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

        def holder() -> str:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            return f"pid {pid}, lock {self.lock_file.name}"

        self._flock(fd, holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _lock_data(self) -> None:
        """``flock`` the spool file itself (created empty if missing: SQLite takes an empty
        file for a new database)."""
        self._close_data_fd()
        try:
            fd = files.open_private(self.file, os.O_RDWR)
        except OSError as exc:
            raise SpoolError(
                f"cannot read spool file {self.file}: {exc.strerror or exc}; refusing "
                "to start (the file is left as it is)"
            ) from None
        self._flock(
            fd, lambda: f"its lock file {self.lock_file.name} was removed or replaced meanwhile"
        )
        self._data_fd = fd

    def _flock(self, fd: int, holder: Callable[[], str]) -> None:
        """Lock ``fd`` for this process, or close it and refuse, saying who holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            who = holder()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpoolError(f"cannot lock the spool {self.file}: {exc}") from None
            raise SpoolError(
                f"spool {self.file} is in use by another spark-sinks process ({who}): two "
                "processes on one spool would send everything twice; refusing to start"
            ) from None

    def _close_data_fd(self) -> None:
        if self._data_fd is not None:
            os.close(self._data_fd)
            self._data_fd = None

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
            count, size = self._prepare(db)
        except (_Corrupt, SpoolError):
            db.close()
            self._db = None
            raise
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

    def _prepare(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Check and set up an opened spool file; its rows and their bytes."""
        # before anything that could change the file (the switch to WAL does)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"spool {self.file} was written by a newer spark-sinks (spool version "
                f"{version}; this one reads up to {SCHEMA_VERSION}): refusing to start "
                "(the file is left as it is; run the newer version to empty it)"
            )
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
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        count, size = db.execute(
            f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM spool"
        ).fetchone()
        return int(count), int(size)

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

    def read_after(self, cursor: int, limit: int = READ_ROWS) -> list[Row]:
        """The next rows after ``cursor``: at most ``limit`` and ``READ_BYTES`` (the rows
        are fetched one by one, so the bytes bound what is read, not only what is kept)."""
        rows: list[Row] = []
        size = 0
        with self._lock:
            cur = self._conn().execute(
                "SELECT id, machine, body FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            )
            try:
                for r in cur:
                    rows.append(Row(*r))
                    size += len(r[2]) if isinstance(r[2], bytes | str) else 0
                    if size >= READ_BYTES:
                        break
            finally:
                cur.close()  # ends the read at once: an open one holds back checkpoints
        return rows

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
            chunk = self._undeleted[:READ_ROWS]
            marks = ",".join("?" * len(chunk))
            freed = db.execute(
                f"DELETE FROM spool WHERE id IN ({marks}) RETURNING {_SIZE}", chunk
            ).fetchall()
            del self._undeleted[: len(chunk)]
            self.bytes -= sum(r[0] for r in freed)
            self.rows -= len(freed)

    def _complain(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
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
                    "(SELECT id FROM spool WHERE id > ? ORDER BY id LIMIT 100) "
                    f"RETURNING {_SIZE}",
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

    def watch(self) -> None:
        """Say (once) when the spool file was removed or replaced under this run; looks at
        most once a second (called by the feeder before each read)."""
        now = time.monotonic()
        if self._told_replaced or now - self._watched < 1.0:
            return
        self._watched = now
        with self._lock:  # close() may be closing the descriptor
            replaced = self.replaced()
        if replaced:
            self._told_replaced = True
            log.error(
                "spool file %s was removed or replaced while this run uses it: what waits "
                "in it now lives only as long as this process (a restart or a crash LOSES "
                "it); restart spark-sinks once it has delivered everything, to spool to disk "
                "again",
                self.file,
            )

    def replaced(self) -> bool:
        """Whether the spool file's name no longer leads to the file this run writes.
        The caller holds ``_lock``."""
        fd = self._data_fd
        if fd is None:
            return False
        try:
            named = os.stat(self.file)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell (a directory made unreadable): not known replaced
        mine = os.fstat(fd)
        return (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino)

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
                if self.replaced():
                    self.orphaned, self.left = self.rows - len(self._undeleted), 0
                self._db.close()
                self._db = None
            self._close_data_fd()
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
