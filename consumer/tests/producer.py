"""Real producer output for the consumer's tests, and Lambda-shaped Kinesis events.

The envelopes come from the ``spark-sinks`` CLI itself (NDJSON in, stdout sink with
``format: json`` out), so the tests follow the producer's actual wire format.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "gw"

CONFIG = textwrap.dedent(
    """\
    host: gw
    machines:
      press-1:
        info: {name: press-1, description: Hydraulic press}
        variables:
          temperature: {name: temperature, description: Oil temperature, format: float}
          count: {name: count, format: int32}
          label: {name: label, format: string}
          running: {name: running, format: bool}
          trace: {name: trace, format: any}
          settings: {name: settings, format: object}
          fault: {name: fault, format: string}
      press-2:
        info: {name: press-2, description: Second press}
        variables:
          temperature: {name: temperature, format: double}
      press-avg:
        info: {name: press-avg, hpl: virtual}
        variables:
          avg-temp:
            name: avg-temp
            format: float
            srcVariables: [{srcMachine: press-1, srcVariable: temperature}]
    source: {type: ndjson, path: "-"}
    sinks: {out: {type: stdout, format: json}}
    """
)

# Three cycles of press-1 with every kind of value, two of press-2 and one of the virtual machine.
INPUT = [
    {
        "machine": "press-1",
        "time": "2026-11-26T10:00:00.000Z",
        "values": {
            "temperature": 71.2,
            "count": 3,
            "label": "first shift",
            "running": True,
            "trace": [1, 2.5, "x", None, [True]],
            "settings": {"pressure": {"max": 250.5, "unit": "bar"}, "modes": []},
            "fault": None,
        },
    },
    {
        "machine": "press-1",
        "time": "2026-11-26T10:00:01.000Z",
        "values": {
            "temperature": 71.9,
            "count": 4,
            "label": "",
            "running": False,
            "trace": [],
            "settings": {},
            "fault": "E42",
        },
    },
    {
        "machine": "press-1",
        "time": "2026-11-26T10:00:02.000Z",
        "values": {
            "temperature": -0.125,
            "count": 2147483647,
            "label": "ünïcødé ✓",
            "running": True,
            "trace": [0.1, 1e-7, 12345678901234567],
            "settings": {"nested": {"deeper": {"deepest": [1, {"a": None}]}}},
            "fault": None,
        },
    },
    {"machine": "press-2", "time": "2026-11-26T10:00:00.500Z", "values": {"temperature": 20.5}},
    {"machine": "press-2", "time": "2026-11-26T10:00:01.500Z", "values": {"temperature": 21}},
    {"machine": "press-avg", "time": "2026-11-26T10:00:00.000Z", "values": {"avg-temp": 71.55}},
]


@dataclass
class Producer:
    envelopes: list[bytes]
    """Every envelope in the order the CLI wrote them: metadata first, then records."""

    def of_type(self, kind: str) -> list[bytes]:
        return [e for e in self.envelopes if json.loads(e)["type"] == kind]

    @property
    def records(self) -> list[bytes]:
        return self.of_type("record")

    @property
    def metadata(self) -> list[bytes]:
        return self.of_type("metadata")


def spark_sinks_cli() -> str:
    """The CLI installed beside the running interpreter (the project's virtualenv)."""
    return str(Path(sys.executable).with_name("spark-sinks"))


def produce(config: str = CONFIG, lines: list[dict[str, Any]] | None = None) -> Producer:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spark.yaml"
        path.write_text(config)
        stdin = "".join(json.dumps(line) + "\n" for line in (INPUT if lines is None else lines))
        done = subprocess.run(
            [spark_sinks_cli(), "run", "-c", str(path)],
            input=stdin.encode(),
            capture_output=True,
            timeout=60,
            check=True,
        )
    return Producer([line for line in done.stdout.splitlines() if line.strip()])


class Sequence:
    """Kinesis-like sequence numbers: 56 decimal digits, increasing."""

    def __init__(self, start: int = 49_656_000_000_000_000_000_000_000_000_000_000_000_000_000_000):
        self.next = start

    def __call__(self) -> str:
        self.next += 1_000_003
        return str(self.next)


def kinesis_record(
    data: bytes,
    sequence_number: str,
    partition_key: str | None = None,
    arrival: float | None = None,
    shard_id: str = "shardId-000000000000",
    stream_arn: str = "arn:aws:kinesis:us-east-1:123456789012:stream/spark",
) -> dict[str, Any]:
    """One record of a Lambda Kinesis event, as AWS documents it."""
    if partition_key is None:
        partition_key = _partition_key(data)
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": sequence_number,
            "data": base64.b64encode(data).decode("ascii"),
            "approximateArrivalTimestamp": time.time() if arrival is None else arrival,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/spark-consumer",
        "awsRegion": "us-east-1",
        "eventSourceARN": stream_arn,
    }


def kinesis_event(
    payloads: list[bytes], sequence: Sequence | None = None, arrival: float | None = None
) -> dict[str, Any]:
    """A Lambda event carrying ``payloads`` in order, one Kinesis record each."""
    sequence = sequence or Sequence()
    start = time.time() if arrival is None else arrival
    return {
        "Records": [
            kinesis_record(data, sequence(), arrival=start + i * 0.001)
            for i, data in enumerate(payloads)
        ]
    }


def _partition_key(data: bytes) -> str:
    try:
        obj = json.loads(data)
        body = obj["data"]
        machine = body.get("machine") or body["info"]["name"]
        return f"{obj['host']}/{machine}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unknown"
