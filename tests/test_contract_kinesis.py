"""The Kinesis sink passes the plugin contract kit (spark_sinks.testing), against moto."""

from __future__ import annotations

import pytest
import spark_sinks_kinesis
from spark_sinks_kinesis import KinesisSink

from spark_sinks.testing import MISSING, Invalid, SinkContract
from tests.support.streams import new_stream, read_stream


class TestKinesisSinkContract(SinkContract):
    sink_class = KinesisSink
    plugin_module = spark_sinks_kinesis
    preserves_order = False  # two shards: order holds per partition key, not overall
    invalid_configs = [
        Invalid({"stream_name": MISSING}, "stream_name", "required key is missing"),
        Invalid({"stream_name": "bad name!"}, "stream_name", "not a valid Kinesis stream name"),
        Invalid({"region": "mars-north-1"}, "region", "not an AWS region"),
        Invalid({"max_batch_records": 501}, "max_batch_records", "less than or equal to 500"),
    ]

    @pytest.fixture
    def sink_config(self, moto, aws_env):
        client = moto.client("kinesis")
        name = new_stream(client, shards=2)
        yield {
            "stream_name": name,
            "region": "us-east-1",
            "endpoint_url": moto.url,
            "connection_test": False,
            "linger_ms": 5,
        }
        client.delete_stream(StreamName=name)  # the moto server is shared by the session

    @pytest.fixture
    def read_back(self, moto, sink_config):
        client = moto.client("kinesis")
        stream = sink_config["stream_name"]
        return lambda: [r["envelope"] for r in read_stream(client, stream)]
