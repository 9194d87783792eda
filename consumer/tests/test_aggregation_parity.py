"""KPL aggregation is invisible to the tables: the same producer input, sent once through a
plain Kinesis sink and once through one with ``aggregation: kpl``, each stream drained by
the local runner into fresh tables, gives identical items."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from spark_consumer.handler import lambda_handler
from spark_consumer.poller import Poller
from spark_consumer.store import create_tables

from .producer import CONFIG, INPUT, spark_sinks_cli
from .test_end_to_end import kinesis_sink_installed
from .test_handler import scan

pytestmark = pytest.mark.skipif(
    not kinesis_sink_installed(), reason="the kinesis sink (plugins/kinesis) is not installed"
)


def sink_config(endpoint: str, stream: str, aggregation: str, compression: str = "none") -> str:
    return CONFIG.replace(
        "sinks: {out: {type: stdout, format: json}}",
        "sinks:\n"
        "  stream:\n"
        "    type: kinesis\n"
        f"    stream_name: {stream}\n"
        "    region: us-east-1\n"
        f"    endpoint_url: {endpoint}\n"
        "    linger_ms: 10\n"
        f"    aggregation: {aggregation}\n"
        f"    compression: {compression}\n",
    )


def many_lines(n: int) -> list[dict[str, Any]]:
    """``n`` more cycles of press-1 and press-2, each at its own time."""
    lines = []
    for i in range(n):
        t = f"2026-11-26T11:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
        if i % 2:
            lines.append({"machine": "press-2", "time": t, "values": {"temperature": 20 + i / 8}})
        else:
            values = {
                "temperature": 60 + i / 4,
                "count": i,
                "label": f"cycle {i}",
                "running": i % 3 == 0,
                "trace": [i, i / 3],
                "settings": {"step": i % 7},
                "fault": None if i % 5 else "E1",
            }
            lines.append({"machine": "press-1", "time": t, "values": values})
    return lines


def produce_into(
    tmp_path, moto, aws_env, stream: str, aggregation: str, lines, compression: str = "none"
) -> None:
    kinesis = moto.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    path = tmp_path / f"{stream}.yaml"
    path.write_text(sink_config(moto.url, stream, aggregation, compression))
    done = subprocess.run(
        [spark_sinks_cli(), "run", "-c", str(path)],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
        env={**aws_env, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr


def consume(moto, stream: str) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Drain ``stream`` into freshly created tables; (Kinesis records read, data, metadata)."""
    dynamodb = moto.client("dynamodb")
    for name in dynamodb.list_tables()["TableNames"]:
        dynamodb.delete_table(TableName=name)
    create_tables(dynamodb)
    stats = Poller(moto.client("kinesis"), stream, lambda_handler).drain()
    assert stats.given_up == []
    return stats.records, scan("SparkData"), scan("SparkMetadata")


POSITION = ("sequenceNumber", "subSequenceNumber", "arrivalTime", "version")
"""Where an item was read (a metadata ``version`` is built from it): these differ between
any two streams."""


def content(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in POSITION}


@pytest.mark.slow
def test_plain_and_aggregated_streams_give_identical_tables(tables, moto, aws_env, tmp_path):
    lines = INPUT + many_lines(600)
    produce_into(tmp_path, moto, aws_env, "spark-plain", "none", lines)
    produce_into(tmp_path, moto, aws_env, "spark-kpl", "kpl", lines)

    plain_records, plain_data, plain_meta = consume(moto, "spark-plain")
    kpl_records, kpl_data, kpl_meta = consume(moto, "spark-kpl")

    assert len(plain_data) == len(lines) and len(plain_meta) == 3
    # identical but for where each item was read in its stream
    assert [content(i) for i in kpl_data] == [content(i) for i in plain_data]
    assert [content(i) for i in kpl_meta] == [content(i) for i in plain_meta]
    # the aggregated items come from user records inside Kinesis records; a record that
    # is alone when its batch goes out is sent plain (no aggregate of one), so allow a few
    aggregated = sum("subSequenceNumber" in i for i in kpl_data)
    assert aggregated >= len(kpl_data) - kpl_records
    assert aggregated > 0.9 * len(kpl_data)
    assert not any("subSequenceNumber" in i for i in plain_data)
    # the second stream really was aggregated: a few Kinesis records for 600+ envelopes
    assert plain_records == len(lines) + 3 + 1  # records, metadata, connection test
    assert kpl_records < 20


@pytest.mark.slow
def test_compressed_streams_give_the_same_tables_as_the_plain_one(tables, moto, aws_env, tmp_path):
    """Every compression setting, with and without aggregation: identical items."""
    lines = INPUT + many_lines(100)
    produce_into(tmp_path, moto, aws_env, "spark-plain", "none", lines)
    _, plain_data, plain_meta = consume(moto, "spark-plain")
    assert len(plain_data) == len(lines) and len(plain_meta) == 3
    for compression in ("gzip", "zstd"):
        for aggregation in ("none", "kpl"):
            stream = f"spark-{compression}-{aggregation}"
            produce_into(tmp_path, moto, aws_env, stream, aggregation, lines, compression)
            records, data, meta = consume(moto, stream)
            assert [content(i) for i in data] == [content(i) for i in plain_data], stream
            assert [content(i) for i in meta] == [content(i) for i in plain_meta], stream
            if aggregation == "kpl":
                assert records < 20, stream
