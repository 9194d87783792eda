"""Resharding during a run (UpdateShardCount on moto): lanes, queues and meters follow the
new shards; nothing is lost or sent twice, and one machine's records keep their order."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from kinesis_helpers import open_sink
from test_kinesis_aggregation import read_aggregated

from spark_sinks import Envelope
from tests.support.throttle import ThrottleProxy

MACHINES = 20


def _envelopes(n: int) -> list[Envelope]:
    pad = "p" * 150
    return [
        Envelope(
            "record",
            "gw",
            {"machine": f"m{i % MACHINES}", "time": i, "pad": pad},
            f"m{i % MACHINES}",
        )
        for i in range(n)
    ]


def _times_by_machine(kinesis: Any, stream: str) -> dict[str, list[int]]:
    """Each machine's record times in stream order, read from every shard, closed parents
    included (moto keeps writing a split shard's keys to the parent), user records out of
    KPL aggregates."""
    seen: dict[str, list[int]] = defaultdict(list)
    for record in read_aggregated(kinesis, stream):
        for _, env in record["users"]:
            seen[env["data"]["machine"]].append(env["data"]["time"])
    return seen


def _run_through_a_resharding(
    sink: Any, proxy: ThrottleProxy, kinesis: Any, stream: str, n: int
) -> None:
    envs = _envelopes(n)

    def write_on() -> None:  # faster than the shards take, before and after the change
        for i in range(0, n, 100):
            sink.write(envs[i : i + 100])
            time.sleep(0.2)

    writer = threading.Thread(target=write_on)
    writer.start()
    deadline = time.monotonic() + 30
    while (sink.stats.delivered < 100 or sink._buf.pending < 300) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink._buf.pending >= 300, "the queues must still be deep when the shards change"
    with proxy.hold():  # moto's split is not safe against concurrent puts
        kinesis.update_shard_count(
            StreamName=stream, TargetShardCount=8, ScalingType="UNIFORM_SCALING"
        )
    while (sink._buf.map is None or len(sink._buf.map) != 8) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink._buf.map is not None and len(sink._buf.map) == 8
    assert sink._buf.pending > 0, "the change came after everything was sent"
    assert writer.is_alive(), "the change came after everything was written"
    writer.join(30)
    sink.flush(120)
    sink.close()
    assert sink.stats.delivered == n and sink._buf.pending == 0


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["none", "kpl"])
def test_records_follow_a_resharding_without_loss_and_in_order(
    moto, kinesis, make_stream, aggregation
):
    stream = make_stream(4)
    n = 3_000
    # the sink's own shard limits keep its queues deep; the proxy refuses nothing
    limits = {"records_per_second": 100, "bytes_per_second": 24 * 1024}
    unlimited = {"records_per_second": 10_000, "bytes_per_second": 2**30}
    with ThrottleProxy(moto.url, **unlimited, serialize=True) as proxy:
        sink = open_sink(
            proxy.url,
            stream,
            aggregation=aggregation,
            shard_limits=limits,
            shard_refresh_seconds=0.2,
            linger_ms=20,
        )
        _run_through_a_resharding(sink, proxy, kinesis, stream, n)
        assert sum(t["throttled"] for t in proxy.totals().values()) == 0
    by_machine = _times_by_machine(kinesis, stream)
    for m in range(MACHINES):
        assert by_machine[f"m{m}"] == list(range(m, n, MACHINES)), f"m{m} out of order or lost"


@pytest.mark.slow
def test_aggregates_follow_a_resharding_in_exact_order_under_throttling(moto, kinesis, make_stream):
    stream = make_stream(4)
    n = 3_000
    limits = {"records_per_second": 100, "bytes_per_second": 16 * 1024}
    with ThrottleProxy(moto.url, **limits, serialize=True) as proxy:
        # the sink believes in more than the proxy gives: throttling all along
        sink = open_sink(
            proxy.url,
            stream,
            aggregation="kpl",
            shard_limits={"records_per_second": 100, "bytes_per_second": 24 * 1024},
            shard_refresh_seconds=0.2,
            linger_ms=20,
        )
        _run_through_a_resharding(sink, proxy, kinesis, stream, n)
        throttled = sum(t["throttled"] for t in proxy.totals().values())
    assert throttled > 0 and sink.stats.throttled == throttled
    by_machine = _times_by_machine(kinesis, stream)
    for m in range(MACHINES):
        assert by_machine[f"m{m}"] == list(range(m, n, MACHINES)), f"m{m} out of order or lost"
