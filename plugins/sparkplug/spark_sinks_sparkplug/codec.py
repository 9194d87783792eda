"""Sparkplug B payloads for Spark data: datatypes, values, and the message builders.

Follows the Eclipse Sparkplug 3.0.0 specification, chapter "Payloads":

* signed integers travel as two's complement in the unsigned field of their size class
  (``Int8``/``Int16``/``Int32`` in ``int_value``, ``Int64`` in ``long_value``); decoding
  sign-extends from the datatype's own width, so encoders that wrap at 8 or 16 bits are
  read correctly too;
* every ``*Array`` type is ``bytes_value``: packed little-endian elements; ``BooleanArray``
  is a 4-byte little-endian count followed by the bits, first element in the most
  significant bit; ``StringArray`` is NUL-terminated UTF-8 strings;
* ``seq`` runs 0..255 and wraps; NBIRTH carries 0, NDEATH none; ``bdSeq`` (an ``Int64``
  metric in NBIRTH and NDEATH) counts MQTT connections, also wrapping after 255.

Spark formats map as follows: ``int8``..``uint64`` to ``Int8``..``UInt64``, ``float`` to
``Float`` (32 bits, as declared), ``double`` to ``Double``, ``bool``/``boolean`` to
``Boolean``, ``char``/``string`` to ``String``, and ``object``/``any`` to ``String``
holding the value as JSON. A list value of a scalar format becomes the matching array
type; a list that an array type cannot hold (a ``null`` element, a NUL in a string) and
any list of ``object`` values become a JSON ``String``.
"""

from __future__ import annotations

import calendar
import math
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import sparkplug_b_pb2 as pb

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
SPARK_FORMAT = "format"
"""DBIRTH metric property naming the Spark format (``object`` values are JSON text)."""
DESCRIPTION = "description"

NBIRTH, NDEATH, NDATA, NCMD = "NBIRTH", "NDEATH", "NDATA", "NCMD"
DBIRTH, DDEATH, DDATA, DCMD = "DBIRTH", "DDEATH", "DDATA", "DCMD"
STATE = "STATE"
MESSAGE_TYPES = frozenset({NBIRTH, NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA, DCMD})
NODE_TYPES = frozenset({NBIRTH, NDEATH, NDATA, NCMD})

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


class SparkplugError(ValueError):
    """A value, topic or payload that Sparkplug B cannot carry; the message says why."""


# -- topics ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topic:
    """``spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]``."""

    group_id: str
    message_type: str
    edge_node_id: str
    device_id: str | None = None

    def __str__(self) -> str:
        parts = [NAMESPACE, self.group_id, self.message_type, self.edge_node_id]
        if self.device_id is not None:
            parts.append(self.device_id)
        return "/".join(parts)


def topic_problem(text: str) -> str | None:
    """Why ``text`` cannot be (part of) a topic to publish on, or None.

    Besides the wildcards, brokers refuse what MQTT calls malformed UTF-8: NUL, control
    characters (U+0001..U+001F, U+007F..U+009F), surrogates and non-characters; Mosquitto
    then closes the connection, so such a topic must never be published."""
    bad = sorted({c for c in text if c in "+#" or _malformed(ord(c))})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)}, not allowed in an MQTT topic"
    if len(text.encode(errors="surrogatepass")) > 65535:
        return "is longer than the 65535 bytes of an MQTT topic"
    return None


def _malformed(cp: int) -> bool:
    return (
        cp <= 0x1F
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFE == 0xFFFE
    )


def check_id(value: str, what: str) -> str:
    """A group, edge node or device ID: a topic level without ``/``, wildcards or
    characters MQTT refuses."""
    if not value:
        raise SparkplugError(f"{what} is empty")
    problem = "contains '/', not allowed in a Sparkplug ID" if "/" in value else None
    problem = problem or topic_problem(value)
    if problem:
        raise SparkplugError(f"{what} {value!r} {problem}")
    return value


def topic(group_id: str, message_type: str, edge_node_id: str, device_id: str | None = None) -> str:
    if device_id is not None:
        check_id(device_id, "device ID")
    return str(Topic(group_id, message_type, edge_node_id, device_id))


