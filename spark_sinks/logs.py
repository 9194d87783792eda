"""Logging to stderr, human-readable or JSON, with secrets redacted.

Records and metadata go to sinks (stdout for the stdout sink); logs never do.

Every configured secret (each ``SecretStr`` in a sink or source block, registered
by ``config`` at every load, so also by a reload) is replaced by ``***`` in every
form it can take in a line: as is, JSON-escaped, ``repr``-escaped, as the body of a
bytes ``repr`` (botocore's ``Invalid header value b'...'``), stripped of surrounding
whitespace, and those forms escaped once more (a ``repr`` inside a JSON log line); also
percent-encoded once or twice by any encoder (each character as is, ``%XX`` or ``%25XX``
with hex digits in any case, ``%2f`` as ``%2F``; a space also ``+`` or ``%2B``), hex
(lower and upper case) and base64-encoded (standard and URL-safe
alphabets, alone or inside a longer base64 text such as ``user:secret`` in an
``Authorization`` header: the characters that encode only the secret's bytes, at each of
the three alignments; the one or two characters it shares with its neighbours remain).

Specific enough to blank nothing else: a secret shorter than 4 characters is not
redacted (it would blank out words), nor is any form shorter than 4 characters. The
escaped and URL-encoded forms are the secret's characters written longer, as specific as
the secret itself; a hex or base64 form is replaced only from 8 characters on (a piece of
base64 that 4 to 6 bytes leave can be an ordinary word: the secret ``)zwb`` holds
``pendi``), so the base64 of a secret shorter than 7 bytes may stay readable in part.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

_MIN_LEN = 4
_MIN_ENCODED = 8
"""Hex and base64 forms shorter than this are not replaced (see the module's docstring)."""


class _Known(NamedTuple):
    """What ``redact`` replaces, swapped whole so that any thread reads one consistent set."""

    forms: tuple[str, ...]
    """Every literal form of every secret, longest first (replaced whole)."""
    patterns: tuple[re.Pattern[str], ...]
    """Every secret percent-encoded (see ``url_patterns``), longest first; replaced before
    ``forms``, only in a text holding ``%`` or ``+``."""


_lock = threading.Lock()
"""Guards ``_secrets`` and the rebuild of ``_known``; readers take ``_known`` as is."""
_secrets: set[str] = set()
_known = _Known((), ())


def _json(v: str) -> str:
    return orjson.dumps(v).decode()[1:-1]


def _json_ascii(v: str) -> str:
    return json.dumps(v)[1:-1]


def _repr(v: str) -> str:
    return repr(v)[1:-1]


def _bytes_repr(v: str) -> str:
    return repr(v.encode("utf-8", "surrogatepass"))[2:-1]


_ESCAPES: tuple[Callable[[str], str], ...] = (_json, _json_ascii, _repr, _bytes_repr)


def _hex_digit(d: str) -> str:
    """A hex digit as encoders write it: in either case (``%2F``, ``%2f``)."""
    return d if d.isdigit() else f"[{d.upper()}{d.lower()}]"


def _percent(data: bytes, twice: bool) -> str:
    prefix = "%25" if twice else "%"
    return "".join(prefix + "".join(map(_hex_digit, f"{b:02X}")) for b in data)


def _char_pattern(c: str) -> str:
    """A character as any percent-encoder leaves it: as is (encoders differ in what they
    leave), ``%XX`` per UTF-8 byte, or that encoded again (``%25XX``); a space also as
    ``+`` (a form body) and ``%2B`` (a form body inside a URL)."""
    data = c.encode("utf-8", "surrogatepass")
    # the longest first: a ``%`` in the secret is not to match the head of its ``%25``
    ways = [_percent(data, twice=True), _percent(data, twice=False)]
    if c == " ":
        ways += [_percent(b"+", twice=False), r"\+"]
    return "(?:" + "|".join([*ways, re.escape(c)]) + ")"


def _url_pattern(v: str) -> re.Pattern[str]:
    """``v`` percent-encoded once or twice by any encoder, hex digits in any case: each
    match decodes to ``v``, so it is as specific as ``v`` itself."""
    return re.compile("".join(map(_char_pattern, v)))


def _hex_forms(v: str) -> set[str]:
    text = v.encode("utf-8", "surrogatepass").hex()
    return {text, text.upper()}


def _base64_forms(v: str) -> set[str]:
    """The base64 characters that encode only ``v``'s bytes, wherever ``v`` starts in
    the encoded text: one per offset modulo 3, in both alphabets. (Each base64 character
    holds 6 bits, so after ``k`` bytes of a neighbour, the ones from bit ``8k`` up to
    the last whole 6 bits of ``v`` are ``v``'s alone.)"""
    raw = v.encode("utf-8", "surrogatepass")
    out: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(bytes(k) + raw).decode("ascii")
        core = encoded[(8 * k + 5) // 6 : 8 * (k + len(raw)) // 6]
        out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def forms(value: str) -> set[str]:
    """The texts a secret can appear as in a log line, a status file or an error."""
    text: set[str] = set()
    encoded: set[str] = set()
    for v in {value, value.strip()}:
        once = {v, *(escape(v) for escape in _ESCAPES)}
        twice = {escape(x) for x in once for escape in _ESCAPES}
        text |= once | twice
        encoded |= _hex_forms(v) | _base64_forms(v)
    return {f for f in text if len(f) >= _MIN_LEN} | {f for f in encoded if len(f) >= _MIN_ENCODED}


def url_patterns(value: str) -> list[re.Pattern[str]]:
    """The percent-encoded forms of a secret (and of it stripped), longest first."""
    vs = sorted({value, value.strip()}, key=len, reverse=True)
    return [_url_pattern(v) for v in vs if len(v) >= _MIN_LEN]


def add_secret(value: str | None) -> None:
    """Never print this value: every log line, error and status file is scrubbed of it."""
    global _known
    if not value or len(value) < _MIN_LEN:  # forms() drops any form that is too short
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        every = set(_known.forms) | forms(value)
        patterns = [*_known.patterns, *url_patterns(value)]
        _known = _Known(
            tuple(sorted(every, key=len, reverse=True)),
            tuple(sorted(patterns, key=_longest_first)),
        )


def _longest_first(p: re.Pattern[str]) -> int:
    return -len(p.pattern)


def redact(text: str) -> str:
    known = _known
    # percent-encoded forms first: a secret holding ``%`` is the head of its own ``%25``
    if "%" in text or "+" in text:  # what only a percent-encoder writes
        for p in known.patterns:
            text = p.sub("***", text)
    for s in known.forms:
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
