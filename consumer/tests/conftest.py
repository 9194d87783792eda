"""Consumer test fixtures. The handler package is not installed: put its folder on sys.path,
as Lambda does with the unzipped deployment package."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CONSUMER_DIR = Path(__file__).resolve().parent.parent
if str(CONSUMER_DIR) not in sys.path:
    sys.path.insert(0, str(CONSUMER_DIR))

from spark_consumer import handler  # noqa: E402
from spark_consumer.store import create_tables  # noqa: E402

from .producer import Producer, produce  # noqa: E402


@pytest.fixture
def tables(aws_env: dict[str, str], moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Fresh moto state with the two tables under their default names; the handler reaches
    them through AWS_ENDPOINT_URL."""
    moto.reset()
    monkeypatch.delenv(handler.DATA_TABLE_ENV, raising=False)
    monkeypatch.delenv(handler.METADATA_TABLE_ENV, raising=False)
    create_tables(moto.client("dynamodb"))
    yield moto.client("dynamodb")


STREAM = "spark"


@pytest.fixture
def stream(tables, moto) -> object:
    """A moto Kinesis stream of three shards named ``STREAM``, with fresh tables."""
    kinesis = moto.client("kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=3)
    kinesis.get_waiter("stream_exists").wait(StreamName=STREAM)
    return kinesis


@pytest.fixture(scope="session")
def produced() -> Producer:
    """Real envelopes from the spark-sinks CLI (stdout sink), made once per session."""
    return produce()
