"""``aggregation: kpl``: KPL aggregates of one partition key each, read back with
aws-kinesis-agg's deaggregator over every shard of a moto stream.

The ordering guarantee tested here: per machine, dropping repeats (keeping each user
record's first occurrence), the records are in the stream in exactly the order they were
written, none missing, even under throttled entries, 500s and connection resets. Repeats
happen only when Kinesis stored an aggregate but its answer was lost (``error_after``,
``reset_after``); the re-sent aggregate then starts at that machine's oldest unconfirmed
record, so every Kinesis record holds a contiguous run of its machine's records and never
starts past the furthest record already in the stream plus one. Without lost answers
there are no repeats and the order is exact.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from kinesis_helpers import (
    HOST,
    config,
    counting_accepted,
    machine_names,
    open_sink,
    records_ndjson,
    run_cli,
)
from pydantic import ValidationError
from spark_sinks_kinesis import KinesisConfig, KinesisSink, aggregation, partition_key
from spark_sinks_kinesis.batching import encode
from spark_sinks_kinesis.queues import Entry, Route
from spark_sinks_kinesis.shards import hash_key

from spark_sinks import Envelope, SinkContext
from tests.support.streams import shard_records


def read_aggregated(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every Kinesis record of every shard in sequence order, with its user records as
    aws-kinesis-agg deaggregates them: ``{"shard", "key", "size", "aggregated", "users"}``
    where ``users`` is a list of ``(partition key, envelope)``."""
    out: list[dict[str, Any]] = []
    for shard, r in shard_records(client, stream):
        event = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": r["PartitionKey"],
                "sequenceNumber": r["SequenceNumber"],
                "approximateArrivalTimestamp": 0,
                "data": base64.b64encode(r["Data"]).decode(),
            }
        }
        users = [
            (u["kinesis"]["partitionKey"], orjson.loads(base64.b64decode(u["kinesis"]["data"])))
            for u in iter_deaggregate_records(event)
        ]
        out.append(
            {
                "shard": shard,
                "key": r["PartitionKey"],
                "size": len(r["Data"]) + len(r["PartitionKey"].encode()),
                "aggregated": r["Data"][:4] == aggregation.MAGIC,
                "users": users,
            }
        )
    return out


def _machine(env: dict[str, Any]) -> str | None:
    if env["type"] == "record":
        return env["data"]["machine"]
    if env["type"] == "metadata":
        return env["data"]["info"]["name"]
    return None


