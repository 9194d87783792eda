"""Edges of the MQTT source: a record that never completes while max_pending messages wait
behind it, QoS 0, and a broker that is not there at start."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
from mqtt_source_helpers import (
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
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
    assert "Connection refused" in retries[0]
    assert "Traceback" not in run.err