def parse_topic(text: str) -> Topic:
    """Split a Sparkplug B topic; raises ``SparkplugError`` naming what is wrong."""
    parts = text.split("/")
    if len(parts) < 4 or parts[0] != NAMESPACE:
        raise SparkplugError(f"topic {text!r} is not spBv1.0/<group>/<type>/<edge node>[/<device>]")
    if len(parts) > 5:
        raise SparkplugError(f"topic {text!r} has more than five levels")
    kind = parts[2]
    if kind not in MESSAGE_TYPES:
        raise SparkplugError(f"topic {text!r}: {kind!r} is not a Sparkplug message type")
    device = parts[4] if len(parts) == 5 else None
    if (device is None) != (kind in NODE_TYPES):
        raise SparkplugError(
            f"topic {text!r}: a {kind} topic {'needs' if device is None else 'has no'} device ID"
        )
    return Topic(parts[1], kind, parts[3], device)


# -- datatypes and values -------------------------------------------------------------------


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


# -- timestamps -----------------------------------------------------------------------------

_last_second: list[Any] = ["", 0]
"""The last ``YYYY-MM-DDTHH:MM:SS`` parsed and its epoch seconds: samples share seconds."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def spark_time_ms(text: str) -> int:
    """Milliseconds since the epoch of a Spark time (``2026-11-26T10:00:00.000Z``)."""
    head, last = text[:19], _last_second
    try:
        if last[0] != head:
            secs = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
            last[0], last[1] = head, secs
        ms = int(last[1]) * 1000 + (int(text[20:23]) if len(text) >= 23 else 0)
    except (ValueError, TypeError):
        raise SparkplugError(f"time {text!r} is not a Spark timestamp") from None
    if ms < 0:
        raise SparkplugError(f"time {text!r} is before 1970: Sparkplug timestamps are unsigned")
    return ms


# -- Spark metadata and records ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of a device birth: what a Spark variable is declared as."""

    name: str
    datatype: int
    spark_format: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class MetricValue:
    name: str
    datatype: int
    value: Any
    timestamp: int
    json_text: bool = False


def metric_defs(variables: Mapping[str, Any]) -> list[MetricDef]:
    """Birth metrics from a Spark metadata envelope's ``data["variables"]``."""
    out = []
    for key, var in variables.items():
        fmt = str(var.get("format", "object"))
        out.append(
            MetricDef(
                name=str(var.get("name") or key),
                datatype=datatype_for(fmt, bool(var.get("array"))),
                spark_format=fmt,
                description=var.get("description"),
            )
        )
    return out


def record_values(attributes: Mapping[str, Any], timestamp: int) -> list[MetricValue]:
    """Metric values from a Spark record's ``data["attributes"]``."""
    out = []
    for key, attr in attributes.items():
        fmt = str(attr.get("format", "object"))
        value = attr.get("value")
        datatype = value_datatype(fmt, value)
        out.append(
            MetricValue(
                name=str(attr.get("name") or key),
                datatype=datatype,
                value=value,
                timestamp=timestamp,
                json_text=is_json_text(fmt, datatype, value),
            )
        )
    return out


# -- payloads -------------------------------------------------------------------------------


def _payload(seq: int | None, timestamp: int | None) -> Any:
    p = pb.Payload()
    p.timestamp = now_ms() if timestamp is None else timestamp
    if seq is not None:
        if not 0 <= seq <= 255:
            raise SparkplugError(f"seq {seq} is outside 0..255")
        p.seq = seq
    return p


def _bd_seq_metric(p: Any, bd_seq: int, timestamp: int) -> None:
    m = p.metrics.add()
    m.name = BD_SEQ
    m.timestamp = timestamp
    set_value(m, DT.Int64, bd_seq)


def nbirth(bd_seq: int, seq: int = 0, timestamp: int | None = None) -> bytes:
    """The edge node's birth: ``bdSeq`` and ``Node Control/Rebirth`` (false)."""
    p = _payload(seq, timestamp)
    _bd_seq_metric(p, bd_seq, p.timestamp)
    m = p.metrics.add()
    m.name = REBIRTH
    m.timestamp = p.timestamp
    set_value(m, DT.Boolean, False)
    return bytes(p.SerializeToString())


