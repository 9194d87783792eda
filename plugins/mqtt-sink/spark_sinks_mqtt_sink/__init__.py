"""spark-sinks-mqtt-sink: the ``mqtt`` sink, publishing to an MQTT broker.

Every envelope goes out as its JSON (``format: json``, the seed wire format) on a topic
made from a template, or as Sparkplug B (``format: sparkplug_b``) with the gateway as the
edge node and each machine as a device. See ``README.md`` for settings and guarantees.
"""

from __future__ import annotations

from typing import Any

from spark_sinks import hookimpl

from .config import MqttSinkConfig, TlsConfig
from .sink import MqttSink

__all__ = ["MqttSink", "MqttSinkConfig", "TlsConfig"]


@hookimpl
def spark_sinks_register_sink_types(register: Any) -> None:
    register(MqttSink)
