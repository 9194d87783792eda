"""DynamoDB misbehaving as it does in production (5xx answers, connections reset after the
write was done, slow answers), injected by the shared fault proxy between the handler and the
moto server."""

from __future__ import annotations

from typing import Any

import pytest
from spark_consumer.handler import lambda_handler
from spark_consumer.poller import Poller
from spark_consumer.store import create_tables

from tests.support.faultproxy import FaultProxy

from .conftest import STREAM
from .producer import Sequence, kinesis_event
from .test_handler import scan
from .test_poller import put

WRITES = ("PutItem", "UpdateItem")


@pytest.fixture
def proxy(moto, monkeypatch) -> Any:
    with FaultProxy(moto.url, seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the handler's DynamoDB client
        yield proxy


def fresh_tables(client: Any) -> None:
    for name in ("SparkData", "SparkMetadata"):
        client.delete_table(TableName=name)
    create_tables(client)


def content(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items without the attributes that say which delivery stored them."""
    ignore = {"sequenceNumber", "arrivalTime", "version", "subSequenceNumber"}
    return [{k: v for k, v in item.items() if k not in ignore} for item in items]


def test_failed_and_ambiguous_writes_converge_to_the_same_tables(
    stream, tables, produced, proxy, monkeypatch
):
    # No SDK retries: every injected fault reaches the handler, which reports the record;
    # the runner redelivers from there, as Lambda does.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    proxy.set_faults(error=0.2, reset_after=0.15, targets=WRITES)
    many = [produced.records[i % len(produced.records)] for i in range(3)] + produced.envelopes
    put(stream, many)

    stats = Poller(stream, STREAM, lambda_handler, max_retries=50, retry_delay=0).drain()

    counters = proxy.counters()
    assert stats.retries > 0 and stats.given_up == []
    assert counters.get("errors", 0) > 0 and counters.get("resets_after", 0) > 0, counters
    faulty = (content(scan("SparkData")), content(scan("SparkMetadata")))

    # the same stream, delivered again without faults into fresh tables
    proxy.clear_faults()
    fresh_tables(tables)
    Poller(stream, STREAM, lambda_handler).drain()
    assert faulty == (content(scan("SparkData")), content(scan("SparkMetadata")))
    assert len(faulty[0]) == len(produced.records)


def test_a_batch_is_written_concurrently(tables, produced, proxy, monkeypatch):
    # Concurrency is read at the proxy (how many writes were held there at once), not
    # timed: CI machines are too noisy for a wall-clock ratio (it failed CI once at 2.1x).
    proxy.set_faults(slow=1.0, slow_seconds=0.2, targets=WRITES)  # every write held 200 ms
    batch = [produced.records[i % 6].replace(b'"gw"', f'"gw{i}"'.encode()) for i in range(16)]

    def most_at_once(concurrency: int) -> int:
        monkeypatch.setenv("WRITE_CONCURRENCY", str(concurrency))
        proxy.reset_counters()
        assert lambda_handler(kinesis_event(batch, Sequence()), None) == {"batchItemFailures": []}
        return proxy.counters()["most_slowed_at_once"]

    assert most_at_once(1) == 1
    fresh_tables(tables)
    assert 4 <= most_at_once(8) <= 8
    assert len(scan("SparkData")) == 16
