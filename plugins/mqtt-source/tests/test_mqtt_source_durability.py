"""Nothing the broker handed over is lost: a ``kill -9`` of spark-sinks (a spool on the
sink), a broker restart in the middle of a run, and a data point waiting in an open record
when the process dies. Every record is counted; duplicates are allowed (at least once)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from mqtt_source_helpers import (
    SMALL_MEMORY,
    Run,
    disk_buffer,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    stdout_sink,
    unique,
    write_config,
)

from tests.support.mosquitto import Client, Mosquitto

N = 3000


def spooled_stdout(tmp_path: Path, **more: object) -> dict[str, object]:
    """The stdout sink behind a disk buffer: what it accepted survives a kill -9."""
    return stdout_sink(disk_buffer(tmp_path, **more))


def union(*runs: Run) -> Counter[int]:
    return Counter(seq for run in runs for seq in run.seqs())


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = unique("kill")
    cfg = write_config(
        tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], sinks=spooled_stdout(tmp_path)
    )
    first = Run(cfg)
    first.wait_subscribed()
    # Frozen while the broker sends: once it thaws, a thousand messages (the receive
    # maximum) are in its socket, its inbox, its pipeline; it is killed as they go through.
    first.proc.send_signal(signal.SIGSTOP)
    pub = Client(mosquitto).connect()
    pub.publish_many([(f"{prefix}/r/{i % 7}", record(i)) for i in range(N)])
    first.proc.send_signal(signal.SIGCONT)
    time.sleep(0.1)
    first.stop(signal.SIGKILL)
    got_first = len(first.seqs())
    assert got_first < N, "the kill came too late to test anything"

    second = Run(cfg)  # the same client id: the broker resumes the session
    second.wait(lambda: set(union(first, second)) >= set(range(N)), timeout=30, what="all")
    assert second.stop(signal.SIGTERM) == 0, second.err
    seen = union(first, second)
    assert set(seen) == set(range(N))
    assert "session resumed" in second.err
    pub.close()


def test_kill_9_while_the_sink_is_stuck_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The stdout sink blocks on a full pipe and its disk buffer fills, so the source thread
    waits while paho keeps receiving up to the receive maximum: none of those may be
    acknowledged yet."""
    prefix = unique("stuck")
    sinks = spooled_stdout(tmp_path, max_bytes=1024)
    cfg = write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], sinks, max_pending=500)
    first = Run(cfg, read_stdout=False)
    first.wait_subscribed()
    pub = Client(mosquitto).connect()
    pub.publish_many([(f"{prefix}/r", record(i)) for i in range(N // 3)])
    time.sleep(1.0)  # the pipe fills; the rest waits in the inbox and at the broker
    first.stop(signal.SIGKILL)
    first.read_stdout()  # what reached the pipe before the kill
    first.finish()
    assert len(first.seqs()) < N // 3, "the sink was not stuck: nothing tested"

    second = Run(cfg)
    second.wait(lambda: set(union(first, second)) >= set(range(N // 3)), what="all")
    assert second.stop(signal.SIGTERM) == 0, second.err
    assert set(union(first, second)) == set(range(N // 3))
    pub.close()


def test_a_point_waiting_in_an_open_record_survives_kill_9(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Its message is acknowledged only once the record is complete: after the kill the
    broker sends it again and the record still comes out whole."""
    prefix = unique("open")
    cfg = write_config(
        tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], sinks=spooled_stdout(tmp_path)
    )
    first = Run(cfg)
    first.wait_subscribed()
    pub = Client(mosquitto).connect()
    half = {"machine": "m0", "variable": "seq", "value": 7, "time": 1_790_000_000_000}
    pub.publish(f"{prefix}/points", orjson.dumps(half))
    pub.publish(f"{prefix}/records", record(1, "m1"))  # processed after the point
    first.wait(lambda: first.seqs() == [1], what="the record after the point")
    first.stop(signal.SIGKILL)

    second = Run(cfg)
    second.wait_subscribed()
    other = {"machine": "m0", "variable": "temperature", "value": 3.5}
    pub.publish(f"{prefix}/points", orjson.dumps(other))
    second.wait(lambda: 7 in second.seqs(), what="the record completed after the restart")
    assert second.stop(signal.SIGTERM) == 0, second.err
    [m0] = [r for r in second.records() if r["machine"] == "m0"]
    assert m0["attributes"]["temperature"]["value"] == 3.5
    pub.close()


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing(tmp_path: Path, mosquitto_own: Mosquitto) -> None:
    """The broker restarts while the source holds hundreds of unacknowledged messages (its
    stdout sink is stuck on a full pipe until the test reads it, its buffer is full, and
    so the source thread waits): after the restart the session resumes and every record
    comes out."""
    prefix = unique("restart")
    # a small memory buffer: the stuck sink soon blocks the source thread itself
    sinks = stdout_sink(SMALL_MEMORY)
    cfg = write_config(tmp_path / "c.yaml", mosquitto_own, [f"{prefix}/#"], sinks)
    run = Run(cfg, read_stdout=False)
    run.wait_subscribed()
    pub = Client(mosquitto_own, "restart-publisher").connect()
    pub.publish_many([(f"{prefix}/r", record(i)) for i in range(N // 2)])
    pub.close()
    time.sleep(0.5)
    mosquitto_own.restart()
    pub = Client(mosquitto_own, "restart-publisher").connect()
    pub.publish_many([(f"{prefix}/r", record(i)) for i in range(N // 2, N)])
    pub.close()
    run.read_stdout()
    run.wait(lambda: set(run.seqs()) >= set(range(N)), timeout=60, what="every record")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert "lost" in run.err and "session resumed" in run.err, run.err
    assert set(run.seqs()) == set(range(N))
