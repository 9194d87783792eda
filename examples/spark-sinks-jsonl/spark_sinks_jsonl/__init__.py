"""The ``jsonl`` sink: append envelopes to rotating JSON-lines files.

An example third-party plugin for spark-sinks. It uses only the public API
(``spark_sinks`` and, in its tests, ``spark_sinks.testing``).

Files are named ``<prefix>-000001.jsonl``, ``<prefix>-000002.jsonl``, ... in
``directory``; sorting the names gives the order they were written in. A run
continues after the highest number already there, so nothing is overwritten.
A new file is started when the current one would grow beyond ``max_bytes``,
or is older than ``max_age`` seconds.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from pydantic import Field, field_validator

from spark_sinks import Envelope, Sink, SinkConfig, SinkError, hookimpl

__version__ = "0.1.0"


class JsonlConfig(SinkConfig):
    """The ``sinks.<name>`` block of a ``type: jsonl`` sink."""

    type: Literal["jsonl"] = "jsonl"
    directory: Path
    """Where the files go; created if missing."""
    prefix: str = "spark"
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Start a new file rather than grow one beyond this size."""
    max_age: float | None = Field(None, gt=0)
    """Seconds after which a new file is started (unset: only by size)."""
    keep: int | None = Field(None, ge=1)
    """How many files to keep; the oldest are deleted (unset: keep all)."""
    fsync: bool = False
    """Make every flush durable on disk (slower)."""

    @field_validator("prefix")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"{v!r} is not a plain file-name prefix (letters, digits, . _ -)")
        return v


class JsonlSink(Sink):
    type_name = "jsonl"
    Config = JsonlConfig
    config: JsonlConfig

    def open(self) -> None:
        directory = self.config.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create directory {directory}: {exc.strerror}") from None
        existing = self._files()
        self._seq = _number(existing[-1]) if existing else 0
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._opened_at = 0.0

    def check(self) -> str:
        directory = self.config.directory
        if not os.access(directory, os.W_OK | os.X_OK):
            raise SinkError(f"directory {directory} is not writable")
        return f"writing {directory}/{self.config.prefix}-*.jsonl"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        # Unbuffered: when write returns, the lines are in the file (the OS has them),
        # so the core counts them delivered; an exception counts the batch failed.
        try:
            for envelope in envelopes:
                line = envelope.to_json() + b"\n"
                fh = self._file_for(len(line))
                fh.write(line)
                self._size += len(line)
            if self._fh is not None:
                self._fh.flush()
        except OSError as exc:
            raise SinkError(f"cannot write to {self.config.directory}: {exc.strerror}") from None

    def flush(self, timeout: float | None = None) -> None:
        if self._fh is None:
            return
        try:
            self._fh.flush()
            if self.config.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"cannot flush {self._fh.name}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- rotation -----------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        pattern = re.compile(re.escape(self.config.prefix) + r"-(\d{6,})\.jsonl")
        found = [p for p in self.config.directory.iterdir() if pattern.fullmatch(p.name)]
        return sorted(found, key=_number)

    def _file_for(self, size: int) -> IO[bytes]:
        cfg = self.config
        fh = self._fh
        if fh is not None and self._size > 0:
            too_big = self._size + size > cfg.max_bytes
            too_old = cfg.max_age is not None and time.monotonic() - self._opened_at > cfg.max_age
            if too_big or too_old:
                fh.close()
                fh = self._fh = None
        if fh is None:
            self._seq += 1
            path = cfg.directory / f"{cfg.prefix}-{self._seq:06d}.jsonl"
            fh = self._fh = open(path, "ab")  # noqa: SIM115 (kept open across writes)
            self._size = fh.tell()
            self._opened_at = time.monotonic()
            self.log.debug("writing %s", path)
            self._prune()
        return fh

    def _prune(self) -> None:
        keep = self.config.keep
        if keep is None:
            return
        for old in self._files()[:-keep]:
            old.unlink(missing_ok=True)


def _number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(JsonlSink)
