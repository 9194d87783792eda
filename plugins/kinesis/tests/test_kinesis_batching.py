"""Batching: PutRecords closed by count, bytes or linger; only failed entries retried."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
from kinesis_helpers import counting_accepted, open_sink, read_stream
from spark_sinks_kinesis import KinesisConfig, KinesisSink

from spark_sinks import Envelope, SinkContext


def _sink(endpoint: str, stream: str, **kw: Any) -> KinesisSink:
    """A sink whose requests are shaped by the batch settings alone: the shard rate
    limits (``rate_limit``, tested in test_kinesis_rate.py) would split them further."""
    settings = {"retry_base_ms": 10, "retry_max_ms": 100, "max_in_flight": 1, "rate_limit": False}
    return open_sink(endpoint, stream, **{**settings, **kw})


def _envelopes(n: int, machines: int = 5) -> list[Envelope]:
    return [
        Envelope("record", "gw", {"machine": f"m{i % machines}", "time": i}, f"m{i % machines}")
        for i in range(n)
    ]


def test_batches_close_when_full_by_count(moto, proxy, make_stream):
    stream = make_stream(1)
    sink = _sink(proxy.url, stream, max_batch_records=100, linger_ms=5_000)
    envs = _envelopes(1_000)
    sink.write(envs)
    deadline = time.monotonic() + 10
    while sink.stats.delivered < 1_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    # full batches left without waiting for linger_ms (5 s) or a flush
    assert sink.stats.delivered == 1_000
    assert proxy.counters()["put_records"] == 10
    sink.flush(5)
    sink.close()


def test_batches_close_when_full_by_bytes(moto, proxy, make_stream):
    stream = make_stream(1)
    envs = _envelopes(1_000)
    size = sum(len(e.to_json()) + len(f"gw/{e.machine}") for e in envs)
    sink = _sink(proxy.url, stream, max_batch_bytes=8_192)
    sink.write(envs)
    sink.flush(10)
    sink.close()
    assert sink.stats.delivered == 1_000
    requests = proxy.counters()["put_records"]
    assert math.ceil(size / 8_192) <= requests <= math.ceil(size / 8_192) + 2


def test_a_partial_batch_leaves_after_linger_ms_without_a_flush(moto, kinesis, proxy, make_stream):
    stream = make_stream(1)
    sink = _sink(proxy.url, stream, linger_ms=400)
    sink.write(_envelopes(3))
    time.sleep(0.15)
    assert sink.stats.delivered == 0  # still lingering for more records
    deadline = time.monotonic() + 3
    while sink.stats.delivered < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.stats.delivered == 3
    assert proxy.counters()["put_records"] == 1
    sink.close()
    assert len(read_stream(kinesis, stream)) == 3


@pytest.mark.slow
def test_only_the_throttled_entries_are_retried_so_partial_failures_never_duplicate(
    moto, kinesis, proxy, make_stream
):
    stream = make_stream(2)
    proxy.set_faults(partial=0.3)
    sink = _sink(proxy.url, stream, max_batch_records=200)
    envs = _envelopes(3_000)
    for i in range(0, len(envs), 500):
        sink.write(envs[i : i + 500])
    sink.flush(30)
    sink.close()
    c = proxy.counters()
    assert sink.stats.delivered == 3_000
    assert c["entries_throttled"] > 500
    assert sink.stats.retried == c["entries_throttled"]  # nothing else was resent
    read = read_stream(kinesis, stream)
    assert sorted(r["envelope"]["data"]["time"] for r in read) == list(range(3_000))


def test_a_flush_sends_a_partial_batch_at_once(moto, proxy, make_stream):
    stream = make_stream(1)
    sink = _sink(proxy.url, stream, linger_ms=10_000)
    sink.write(_envelopes(7))
    t0 = time.monotonic()
    sink.flush(5)
    # not the 10 s linger; a generous bound, since one request on a loaded machine can take
    # well over a second
    assert time.monotonic() - t0 < 5.0
    assert sink.stats.delivered == 7
    sink.close()


def test_each_shard_is_written_by_exactly_one_lane(moto, kinesis, make_stream):
    stream = make_stream(4)
    sink = _sink(moto.url, stream, max_in_flight=4)
    envs = _envelopes(400, machines=40)
    sink.write(envs)
    # a key is placed on its queue (and lane) when its first record is queued
    lane_of = {e.machine: sink._buf.route(e.host, e.machine).shard.lane.index for e in envs}
    sink.flush(10)
    sink.close()
    lanes_of_shard: dict[str, set[int]] = {}
    for r in read_stream(kinesis, stream):
        machine = r["envelope"]["data"]["machine"]
        lanes_of_shard.setdefault(r["shard"], set()).add(lane_of[machine])
    assert len(lanes_of_shard) == 4
    assert all(len(lanes) == 1 for lanes in lanes_of_shard.values()), lanes_of_shard
    assert len({next(iter(v)) for v in lanes_of_shard.values()}) == 4  # one lane per shard


def test_a_write_blocked_by_backpressure_returns_when_the_operator_insists(
    moto, proxy, make_stream
):
    stream = make_stream(1)
    sink = _sink(proxy.url, stream, max_buffered_bytes=1024 * 1024, max_batch_bytes=64 * 1024)
    proxy.set_faults(error=1.0)  # nothing drains
    pad = "x" * 900
    envs = [
        Envelope("record", "gw", {"machine": "m", "time": i, "pad": pad}, "m") for i in range(2_000)
    ]
    done = []

    def writer() -> None:
        sink.write(envs)
        done.append(True)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.5)
    assert not done, "write should block at max_buffered_bytes"
    assert sink._buf.bytes <= 1024 * 1024
    sink.context.stopping.set()
    t.join(2)
    assert done, "write should return once stopping is set"
    assert sink._buf.pending == 2_000  # kept and counted, not dropped
    sink.flush(1)
    sink.close()
    assert sink.stats.delivered == 0


def test_entries_failing_with_internal_failure_are_retried(moto, kinesis, proxy, make_stream):
    stream = make_stream(1)
    proxy.set_faults(partial=0.3, partial_code="InternalFailure")
    sink = _sink(proxy.url, stream)
    sink.write(_envelopes(500))
    sink.flush(20)
    sink.close()
    assert sink.stats.delivered == 500 and sink.stats.dead_lettered == 0
    assert sink.stats.retried == proxy.counters()["entries_throttled"] > 50
    assert len(read_stream(kinesis, stream)) == 500


def test_entries_rejected_as_invalid_are_dead_lettered_and_the_rest_delivered(
    tmp_path, moto, kinesis, proxy, make_stream
):
    stream = make_stream(1)
    proxy.set_faults(partial=0.1, partial_code="ValidationException")
    cfg = KinesisConfig(
        type="kinesis",
        stream_name=stream,
        region="us-east-1",
        endpoint_url=proxy.url,
        access_key_id="testing",
        secret_access_key="testing",
        linger_ms=10,
        connection_test=False,
    )
    dead = tmp_path / "dead.jsonl"
    sink = counting_accepted(KinesisSink(cfg, SinkContext("cloud", "gw", dead_letter_path=dead)))
    sink.open()
    sink.check()
    sink.write(_envelopes(500))
    sink.flush(20)
    sink.close()
    rejected = proxy.counters()["entries_throttled"]
    assert rejected > 10
    assert sink.stats.dead_lettered == rejected and sink.stats.retried == 0
    assert sink.stats.delivered == 500 - rejected
    assert len(dead.read_bytes().splitlines()) == rejected
    assert b"rejected by Kinesis: ValidationException" in dead.read_bytes()
    assert len(read_stream(kinesis, stream)) == 500 - rejected
