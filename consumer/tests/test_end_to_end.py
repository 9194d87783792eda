"""The whole path on this machine: ``spark-sinks run`` with the Kinesis sink, the moto
Kinesis server, the local runner handing each shard's batches to the Lambda handler as
Lambda would, and DynamoDB on the same moto server."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from typing import Any

import pytest
from spark_consumer.handler import lambda_handler
from spark_consumer.poller import Poller

from .producer import CONFIG, INPUT, spark_sinks_cli
from .test_handler import scan

STREAM = "spark-e2e"


def kinesis_sink_installed() -> bool:
    done = subprocess.run(
        [spark_sinks_cli(), "plugins"], capture_output=True, text=True, timeout=60
    )
    return any(
        line.strip().startswith("sink types:") and "kinesis" in line
        for line in done.stdout.splitlines()
    )


pytestmark = pytest.mark.skipif(
    not kinesis_sink_installed(), reason="the kinesis sink (plugins/kinesis) is not installed"
)


def kinesis_config(endpoint: str, description: str = "Hydraulic press") -> str:
    config = CONFIG.replace(
        "sinks: {out: {type: stdout, format: json}}",
        "sinks:\n"
        "  stream:\n"
        "    type: kinesis\n"
        f"    stream_name: {STREAM}\n"
        "    region: us-east-1\n"
        f"    endpoint_url: {endpoint}\n"
        "    linger_ms: 10\n",
    )
    assert "type: kinesis" in config
    return config.replace("description: Hydraulic press", f"description: {description}")


def run_producer(tmp_path, config: str, lines: list[dict[str, Any]], env: dict[str, str]) -> None:
    path = tmp_path / "spark.yaml"
    path.write_text(config)
    done = subprocess.run(
        [spark_sinks_cli(), "run", "-c", str(path)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def snapshot() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return scan("SparkData"), scan("SparkMetadata")


@pytest.mark.slow
def test_records_and_latest_metadata_travel_from_spark_sinks_to_dynamodb(
    tables, moto, aws_env, tmp_path, produced
):
    kinesis = moto.client("kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=STREAM)
    env = {**aws_env, "PATH": "/usr/bin:/bin"}

    # Two runs of the producer: the second after the press was renamed, so its metadata
    # changes; the consumer must keep the newer version.
    run_producer(tmp_path, kinesis_config(moto.url), INPUT[:3], env)
    run_producer(tmp_path, kinesis_config(moto.url, "Hydraulic press (relined)"), INPUT[3:], env)
    stats = Poller(kinesis, STREAM, lambda_handler).drain()

    assert stats.given_up == []
    data, metadata = snapshot()
    # every record the producer made (the stdout sink shows the same envelopes) is stored
    sent = [json.loads(r, parse_float=Decimal)["data"] for r in produced.records]
    assert len(data) == len(sent)
    stored = {(i["machine"], i["time"]): i["attributes"] for i in data}
    for record in sent:
        assert stored[(record["machine"], record["time"])] == record["attributes"]
    # one metadata item per machine, the latest version
    by_machine = {i["machine"]: i for i in metadata}
    assert sorted(by_machine) == ["press-1", "press-2", "press-avg"]
    assert by_machine["press-1"]["info"]["description"] == "Hydraulic press (relined)"
    assert by_machine["press-avg"]["variables"]["avg-temp"]["referencedMachineInfo"] == {
        "name": "press-1",
        "description": "Hydraulic press (relined)",
    }
    # the connection tests went through the stream and were acknowledged, not stored
    runs = 2  # each run sends every machine's metadata and one connection test
    assert stats.records == len(produced.records) + runs * len(produced.metadata) + runs

    # The same batches delivered again (Lambda retrying after a partial failure): no change.
    again = Poller(kinesis, STREAM, lambda_handler).drain()
    assert again.records == stats.records
    assert snapshot() == (data, metadata)

    # And each batch delivered twice in a row.
    def twice(event: dict[str, Any], context: Any) -> Any:
        lambda_handler(event, context)
        return lambda_handler(event, context)

    Poller(kinesis, STREAM, twice).drain()
    assert snapshot() == (data, metadata)
