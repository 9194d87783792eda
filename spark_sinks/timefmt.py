"""Timestamps as the original's JavaScript ``Date`` wrote them: ``2026-11-26T10:00:00.000Z``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
is_canonical = _CANONICAL.match


_last: list[Any] = [None, ""]
"""The last second formatted, and its text: consecutive samples share their second."""


def format_ms(epoch_ms: int) -> str:
    sec, ms = divmod(epoch_ms, 1000)
    last = _last
    if last[0] != sec:
        last[1] = f"{datetime.fromtimestamp(sec, UTC):%Y-%m-%dT%H:%M:%S}."
        last[0] = sec
    return f"{last[1]}{ms:03d}Z"


def now() -> str:
    return format_ms(time.time_ns() // 1_000_000)


def normalize(value: object) -> str:
    """Turn an input time into the canonical UTC string.

    Accepts an ISO 8601 string (a missing offset means UTC) or a number of
    milliseconds since the epoch, as JavaScript counts. Raises ``ValueError``
    with a readable message otherwise.
    """
    if isinstance(value, str):
        if _CANONICAL.match(value):
            return value
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time {value!r} is not an ISO 8601 timestamp") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return format_ms(int(dt.timestamp() * 1000 + (0.5 if dt.timestamp() >= 0 else -0.5)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_ms(int(value))
    raise ValueError(f"time {value!r} must be an ISO 8601 string or epoch milliseconds")
