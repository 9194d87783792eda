"""Sparkplug B datatypes and values for Spark data (Eclipse Sparkplug 3.0.0, chapter
"Payloads"):

* signed integers travel as two's complement in the unsigned field of their size class
  (``Int8``/``Int16``/``Int32`` in ``int_value``, ``Int64`` in ``long_value``); decoding
  sign-extends from the datatype's own width, so encoders that wrap at 8 or 16 bits are
  read correctly too;
* every ``*Array`` type is ``bytes_value``: packed little-endian elements; ``BooleanArray``
  is a 4-byte little-endian count followed by the bits, first element in the most
  significant bit; ``StringArray`` is NUL-terminated UTF-8 strings.

Spark formats map as follows: ``int8``..``uint64`` to ``Int8``..``UInt64``, ``float`` to
``Float`` (32 bits, as declared), ``double`` to ``Double``, ``bool``/``boolean`` to
``Boolean``, ``char``/``string`` to ``String``, and ``object``/``any`` to ``String``
holding the value as JSON. A list value of a scalar format becomes the matching array
type; a list that an array type cannot hold (a ``null`` element, a NUL in a string) and
any list of ``object`` values become a JSON ``String``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import orjson

from . import sparkplug_b_pb2 as pb
from .errors import SparkplugError

DT = pb.DataType
_SCALAR: dict[str, int] = {
    "int8": DT.Int8,
    "int16": DT.Int16,
    "int32": DT.Int32,
    "int64": DT.Int64,
    "uint8": DT.UInt8,
    "uint16": DT.UInt16,
    "uint32": DT.UInt32,
    "uint64": DT.UInt64,
    "float": DT.Float,
    "double": DT.Double,
    "bool": DT.Boolean,
    "boolean": DT.Boolean,
    "char": DT.String,
    "string": DT.String,
}
_ARRAY_OF: dict[int, int] = {
    DT.Int8: DT.Int8Array,
    DT.Int16: DT.Int16Array,
    DT.Int32: DT.Int32Array,
    DT.Int64: DT.Int64Array,
    DT.UInt8: DT.UInt8Array,
    DT.UInt16: DT.UInt16Array,
    DT.UInt32: DT.UInt32Array,
    DT.UInt64: DT.UInt64Array,
    DT.Float: DT.FloatArray,
    DT.Double: DT.DoubleArray,
    DT.Boolean: DT.BooleanArray,
    DT.String: DT.StringArray,
    DT.DateTime: DT.DateTimeArray,
}
_ELEMENT_OF: dict[int, int] = {v: k for k, v in _ARRAY_OF.items()}
_PACK: dict[int, str] = {  # struct codes of the packed array elements (little-endian)
    DT.Int8Array: "b",
    DT.Int16Array: "h",
    DT.Int32Array: "i",
    DT.Int64Array: "q",
    DT.UInt8Array: "B",
    DT.UInt16Array: "H",
    DT.UInt32Array: "I",
    DT.UInt64Array: "Q",
    DT.FloatArray: "f",
    DT.DoubleArray: "d",
    DT.DateTimeArray: "Q",
}
_INT_BITS: dict[int, tuple[int, bool]] = {
    DT.Int8: (8, True),
    DT.Int16: (16, True),
    DT.Int32: (32, True),
    DT.Int64: (64, True),
    DT.UInt8: (8, False),
    DT.UInt16: (16, False),
    DT.UInt32: (32, False),
    DT.UInt64: (64, False),
}
_LONG: frozenset[int] = frozenset({DT.Int64, DT.UInt64, DT.DateTime})
_STRINGS: frozenset[int] = frozenset({DT.String, DT.Text, DT.UUID})
_FLOAT32_MAX = 3.4028234663852886e38


def datatype_for(spark_format: str, array: bool = False) -> int:
    """The Sparkplug datatype declared for a Spark variable."""
    scalar = _SCALAR.get(spark_format)
    if scalar is None:  # object, any: JSON text
        return DT.String
    return _ARRAY_OF[scalar] if array else scalar


def value_datatype(spark_format: str, value: Any) -> int:
    """The datatype a value of a Spark format travels as (lists become arrays if they can)."""
    scalar = _SCALAR.get(spark_format)
    if scalar is None:
        return DT.String
    if type(value) is not list:
        return scalar
    if any(v is None for v in value):
        return DT.String
    if scalar == DT.String and any(type(v) is str and "\0" in v for v in value):
        return DT.String
    return _ARRAY_OF[scalar]


def is_json_text(spark_format: str, datatype: int, value: Any) -> bool:
    """Whether a value travels as JSON text in a ``String`` (objects, unpackable lists)."""
    if datatype != DT.String:
        return False
    return spark_format not in ("char", "string") or type(value) is list


def _int_in_range(value: Any, datatype: int) -> int:
    bits, signed = _INT_BITS[datatype]
    if type(value) is not int:
        raise SparkplugError(f"{value!r} is not an integer for {DT.Name(datatype)}")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise SparkplugError(f"{value} is out of range for {DT.Name(datatype)}")
    return value


def set_value(metric: Any, datatype: int, value: Any, json_text: bool = False) -> None:
    """Put ``value`` into ``metric`` (a ``Payload.Metric``) as ``datatype``.

    ``None`` sets ``is_null``. ``json_text`` stores any value as its JSON in a ``String``.
    Raises ``SparkplugError`` for a value the datatype cannot carry."""
    metric.datatype = datatype
    if value is None:
        metric.is_null = True
        return
    if json_text:
        try:
            metric.string_value = orjson.dumps(value).decode()
        except TypeError as exc:  # orjson.JSONEncodeError: an integer beyond 64 bits, ...
            raise SparkplugError(f"the value cannot be written as JSON: {exc}") from None
    elif datatype in _INT_BITS:
        v = _int_in_range(value, datatype)
        if datatype in _LONG:
            metric.long_value = v & 0xFFFF_FFFF_FFFF_FFFF
        else:
            metric.int_value = v & 0xFFFF_FFFF
    elif datatype == DT.Float:
        metric.float_value = _float32(value)
    elif datatype == DT.Double:
        metric.double_value = _number(value)
    elif datatype == DT.Boolean:
        if type(value) is not bool:
            raise SparkplugError(f"{value!r} is not a boolean")
        metric.boolean_value = value
    elif datatype in _STRINGS:
        if type(value) is not str:
            raise SparkplugError(f"{value!r} is not a string")
        metric.string_value = value
    elif datatype == DT.DateTime:
        metric.long_value = _uint64(value, "DateTime")
    elif datatype in _ELEMENT_OF:
        metric.bytes_value = encode_array(datatype, value)
    elif datatype in (DT.Bytes, DT.File):
        metric.bytes_value = bytes(value)
    else:
        raise SparkplugError(f"datatype {datatype} is not supported here")


def get_value(metric: Any) -> Any:
    """The Python value of a decoded ``Payload.Metric`` (``None`` when it is null)."""
    if metric.is_null:
        return None
    datatype = metric.datatype
    which = metric.WhichOneof("value")
    if which is None:
        return None
    raw = getattr(metric, which)
    if datatype in _INT_BITS:
        bits, signed = _INT_BITS[datatype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if signed and raw >> (bits - 1) else raw
    if datatype in _ELEMENT_OF and which == "bytes_value":
        return decode_array(datatype, raw)
    return raw


def encode_array(datatype: int, values: Sequence[Any]) -> bytes:
    """Pack a list as the ``bytes_value`` of an array datatype."""
    if not isinstance(values, list | tuple):
        raise SparkplugError(f"{DT.Name(datatype)} needs a list, not {type(values).__name__}")
    if any(v is None for v in values):
        raise SparkplugError(f"{DT.Name(datatype)} cannot hold null elements")
    if datatype == DT.BooleanArray:
        return _pack_bools(values)
    if datatype == DT.StringArray:
        out = bytearray()
        for v in values:
            if type(v) is not str or "\0" in v:
                raise SparkplugError(f"{v!r} is not a string without NUL characters")
            out += v.encode() + b"\0"
        return bytes(out)
    element = _ELEMENT_OF[datatype]
    if element in _INT_BITS:
        items: list[Any] = [_int_in_range(v, element) for v in values]
    elif element == DT.Float:
        items = [_float32(v) for v in values]
    elif element == DT.Double:
        items = [_number(v) for v in values]
    else:  # DateTime
        items = [_uint64(v, "DateTime") for v in values]
    return struct.pack(f"<{len(items)}{_PACK[datatype]}", *items)


def decode_array(datatype: int, data: bytes) -> list[Any]:
    """Unpack the ``bytes_value`` of an array datatype; raises ``SparkplugError`` if malformed."""
    if datatype == DT.BooleanArray:
        if len(data) < 4:
            raise SparkplugError("BooleanArray is shorter than its 4-byte count")
        (count,) = struct.unpack_from("<I", data)
        if len(data) - 4 < (count + 7) // 8:
            raise SparkplugError(f"BooleanArray of {count} values has too few bytes")
        return [bool(data[4 + i // 8] >> (7 - i % 8) & 1) for i in range(count)]
    if datatype == DT.StringArray:
        if data and not data.endswith(b"\0"):
            raise SparkplugError("StringArray does not end with a NUL")
        try:
            return [s.decode() for s in data.split(b"\0")[:-1]]
        except UnicodeDecodeError:
            raise SparkplugError("StringArray holds invalid UTF-8") from None
    code = _PACK[datatype]
    size = struct.calcsize(code)
    if len(data) % size:
        raise SparkplugError(f"{DT.Name(datatype)} of {len(data)} bytes is not whole elements")
    return list(struct.unpack(f"<{len(data) // size}{code}", data))


def _pack_bools(values: Sequence[Any]) -> bytes:
    out = bytearray(struct.pack("<I", len(values)))
    out += bytes((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if type(v) is not bool:
            raise SparkplugError(f"{v!r} is not a boolean")
        if v:
            out[4 + i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def _number(value: Any) -> float:
    if type(value) not in (int, float):
        raise SparkplugError(f"{value!r} is not a number")
    try:
        v = float(value)
    except OverflowError:
        raise SparkplugError(f"{value} is too large for a double") from None
    if type(value) is int and int(v) != value:  # beyond 2**53: a double would round it
        raise SparkplugError(f"{value} cannot be carried exactly by a double (use int64)")
    return v


def _float32(value: Any) -> float:
    v = _number(value)
    if math.isfinite(v) and abs(v) > _FLOAT32_MAX:
        raise SparkplugError(f"{value} is too large for a 32-bit Float")
    return v


def _uint64(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise SparkplugError(f"{value!r} is not a {what} (milliseconds since 1970, unsigned)")
    return value
