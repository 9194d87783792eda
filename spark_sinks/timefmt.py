"""Timestamps as the original's JavaScript ``Date`` wrote them: ``2026-11-26T10:00:00.000Z``.

Only times in years 1 to 9999 can be written so; any other is a bad input item.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .show import show

_CANONICAL = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z\Z"
)

_MIN_SEC = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_MAX_SEC = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_last: list[Any] = [None, ""]
"""The last second formatted, and its text: consecutive samples share their second."""

_MS_TEXT = tuple(f"{ms:03d}Z" for ms in range(1000))
"""The end of a canonical time, by millisecond: cheaper than formatting it each time."""

_last_date: list[str] = [""]
"""The last canonical date found valid: consecutive samples share their day."""


def is_canonical(value: str) -> bool:
    """Is ``value`` already in canonical form, and a real date (no 30 February)?"""
    if _CANONICAL.match(value) is None:
        return False
    day = value[:10]
    if day != _last_date[0]:
        try:
            date.fromisoformat(day)
        except ValueError:
            return False
        _last_date[0] = day
    return True


def format_ms(epoch_ms: int) -> str:
    """Raises ``ValueError`` for a time outside years 1 to 9999."""
    sec, ms = divmod(epoch_ms, 1000)
    last = _last
    if last[0] != sec:
        if not _MIN_SEC <= sec <= _MAX_SEC:
            raise _outside(epoch_ms)
        # isoformat, not strftime: %Y leaves out the leading zeros of years before 1000
        last[1] = f"{datetime.fromtimestamp(sec, UTC).isoformat(timespec='seconds')[:19]}."
        last[0] = sec
    second: str = last[1]
    return second + _MS_TEXT[ms]


def _outside(value: object) -> ValueError:
    return ValueError(f"time {show(value)} is outside the years 1 to 9999")


def now() -> str:
    return format_ms(time.time_ns() // 1_000_000)


def normalize(value: object) -> str:
    """Turn an input time into the canonical UTC string.

    Accepts an ISO 8601 string (a missing offset means UTC) or a number of
    milliseconds since the epoch, as JavaScript counts. Raises ``ValueError``
    with a readable message otherwise.
    """
    if isinstance(value, str):
        if is_canonical(value):
            return value
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time {show(value)} is not an ISO 8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            # the millisecond it falls in, exactly (no float): further digits are dropped,
            # as JavaScript's Date.parse does, never rounded into the next second or year
            return format_ms((dt - _EPOCH) // _MS)
        except (OverflowError, ValueError):  # e.g. year 1 with an offset east of UTC
            raise _outside(value) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return format_ms(value)
    if isinstance(value, float):
        if not _MIN_SEC * 1000 <= value < (_MAX_SEC + 1) * 1000:  # also false for NaN
            raise _outside(value)
        return format_ms(int(value))
    raise ValueError(f"time {show(value)} must be an ISO 8601 string or epoch milliseconds")
