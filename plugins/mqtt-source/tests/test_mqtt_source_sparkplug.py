"""Sparkplug B in: births and data of other edge nodes become records; aliases, report by
exception, device mapping, bad payloads, and a rebirth request when a birth was missed."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from mqtt_source_helpers import (
    MACHINES,
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    unique,
    write_config,
)
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug import sparkplug_b_pb2 as pb

from spark_sinks.timefmt import format_ms
from tests.helpers import run_cli
from tests.support.mosquitto import Client, Mosquitto

T0 = 1_790_000_000_000


def attrs(seq: int | None = None, temperature: float | None = None) -> dict[str, Any]:
    out = {}
    if seq is not None:
        out["seq"] = {"name": "seq", "format": "int64", "value": seq}
    if temperature is not None:
        out["temperature"] = {"name": "temperature", "format": "float", "value": temperature}
    return out


@pytest.fixture
def group() -> str:
    return unique("g")


def start(
    tmp_path: Path,
    broker: Mosquitto,
    group: str,
    *more: str,
    operations: dict[str, Any] | None = None,
    **src: Any,
) -> Run:
    cfg = write_config(
        tmp_path / "c.yaml",
        broker,
        [f"spBv1.0/{group}/#", *more],
        operations=operations,
        format="sparkplug_b",
        dead_letter=str(tmp_path / "dead.jsonl"),
        **src,
    )
    run = Run(cfg)
    run.wait_subscribed()
    return run


def test_births_and_data_become_records(tmp_path: Path, mosquitto: Mosquitto, group: str) -> None:
    # a host application's STATE (as spBv1.0/# would bring it) is skipped, not rejected
    # (the XDATA below is rejected unread: its seq 7 never arrives, and that gap would bring
    # a rebirth request only after this long)
    run = start(
        tmp_path,
        mosquitto,
        group,
        "spBv1.0/STATE/#",
        devices={"big-press": "m1"},
        reorder_timeout=600,
    )
    pub = Client(mosquitto).connect()
    top = f"spBv1.0/{group}"
    defs = codec.metric_defs(MACHINES["m0"]["variables"])
    pub.publish("spBv1.0/STATE/scada-1", b'{"online": true, "timestamp": 1}')
    pub.publish(f"{top}/NBIRTH/e1", codec.nbirth(0))
    pub.publish(f"{top}/DBIRTH/e1/m0", codec.dbirth(defs, seq=1))
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(1, 20.5), T0), 2))
    # report by exception: only the temperature changed
    pub.publish(
        f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(None, 21.0), T0 + 5), 3)
    )
    pub.publish(f"{top}/DBIRTH/e1/big-press", codec.dbirth(defs, seq=4))
    pub.publish(
        f"{top}/DDATA/e1/big-press", codec.ddata(codec.record_values(attrs(7, 1.5), T0 + 9), 5)
    )
    bad = {
        f"{top}/DDATA/e1/m2": b"\xff\x00 not protobuf",
        f"{top}/DDATA/e1/ghost": codec.ddata(codec.record_values(attrs(1, 1.0), T0), 6),
        f"{top}/XDATA/e1/m0": codec.ddata(codec.record_values(attrs(1, 1.0), T0), 7),
    }
    for t, payload in bad.items():
        pub.publish(t, payload)
    pub.publish(f"{top}/DDEATH/e1/m0", codec.ddeath(8))
    # after its death the device starts from nothing: a record lacking seq is rejected
    pub.publish(
        f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(None, 9.0), T0 + 20), 9)
    )
    pub.publish(
        f"{top}/DDATA/e1/big-press", codec.ddata(codec.record_values(attrs(8, 2.5), T0 + 30), 10)
    )
    pub.close()
    run.wait(lambda: len(run.records()) >= 4, what="four records")
    assert run.stop(signal.SIGTERM) == 3, run.err

    got = [
        (r["machine"], r["time"], {k: a["value"] for k, a in r["attributes"].items()})
        for r in run.records()
    ]
    assert got == [
        ("m0", format_ms(T0), {"seq": 1, "temperature": 20.5}),
        ("m0", format_ms(T0 + 5), {"seq": 1, "temperature": 21.0}),
        ("m1", format_ms(T0 + 9), {"seq": 7, "temperature": 1.5}),
        ("m1", format_ms(T0 + 30), {"seq": 8, "temperature": 2.5}),
    ]
    lines = [ln for ln in run.err.splitlines() if "mqtt topic" in ln]
    assert len(lines) == len(bad) + 1, run.err  # the last DDATA lacks seq after the death
    for t in bad:
        assert sum(f'"{t}"' in ln for ln in lines) == 1, (t, lines)
    assert "not a Sparkplug B payload" in run.err
    assert "'ghost' of edge node 'e1' is no configured machine" in run.err
    assert "lacks variables: seq" in run.err
    # the DDATA after m0's DDEATH comes without a DBIRTH: a rebirth is asked; the ghost
    # device, no machine here, is only rejected (asking would repeat every 30 s for ever)
    [asked] = [ln for ln in run.err.splitlines() if "asking it for a rebirth" in ln]
    assert f"edge node {group}/e1: DDATA of device 'm0' without its DBIRTH;" in asked


def alias_birth(seq: int) -> bytes:
    """A birth as Ignition-like edge nodes send it: each metric with a name and an alias."""
    p = pb.Payload()
    p.timestamp, p.seq = T0, seq
    for alias, (name, dt) in enumerate(
        [("seq", pb.DataType.Int64), ("temperature", pb.DataType.Double)], start=10
    ):
        m = p.metrics.add()
        m.name, m.alias, m.datatype, m.timestamp = name, alias, dt, T0
        m.is_null = True
    return p.SerializeToString()


def alias_data(seq: int, values: dict[int, Any], ts: int) -> bytes:
    """Data by alias only."""
    p = pb.Payload()
    p.timestamp, p.seq = ts, seq
    for alias, value in values.items():
        m = p.metrics.add()
        m.alias, m.timestamp = alias, ts
        if isinstance(value, int):
            m.datatype, m.long_value = pb.DataType.Int64, value
        else:
            m.datatype, m.double_value = pb.DataType.Double, value
    return p.SerializeToString()


def test_aliases_and_a_rebirth_request(tmp_path: Path, mosquitto: Mosquitto, group: str) -> None:
    watcher = Client(mosquitto).connect()
    watcher.subscribe(f"spBv1.0/{group}/NCMD/#")
    run = start(tmp_path, mosquitto, group)
    pub = Client(mosquitto).connect()
    top = f"spBv1.0/{group}"
    pub.publish(f"{top}/NBIRTH/e1", codec.nbirth(0, seq=0))
    pub.publish(f"{top}/DBIRTH/e1/m0", alias_birth(1))
    pub.publish(f"{top}/DDATA/e1/m0", alias_data(2, {10: 42, 11: 3.25}, T0))
    # edge node e2's birth came before this source started: its aliases are unknown
    pub.publish(f"{top}/DDATA/e2/m2", alias_data(5, {10: 1, 11: 1.0}, T0))
    run.wait(lambda: len(run.records()) >= 1, what="the record")
    [ncmd] = watcher.wait_for(1)
    assert ncmd.topic == f"spBv1.0/{group}/NCMD/e2"
    assert codec.is_rebirth_request(ncmd.payload)
    # e2 answers as an edge node must: NBIRTH, its DBIRTHs, then data; aliases now known
    pub.publish(f"{top}/NBIRTH/e2", codec.nbirth(7, seq=0))
    pub.publish(f"{top}/DBIRTH/e2/m2", alias_birth(1))
    pub.publish(f"{top}/DDATA/e2/m2", alias_data(2, {10: 2, 11: 2.5}, T0 + 1))
    pub.close()
    run.wait(lambda: len(run.records()) >= 2, what="e2's record after its rebirth")
    watcher.close()
    assert run.stop(signal.SIGTERM) == 3, run.err

    got = [
        (r["machine"], r["time"], {k: a["value"] for k, a in r["attributes"].items()})
        for r in run.records()
    ]
    assert got == [
        ("m0", format_ms(T0), {"seq": 42, "temperature": 3.25}),
        ("m2", format_ms(T0 + 1), {"seq": 2, "temperature": 2.5}),
    ]
    assert "metric alias 10 of device 'm2' is unknown" in run.err
    [asked] = [ln for ln in run.err.splitlines() if "asking it for a rebirth" in ln]
    assert f"edge node {group}/e2: DDATA before the edge node's NBIRTH;" in asked
    assert "source: 1 rebirth_requests" in run.err


def ddata(seq: int, i: int) -> bytes:
    """A DDATA of m0 whose ``seq`` variable is ``i`` (the record's identity)."""
    return codec.ddata(codec.record_values(attrs(i, 20.0), T0 + i), seq % 256)


def test_a_skipped_seq_gets_a_rebirth_request_and_the_rebirth_is_followed(
    tmp_path: Path, mosquitto: Mosquitto, group: str
) -> None:
    watcher = Client(mosquitto).connect()
    watcher.subscribe(f"spBv1.0/{group}/NCMD/#")
    status = tmp_path / "status.json"
    run = start(
        tmp_path,
        mosquitto,
        group,
        reorder_timeout=0.3,
        rebirth_interval=1,
        operations={"status_file": str(status)},
    )
    pub = Client(mosquitto).connect()
    top = f"spBv1.0/{group}"
    defs = codec.metric_defs(MACHINES["m0"]["variables"])
    pub.publish(f"{top}/NBIRTH/e1", codec.nbirth(3, seq=0))
    pub.publish(f"{top}/DBIRTH/e1/m0", codec.dbirth(defs, seq=1))
    pub.publish(f"{top}/DDATA/e1/m0", ddata(2, 1))
    pub.publish(f"{top}/DDATA/e1/m0", ddata(4, 2))  # seq 3 never comes
    [ncmd] = watcher.wait_for(1, timeout=20)
    asked = time.monotonic()
    assert ncmd.topic == f"{top}/NCMD/e1" and codec.is_rebirth_request(ncmd.payload)
    # the rebirth: NBIRTH with the same bdSeq (the same MQTT session), DBIRTH, data
    pub.publish(f"{top}/NBIRTH/e1", codec.nbirth(3, seq=0))
    pub.publish(f"{top}/DBIRTH/e1/m0", codec.dbirth(defs, seq=1))
    pub.publish(f"{top}/DDATA/e1/m0", ddata(2, 3))
    run.wait(lambda: len(run.records()) >= 3, what="three records")
    # From now on a second request would be allowed (rebirth_interval): data in step, its
    # seq wrapping past 255, must not bring one.
    while time.monotonic() < asked + 1.5:
        time.sleep(0.05)
    pub.publish_many([(f"{top}/DDATA/e1/m0", ddata(3 + i, 4 + i)) for i in range(300)])
    pub.close()
    run.wait(lambda: len(run.records()) >= 303, what="every record")
    assert run.stop(signal.SIGTERM) == 0, run.err
    watcher.close()

    assert run.seqs() == list(range(1, 304))  # the data around the gap is read too
    [line] = [ln for ln in run.err.splitlines() if "asking it for a rebirth" in ln]
    assert (
        f"edge node {group}/e1: 1 message(s) missing (seq 3 first) after reorder_timeout"
        " (0.3s); asking it for a rebirth (NCMD Node Control/Rebirth)"
    ) in line
    assert "source: 1 rebirth_requests" in run.err
    final = orjson.loads(status.read_bytes())
    assert final["final"] and final["input"]["source"]["rebirth_requests"] == 1


def born_e1(broker: Mosquitto, group: str) -> tuple[Client, str]:
    """A publisher that has published edge node e1's NBIRTH (seq 0) and m0's DBIRTH (seq 1);
    and the group's topic prefix."""
    pub = Client(broker).connect()
    top = f"spBv1.0/{group}"
    pub.publish(f"{top}/NBIRTH/e1", codec.nbirth(0, seq=0))
    pub.publish(
        f"{top}/DBIRTH/e1/m0", codec.dbirth(codec.metric_defs(MACHINES["m0"]["variables"]), seq=1)
    )
    return pub, top


def test_a_ddata_overtaken_by_a_newer_one_never_puts_an_older_value_back(
    tmp_path: Path, mosquitto: Mosquitto, group: str
) -> None:
    """seq 4 is published before seq 3 (as a reconnecting edge node's resent messages, or a
    bridge, may deliver them): 3's temperature is older than 4's and is discarded as stale;
    its ``seq`` variable, which 4 did not update, is the newest there is and goes out."""
    status = tmp_path / "status.json"
    run = start(
        tmp_path, mosquitto, group, reorder_timeout=600, operations={"status_file": str(status)}
    )
    pub, top = born_e1(mosquitto, group)
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(1, 20.0), T0 + 2), 2))
    pub.publish(
        f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(None, 22.0), T0 + 4), 4)
    )
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(2, 21.0), T0 + 3), 3))
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(3, None), T0 + 5), 5))
    pub.close()
    run.wait(lambda: len(run.records()) >= 4, what="four records")
    assert run.stop(signal.SIGTERM) == 0, run.err

    got = [(r["time"], {k: a["value"] for k, a in r["attributes"].items()}) for r in run.records()]
    assert got == [
        (format_ms(T0 + 2), {"seq": 1, "temperature": 20.0}),
        (format_ms(T0 + 4), {"seq": 1, "temperature": 22.0}),
        (format_ms(T0 + 3), {"seq": 2, "temperature": 22.0}),  # never 21.0 again
        (format_ms(T0 + 5), {"seq": 3, "temperature": 22.0}),
    ]
    [warning] = [ln for ln in run.err.splitlines() if "stale" in ln and "WARNING" in ln]
    assert (
        f"edge node {group}/e1: 1 value(s) of device 'm0' in DDATA seq 3 discarded as stale"
    ) in warning
    assert "1 stale_values" in run.err  # the exit summary's source line
    final = orjson.loads(status.read_bytes())
    assert final["input"]["source"]["stale_values"] == 1
    assert "asking it for a rebirth" not in run.err  # seq 3 came within reorder_timeout


