"""Sparkplug B payloads for Spark data: the message builders and the decoder.

Follows the Eclipse Sparkplug 3.0.0 specification, chapter "Payloads": ``seq`` runs
0..255 and wraps; NBIRTH carries 0, NDEATH none; ``bdSeq`` (an ``Int64`` metric in NBIRTH
and NDEATH) counts MQTT connections, also wrapping after 255. Topics are in ``topics``,
datatypes and values (how Spark formats travel) in ``values``; their names are available
here as well.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import sparkplug_b_pb2 as pb
from .errors import SparkplugError
from .topics import (
    DBIRTH,
    DCMD,
    DDATA,
    DDEATH,
    MESSAGE_TYPES,
    NAMESPACE,
    NBIRTH,
    NCMD,
    NDATA,
    NDEATH,
    NODE_TYPES,
    STATE,
    Topic,
    check_id,
    parse_topic,
    topic,
    topic_problem,
)
from .values import (
    DT,
    datatype_for,
    decode_array,
    encode_array,
    get_value,
    is_json_text,
    set_value,
    value_datatype,
)

__all__ = [
    "BD_SEQ",
    "DBIRTH",
    "DCMD",
    "DDATA",
    "DDEATH",
    "DESCRIPTION",
    "DT",
    "MESSAGE_TYPES",
    "NAMESPACE",
    "NBIRTH",
    "NCMD",
    "NDATA",
    "NDEATH",
    "NODE_TYPES",
    "REBIRTH",
    "SPARK_FORMAT",
    "STATE",
    "Metric",
    "MetricDef",
    "MetricValue",
    "Payload",
    "Sequence256",
    "SparkplugError",
    "Topic",
    "check_id",
    "datatype_for",
    "dbirth",
    "ddata",
    "ddeath",
    "decode",
    "decode_array",
    "encode_array",
    "get_value",
    "is_json_text",
    "is_rebirth_request",
    "metric_defs",
    "nbirth",
    "ndeath",
    "now_ms",
    "parse_topic",
    "record_values",
    "set_value",
    "spark_time_ms",
    "topic",
    "topic_problem",
    "value_datatype",
]
"""Also the names of ``topics`` and ``values``, as before they were split off."""

BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
SPARK_FORMAT = "format"
"""DBIRTH metric property naming the Spark format (``object`` values are JSON text)."""
DESCRIPTION = "description"


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
