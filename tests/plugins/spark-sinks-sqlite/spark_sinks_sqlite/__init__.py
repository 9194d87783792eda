"""The ``sqlite`` sink: envelopes in a SQLite table, committed in batches.

A buffered sink: ``write`` queues, a commit (every ``batch_size`` envelopes, and at
each flush) delivers, and only then are the envelopes reported delivered.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from spark_sinks import Envelope, Sink, SinkConfig, SinkError, hookimpl


class SqliteConfig(SinkConfig):
    type: Literal["sqlite"] = "sqlite"
    path: Path
    """The database file; created if missing."""
    table: str = "envelopes"
    batch_size: int = Field(100, gt=0)
    """Commit after this many envelopes (and at every flush)."""

    @field_validator("table")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"{v!r} is not a plain SQL table name (letters, digits, _)")
        return v


class SqliteSink(Sink):
    type_name = "sqlite"
    Config = SqliteConfig
    buffered = True

    def open(self) -> None:
        cfg = self.config
        try:
            self.db = sqlite3.connect(cfg.path)
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {cfg.table} "
                "(id INTEGER PRIMARY KEY, type TEXT, host TEXT, machine TEXT, json TEXT)"
            )
        except sqlite3.Error as exc:
            raise SinkError(f"cannot open {cfg.path}: {exc}") from None
        self.queue: list[Envelope] = []

    def check(self) -> str:
        try:
            self.db.execute(f"SELECT count(*) FROM {self.config.table}").fetchone()
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read table {self.config.table}: {exc}") from None
        return f"table {self.config.table} in {self.config.path}"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self.queue.extend(envelopes)
        if len(self.queue) >= self.config.batch_size:
            # Once queued, an envelope must not be counted failed by a raising write:
            # a failed commit keeps it queued for the next one (at the latest, flush).
            try:
                self._commit()
            except SinkError as exc:
                self.log.warning("%s; retrying at the next commit", exc)

    def flush(self, timeout: float | None = None) -> None:
        self._commit()

    def close(self) -> None:
        self.db.close()

    def _commit(self) -> None:
        batch, self.queue = self.queue, []
        if not batch:
            return
        rows = [(e.type, e.host, e.machine, e.to_json().decode()) for e in batch]
        try:
            with self.db:
                self.db.executemany(
                    f"INSERT INTO {self.config.table} (type, host, machine, json) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.Error as exc:
            self.queue[:0] = batch  # keep them for the next commit
            raise SinkError(f"cannot insert into {self.config.table}: {exc}") from None
        self.context.delivered(batch)


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(SqliteSink)
