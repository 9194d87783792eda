"""``spark-sinks status``: read the status file a run writes and say whether data flows.

The file is validated before anything is read from it, whatever its shape: a file that is
not JSON, not the expected object, or has keys missing or of the wrong type is one error
line naming the file and the first problem. The verdict's first word is the state of the
whole gateway, and no sink line contradicts it:

- ``OK`` (exit 0): the run is alive and every sink flows;
- ``PROBLEM`` (exit 1): the run is alive, but a sink is STALLED or has LOST envelopes;
- ``STALE`` (exit 1): the file was not rewritten for three intervals (or is dated more
  than that in the future: the clock was set back): is the run alive?
- ``EXITED`` (exit 1): the run has ended; the lines give each sink's final counters.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import format_validation_error
from .errors import SparkSinksError
from .names import NAME
from .sink import MAX_SECONDS, describe, lost_anything

MAX_BYTES = 16 * 1024 * 1024
"""A status file is a few kB per sink; anything this large is not one."""
MAX_EPOCH = 253_402_300_799.0
"""9999-12-31T23:59:59Z: a time beyond it (or before 1970) is no status file's."""


_NAME = NAME
"""A source type or counter name as the status file may hold it."""


class _Model(BaseModel):
    # strict: a counter of "12" or true is a damaged file, not a number
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class SinkStatus(_Model):
    accepted: int = Field(ge=0)
    delivered: int = Field(ge=0)
    retried: int = Field(0, ge=0)
    dead_lettered: int = Field(ge=0)
    dropped: int = Field(ge=0)
    failed: int = Field(ge=0)
    pending: int = Field(ge=0)
    replayed: int = Field(0, ge=0)
    throttled: int = Field(0, ge=0)
    overreported: int = Field(0, ge=0)
    spool_depth: int | None = Field(None, ge=0)
    buffer_envelopes: int | None = Field(None, ge=0)
    buffer_bytes: int | None = Field(None, ge=0)
    corrupt_spools: int = Field(0, ge=0)
    lost_in_corrupt_spool: int = Field(0, ge=0)
    last_error: str | None = None
    last_delivery_at: float | None = Field(None, ge=0, le=MAX_EPOCH)


class InputStatus(_Model):
    items: int = Field(ge=0)
    rejected: int = Field(ge=0)
    # names are printed in a line of their own: a damaged file must not add lines
    source: dict[Annotated[str, Field(pattern=_NAME)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """The source's own counters (``Source.counters()``)."""
    source_type: str = Field("source", pattern=_NAME)


class StatusFile(_Model):
    pid: int = Field(ge=0)
    time: float = Field(ge=0, le=MAX_EPOCH)
    interval: float = Field(60.0, ge=0, le=MAX_SECONDS)
    final: bool = False
    input: InputStatus
    sinks: dict[str, SinkStatus]


def _read_regular(path: Path) -> bytes:
    """At most ``MAX_BYTES + 1`` bytes of a regular file. Opened without waiting, so a
    FIFO or a device in its place is refused instead of hanging the command."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read(MAX_BYTES + 1)


def read_status(path: Path) -> StatusFile:
    """The validated status file; ``SparkSinksError`` (one line) when it cannot be used."""
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        raise SparkSinksError(f"{path}: no status file yet; is spark-sinks running?") from None
    except OSError as exc:
        raise SparkSinksError(f"{path}: cannot read the status file: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise SparkSinksError(f"{path}: not a status file (over {MAX_BYTES} bytes)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SparkSinksError(f"{path}: damaged status file: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SparkSinksError(f"{path}: damaged status file: not a JSON object")
    try:
        return StatusFile.model_validate(data)
    except ValidationError as exc:
        first = format_validation_error(exc).split("; ")[0]
        raise SparkSinksError(f"{path}: damaged status file: {first}") from None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    lines: list[str]
    """The headline first, then one line per sink."""


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    return f"{max(0.0, now - then):.0f}s ago"


def _counts(s: SinkStatus) -> str:
    """The sink's sentence, as the log and the exit summary say it, and its last error."""
    text = describe(s.model_dump())
    return f"{text}; last error: {s.last_error}" if s.last_error else text


def verdict(snap: StatusFile, now: float | None = None) -> Verdict:
    """The verdict; the source's own counters, if it has any, on the line after the
    headline."""
    v = _verdict(snap, now)
    i = snap.input
    if i.source:
        counts = ", ".join(f"{n} {name}" for name, n in i.source.items())
        v.lines.insert(1, f"source {i.source_type}: {counts}")
    return v


def _verdict(snap: StatusFile, now: float | None) -> Verdict:
    now = time.time() if now is None else now
    interval = snap.interval or 60.0
    age = now - snap.time
    head = f"pid {snap.pid}, input {snap.input.items} items, {snap.input.rejected} rejected"
    if snap.final:
        lines = [f"EXITED: {head}; the run ended {_ago(now, snap.time)}"]
        for name, s in snap.sinks.items():
            state = "LOST ENVELOPES" if lost_anything(s.model_dump()) else "all delivered"
            lines.append(f"sink {name}: {state}; {_counts(s)}")
        return Verdict(False, lines)
    if abs(age) > 3 * interval:
        # dated in the future: the clock was set back since; a live run would have
        # rewritten the file within an interval by the new clock
        when = f"{age:.0f}s ago" if age > 0 else f"dated {-age:.0f}s in the future"
        lines = [f"STALE: {head}; last status {when}: is spark-sinks running?"]
        for name, s in snap.sinks.items():
            lines.append(f"sink {name}: last known: {_counts(s)}")
        return Verdict(False, lines)
    problems = []
    sink_lines = []
    for name, s in snap.sinks.items():
        last = s.last_delivery_at
        if s.pending and (last is None or now - last > 3 * interval):
            state = "STALLED"
        elif s.failed or s.dropped or s.corrupt_spools or s.lost_in_corrupt_spool:
            state = "LOST ENVELOPES"
        else:
            state = "flowing"
        if state != "flowing":
            problems.append(f"sink {name} {state}")
        sink_lines.append(f"sink {name}: {state}; last delivery {_ago(now, last)}; {_counts(s)}")
    if problems:
        return Verdict(False, [f"PROBLEM: {', '.join(problems)}; {head}", *sink_lines])
    return Verdict(True, [f"OK: {head}", *sink_lines])
