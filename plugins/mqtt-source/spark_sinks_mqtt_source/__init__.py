"""The ``mqtt`` source: subscribe to topic filters on an MQTT broker and feed the pipeline.

Payloads are JSON (a data point or a whole record, as the NDJSON source takes them) or
Sparkplug B (``DBIRTH``/``DDATA`` of other edge nodes). At QoS 1 with a persistent session
a message is acknowledged only once the pipeline has accepted what it carried.
"""

from __future__ import annotations

from typing import Any

from spark_sinks import hookimpl

from .config import MqttSourceConfig, TlsSettings
from .source import MqttSource, MqttSourceError

__all__ = ["MqttSource", "MqttSourceConfig", "MqttSourceError", "TlsSettings"]


@hookimpl
def spark_sinks_register_sources(register: Any) -> None:
    register(MqttSource)
