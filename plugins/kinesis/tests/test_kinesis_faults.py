"""Under injected faults (throttled entries, 500s, connection resets, slow answers) the
sink loses nothing; duplicates come only from requests whose answer was lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from kinesis_helpers import (
    config,
    counting_accepted,
    moto_auth,
    open_sink,
    read_stream,
    records_ndjson,
    run_cli,
)
from spark_sinks_kinesis import KinesisConfig, KinesisSink

from spark_sinks import Envelope, SinkContext


@pytest.mark.slow
def test_20000_records_all_arrive_through_throttling_errors_resets_and_slow_answers(
    tmp_path, moto, kinesis, proxy, make_stream
):
    stream = make_stream(4)
    n, machines = 20_000, 20
    proxy.set_faults(
        partial=0.10,  # a tenth of the entries: ProvisionedThroughputExceededException
        error=0.05,  # whole request: 500 InternalFailure, nothing stored
        error_after=0.02,  # stored, then 500: the retry duplicates
        reset=0.03,  # connection reset before moto sees it
        reset_after=0.02,  # stored, then reset: the retry duplicates
        slow=0.05,
        slow_seconds=0.3,
    )
    # batches of 100: some 240 requests, so that every kind of fault happens
    cfg = config(
        tmp_path / "c.yaml",
        stream,
        proxy.url,
        machines=machines,
        read_timeout=5,
        max_batch_records=100,
    )
    data = records_ndjson(tmp_path / "in.ndjson", n, machines)

    t0 = time.monotonic()
    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes(), timeout=180)
    took = time.monotonic() - t0

    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    injected = proxy.counters()
    read = read_stream(kinesis, stream)
    times = Counter(
        r["envelope"]["data"]["time"] for r in read if r["envelope"]["type"] == "record"
    )
    assert len(times) == n, f"{n - len(times)} records lost"
    duplicates = sum(times.values()) - n
    print(f"\n20,000 records under faults in {took:.1f} s: {duplicates} duplicates; {injected}")
    assert injected["entries_throttled"] > 1_000
    assert injected["errors"] and injected["resets"] and injected["slowed"]
    # duplicates come only from answers lost after moto stored the records
    lost_answers = injected.get("errors_after", 0) + injected.get("resets_after", 0)
    assert duplicates <= lost_answers * 100
    assert f"{n + machines} accepted, {n + machines} delivered" in err
    # per-machine metadata was not duplicated unless its request lost its answer
    assert sum(1 for r in read if r["envelope"]["type"] == "metadata") >= machines


def _sink(endpoint: str, stream: str, **kw: Any) -> KinesisSink:
    return open_sink(endpoint, stream, **{"retry_max_ms": 200, **kw})


def _envelopes(n: int, size: int = 500, machines: int = 4) -> list[Envelope]:
    pad = "p" * size
    return [
        Envelope(
            "record",
            "gw",
            {"machine": f"m{i % machines}", "time": i, "pad": pad},
            f"m{i % machines}",
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_write_blocks_at_the_buffer_bound_and_memory_stays_bounded(
    moto, kinesis, proxy, make_stream
):
    stream = make_stream(2)
    bound = 1024 * 1024
    sink = _sink(proxy.url, stream, max_buffered_bytes=bound, max_batch_bytes=256 * 1024)
    proxy.set_faults(slow=1.0, slow_seconds=0.15)  # a slow stream
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sink._buf.bytes)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    envs = _envelopes(8_000, 400)  # ~3.6 MB: more than three times the bound
    t0 = time.monotonic()
    for i in range(0, len(envs), 500):
        sink.write(envs[i : i + 500])
    blocked = time.monotonic() - t0
    sink.flush(30)
    done.set()
    watcher.join()
    sink.close()

    assert peak <= bound
    assert blocked > 0.3, "write should have waited for the slow stream"
    assert sink.stats.delivered == len(envs)
    got = [r for r in read_stream(kinesis, stream)]
    assert len(got) == len(envs)


def test_an_outage_is_waited_out_and_nothing_is_lost(moto, kinesis, proxy, make_stream):
    stream = make_stream(2)
    sink = _sink(proxy.url, stream, connect_timeout=1, read_timeout=2)
    proxy.refuse_connections(True)
    envs = _envelopes(1_000)
    sink.write(envs)
    time.sleep(1.0)
    assert sink.stats.delivered == 0 and sink.stats.retried > 0
    assert "cannot reach the Kinesis endpoint" in (sink.stats.last_error or "")
    proxy.refuse_connections(False)
    sink.flush(30)
    sink.close()
    assert sink.stats.delivered == len(envs)
    assert len(read_stream(kinesis, stream)) == len(envs)


def test_flush_returns_at_its_deadline_and_on_stopping(moto, proxy, make_stream):
    stream = make_stream(1)
    sink = _sink(proxy.url, stream)
    proxy.set_faults(error=1.0)
    sink.write(_envelopes(100))
    t0 = time.monotonic()
    sink.flush(0.5)
    # at its deadline: never before, and not much after (3 s: a loaded machine's slack)
    assert 0.4 < time.monotonic() - t0 < 3.5
    assert sink._buf.pending == 100 and sink.stats.delivered == 0 and sink.stats.retried > 0
    threading.Timer(0.3, sink.context.stopping.set).start()
    t0 = time.monotonic()
    sink.flush(60)
    assert time.monotonic() - t0 < 10.0  # stopping ended it: not its 60 s deadline
    sink.close()
    assert sink.stats.delivered == 0


def test_access_denied_mid_run_holds_the_records_until_the_operator_fixes_it(
    moto, kinesis, make_stream
):
    stream = make_stream(1)
    iam = moto.client("iam")
    iam.create_user(UserName="revoked")
    key = iam.create_access_key(UserName="revoked")["AccessKey"]
    cfg = KinesisConfig(
        type="kinesis",
        stream_name=stream,
        region="us-east-1",
        endpoint_url=moto.url,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        linger_ms=10,
        retry_base_ms=20,
        retry_max_ms=400,
        connection_test=False,
    )
    sink = counting_accepted(KinesisSink(cfg, SinkContext("cloud", "gw")))
    sink.open()
    sink.check()
    try:
        with moto_auth(moto.url):  # the user has no policy: every call is denied now
            sink.write(_envelopes(50))
            time.sleep(1.0)
            assert sink.stats.delivered == 0
            assert "access denied" in (sink.stats.last_error or "")
            assert sink._buf.pending == 50  # held, not dropped or dead-lettered
            assert sink.stats.dead_lettered == 0
        sink.flush(10)  # "fixed": auth is off again
        assert sink.stats.delivered == 50
    finally:
        sink.close()
        iam.delete_access_key(UserName="revoked", AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName="revoked")
    assert len(read_stream(kinesis, stream)) == 50
