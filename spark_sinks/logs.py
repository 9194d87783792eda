"""Logging to stderr, human-readable or JSON, with secrets redacted.

Records and metadata go to sinks (stdout for the stdout sink); logs never do.

Every configured secret (each ``SecretStr`` in a sink or source block, registered
by ``config`` at every load, so also by a reload) is replaced by ``***`` in every
form it can take in a line: as is, JSON-escaped, ``repr``-escaped, as the body of a
bytes ``repr`` (botocore's ``Invalid header value b'...'``), stripped of surrounding
whitespace, and those forms escaped once more (a ``repr`` inside a JSON log line).
Values shorter than 4 characters are not redacted (they would blank out words).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

_MIN_LEN = 4
_lock = threading.Lock()
"""Guards ``_secrets`` and the rebuild of ``_forms``; readers take ``_forms`` as is."""
_secrets: set[str] = set()
_forms: tuple[str, ...] = ()
"""Every form of every secret, longest first (replaced whole, by any thread)."""


def _json(v: str) -> str:
    return orjson.dumps(v).decode()[1:-1]


def _json_ascii(v: str) -> str:
    return json.dumps(v)[1:-1]


def _repr(v: str) -> str:
    return repr(v)[1:-1]


def _bytes_repr(v: str) -> str:
    return repr(v.encode("utf-8", "surrogatepass"))[2:-1]


_ESCAPES: tuple[Callable[[str], str], ...] = (_json, _json_ascii, _repr, _bytes_repr)


def forms(value: str) -> set[str]:
    """The texts a secret can appear as in a log line, a status file or an error."""
    out: set[str] = set()
    for v in {value, value.strip()}:
        once = {v, *(escape(v) for escape in _ESCAPES)}
        twice = {escape(x) for x in once for escape in _ESCAPES}
        out |= once | twice
    return {f for f in out if len(f) >= _MIN_LEN}


def add_secret(value: str | None) -> None:
    """Never print this value: every log line, error and status file is scrubbed of it."""
    global _forms
    if not value or len(value) < _MIN_LEN:  # forms() drops any form that is too short
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        every = set(_forms) | forms(value)
        _forms = tuple(sorted(every, key=len, reverse=True))


def redact(text: str) -> str:
    for s in _forms:
        if s in text:
            text = text.replace(s, "***")
    return text


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            # redacted before encoding too: JSON escapes a secret's quotes and backslashes
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return redact(orjson.dumps(entry).decode())


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore is chatty at INFO about credentials discovery; its warnings still show.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, root.level))
