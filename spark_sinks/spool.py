"""The durable spool: a sink's envelopes on disk until the sink has delivered them.

Why SQLite in WAL mode: it is in the standard library, a committed
transaction survives ``kill -9`` (and, with ``sync: full``, power loss), a
torn write is rolled back rather than half-read, and deleting delivered rows
is cheap. One file per sink: ``<path>/<sink name>.spool.sqlite3``.

With a spool the path is ``source -> spool (disk) -> feeder thread -> sink``:
the source waits only when the spool is full, memory holds only what the
sink itself buffers, and rows are deleted when the sink acknowledges them
(``context.delivered``/``dead_letter``). At-least-once: what was handed to
the sink but not acknowledged before a crash is sent again on the next start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .envelope import Envelope
from .sink import Sink, SpoolConfig

log = logging.getLogger(__name__)

_READ = 500


class Spool:
    """Rows ``(id, machine, body)`` in insertion order; ``id`` order is delivery order."""

    def __init__(self, directory: Path, name: str, config: SpoolConfig) -> None:
        self.file = directory / f"{name}.spool.sqlite3"
        self.config = config
        self.bytes = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> int:
        """Open (or create) the file; return how many envelopes wait from an earlier run.

        A corrupt or unreadable file is renamed aside with a clear error and a
        fresh spool is started: the sink keeps working either way.
        """
        self.file.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if self._db is not None:
                self._db.close()
            aside = self.file.with_name(f"{self.file.name}.corrupt-{int(time.time())}")
            self.file.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.file}{suffix}").unlink(missing_ok=True)
            log.error(
                "spool %s is unreadable (%s); moved it to %s and started a fresh spool",
                self.file,
                exc,
                aside.name,
            )
            return self._connect()

    def _connect(self) -> int:
        db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.sync.upper()}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS spool ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, machine TEXT, size INTEGER, body BLOB)"
        )
        count, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        self.bytes = size
        return count

    def append(self, envelopes: Sequence[Envelope]) -> None:
        rows = [(e.machine, len(b), b) for e in envelopes for b in (e.to_json(),)]
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            db.executemany("INSERT INTO spool (machine, size, body) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            self.bytes += sum(r[1] for r in rows)

    def read_after(self, cursor: int, limit: int = _READ) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return self._db.execute(
                "SELECT id, machine, body FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            ).fetchall()

    def delete(self, ids: Sequence[int]) -> None:
        with self._lock:
            for i in range(0, len(ids), _READ):
                chunk = ids[i : i + _READ]
                marks = ",".join("?" * len(chunk))
                freed = self._db.execute(
                    f"DELETE FROM spool WHERE id IN ({marks}) RETURNING size", chunk
                ).fetchall()
                self.bytes -= sum(r[0] for r in freed)

    def drop_oldest_after(self, cursor: int, need: int) -> int:
        """Delete the oldest rows not yet handed to the sink until ``need`` bytes are free."""
        dropped = 0
        with self._lock:
            while self.bytes + need > self.config.max_bytes:
                rows = self._db.execute(
                    "DELETE FROM spool WHERE id IN "
                    "(SELECT id FROM spool WHERE id > ? ORDER BY id LIMIT 100) RETURNING size",
                    (cursor,),
                ).fetchall()
                if not rows:
                    break
                dropped += len(rows)
                self.bytes -= sum(r[0] for r in rows)
        return dropped

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def last_id(self) -> int:
        with self._lock:
            return self._db.execute("SELECT coalesce(max(id), 0) FROM spool").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class SpooledSink(Sink):
    """Wraps any sink with a spool; the dispatcher sees it as a buffered sink."""

    buffered = True

    def __init__(self, inner: Sink, spool: Spool) -> None:
        super().__init__(inner.config, inner.context)
        self.inner = inner
        self.type_name = inner.type_name  # type: ignore[misc]
        self.spool = spool
        self._cond = threading.Condition()
        self._rowids: dict[int, int] = {}
        """id(envelope) -> spool row id, for envelopes handed to the sink, not yet settled."""
        self._cursor = 0
        self._closing = False
        self._writing = False
        self._feeder: threading.Thread | None = None
        self._last_drop_log = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        waiting = self.spool.open()
        self.context.on_settled = self._settled
        if waiting:
            # they were accepted by an earlier run; count them so accepted - delivered stays honest
            self.stats.add("accepted", waiting)
            self.log.warning("replaying %d envelopes left in the spool by an earlier run", waiting)
        self.inner.open()

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
                self.spool.bytes
                and self.spool.bytes + need > cfg.max_bytes
                and not self.context.shutdown.is_set()
                and not self.context.stopping.is_set()
            ):
                if cfg.on_full == "drop_oldest":
                    dropped = self.spool.drop_oldest_after(self._cursor, need)
                    if dropped:
                        self.stats.add("dropped", dropped)
                        self._log_drop(dropped)
                    if self.spool.bytes + need <= cfg.max_bytes:
                        break
                # block: wait for the sink to acknowledge and free space
                self._cond.wait(0.5)
            self.spool.append(envelopes)
            self._cond.notify_all()

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

    def machines_retired(self, machines: Sequence[str]) -> None:
        """Passed on at once: envelopes still in the spool reach the sink after it."""
        self.inner.machines_retired(machines)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._feeder is not None:
            self._feeder.join()
        try:
            self.inner.close()
        finally:
            left = self.spool.count()
            if left:
                self.log.warning("%d envelopes stay in the spool for the next start", left)
            self.spool.close()

    # -- feeding ----------------------------------------------------------------------------

    def _start_feeder(self) -> None:
        if self._feeder is None:
            self._feeder = threading.Thread(
                target=self._feed, name=f"spool-{self.name}", daemon=True
            )
            self._feeder.start()

    def _feed(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                if self._closing:
                    return
                rows = self.spool.read_after(self._cursor)
                if not rows:
                    self._cond.wait(0.5)
                    continue
                # claim the rows before writing, so drop_oldest never drops what the sink holds
                previous, self._cursor = self._cursor, rows[-1][0]
                self._writing = True
            batch = []
            for rowid, machine, body in rows:
                env = Envelope.from_json(body, machine)
                self._rowids[id(env)] = rowid
                batch.append(env)
            try:
                self.inner.write(batch)
            except Exception as exc:
                for env in batch:
                    self._rowids.pop(id(env), None)
                with self._cond:
                    self._cursor = previous
                    self._writing = False
                self.stats.add("retried", len(batch))
                self.stats.error(f"{type(exc).__name__}: {exc}")
                self.log.error("write failed, retrying from the spool in %.1fs: %s", backoff, exc)
                if self.context.stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if not self.inner.buffered:
                self.context.delivered(batch)
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _settled(self, envelopes: Sequence[Envelope]) -> None:
        ids = [r for r in (self._rowids.pop(id(e), None) for e in envelopes) if r is not None]
        if ids:
            self.spool.delete(ids)
            with self._cond:
                self._cond.notify_all()

    def _log_drop(self, n: int) -> None:
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            self.log.warning(
                "spool full (%d bytes): DROPPED the %d oldest unsent envelopes "
                "(on_full: drop_oldest; %d dropped so far)",
                self.spool.config.max_bytes,
                n,
                self.stats.dropped,
            )
