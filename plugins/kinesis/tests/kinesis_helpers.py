"""Helpers for the Kinesis sink tests: configs, input files, the CLI, reading a stream back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from tests.support.streams import new_stream, read_stream  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from spark_sinks_kinesis import KinesisSink

BIN = Path(sys.executable).parent
SPARK_SINKS = str(BIN / "spark-sinks")
HOST = "gw-test"
VARIABLES = ("temperature", "pressure", "speed", "state", "count")
FORMATS = {
    "temperature": "float",
    "pressure": "float",
    "speed": "double",
    "state": "string",
    "count": "int32",
}


def machine_names(n: int) -> list[str]:
    return [f"machine-{i:02d}" for i in range(n)]


def machines_block(names: Iterable[str]) -> dict[str, Any]:
    return {
        name: {
            "info": {"name": name, "description": f"test machine {name}"},
            "variables": {
                v: {"name": v, "description": f"{v} of {name}", "format": FORMATS[v]}
                for v in VARIABLES
            },
        }
        for name in names
    }


def config(
    path: Path,
    stream: str,
    endpoint: str,
    machines: int = 4,
    source: dict[str, Any] | None = None,
    **sink: Any,
) -> Path:
    """Write a config with one kinesis sink named ``cloud`` and return its path."""
    block = {
        "type": "kinesis",
        "stream_name": stream,
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "linger_ms": 20,
        "retry_base_ms": 20,
        "retry_max_ms": 500,
        "flush_timeout": 60,
        **sink,
    }
    cfg = {
        "host": HOST,
        "machines": machines_block(machine_names(machines)),
        "source": source or {"type": "ndjson", "path": "-"},
        "sinks": {"cloud": block},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edit_sink(path: Path, **sink: Any) -> Path:
    """Change keys of the ``cloud`` sink block of a config written by ``config``; a value
    of None removes the key."""
    raw = yaml.safe_load(path.read_text())
    block = raw["sinks"]["cloud"]
    for k, v in sink.items():
        if v is None:
            block.pop(k, None)
        else:
            block[k] = v
    path.write_text(yaml.safe_dump(raw))
    return path


def records_ndjson(
    path: Path, count: int, machines: int = 4, start_ms: int = 1_790_000_000_000
) -> Path:
    """``count`` whole records, round-robin over the machines; every record has a distinct
    ``time`` (``start_ms + i``) so that a record can be identified when read back."""
    names = machine_names(machines)
    with path.open("wb") as fh:
        for i in range(count):
            values = {
                "temperature": 20.0 + (i % 500) / 10,
                "pressure": 1.0 + (i % 70) / 100,
                "speed": 1200.5 + i % 13,
                "state": "running",
                "count": i % 100_000,
            }
            item = {"machine": names[i % machines], "time": start_ms + i, "values": values}
            fh.write(orjson.dumps(item) + b"\n")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SPARK_SINKS_LOAD_PLUGINS": "kinesis",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    env.pop("AWS_PROFILE", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SPARK_SINKS, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env or cli_env(),
        check=False,
    )


@contextlib.contextmanager
def moto_auth(url: str) -> Iterator[None]:
    """Make moto check credentials (it accepts anything by default)."""

    def post(value: str) -> None:
        req = urllib.request.Request(
            f"{url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    post("0")
    try:
        yield
    finally:
        post("inf")


def open_sink(endpoint: str, stream: str, **settings: Any) -> KinesisSink:
    """A KinesisSink opened and checked (which learns the shard map, as at a real start),
    with test-friendly timings that ``settings`` may override."""
    from spark_sinks_kinesis import KinesisConfig, KinesisSink

    from spark_sinks import SinkContext

    cfg = KinesisConfig(
        type="kinesis",
        stream_name=stream,
        region="us-east-1",
        endpoint_url=endpoint,
        access_key_id="testing",
        secret_access_key="testing",
        **{
            "linger_ms": 10,
            "retry_base_ms": 20,
            "retry_max_ms": 300,
            "connection_test": False,
            **settings,
        },
    )
    sink = counting_accepted(KinesisSink(cfg, SinkContext("cloud", "gw")))
    sink.open()
    sink.check()
    return sink


def counting_accepted(sink: KinesisSink) -> KinesisSink:
    """Count what each ``write`` hands over as accepted, as the core does before a sink's
    write: a sink may only settle (deliver, dead-letter) what it was handed."""
    write = sink.write

    def counted(envelopes: Any) -> None:
        sink.stats.add("accepted", len(envelopes))
        write(envelopes)

    sink.write = counted  # type: ignore[method-assign]
    return sink
