"""Shard-aware rate against a Kinesis-faithful throttling proxy (tests/support/throttle.py)
in front of moto: the proxy refuses exactly what goes over a shard's budget, and the sink
keeps a backlog near the shards' capacity with few refusals, counting them."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import boto3
import pytest
import yaml
from kinesis_helpers import config, records_ndjson, run_cli
from test_kinesis_aggregation import read_aggregated

from tests.support.streams import shard_records
from tests.support.throttle import ThrottleProxy

LIMITS = {"records_per_second": 200, "bytes_per_second": 128 * 1024}
"""Kinesis's 1,000 records/s and 1 MiB/s per shard, scaled down for short runs."""


def _key_on_shard(shard: int, shards: int, prefix: str) -> str:
    """A partition key whose MD5 falls in shard ``shard`` of ``shards`` equal ranges."""
    for i in range(10_000):
        key = f"{prefix}-{i}"
        h = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
        if h * shards >> 128 == shard:
            return key
    raise AssertionError("no key found")


def _start_of_a_second() -> None:
    """Wait until early in a wall-clock second, so that a request is metered in one."""
    while time.time() % 1 > 0.2:
        time.sleep(0.02)


def test_the_proxy_refuses_exactly_the_entries_over_a_shards_budget(moto, kinesis, make_stream):
    stream = make_stream(2)
    a, b = _key_on_shard(0, 2, "a"), _key_on_shard(1, 2, "b")
    with ThrottleProxy(moto.url, records_per_second=50, bytes_per_second=20_000) as proxy:
        client = boto3.client(
            "kinesis",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        records = [{"Data": f"a{i}".encode(), "PartitionKey": a} for i in range(80)]
        records.insert(10, {"Data": b"x" * 15_000, "PartitionKey": b})
        records.insert(20, {"Data": b"y" * 6_000, "PartitionKey": b})  # over 20,000 bytes
        records.insert(30, {"Data": b"z" * 100, "PartitionKey": b})
        _start_of_a_second()
        resp = client.put_records(StreamName=stream, Records=records)
        totals = proxy.totals()
    codes = [r.get("ErrorCode") for r in resp["Records"]]
    refused = [i for i, c in enumerate(codes) if c]
    assert set(codes) == {None, "ProvisionedThroughputExceededException"}
    a_positions = [i for i, r in enumerate(records) if r["PartitionKey"] == a]
    assert refused == sorted([*a_positions[50:], 20])  # shard 0: its 51st record on
    assert resp["FailedRecordCount"] == len(refused) == 31
    stored = [r["Data"] for _, r in shard_records(kinesis, stream)]
    assert sorted(stored) == sorted(r["Data"] for i, r in enumerate(records) if i not in refused)
    by_shard = sorted(totals.values(), key=lambda t: t["bytes"])
    assert [t["records"] for t in by_shard] == [50, 2]
    assert [t["throttled"] for t in by_shard] == [30, 1]
    assert by_shard[1]["bytes"] == 15_000 + 100 + 2 * len(b)


def _backlog_run(tmp_path: Path, moto, kinesis, make_stream, **sink) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    """4,000 records of 20 machines (on 4 shards: 7, 5, 4 and 4 machines) through the
    proxy; returns the run's seconds and what it found."""
    stream = make_stream(4)
    n = 4_000
    data = records_ndjson(tmp_path / "in.ndjson", n, machines=20).read_bytes()
    with ThrottleProxy(moto.url, **LIMITS) as proxy:
        cfg = config(
            tmp_path / "c.yaml",
            stream,
            proxy.url,
            machines=20,
            shard_limits=LIMITS,
            connection_test=False,
            linger_ms=100,
            flush_timeout=300,
            **sink,
        )
        t0 = time.monotonic()
        proc = run_cli("run", "-c", str(cfg), input=data, timeout=300)
        took = time.monotonic() - t0
        totals = proxy.totals()
        ideal = proxy.ideal_seconds()
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    throttled = sum(t["throttled"] for t in totals.values())
    sent = sum(t["records"] for t in totals.values()) + throttled
    summary = re.search(r"sink 'cloud': (\d+) accepted, (\d+) delivered", err)
    assert summary and summary.groups() == (str(n + 20), str(n + 20)), err[-2000:]
    reported = re.search(r"\((\d+) throttled entries retried\)", err)
    assert (int(reported.group(1)) if reported else 0) == throttled
    stored = [env for r in read_aggregated(kinesis, stream) for _, env in r["users"]]
    return took, {"ideal": ideal, "sent": sent, "throttled": throttled, "stored": stored}


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["none", "kpl"])
def test_a_backlog_runs_near_the_shards_capacity_with_few_throttled_entries(
    tmp_path, moto, kinesis, make_stream, aggregation
):
    took, found = _backlog_run(tmp_path, moto, kinesis, make_stream, aggregation=aggregation)
    print(
        f"\n{aggregation}: {took:.1f} s, ideal {found['ideal']:.1f} s, "
        f"{found['throttled']} of {found['sent']} entries throttled"
    )
    assert found["ideal"] >= 5  # a backlog of many seconds of the busiest shard
    # the 1.1x target is measured in `make bench`; here only a wide margin (process start
    # and a machine shared with other work), which a sender that backs off blindly misses
    assert took <= 2.5 * found["ideal"] + 10
    assert found["throttled"] <= 0.05 * found["sent"]
    stored = found["stored"]
    assert len(stored) == 4_020
    if aggregation == "kpl":  # each machine's records in exactly their order
        times: dict[str, list[int]] = {}
        for env in stored:
            if env["type"] == "record":
                times.setdefault(env["data"]["machine"], []).append(env["data"]["time"])
        assert all(t == sorted(t) for t in times.values())
        assert sum(len(t) for t in times.values()) == 4_000


