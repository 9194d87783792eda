"""A minimal protobuf wire-format reader, independent of the protobuf library.

Tests use it to check Sparkplug B payloads by field number and wire type, so that a
mistake shared by our ``.proto`` and our codec cannot hide behind a round trip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VARINT, I64, LEN, I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Field:
    number: int
    wire_type: int
    value: int | bytes
    """An ``int`` for VARINT, I64 and I32 (raw, unsigned), the bytes for LEN."""

    @property
    def double(self) -> float:
        assert self.wire_type == I64 and isinstance(self.value, int)
        return float(struct.unpack("<d", self.value.to_bytes(8, "little"))[0])

    @property
    def float(self) -> float:
        assert self.wire_type == I32 and isinstance(self.value, int)
        return float(struct.unpack("<f", self.value.to_bytes(4, "little"))[0])

    @property
    def text(self) -> str:
        assert isinstance(self.value, bytes)
        return self.value.decode()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def fields(data: bytes) -> list[Field]:
    """Every top-level field of a message, in wire order."""
    out = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _varint(data, pos)
        elif wire_type == I64:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire_type == I32:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        elif wire_type == LEN:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated field")
        out.append(Field(number, wire_type, value))
    return out


def by_number(data: bytes) -> dict[int, list[Field]]:
    grouped: dict[int, list[Field]] = {}
    for f in fields(data):
        grouped.setdefault(f.number, []).append(f)
    return grouped
