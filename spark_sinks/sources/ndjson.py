"""NDJSON input: one data point or whole record per line, from a file or stdin."""

from __future__ import annotations

import os
import select
import threading
from typing import Literal

import orjson
from pydantic import field_validator

from . import Feed, Source, SourceConfig

_CHUNK = 1 << 16


class NdjsonConfig(SourceConfig):
    type: Literal["ndjson"] = "ndjson"
    path: str = "-"
    """A file, or ``-`` for standard input."""

    @field_validator("path")
    @classmethod
    def _readable(cls, v: str) -> str:
        if v != "-" and not os.access(v, os.R_OK):
            why = "does not exist" if not os.path.exists(v) else "is not readable"
            raise ValueError(f"input file {v!r} {why}")
        return v


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
        loads = orjson.loads
        lineno = 0
        rest = b""
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                feed.flush()
                continue
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                lineno += 1
                if not line.strip():
                    continue
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError as exc:
                    feed.reject(f"{label} line {lineno}", f"invalid JSON: {exc}", line)
                    continue
                feed.item(obj, label, lineno)
            if not select.select([fd], [], [], 0)[0]:
                feed.flush()
        if rest.strip() and not stop.is_set():
            lineno += 1
            try:
                obj = loads(rest)
            except orjson.JSONDecodeError as exc:
                feed.reject(f"{label} line {lineno}", f"invalid JSON: {exc}", rest)
            else:
                feed.item(obj, label, lineno)
        feed.flush()
