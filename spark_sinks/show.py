"""Values in messages and dead letters, written as JSON whatever they hold.

A message names a bad value the way the input wrote it (``true``, ``null``, ``"three"``),
and stays one short line even when the value is a 20 MB string or nested 1,000 deep:
``show`` cuts it with an ellipsis and says the full length. ``json_text`` writes any value
in full without recursion, for a dead-letter entry that ``orjson`` cannot encode.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

LIMIT = 100
"""Characters of a value shown in a message."""


class _Raw(str):
    """Punctuation already in JSON form, as opposed to a string value."""

    __slots__ = ()


_END = object()


def _members(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    if isinstance(value, dict):
        yield _Raw("{")
        sep = ""
        for k, v in value.items():
            yield _Raw(f"{sep}{_string(k if isinstance(k, str) else str(k))}:")
            sep = ","
            yield v
        yield _Raw("}")
    else:
        yield _Raw("[")
        for i, v in enumerate(value):
            if i:
                yield _Raw(",")
            yield v
        yield _Raw("]")


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
"""Line breaks to ``str.splitlines`` that JSON may leave raw: escaped, so that a message
stays one line (hypothesis found a sink named "\\x85" splitting a ``status`` error)."""


def _string(s: str) -> str:
    try:
        return orjson.dumps(s).decode().translate(_LINE_BREAKS)
    except TypeError:  # lone surrogates: escape them, as JSON allows
        return json.dumps(s)


def _scalar(v: Any, limit: int | None) -> str:
    if v is None or isinstance(v, bool):
        return "null" if v is None else "true" if v else "false"
    if isinstance(v, int):
        try:
            return str(v)
        except ValueError:  # beyond Python's digit limit for int -> str
            return f'"<an integer of {v.bit_length()} bits>"'
    if isinstance(v, float):
        return orjson.dumps(v).decode() if v == v and abs(v) != float("inf") else repr(v)
    if not isinstance(v, str):
        v = repr(v)  # not a JSON value (a plugin's source may feed anything)
    return _string(v if limit is None else v[: limit + 1])


def _pieces(value: Any, limit: int | None) -> Iterator[str]:
    """The JSON text of ``value`` in pieces, walked with an explicit stack."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        v = next(stack[-1], _END)
        if v is _END:
            stack.pop()
        elif type(v) is _Raw:
            yield v
        elif isinstance(v, dict | list | tuple):
            stack.append(_members(v))
        else:
            yield _scalar(v, limit)


def json_text(value: Any) -> str:
    """The whole of ``value`` as JSON text, however deep or large."""
    return "".join(_pieces(value, None))


def show(value: Any, limit: int = LIMIT) -> str:
    """``value`` as JSON for a message: at most about ``limit`` characters, and when cut,
    an ellipsis and the length of the whole (characters of a string, else of its JSON)."""
    parts: list[str] = []
    size = 0
    for piece in _pieces(value, limit):
        parts.append(piece)
        size += len(piece)
        if size > limit:
            break
    else:
        return "".join(parts)
    if isinstance(value, str):
        whole = f"{len(value):,} characters"
    elif isinstance(value, dict | list | tuple):
        whole = f"{len(value):,} members"
    else:
        whole = f"{size:,} characters"
    return f"{''.join(parts)[:limit]}… ({whole})"