def _times_by_machine(read: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each machine's record times in stream order (a machine lives on one shard)."""
    seq: dict[str, list[int]] = defaultdict(list)
    for rec in read:
        for _, env in rec["users"]:
            if env["type"] == "record":
                seq[env["data"]["machine"]].append(env["data"]["time"])
    return seq


def _first_occurrences(times: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for t in times:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


@pytest.mark.slow
def test_aggregated_records_round_trip_through_aws_kinesis_agg_with_their_machine_key(
    tmp_path, moto, kinesis, make_stream
):
    stream = make_stream(4)
    n, machines = 3_000, 6
    cfg = config(tmp_path / "c.yaml", stream, moto.url, machines=machines, aggregation="kpl")
    data = records_ndjson(tmp_path / "in.ndjson", n, machines)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())

    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert f"{n + machines} accepted, {n + machines} delivered" in err
    read = read_aggregated(kinesis, stream)
    users = [env for rec in read for _, env in rec["users"]]
    assert Counter(e["type"] for e in users) == {
        "record": n,
        "metadata": machines,
        "connection_test": 1,
    }
    # aggregated: far fewer Kinesis records than user records
    assert sum(r["aggregated"] for r in read) >= machines
    assert len(read) < n / 20
    # every aggregate holds one machine's records, under that machine's key, on one shard
    shards_of: dict[str, set[str]] = defaultdict(set)
    for rec in read:
        for key, env in rec["users"]:
            assert key == rec["key"]
            m = _machine(env)
            assert rec["key"] == (HOST if m is None else partition_key(HOST, m))
            if m is not None:
                shards_of[m].add(rec["shard"])
    assert all(len(s) == 1 for s in shards_of.values())
    # The KCL keeps a user record of an aggregate only if its partition key's MD5 falls in
    # the hash range of the shard it was read from (aggregates here carry no explicit
    # hash keys); it would drop the others silently.
    ranges = {
        s["ShardId"]: (
            int(s["HashKeyRange"]["StartingHashKey"]),
            int(s["HashKeyRange"]["EndingHashKey"]),
        )
        for s in kinesis.list_shards(StreamName=stream)["Shards"]
    }
    for rec in read:
        low, high = ranges[rec["shard"]]
        for key, _ in rec["users"]:
            assert low <= int.from_bytes(hashlib.md5(key.encode()).digest(), "big") <= high
    # the user records are byte for byte the plain envelopes: compact {"type","host","data"}
    assert all(list(e) == ["type", "host", "data"] for e in users)
    # no faults: every record once, each machine's in the order written
    by_machine = _times_by_machine(read)
    assert sorted(by_machine) == machine_names(machines)
    for m, times in by_machine.items():
        assert times == sorted(times) and len(times) == len(set(times)) == n // machines, m


def _sink(endpoint: str, stream: str, **kw: Any) -> KinesisSink:
    return open_sink(endpoint, stream, **{"aggregation": "kpl", **kw})


def _envelopes(n: int, machines: int, pad: int = 200) -> list[Envelope]:
    return [
        Envelope(
            "record",
            "gw",
            {"machine": f"m{i % machines:02d}", "time": i, "pad": "p" * (pad + i % 37)},
            f"m{i % machines:02d}",
        )
        for i in range(n)
    ]


def test_aggregates_respect_max_record_bytes_and_deliver_the_exact_envelopes(
    moto, kinesis, make_stream
):
    stream = make_stream(2)
    limit = 4096
    sink = _sink(moto.url, stream, max_record_bytes=limit, max_batch_bytes=64 * 1024)
    settled: list[Envelope] = []
    sink.context.on_settled = settled.extend
    envs = _envelopes(1_500, 5)
    big = Envelope("record", "gw", {"machine": "m00", "time": -1, "pad": "x" * 5000}, "m00")
    # alone it fits a plain record, but no aggregate with a neighbour
    near = Envelope("record", "gw", {"machine": "m01", "time": -2, "pad": "y" * 3950}, "m01")
    for i in range(0, 1_500, 100):
        sink.write(envs[i : i + 100])
    sink.write([big, near])
    sink.flush(30)
    sink.close()

    assert sink.stats.delivered == 1_501 and sink.stats.dead_lettered == 1
    assert "exceeds max_record_bytes" in (sink.stats.last_error or "")
    # delivered and dead-lettered are reported with the very objects written
    assert {id(e) for e in settled} == {id(e) for e in [*envs, big, near]}
    assert len(settled) == 1_502
    read = read_aggregated(kinesis, stream)
    assert all(r["size"] <= limit for r in read)
    aggregates = [r for r in read if r["aggregated"]]
    assert aggregates and max(r["size"] for r in aggregates) > limit - 600  # packed full
    plain = [r for r in read if not r["aggregated"]]
    assert any(env["data"]["time"] == -2 for r in plain for _, env in r["users"])
    times = Counter(env["data"]["time"] for r in read for _, env in r["users"])
    assert set(times) == {*range(1_500), -2} and max(times.values()) == 1


@pytest.mark.parametrize(
    ("faults", "lost_answers"),
    [
        (dict(partial=0.3, error=0.1, reset=0.05, slow=0.05, slow_seconds=0.2), False),
        (
            dict(
                partial=0.3,
                error=0.05,
                error_after=0.05,
                reset=0.05,
                reset_after=0.05,
                slow=0.05,
                slow_seconds=0.2,
            ),
            True,
        ),
    ],
    ids=["throttling-500s-resets", "with-lost-answers"],
)
@pytest.mark.slow
def test_each_machine_keeps_its_order_under_throttling_500s_and_resets(
    moto, kinesis, proxy, make_stream, faults, lost_answers
):
    stream = make_stream(4)
    machines, n = 12, 6_000
    # small aggregates (~15 records) so that there are hundreds of them to fault
    sink = _sink(proxy.url, stream, max_record_bytes=8192, read_timeout=5)
    proxy.set_faults(**faults)
    envs = _envelopes(n, machines, pad=300)

    def produce() -> None:
        for i in range(0, n, 200):
            sink.write(envs[i : i + 200])

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(60)
    sink.flush(60)
    sink.close()
    injected = proxy.counters()

    assert sink.stats.delivered == n and sink._buf.pending == 0
    assert injected["entries_throttled"] > 100 and injected["errors"] and injected["resets"]
    assert sink.stats.retried > injected["entries_throttled"]  # counted in user records
    read = read_aggregated(kinesis, stream)
    by_machine = _times_by_machine(read)
    for i in range(machines):
        m = f"m{i:02d}"
        expected = list(range(i, n, machines))
        times = by_machine[m]
        assert _first_occurrences(times) == expected, f"{m} out of order or incomplete"
        if not lost_answers:
            assert times == expected, f"{m} has repeats without a lost answer"
    # a Kinesis record holds a contiguous run of its machine's records, starting no
    # further than one past the furthest record of that machine already in the stream
    furthest: dict[str, int] = defaultdict(lambda: -1)
    for rec in read:
        ts = [env["data"]["time"] for _, env in rec["users"]]
        m = rec["users"][0][1]["data"]["machine"]
        idx = [t // machines for t in ts]
        assert idx == list(range(idx[0], idx[0] + len(idx))), "aggregate is not a run"
        assert idx[0] <= furthest[m] + 1
        furthest[m] = max(furthest[m], idx[-1])
    repeats = sum(len(t) for t in by_machine.values()) - n
    if lost_answers:
        assert injected.get("errors_after", 0) + injected.get("resets_after", 0) > 0
        print(f"\n{repeats} repeats from lost answers; {injected}")


def _entry(sink: KinesisSink, key: str, i: int, size: int = 100) -> Entry:
    data = b"x" * (size - len(key))
    route = Route(key, len(key), hash_key(key), sink._buf.lanes[0].shards[0])
    return Entry(Envelope("record", "gw", {"i": i}, key), data, route, size, 0.0)


def test_a_request_takes_the_leading_records_of_each_key_once_and_leaves_the_rest_in_order():
    cfg = KinesisConfig(
        type="kinesis",
        stream_name="s",
        region="us-east-1",
        aggregation="kpl",
        max_record_bytes=1024,
        max_batch_records=2,
    )
    sink = KinesisSink(cfg, SinkContext("cloud", "gw"))
    lane = sink._buf.lanes[0]
    # a: 12 records (only ~9 fit one aggregate of 1 KiB), b: 3, c: 2 (over the 2-key limit)
    entries = [_entry(sink, "a", i) for i in range(6)]
    entries += [_entry(sink, "b", 0), _entry(sink, "c", 0), _entry(sink, "b", 1)]
    entries += [_entry(sink, "a", i) for i in range(6, 12)]
    entries += [_entry(sink, "c", 1), _entry(sink, "b", 2)]
    shard = lane.shards[0]
    shard.queue.extend(entries)
    shard.bytes = lane.bytes = sum(e.size for e in entries)
    lane.count = len(entries)

    groups = sink._batching.take_aggregates(lane, [shard], cfg.max_batch_records)

    assert [g[0].route.key for g in groups] == ["a", "b"]  # order of first appearance, 2 keys
    a, b = groups
    assert [e.envelope.data["i"] for e in b] == [0, 1, 2]
    size_a = aggregation.overhead_bytes(1) + 1 + sum(aggregation.entry_bytes(99) for _ in a)
    assert size_a <= 1024 < size_a + aggregation.entry_bytes(99)  # as many as fit
    assert [e.envelope.data["i"] for e in a] == list(range(len(a)))  # the leading ones
    left = list(shard.queue)
    assert [(e.route.key, e.envelope.data["i"]) for e in left] == [("c", 0)] + [
        ("a", i) for i in range(len(a), 12)
    ] + [("c", 1)]
    assert lane.bytes == shard.bytes == sum(e.size for e in left)
    assert lane.count == len(left)
    units = encode(groups, sink._packer.unit)
    assert all(len(u.data) + 1 <= 1024 for u in units)
    assert units[0].data == aggregation.encode(b"a", [e.data for e in a])


def test_aggregation_accepts_only_none_or_kpl():
    base = dict(type="kinesis", stream_name="s", region="us-east-1")
    assert KinesisConfig(**base).aggregation == "none"
    assert KinesisConfig(**base, aggregation="kpl").aggregation == "kpl"
    with pytest.raises(ValidationError, match="aggregation"):
        KinesisConfig(**base, aggregation="zip")


def test_aggregation_makes_requests_of_1_mib_unless_told_otherwise():
    base = dict(type="kinesis", stream_name="s", region="us-east-1")
    assert KinesisConfig(**base).max_batch_bytes == 5 * 1024 * 1024
    assert KinesisConfig(**base, aggregation="kpl").max_batch_bytes == 1024 * 1024
    given = {**base, "aggregation": "kpl", "max_batch_bytes": 3 * 1024 * 1024}
    assert KinesisConfig(**given).max_batch_bytes == 3 * 1024 * 1024
    plain = {**base, "aggregation": "kpl"}
    KinesisConfig.model_validate(plain)
    assert "max_batch_bytes" not in plain  # the caller's dict is left as it was


@pytest.mark.parametrize(
    "lengths", [[0, 1, 2], [117, 118, 124, 125, 127, 128], [16_370, 16_384, 70_000]]
)
def test_the_encoder_round_trips_every_length_and_predicts_its_size(lengths):
    key = "gw/" + "k" * 200  # a long key: its length needs two varint bytes
    datas = [bytes([65 + i % 26]) * n for i, n in enumerate(lengths)]
    blob = aggregation.encode(key.encode(), datas)
    assert len(blob) == aggregation.overhead_bytes(len(key)) + sum(
        aggregation.entry_bytes(n) for n in lengths
    )
    event = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": "1",
            "approximateArrivalTimestamp": 0,
            "data": base64.b64encode(blob).decode(),
        }
    }
    users = list(iter_deaggregate_records(event))
    assert [base64.b64decode(u["kinesis"]["data"]) for u in users] == datas
    assert {u["kinesis"]["partitionKey"] for u in users} == {key}


