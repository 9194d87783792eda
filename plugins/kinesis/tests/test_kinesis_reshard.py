"""Resharding during a run (UpdateShardCount on moto): lanes, queues and meters follow the
new shards; nothing is lost or sent twice, and one machine's records keep their order.
Also: writes refused for a closed shard (a fault-injecting proxy, as moto stores every
write), and on-demand streams (their mode at start, their scaling followed)."""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from kinesis_helpers import open_sink
from spark_sinks_kinesis import KinesisConfig
from spark_sinks_kinesis.sink import refresh_seconds
from test_kinesis_aggregation import read_aggregated

from spark_sinks import Envelope
from tests.support.faultproxy import _Handler
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
    sink: Any,
    proxy: ThrottleProxy,
    kinesis: Any,
    stream: str,
    n: int,
    after_change: Callable[[], None] | None = None,
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
        if after_change is not None:
            after_change()
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
    with ThrottleProxy(moto.url, **unlimited) as proxy:
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
    with ThrottleProxy(moto.url, **limits) as proxy:
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


class ClosedShardProxy(ThrottleProxy):
    """A server that still routes writes by the shard map from before a resharding.

    After ``close_old_shards()`` (called once the stream is resharded), every PutRecords
    entry whose key lay on a shard that is now closed is refused, and not stored, with
    ``code`` and a message naming that shard, until the sink lists the shards again (a
    ListShards through this proxy). With ``whole_request``, a request holding such an
    entry is refused as a whole instead (HTTP 400). moto cannot do this: it stores every
    write, on the first shard, open or closed, whose range holds the key."""

    def __init__(self, upstream: str, code: str, whole_request: bool = False) -> None:
        super().__init__(upstream, records_per_second=10_000, bytes_per_second=2**30)
        self.code = code
        self.whole_request = whole_request
        self._state = threading.Lock()
        """Owns everything below (requests are handled on the proxy's threads)."""
        self._starts: list[int] = []
        self._ids: list[str] = []
        self.closed_at: float | None = None
        self.listed_at: float | None = None
        """When the sink listed the shards after ``close_old_shards``."""
        self.refused = 0
        self._marks = threading.local()
        """Per request thread: the refused positions and the shard each names."""

    def remember_shards(self, stream: str) -> None:
        """The map to route by: the stream's shards now."""
        shards = self._kinesis.list_shards(StreamName=stream)["Shards"]
        ranges = sorted((int(s["HashKeyRange"]["StartingHashKey"]), s["ShardId"]) for s in shards)
        with self._state:
            self._starts = [r[0] for r in ranges]
            self._ids = [r[1] for r in ranges]

    def close_old_shards(self) -> None:
        with self._state:
            self.closed_at = time.monotonic()

    def _handle(self, h: _Handler, method: str) -> None:
        if (h.headers.get("X-Amz-Target") or "").endswith(".ListShards"):
            with self._state:
                if self.closed_at is not None and self.listed_at is None:
                    self.listed_at = time.monotonic()
        super()._handle(h, method)

    def _choose_throttled(self, request: dict[str, Any], records: list[Any]) -> list[int]:
        refused = super()._choose_throttled(request, records)
        stream = request["StreamName"]
        with self._budget_lock:
            open_ids = set(self._open_shards(stream, time.time()).ids)
        marks: dict[int, str] = {}
        with self._state:
            if self.closed_at is None or self.listed_at is not None:
                self._marks.closed = marks
                return refused
            for i, r in enumerate(records):
                h = int.from_bytes(hashlib.md5(r["PartitionKey"].encode()).digest(), "big")
                old = self._ids[max(bisect.bisect_right(self._starts, h) - 1, 0)]
                if old not in open_ids and i not in refused:
                    marks[i] = old
            self.refused += len(marks)
        if self.whole_request:  # refused by _forward, without asking moto
            self._marks.closed = {}
            self._marks.refuse = next(iter(marks.values()), None)
            return refused
        self._marks.closed = marks
        return sorted([*refused, *marks])

    def _forward(
        self, h: _Handler, method: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        shard = getattr(self._marks, "refuse", None)
        self._marks.refuse = None
        if shard is None:
            return super()._forward(h, method, body)
        message = f"Shard {shard} in stream is closed (injected by the test)"
        payload = json.dumps({"__type": self.code, "message": message}).encode()
        return 400, [("Content-Type", "application/x-amz-json-1.1")], payload

    def _splice(self, payload: bytes | None, throttled: list[int]) -> bytes:
        answer = json.loads(super()._splice(payload, throttled))
        for i, shard in getattr(self._marks, "closed", {}).items():
            answer["Records"][i] = {
                "ErrorCode": self.code,
                "ErrorMessage": f"Shard {shard} in stream is closed (injected by the test)",
            }
        return json.dumps(answer).encode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "aggregation", "whole_request"),
    [
        ("InvalidArgumentException", "none", False),
        ("ResourceNotFoundException", "kpl", False),
        ("InvalidArgumentException", "none", True),
    ],
)
def test_a_write_refused_for_a_closed_shard_lists_the_shards_at_once_and_resends_in_order(
    moto, kinesis, make_stream, code, aggregation, whole_request
):
    stream = make_stream(4)
    n = 3_000
    with ClosedShardProxy(moto.url, code, whole_request) as proxy:
        proxy.remember_shards(stream)
        sink = open_sink(
            proxy.url,
            stream,
            aggregation=aggregation,
            shard_limits={"records_per_second": 100, "bytes_per_second": 24 * 1024},
            shard_refresh_seconds=3600,  # only the refusals can make it list the shards
            linger_ms=20,
        )
        _run_through_a_resharding(
            sink, proxy, kinesis, stream, n, after_change=proxy.close_old_shards
        )
    assert proxy.refused > 0, "no write was refused for a closed shard"
    assert proxy.closed_at is not None and proxy.listed_at is not None
    assert proxy.listed_at - proxy.closed_at < 5, "the shards were not listed at once"
    assert sink.stats.dead_lettered == 0
    assert "closed by a resharding" in (sink.stats.last_error or "")
    by_machine = _times_by_machine(kinesis, stream)
    for m in range(MACHINES):
        assert by_machine[f"m{m}"] == list(range(m, n, MACHINES)), f"m{m} out of order or lost"


