"""Edges of the MQTT source: a record that never completes while max_pending messages wait
behind it, QoS 0, and a broker that is not there at start."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest
from mqtt_source_helpers import (
    SMALL_MEMORY,
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    stdout_sink,
    unique,
    write_config,
)

from tests.support.mosquitto import Client, Mosquitto, free_port


def test_a_full_window_behind_an_open_record_does_not_stall(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """m0's record stays open (its second variable never comes), so no later message may be
    acknowledged in order; with max_pending of them waiting the broker would send nothing
    more. The source acknowledges some anyway, says so, and every record still comes out."""
    prefix = unique("window")
    cfg = write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], max_pending=5)
    run = Run(cfg)
    run.wait_subscribed()
    pub = Client(mosquitto).connect()
    point = {"machine": "m0", "variable": "seq", "value": 1}
    pub.publish(f"{prefix}/p", orjson.dumps(point))
    pub.publish_many([(f"{prefix}/r", record(i, "m1")) for i in range(20)])
    pub.close()
    run.wait(lambda: len(run.seqs()) >= 20, timeout=30, what="every record")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert sorted(run.seqs()) == list(range(20))
    assert "acknowledged while their data points still wait in open records" in run.err


def test_qos_0(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = unique("qos0")
    run = Run(write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], qos=0))
    run.wait_subscribed()
    assert "at QoS 0" in run.err
    pub = Client(mosquitto).connect()
    for i in range(10):
        pub.publish(f"{prefix}/r", record(i), qos=0)
    pub.close()
    run.wait(lambda: len(run.seqs()) >= 10, what="the records")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert sorted(run.seqs()) == list(range(10))


def test_no_broker_at_start_retries_until_stopped(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A gateway may boot before its broker: retried (and said), and SIGTERM still ends it."""
    cfg = write_config(tmp_path / "c.yaml", mosquitto, ["x/#"], port=free_port())
    run = Run(cfg)
    run.wait(lambda: "retrying in" in run.err, what="the first retry")
    time.sleep(1.5)
    assert run.stop(signal.SIGTERM, timeout=10) == 0, run.err
    retries = [ln for ln in run.err.splitlines() if "cannot reach MQTT broker" in ln]
    assert 1 <= len(retries) <= 3, run.err  # backoff: 1 s, then 2 s, ...
    assert "connection refused (is the broker running on that port?)" in retries[0]
    assert "Traceback" not in run.err


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_backlog_larger_than_memory_stays_at_the_broker(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """200 messages of 256 KiB (50 MiB) for a source whose sink is stuck: it holds about
    max_pending of them, the broker keeps the rest."""
    prefix = unique("backlog")
    sinks = stdout_sink(SMALL_MEMORY)
    cfg = write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], sinks, max_pending=10)
    run = Run(cfg, read_stdout=False)
    run.wait_subscribed()
    before = _rss_mb(run.proc.pid)
    pad = b" " * (256 * 1024)
    pub = Client(mosquitto).connect()
    # 500 small records fill the unread stdout pipe and the buffer: the source waits
    pub.publish_many([(f"{prefix}/small", record(i)) for i in range(1000, 1500)])
    pub.publish_many([(f"{prefix}/big", record(i)[:-1] + pad + b"}") for i in range(200)])
    pub.close()
    time.sleep(2.0)  # the broker has sent whatever it would
    grew = _rss_mb(run.proc.pid) - before
    run.read_stdout()
    run.wait(lambda: len(run.seqs()) >= 700, timeout=60, what="every record")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert sorted(run.seqs()) == [*range(200), *range(1000, 1500)]
    print(f"backlog: RSS grew by {grew:.1f} MiB while 50 MiB waited at the broker")
    assert grew < 20, f"RSS grew by {grew:.1f} MiB while 50 MiB waited at the broker"