def ndeath(bd_seq: int, timestamp: int | None = None) -> bytes:
    """The edge node's death (the MQTT will): ``bdSeq`` only, no ``seq``."""
    p = _payload(None, timestamp)
    _bd_seq_metric(p, bd_seq, p.timestamp)
    return bytes(p.SerializeToString())


def dbirth(
    metrics: Iterable[MetricDef],
    seq: int,
    timestamp: int | None = None,
    aliases: Mapping[str, int] | None = None,
) -> bytes:
    """A device's birth: every metric with its name and datatype, value null (none yet),
    the Spark format and description as metric properties; with ``aliases`` (name ->
    alias, unique across the edge node) each metric's alias too."""
    p = _payload(seq, timestamp)
    for d in metrics:
        m = p.metrics.add()
        m.name = d.name
        if aliases is not None:
            m.alias = aliases[d.name]
        m.timestamp = p.timestamp
        m.datatype = d.datatype
        m.is_null = True
        props = [(SPARK_FORMAT, d.spark_format)]
        if d.description is not None:
            props.append((DESCRIPTION, str(d.description)))
        for key, text in props:
            m.properties.keys.append(key)
            pv = m.properties.values.add()
            pv.type = DT.String
            pv.string_value = text
    return bytes(p.SerializeToString())


def ddata(
    values: Iterable[MetricValue],
    seq: int,
    timestamp: int | None = None,
    aliases: Mapping[str, int] | None = None,
) -> bytes:
    """A device's data: each metric with name, datatype, value and its own timestamp; with
    ``aliases`` (as born) the alias instead of the name, as the specification requires."""
    p = _payload(seq, timestamp)
    for v in values:
        m = p.metrics.add()
        if aliases is None:
            m.name = v.name
        else:
            m.alias = aliases[v.name]
        m.timestamp = v.timestamp
        try:
            set_value(m, v.datatype, v.value, v.json_text)
        except SparkplugError as exc:
            raise SparkplugError(f"metric {v.name!r}: {exc}") from None
    return bytes(p.SerializeToString())


def ddeath(seq: int, timestamp: int | None = None) -> bytes:
    return bytes(_payload(seq, timestamp).SerializeToString())


# -- decoding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    name: str | None
    datatype: int
    value: Any
    timestamp: int | None
    alias: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Payload:
    timestamp: int | None
    seq: int | None
    metrics: list[Metric]

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


def decode(data: bytes) -> Payload:
    """Decode a Sparkplug B payload; raises ``SparkplugError`` for anything malformed."""
    from google.protobuf.message import DecodeError

    p = pb.Payload()
    try:
        p.ParseFromString(data)
    except DecodeError as exc:
        raise SparkplugError(f"not a Sparkplug B payload: {exc}") from None
    metrics = []
    for m in p.metrics:
        props = {}
        for key, pv in zip(m.properties.keys, m.properties.values, strict=False):
            which = pv.WhichOneof("value")
            props[key] = None if pv.is_null or which is None else getattr(pv, which)
        metrics.append(
            Metric(
                name=m.name if m.HasField("name") else None,
                datatype=m.datatype,
                value=get_value(m),
                timestamp=m.timestamp if m.HasField("timestamp") else None,
                alias=m.alias if m.HasField("alias") else None,
                properties=props,
            )
        )
    return Payload(
        timestamp=p.timestamp if p.HasField("timestamp") else None,
        seq=p.seq if p.HasField("seq") else None,
        metrics=metrics,
    )


def is_rebirth_request(data: bytes) -> bool:
    """Whether an NCMD payload asks for a rebirth (``Node Control/Rebirth`` = true)."""
    try:
        payload = decode(data)
    except SparkplugError:
        return False
    m = payload.metric(REBIRTH)
    return m is not None and m.value is True


class Sequence256:
    """A counter 0..255 that wraps: Sparkplug's ``seq`` and ``bdSeq``."""

    __slots__ = ("value",)

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def take(self) -> int:
        """The current number; the next call returns the one after it (255 wraps to 0)."""
        v = self.value
        self.value = (v + 1) % 256
        return v
