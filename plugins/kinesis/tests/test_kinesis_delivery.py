"""End to end: ``spark-sinks run`` with the ndjson source and the kinesis sink, against a
real moto server over HTTP, read back with GetRecords over every shard."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from kinesis_helpers import (
    HOST,
    SPARK_SINKS,
    cli_env,
    config,
    machine_names,
    read_stream,
    records_ndjson,
    run_cli,
)
from spark_sinks_kinesis import partition_key


def _records(read: list[dict]) -> list[dict]:
    return [r for r in read if r["envelope"]["type"] == "record"]


@pytest.mark.slow
def test_every_record_arrives_once_in_the_seed_format_with_its_machine_key(
    tmp_path, moto, kinesis, make_stream
):
    stream = make_stream(4)
    n, machines = 2_000, 8
    cfg = config(tmp_path / "c.yaml", stream, moto.url, machines=machines)
    data = records_ndjson(tmp_path / "in.ndjson", n, machines)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())

    assert proc.returncode == 0, proc.stderr.decode()
    read = read_stream(kinesis, stream)
    kinds = Counter(r["envelope"]["type"] for r in read)
    assert kinds == {"record": n, "metadata": machines, "connection_test": 1}

    # the envelope is exactly {"type", "host", "data"}, compact JSON, as the seed shows
    for r in read:
        env = r["envelope"]
        assert list(env) == ["type", "host", "data"]
        assert env["host"] == HOST
        assert r["raw"] == orjson.dumps(env)
    rec = _records(read)[0]["envelope"]["data"]
    assert list(rec) == ["machine", "time", "attributes"]
    assert set(rec["attributes"]["temperature"]) == {"name", "description", "format", "value"}

    # exact: every produced record once, identified by its distinct time
    times = Counter(r["envelope"]["data"]["time"] for r in _records(read))
    assert len(times) == n and max(times.values()) == 1

    # partition key host/machine; metadata shares its machine's key (and so its shard)
    shards_of: dict[str, set[str]] = defaultdict(set)
    for r in read:
        env = r["envelope"]
        if env["type"] == "connection_test":
            assert r["key"] == HOST
            continue
        machine = env["data"]["machine"] if env["type"] == "record" else env["data"]["info"]["name"]
        assert r["key"] == f"{HOST}/{machine}"
        shards_of[machine].add(r["shard"])
    assert set(shards_of) == set(machine_names(machines))
    assert all(len(s) == 1 for s in shards_of.values()), shards_of
    assert len({next(iter(s)) for s in shards_of.values()}) > 1, "expected several shards in use"


@pytest.mark.slow
def test_records_of_a_machine_keep_their_order_without_retries(
    tmp_path, moto, kinesis, make_stream
):
    stream = make_stream(4)
    cfg = config(tmp_path / "c.yaml", stream, moto.url, machines=6)
    data = records_ndjson(tmp_path / "in.ndjson", 3_000, 6)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())

    assert proc.returncode == 0, proc.stderr.decode()
    by_machine: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in _records(read_stream(kinesis, stream)):
        d = r["envelope"]["data"]
        by_machine[d["machine"]].append((r["seq"], d["time"]))
    for machine, rows in by_machine.items():
        times = [t for _, t in sorted(rows)]
        assert times == sorted(times), f"{machine} out of order"


@pytest.mark.slow
def test_connection_test_record_names_no_secret_and_can_be_disabled(
    tmp_path, moto, kinesis, make_stream
):
    secret = "SuperSecretValue/abc123XYZ"
    stream = make_stream(1)
    cfg = config(
        tmp_path / "c.yaml",
        stream,
        moto.url,
        access_key_id="AKIATESTKEY",
        secret_access_key=secret,
        session_token="TokenSecret-456-def",
    )
    proc = run_cli("check", "-c", str(cfg))
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    read = read_stream(kinesis, stream)
    assert [r["envelope"]["type"] for r in read] == ["connection_test"]
    test = read[0]
    assert test["key"] == HOST and test["envelope"]["host"] == HOST
    assert isinstance(test["envelope"]["data"], dict) and test["envelope"]["data"]
    for leak in (secret, "TokenSecret-456-def"):
        assert leak.encode() not in test["raw"]
        assert leak.encode() not in proc.stdout + proc.stderr

    cfg = config(tmp_path / "c2.yaml", stream, moto.url, connection_test=False)
    proc = run_cli("check", "-c", str(cfg))
    assert proc.returncode == 0
    assert len(read_stream(kinesis, stream)) == 1


def test_a_record_over_max_record_bytes_is_dead_lettered_and_the_rest_delivered(
    tmp_path, moto, kinesis, make_stream
):
    stream = make_stream(2)
    dead = tmp_path / "dead.jsonl"
    cfg = config(
        tmp_path / "c.yaml",
        stream,
        moto.url,
        machines=2,
        max_record_bytes=1024,
        dead_letter=str(dead),
    )
    lines = [
        {
            "machine": "machine-00",
            "time": 1_000 + i,
            "values": _values("x" * (5 if i != 3 else 2000)),
        }
        for i in range(10)
    ]
    proc = run_cli("run", "-c", str(cfg), input=b"".join(orjson.dumps(x) + b"\n" for x in lines))

    assert proc.returncode == 1  # something accepted was not delivered: say so
    err = proc.stderr.decode()
    assert "1 NOT delivered" in err and "1 dead-lettered" in err
    entries = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert len(entries) == 1
    assert "max_record_bytes" in entries[0]["reason"]
    assert entries[0]["envelope"]["data"]["time"] == "1970-01-01T00:00:01.003Z"
    got = sorted(r["envelope"]["data"]["time"] for r in _records(read_stream(kinesis, stream)))
    assert len(got) == 9 and "1970-01-01T00:00:01.003Z" not in got


@pytest.mark.slow
def test_a_record_the_stream_rejects_is_isolated_and_dead_lettered_without_blocking_others(
    tmp_path, moto, kinesis, make_stream
):
    # max_record_bytes above the stream's 1 MiB limit: Kinesis (moto) rejects the whole
    # request; the sink halves the batch until the bad record stands alone.
    stream = make_stream(2)
    dead = tmp_path / "dead.jsonl"
    cfg = config(
        tmp_path / "c.yaml",
        stream,
        moto.url,
        machines=2,
        max_record_bytes=2 * 1024 * 1024,
        rate_limit=False,  # a record over a shard's second is refused with the meter on
        dead_letter=str(dead),
        linger_ms=200,
    )
    big = "y" * (1024 * 1024 + 10)
    lines = [
        {
            "machine": f"machine-0{i % 2}",
            "time": 5_000 + i,
            "values": _values(big if i == 40 else "ok"),
        }
        for i in range(100)
    ]
    proc = run_cli("run", "-c", str(cfg), input=b"".join(orjson.dumps(x) + b"\n" for x in lines))

    assert proc.returncode == 1
    entries = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert [e["envelope"]["data"]["time"] for e in entries] == ["1970-01-01T00:00:05.040Z"]
    assert "rejected by Kinesis" in entries[0]["reason"]
    assert len(_records(read_stream(kinesis, stream))) == 99


@pytest.mark.slow
def test_undeliverable_records_are_reported_with_counts_and_a_nonzero_exit(
    tmp_path, moto, proxy, make_stream
):
    stream = make_stream(1)
    proxy.set_faults(error=1.0)  # every PutRecords fails; DescribeStreamSummary works
    cfg = config(
        tmp_path / "c.yaml", stream, proxy.url, machines=2, flush_timeout=1.5, connection_test=False
    )
    data = records_ndjson(tmp_path / "in.ndjson", 50, 2)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes(), timeout=60)

    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "52 accepted, 0 delivered; 52 NOT delivered (52 pending)" in err
    assert "InternalFailure" in err
    assert "Traceback" not in err


def _values(state: str) -> dict:
    return {"temperature": 1.5, "pressure": 2.5, "speed": 3.5, "state": state, "count": 1}


def test_long_partition_keys_are_shortened_deterministically(tmp_path: Path) -> None:
    host = "h" * 200
    a, b = partition_key(host, "m" * 100 + "a"), partition_key(host, "m" * 100 + "b")
    assert len(a) == len(b) == 256
    assert a != b and a == partition_key(host, "m" * 100 + "a")
    assert a.startswith(f"{host}/m")
    assert partition_key("gw", "press-1") == "gw/press-1"
    assert partition_key("gw", None) == "gw"


def test_a_second_signal_ends_the_flush_at_once_and_reports_what_is_left(
    tmp_path, moto, proxy, make_stream
):
    stream = make_stream(1)
    proxy.set_faults(error=1.0)  # nothing can be delivered: the final flush would wait 60 s
    cfg = config(
        tmp_path / "c.yaml", stream, proxy.url, machines=2, flush_timeout=60, connection_test=False
    )
    data = records_ndjson(tmp_path / "in.ndjson", 20, 2)
    with data.open("rb") as stdin:
        proc = subprocess.Popen(
            [SPARK_SINKS, "run", "-c", str(cfg)],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        # wait until the sink is retrying failed requests: input consumed, final flush on
        deadline = time.monotonic() + 30
        while proxy.counters().get("errors", 0) < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 10.0  # at once: not the 60 s flush_timeout
    assert proc.returncode == 1
    text = err.decode()
    assert "22 accepted, 0 delivered; 22 NOT delivered (22 pending)" in text
    assert "Traceback" not in text