def _on_demand_stream(kinesis: Any) -> str:
    name = f"spark-test-od-{uuid.uuid4().hex[:10]}"
    kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    kinesis.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )
    return name


def _split_first_shard(kinesis: Any, stream: str) -> None:
    shard = kinesis.list_shards(StreamName=stream)["Shards"][0]
    rng = shard["HashKeyRange"]
    middle = (int(rng["StartingHashKey"]) + int(rng["EndingHashKey"])) // 2
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=shard["ShardId"], NewStartingHashKey=str(middle)
    )


@pytest.mark.slow
def test_an_on_demand_stream_is_named_at_start_and_its_scaling_followed_without_writes(
    moto, kinesis
):
    stream = _on_demand_stream(kinesis)
    try:
        sink = open_sink(moto.url, stream)
        try:
            assert "is ACTIVE (ON_DEMAND, 4 open shards)" in sink.check()
            assert sink._buf.map is not None and len(sink._buf.map) == 4
            _split_first_shard(kinesis, stream)  # as Kinesis scales it, unasked
            deadline = time.monotonic() + 20  # on-demand: listed every 10 s, not 60 s
            while len(sink._buf.map) != 5 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(sink._buf.map) == 5
        finally:
            sink.close()
    finally:
        kinesis.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def test_a_provisioned_stream_is_named_at_start(moto, make_stream):
    sink = open_sink(moto.url, make_stream(2))
    try:
        assert "is ACTIVE (PROVISIONED, 2 open shards)" in sink.check()
    finally:
        sink.close()


def test_the_on_demand_listing_period_applies_only_when_none_is_set():
    base = dict(type="kinesis", stream_name="s", region="us-east-1")
    default, chosen = KinesisConfig(**base), KinesisConfig(**base, shard_refresh_seconds=300)
    assert refresh_seconds(default, "ON_DEMAND") == 10.0
    assert refresh_seconds(default, "PROVISIONED") == 60.0
    assert refresh_seconds(chosen, "ON_DEMAND") == 300.0
    assert refresh_seconds(chosen, "PROVISIONED") == 300.0
