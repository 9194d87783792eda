"""NDJSON input: one data point or whole record per line, from a file or stdin."""

from __future__ import annotations

import hashlib
import os
import select
import threading
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from ..show import show
from . import Feed, SkippedLine, Source, SourceConfig

_CHUNK = 1 << 16
_HEAD = 1024
"""Bytes of an over-long line kept for the dead-letter file."""

MAX_LINE_BYTES = 2 << 20
"""Kinesis takes records of up to 1 MiB, and a record's values appear in its envelope as
they were written in its line: a longer line could only fit with much whitespace. 2 MiB
leaves that margin and still bounds what one line costs in memory."""


_BOM = b"\xef\xbb\xbf"


def _after_bom(line: bytes, exc: orjson.JSONDecodeError) -> Any:
    """The object of a line that starts with a UTF-8 byte order mark (a file written by a
    Windows tool, or such files joined mid-stream): RFC 8259 lets a parser ignore it, as
    the config loader does. Tried only once the line failed, so good lines pay nothing.
    Re-raises ``exc`` for any other line."""
    if not line.startswith(_BOM):
        raise exc
    return orjson.loads(line[len(_BOM) :])


class NdjsonConfig(SourceConfig):
    type: Literal["ndjson"] = "ndjson"
    path: str = "-"
    """A file, or ``-`` for standard input."""
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1)
    """A longer line is skipped as it streams past (never held whole) and rejected."""

    @field_validator("path")
    @classmethod
    def _readable(cls, v: str) -> str:
        if v != "-" and not os.access(v, os.R_OK):
            why = "does not exist" if not os.path.exists(v) else "is not readable"
            raise ValueError(f"input file {show(v)} {why}")
        return v


class _Partial:
    """The start of a line that spans reads. Kept while within the limit; beyond it only
    counted and hashed as it streams past, so a line of any length costs bounded memory.
    Joined once when it ends, so reading stays linear in the line's length."""

    __slots__ = ("digest", "head", "limit", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.head = b""
        self.digest: hashlib._Hash | None = None

    @property
    def skipping(self) -> bool:
        return self.digest is not None

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.digest is not None:
            self.digest.update(data)
        elif self.size > self.limit:
            self.parts.append(data)
            kept = b"".join(self.parts)
            self.head = kept[:_HEAD]
            self.digest = hashlib.sha256(kept)
            self.parts = []
        elif data:
            self.parts.append(data)

    def take(self, end: bytes) -> bytes | SkippedLine:
        """The whole line, ending with ``end``; or its summary if it was too long."""
        if not self.size and len(end) <= self.limit:
            return end  # the usual case: the line began in this read
        self.add(end)
        line: bytes | SkippedLine
        if self.digest is not None:
            line = SkippedLine(self.head, self.size, self.digest.hexdigest())
        else:
            line = b"".join(self.parts)
        self.parts, self.size, self.head, self.digest = [], 0, b"", None
        return line


class NdjsonSource(Source):
    type_name = "ndjson"
    Config = NdjsonConfig
    config: NdjsonConfig

    def run(self, feed: Feed, stop: threading.Event) -> None:
        path = self.config.path
        if path == "-":
            fd, label = 0, "stdin"
        else:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                feed.reject(path, f"cannot open input: {exc.strerror}")
                return
            label = path
        try:
            self._read(fd, label, feed, stop)
        finally:
            if fd != 0:
                os.close(fd)

    def _read(self, fd: int, label: str, feed: Feed, stop: threading.Event) -> None:
        # select() with a timeout lets a signal-set ``stop`` end a blocked read cleanly,
        # and tells us when the writer pauses so that assembled records go out at once.
        limit = self.config.max_line_bytes
        # A line between two newlines of one read is shorter than the read, so within the
        # limit: only the line continued from earlier reads needs checking.
        size = min(_CHUNK, limit + 1)
        lines = _Lines(label, feed, limit)
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                feed.flush()
                continue
            chunk = os.read(fd, size)
            if not chunk:
                break
            if lines.add(chunk) and not select.select([fd], [], [], 0)[0]:
                feed.flush()
        if not stop.is_set():
            lines.end()
        feed.flush()


class _Lines:
    """Splits what is read into lines and feeds each one; owned by the reading thread."""

    __slots__ = ("feed", "label", "limit", "lineno", "partial")

    def __init__(self, label: str, feed: Feed, limit: int) -> None:
        self.label = label
        self.feed = feed
        self.limit = limit
        self.lineno = 0
        self.partial = _Partial(limit)

    def add(self, chunk: bytes) -> bool:
        """One read; False when no line ended in it."""
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self.partial.add(chunk)
            if self.partial.skipping:
                self.feed.flush()  # what came before the long line goes out meanwhile
            return False
        rest = lines.pop()
        first = self.partial.take(lines[0])
        if isinstance(first, SkippedLine):
            self._too_long(first)
            del lines[0]
        else:
            lines[0] = first
        self.partial.add(rest)
        self._feed(lines)
        return True

    def end(self) -> None:
        """The input ended: a last line without a newline still counts."""
        if not self.partial.size:
            return
        last = self.partial.take(b"")
        if isinstance(last, SkippedLine):
            self._too_long(last)
        else:
            self._feed([last])

    def _feed(self, lines: list[bytes]) -> None:
        feed, label, loads = self.feed, self.label, orjson.loads
        lineno = self.lineno
        for line in lines:
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    obj = _after_bom(line, exc)
                except orjson.JSONDecodeError as bad:
                    feed.reject(f"{label} line {lineno}", f"invalid JSON: {bad}", line)
                    continue
            feed.item(obj, label, lineno, line)
        self.lineno = lineno

    def _too_long(self, line: SkippedLine) -> None:
        self.lineno += 1
        self.feed.reject(
            f"{self.label} line {self.lineno}",
            f"line of {line.length:,} bytes is longer than source.max_line_bytes "
            f"({self.limit:,}); skipped",
            line,
        )