def test_source_counters_in_prometheus_and_in_status(
    tmp_path: Path, mosquitto: Mosquitto, group: str
) -> None:
    """A rebirth request and a stale value, read back over HTTP from /metrics of the
    running process and from ``spark-sinks status``."""
    status = tmp_path / "status.json"
    ops = {"status_file": str(status), "stats_interval": 0.2, "metrics_port": 0}
    run = start(tmp_path, mosquitto, group, reorder_timeout=600, operations=ops)
    pub, top = born_e1(mosquitto, group)
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(1, 2.0), T0 + 3), 3))
    pub.publish(f"{top}/DDATA/e1/m0", codec.ddata(codec.record_values(attrs(None, 1.0), T0), 2))
    # e2's NBIRTH was never seen: a rebirth request
    pub.publish(f"{top}/DDATA/e2/m1", codec.ddata(codec.record_values(attrs(5, 5.0), T0), 9))
    pub.close()
    run.wait(lambda: len(run.records()) >= 2, what="two records")
    [port] = re.findall(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", run.err)
    want = {
        'spark_sinks_source_events_total{counter="rebirth_requests",source="mqtt"}': "1.0",
        'spark_sinks_source_events_total{counter="stale_values",source="mqtt"}': "1.0",
        'spark_sinks_source_events_total{counter="devices_forgotten",source="mqtt"}': "0.0",
        'spark_sinks_source_events_total{counter="edge_nodes_forgotten",source="mqtt"}': "0.0",
        'spark_sinks_source_events_total{counter="acknowledged_early",source="mqtt"}': "0.0",
    }

    def scraped() -> dict[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        pairs = (ln.rsplit(" ", 1) for ln in text.splitlines() if ln.startswith("spark_sinks_"))
        return {k: v for k, v in pairs if k.startswith("spark_sinks_source_events_total")}

    # the counters are read at each scrape: the pipeline may still be on the last message
    run.wait(lambda: scraped() == want, what=f"the source counters in /metrics: {want}")
    cfg = tmp_path / "c.yaml"

    def status_line() -> str:
        out = run_cli("status", "-c", str(cfg)).stdout.decode()
        return next((ln.strip() for ln in out.splitlines() if "source " in ln), "")

    line = (
        "source mqtt: 1 rebirth_requests, 1 stale_values, 0 devices_forgotten,"
        " 0 edge_nodes_forgotten, 0 acknowledged_early"
    )
    run.wait(lambda: status_line() == line, what=f"{line!r} from spark-sinks status")
    assert run.stop(signal.SIGTERM) == 0, run.err
    result = run_cli("status", "-c", str(cfg))
    lines = [ln.strip() for ln in result.stdout.decode().splitlines()]
    assert lines[0].startswith("EXITED:") and lines[1] == line, lines
