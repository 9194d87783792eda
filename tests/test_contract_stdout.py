"""The stdout sink passes the plugin contract kit (spark_sinks.testing)."""

from __future__ import annotations

import json

import pytest
import spark_sinks_stdout
from spark_sinks_stdout import StdoutSink

from spark_sinks.testing import Invalid, SinkContract


class TestStdoutSinkContract(SinkContract):
    sink_class = StdoutSink
    plugin_module = spark_sinks_stdout
    invalid_configs = [
        Invalid({"format": "yaml"}, "format", '"json" or "pretty"'),
        Invalid({"color": "sometimes"}, "color", '"auto", "always" or "never"'),
        Invalid({"flush_timeout": 0}, "flush_timeout", "greater than 0"),
    ]

    @pytest.fixture
    def sink_config(self):
        return {"format": "json"}

    @pytest.fixture
    def read_back(self, capsys):
        seen: list[str] = []

        def read():
            seen.extend(capsys.readouterr().out.splitlines())
            return [json.loads(line) for line in seen]

        return read