def test_rate_settings_are_checked_with_one_line(tmp_path):
    base = config(tmp_path / "c.yaml", "s", "http://127.0.0.1:9")
    raw = yaml.safe_load(base.read_text())
    for limits, message in [
        ({"records_per_second": 0}, "sinks.cloud.shard_limits.records_per_second"),
        ({"bytes_per_second": 10}, "sinks.cloud.shard_limits.bytes_per_second"),
        ({"records": 5}, "sinks.cloud.shard_limits.records"),
    ]:
        raw["sinks"]["cloud"]["shard_limits"] = limits
        base.write_text(yaml.safe_dump(raw))
        proc = run_cli("check", "-c", str(base))
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2 and "Traceback" not in err
        assert len(err.splitlines()) == 1 and message in err, err
    raw["sinks"]["cloud"]["shard_limits"] = LIMITS
    raw["sinks"]["cloud"]["rate_limit"] = "sometimes"
    base.write_text(yaml.safe_dump(raw))
    proc = run_cli("check", "-c", str(base))
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "rate_limit" in err, err


@pytest.mark.parametrize("aggregation", ["none", "kpl"])
def test_requests_overlap_on_a_shard_and_each_machine_keeps_its_order_under_throttling(
    tmp_path, moto, kinesis, make_stream, aggregation
):
    """One shard, 8 machines, and a sink that believes the shard takes twice what it
    does: requests to the shard overlap (up to max_in_flight of them), many entries are
    refused and retried, and still no machine is in two requests at once and each
    machine's records are stored in the order written. (Without aggregation the proxy
    refuses a shard's entries from the first one over its records budget on, so a
    request's accepted entries never follow a refused one of the same machine: any
    disorder here would come from overlapping requests.)"""
    stream = make_stream(1)
    n = 2_000
    data = records_ndjson(tmp_path / "in.ndjson", n, machines=8).read_bytes()
    real = {"records_per_second": 800, "bytes_per_second": 512 * 1024}
    believed = {"records_per_second": 1_600, "bytes_per_second": 1024 * 1024}
    with ThrottleProxy(moto.url, **real) as proxy:
        cfg = config(
            tmp_path / "c.yaml",
            stream,
            proxy.url,
            machines=8,
            shard_limits=believed,
            max_in_flight=4,
            connection_test=False,
            aggregation=aggregation,
        )
        proc = run_cli("run", "-c", str(cfg), input=data, timeout=120)
        most, overlaps = proxy.most_in_flight(), proxy.overlaps()
        throttled = sum(t["throttled"] for t in proxy.totals().values())
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    summary = re.search(r"sink 'cloud': (\d+) accepted, (\d+) delivered", err)
    assert summary and summary.groups() == (str(n + 8), str(n + 8)), err[-2000:]
    assert throttled > 0, "the shard never refused: the test attacked nothing"
    assert max(most.values()) >= 2, most
    assert overlaps == {}
    times: dict[str, list[int]] = {}
    for r in read_aggregated(kinesis, stream):
        for _, env in r["users"]:
            if env["type"] == "record":
                times.setdefault(env["data"]["machine"], []).append(env["data"]["time"])
    assert sum(len(t) for t in times.values()) == n
    for machine, t in times.items():
        assert t == sorted(t), f"{machine}'s records were stored out of order"
