"""How the sink spreads a shard's keys over several queues (one request out per queue),
on the ``Buffer`` alone: every key on a queue of its Kinesis shard, evenly, each queue of
a shard in another lane, one meter per shard; and across a change of the shard map,
every queued record in its key's new queue, in the order written."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from spark_sinks_kinesis.queues import Buffer, Entry
from spark_sinks_kinesis.rate import ShardLimits, ShardMeter
from spark_sinks_kinesis.shards import ShardMap, ShardRange

from spark_sinks import Envelope

TOP = 2**128


def _map(cuts: list[int], prefix: str) -> ShardMap:
    """Shards splitting the hash key space at ``cuts``."""
    bounds = [0, *sorted(set(cuts)), TOP]
    return ShardMap(
        [
            ShardRange(f"{prefix}{i}", lo, hi - 1)
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
            if hi > lo
        ]
    )


def _meter(shard_id: str, now: float) -> ShardMeter:
    return ShardMeter(ShardLimits(1000, 1024 * 1024), now)


def _queue(buf: Buffer, machines: list[str], rounds: int) -> list[Entry]:
    entries = []
    with buf.lock:
        for i in range(rounds):
            for m in machines:
                env = Envelope("record", "gw", {"machine": m, "time": i}, m)
                e = Entry(env, b"{}", buf.route("gw", m), 10, 0.0)
                buf.add(e)
                entries.append(e)
    return entries


def _check_placement(buf: Buffer, shards: ShardMap) -> None:
    per = buf.per_shard
    lanes = len(buf.lanes)
    for i, queues in enumerate(buf.queues):
        assert len(queues) == per
        assert len({id(q.meter) for q in queues}) == 1  # the shard's one meter
        assert {q.shard_id for q in queues} == {shards.shards[i].shard_id}
        if lanes >= per:
            assert len({q.lane.index for q in queues}) == per  # overlapping requests
        keys = [q.keys for q in queues]
        assert max(keys) - min(keys) <= 1, keys  # spread evenly
    for route in buf.routes.values():
        assert route.shard in buf.queues[shards.index(route.hash_key)]


@settings(max_examples=60, deadline=None)
@given(
    machines=st.lists(
        st.text("abcdefgh0123", min_size=1, max_size=6), min_size=1, max_size=40, unique=True
    ),
    cuts=st.lists(st.integers(1, TOP - 1), max_size=6),
    new_cuts=st.lists(st.integers(1, TOP - 1), max_size=6),
    lanes=st.integers(1, 6),
    per=st.integers(1, 6),
)
def test_keys_spread_evenly_over_a_shards_queues_and_keep_their_order_across_a_new_map(
    machines, cuts, new_cuts, lanes, per
):
    buf = Buffer(lanes, 1 << 30, threading.Event(), min(per, lanes))
    first = _map(cuts, "a")
    with buf.lock:
        buf.rebuild(first, _meter)
    written = _queue(buf, machines, 3)
    _check_placement(buf, first)
    second = _map(new_cuts, "b")
    with buf.lock:
        buf.rebuild(second, _meter)
    _check_placement(buf, second)
    written += _queue(buf, machines, 2)
    # every record once, in its key's queue, each key's records in the order written
    seen: Counter[int] = Counter()
    for queues in buf.queues:
        for q in queues:
            order: dict[str, list[int]] = {}
            for e in q.queue:
                assert e.route.shard is q
                seen[id(e)] += 1
                order.setdefault(e.route.key, []).append(written.index(e))
            assert all(v == sorted(v) for v in order.values())
    assert seen == Counter(id(e) for e in written)
    assert sum(lane.count for lane in buf.lanes) == len(written)