def test_an_aggregate_rejected_as_invalid_dead_letters_all_its_records_and_only_them(
    tmp_path, moto, kinesis, proxy, make_stream
):
    stream = make_stream(2)
    proxy.set_faults(partial=0.2, partial_code="ValidationException")
    dead = tmp_path / "dead.jsonl"
    cfg = KinesisConfig(
        type="kinesis",
        stream_name=stream,
        region="us-east-1",
        endpoint_url=proxy.url,
        access_key_id="testing",
        secret_access_key="testing",
        linger_ms=10,
        connection_test=False,
        aggregation="kpl",
        max_record_bytes=4096,
    )
    sink = counting_accepted(KinesisSink(cfg, SinkContext("cloud", "gw", dead_letter_path=dead)))
    sink.open()
    sink.check()
    envs = _envelopes(1_000, 4)
    for i in range(0, 1_000, 100):
        sink.write(envs[i : i + 100])
    sink.flush(20)
    sink.close()

    assert proxy.counters()["entries_throttled"] > 3  # aggregates rejected
    lines = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert sink.stats.dead_lettered == len(lines) > 3 and sink.stats.retried == 0
    assert sink.stats.delivered + sink.stats.dead_lettered == 1_000 and sink._buf.pending == 0
    assert all("rejected by Kinesis: ValidationException" in x["reason"] for x in lines)
    read = read_aggregated(kinesis, stream)
    stored = {env["data"]["time"] for r in read for _, env in r["users"]}
    dead_times = {x["envelope"]["data"]["time"] for x in lines}
    assert len(stored) == sink.stats.delivered
    assert stored.isdisjoint(dead_times) and stored | dead_times == set(range(1_000))
