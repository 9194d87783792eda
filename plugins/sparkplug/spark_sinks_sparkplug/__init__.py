"""spark-sinks-sparkplug: Sparkplug B payloads for spark-sinks' MQTT sink and source.

A library, not a plugin: it registers no hooks. ``codec`` builds and decodes NBIRTH,
NDEATH, DBIRTH, DDATA and DDEATH payloads (and offers the names of the modules it
uses: ``topics``, the topic namespace, and ``values``, how Spark formats map onto
Sparkplug datatypes); ``state`` reads a Primary Host Application's STATE; ``sparkplug_b_pb2`` is
generated from ``sparkplug_b.proto`` (see that file for how to regenerate it). ``broker``
holds what the MQTT sink and source share beyond Sparkplug (why a broker cannot be
reached).

The names below come from ``codec``, imported on first use: ``codec`` needs protobuf,
which the MQTT plugins' JSON paths never use (``topics``, ``state``, ``broker`` and
``errors`` do not import it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import (
        BD_SEQ,
        NAMESPACE,
        REBIRTH,
        MetricDef,
        MetricValue,
        Payload,
        Sequence256,
        SparkplugError,
        Topic,
        datatype_for,
        dbirth,
        ddata,
        ddeath,
        decode,
        is_rebirth_request,
        metric_defs,
        nbirth,
        ndeath,
        parse_topic,
        record_values,
        spark_time_ms,
        topic,
    )

__all__ = [
    "BD_SEQ",
    "NAMESPACE",
    "REBIRTH",
    "MetricDef",
    "MetricValue",
    "Payload",
    "Sequence256",
    "SparkplugError",
    "Topic",
    "datatype_for",
    "dbirth",
    "ddata",
    "ddeath",
    "decode",
    "is_rebirth_request",
    "metric_defs",
    "nbirth",
    "ndeath",
    "parse_topic",
    "record_values",
    "spark_time_ms",
    "topic",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import codec

        return getattr(codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
