"""The core's contract kit against the ``mqtt`` sink (JSON format, a real Mosquitto)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import spark_sinks_mqtt_sink
from mqtt_helpers import mqtt_block, prefix_of, settled
from spark_sinks_mqtt_sink import MqttSink

from spark_sinks.testing import MISSING, Invalid, SinkContract
from tests.support.mosquitto import Client, Mosquitto


class TestMqttSinkContract(SinkContract):
    sink_class = MqttSink
    plugin_module = spark_sinks_mqtt_sink
    invalid_configs = [
        Invalid({"host": MISSING}, "host", "required key is missing"),
        Invalid({"qos": 2}, "qos", "Input should be 0 or 1"),
        Invalid({"topic": "spark/{machine}/{variable}"}, "topic", "only {host}, {machine}"),
        Invalid({"topic": "spark/+/{machine}"}, "topic", "wildcard"),
        Invalid({"tls": {"cert_file": "/c.pem"}}, "tls", "cert_file and key_file go together"),
        Invalid({"reconnect_min_delay": 60}, "reconnect_max_delay", "smaller than"),
        Invalid({"password": "x"}, "password", "password is set but username is not"),
        Invalid({"group_id": "a/b"}, "group_id", "not allowed in a Sparkplug ID"),
        Invalid({"primary_host_id": "scada"}, "primary_host_id", "needs format: sparkplug_b"),
        Invalid(
            {"format": "sparkplug_b", "primary_host_id": "a/b"},
            "primary_host_id",
            "not allowed in a Sparkplug ID",
        ),
        Invalid({"max_in_flight": 70000}, "max_in_flight", "less than or equal to 65000"),
        Invalid({"format": "xml"}, "format", 'Input should be "json" or "sparkplug_b"'),
    ]

    @pytest.fixture
    def sink_config(self, mosquitto: Mosquitto) -> dict[str, Any]:
        block = mqtt_block(mosquitto)
        del block["type"]
        return block

    @pytest.fixture
    def read_back(
        self, sink_config: dict[str, Any], subscriber: Callable[..., Client]
    ) -> Callable[[], list[dict[str, Any]]]:
        client = subscriber(prefix_of(sink_config) + "/#")
        return lambda: [orjson.loads(m.payload) for m in settled(client)]
