"""``format: sparkplug_b``: the gateway as a Sparkplug B edge node, each machine a device.

Payloads are read with protoc's schema-less decoder and a hand-written wire reader, not
only with our own codec; topics, seq and bdSeq are checked against the specification."""

from __future__ import annotations

import itertools
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mqtt_helpers import MACHINES, mqtt_block, ndjson, records, settled, spawn, unique, write_config
from spark_sinks_mqtt_sink import MqttSinkConfig
from spark_sinks_mqtt_sink.edge import EdgeNode
from spark_sinks_mqtt_sink.encoding import EncodeError
from spark_sinks_sparkplug import codec

from spark_sinks import METADATA, RECORD, Envelope
from tests.helpers import CLI
from tests.support import protowire
from tests.support.mosquitto import Client, Mosquitto, Received

# Sparkplug B field numbers (specification, chapter Payloads)
P_METRICS, P_SEQ = 2, 3
M_NAME, M_TIMESTAMP, M_DATATYPE, M_IS_NULL = 1, 3, 4, 7
M_INT, M_LONG, M_DOUBLE, M_BOOL, M_STRING, M_BYTES = 10, 11, 13, 14, 15, 16
INT8, INT64, UINT32, BOOLEAN, STRING, INT16_ARRAY = 1, 4, 7, 11, 12, 23


def sparkplug_block(broker: Mosquitto, **overrides: Any) -> tuple[dict[str, Any], str]:
    group = unique("g")
    return mqtt_block(broker, format="sparkplug_b", group_id=group, **overrides), group


def kinds(got: list[Received]) -> list[str]:
    return ["/".join(m.topic.split("/")[2:]) for m in got]


def metrics(payload: bytes) -> dict[str, dict[int, list[protowire.Field]]]:
    out = {}
    for f in protowire.by_number(payload).get(P_METRICS, []):
        assert isinstance(f.value, bytes)
        m = protowire.by_number(f.value)
        out[m[M_NAME][0].text] = m
    return out


def seq_of(payload: bytes) -> int | None:
    fields = protowire.by_number(payload).get(P_SEQ)
    return int(fields[0].value) if fields else None  # type: ignore[arg-type]


def bd_seq(payload: bytes) -> int:
    return int(metrics(payload)["bdSeq"][M_LONG][0].value)  # type: ignore[arg-type]


def test_births_then_data_with_seq_and_values_as_the_specification_says(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    # QoS 1: at the specification's QoS 0 a busy broker may drop a message on its way
    # to the subscriber, and this test counts every one
    block, group = sparkplug_block(mosquitto, qos=1)
    sub = subscriber(f"spBv1.0/{group}/#")
    n = 300  # more messages than seq has values: it must wrap
    result = subprocess.run(
        [*CLI, "run", "-c", str(write_config(tmp_path / "c.yaml", {"m": block}))],
        input=ndjson(records(n)),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    got = settled(sub, at_least=n + 4)
    assert kinds(got)[:3] == ["NBIRTH/gw-test", "DBIRTH/gw-test/press-1", "DBIRTH/gw-test/press-2"]
    assert kinds(got)[3:-1] == [f"DDATA/gw-test/press-{1 + i % 2}" for i in range(n)]
    assert kinds(got)[-1] == "NDEATH/gw-test"  # published before the intentional disconnect
    # seq: 0 in NBIRTH, +1 per message, 255 wraps to 0; NDEATH has none
    seqs = [seq_of(m.payload) for m in got]
    assert seqs[:-1] == [i % 256 for i in range(n + 3)]
    assert seqs[-1] is None
    assert bd_seq(got[0].payload) == bd_seq(got[-1].payload) == 0
    assert metrics(got[0].payload)["bdSeq"][M_DATATYPE][0].value == INT64
    rebirth = metrics(got[0].payload)["Node Control/Rebirth"]
    assert (rebirth[M_DATATYPE][0].value, rebirth[M_BOOL][0].value) == (BOOLEAN, 0)
    # DBIRTH: every variable, with its datatype, null value
    birth = metrics(got[2].payload)
    assert {k: v[M_DATATYPE][0].value for k, v in birth.items()} == {
        "seq": UINT32, "ok": BOOLEAN, "profile": INT16_ARRAY, "extra": STRING,
    }  # fmt: skip
    assert all(v[M_IS_NULL][0].value == 1 for v in birth.values())
    # DDATA values, read from the wire
    first = metrics(got[3].payload)  # records(n)[0]: press-1, delta = -128
    assert first["delta"][M_INT][0].value == (-128) & 0xFFFFFFFF  # Int8, two's complement
    assert first["delta"][M_DATATYPE][0].value == INT8
    assert first["temperature"][M_DOUBLE][0].double == 0.0
    assert first["state"][M_STRING][0].text == "s0"
    assert first["seq"][M_TIMESTAMP][0].value == codec.spark_time_ms("2026-11-26T10:00:00.000Z")
    second = metrics(got[4].payload)  # press-2: profile [1, -1], extra {"i": 1}
    assert second["profile"][M_BYTES][0].value == bytes.fromhex("0100ffff")
    assert second["extra"][M_STRING][0].text == '{"i":1}'
    assert all(m.qos == 1 and not m.retain for m in got)


def test_protoc_decode_raw_reads_a_ddata_from_the_wire(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    block, group = sparkplug_block(mosquitto)
    sub = subscriber(f"spBv1.0/{group}/DDATA/#")
    cfg = write_config(tmp_path / "c.yaml", {"m": block})
    result = subprocess.run([*CLI, "run", "-c", str(cfg)], input=ndjson(records(1)),
                            capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (msg,) = sub.wait_for(1, 5)
    assert msg.qos == 0 and not msg.retain  # the specification's QoS, the default
    protoc = [sys.executable, "-m", "grpc_tools.protoc", "--decode_raw"]
    raw = subprocess.run(protoc, input=msg.payload, capture_output=True, check=True)
    text = raw.stdout.decode()
    assert "3: 3\n" in text  # seq 3: after NBIRTH and two DBIRTHs
    for line in ('  1: "delta"', "  4: 1", "  10: 4294967168", '  15: "s0"', "  4: 10"):
        assert line in text, text


def _wait_kind(sub: Client, kind: str, count: int = 1, timeout: float = 15) -> list[Received]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in sub.messages if m.topic.split("/")[2] == kind]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} {kind} not seen; got {kinds(sub.messages)}")


def born_then_four_records(proc: subprocess.Popen[bytes], sub: Client) -> None:
    """Wait for both DBIRTHs, then send four records and wait for their DDATA."""
    _wait_kind(sub, "DBIRTH", 2)
    assert proc.stdin is not None
    proc.stdin.write(ndjson(records(4)))
    proc.stdin.flush()
    _wait_kind(sub, "DDATA", 4)


@pytest.mark.slow
def test_the_will_is_the_ndeath_when_spark_sinks_is_killed(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    block, group = sparkplug_block(mosquitto)
    sub = subscriber(f"spBv1.0/{group}/#")
    proc = spawn(write_config(tmp_path / "c.yaml", {"m": block}))
    try:
        (nbirth,) = _wait_kind(sub, "NBIRTH")
        assert sub.messages[-1].topic.split("/")[2] != "NDEATH"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        (ndeath,) = _wait_kind(sub, "NDEATH")
    finally:
        proc.kill()
    assert ndeath.topic == f"spBv1.0/{group}/NDEATH/gw-test"
    assert ndeath.qos == 1 and not ndeath.retain
    assert seq_of(ndeath.payload) is None
    assert bd_seq(ndeath.payload) == bd_seq(nbirth.payload) == 0


@pytest.mark.slow
def test_a_rebirth_request_is_answered_and_a_new_connection_has_a_new_bdseq(
    tmp_path: Path, mosquitto_own: Mosquitto
) -> None:
    # QoS 1, so that the births after the restart wait for the reconnecting subscriber
    block, group = sparkplug_block(mosquitto_own, qos=1)
    sub = Client(mosquitto_own, "sp-sub", clean=False).connect()
    sub.subscribe(f"spBv1.0/{group}/#")
    proc = spawn(write_config(tmp_path / "c.yaml", {"m": block}))
    try:
        born_then_four_records(proc, sub)
        # a host application asks for a rebirth
        host = Client(mosquitto_own).connect()
        host.publish(f"spBv1.0/{group}/NCMD/gw-test", rebirth_request(), qos=0)
        host.close()
        births = _wait_kind(sub, "NBIRTH", 2)
        _wait_kind(sub, "DBIRTH", 4)
        # the broker restarts: a new CONNECT, so bdSeq 1 in the will and the NBIRTH
        mosquitto_own.restart(down_for=0.5)
        births = _wait_kind(sub, "NBIRTH", 3, timeout=30)
        proc.stdin.write(ndjson(records(2, start=4)))
        proc.stdin.close()
        assert proc.wait(30) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        proc.kill()
    got = settled(sub)
    sub.close()
    assert [bd_seq(b.payload) for b in births] == [0, 0, 1]
    assert [seq_of(b.payload) for b in births] == [0, 0, 0]
    # after each NBIRTH, both devices are born again before any data, and seq counts on
    starts = [i for i, m in enumerate(got) if m.topic.split("/")[2] == "NBIRTH"]
    for start in starts:
        assert [k.split("/")[0] for k in kinds(got[start + 1 : start + 3])] == ["DBIRTH"] * 2
    from_node = [m for m in got if m.topic.split("/")[2] != "NCMD"]  # NCMD: the host's
    for a, b in itertools.pairwise(from_node):
        if b.topic.split("/")[2] not in ("NBIRTH", "NDEATH") and seq_of(a.payload) is not None:
            assert seq_of(b.payload) == (seq_of(a.payload) + 1) % 256  # type: ignore[operator]
    datas = [m for m in got if m.topic.split("/")[2] == "DDATA"]
    values = {int(metrics(m.payload)["seq"][M_INT][0].value) for m in datas}  # type: ignore[arg-type]
    assert values == set(range(6))


@pytest.mark.slow
def test_changed_metadata_on_reload_rebirths_the_device(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    block, group = sparkplug_block(mosquitto)
    sub = subscriber(f"spBv1.0/{group}/#")
    cfg = write_config(tmp_path / "c.yaml", {"m": block})
    proc = spawn(cfg)
    try:
        _wait_kind(sub, "DBIRTH", 2)
        variables = {**MACHINES["press-1"]["variables"], "rpm": {"name": "rpm", "format": "float"}}
        changed = {**MACHINES, "press-1": {**MACHINES["press-1"], "variables": variables}}
        raw = yaml.safe_load(cfg.read_text())
        raw["machines"] = changed
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        _wait_kind(sub, "DDEATH")
        births = _wait_kind(sub, "DBIRTH", 3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        proc.kill()
    got = sub.messages
    i = kinds(got).index("DDEATH/gw-test/press-1")
    assert kinds(got)[i + 1] == "DBIRTH/gw-test/press-1"
    assert seq_of(got[i + 1].payload) == (seq_of(got[i].payload) or 0) + 1
    assert "rpm" in metrics(births[-1].payload)


def rebirth_request() -> bytes:
    request = codec.pb.Payload()
    metric = request.metrics.add()
    metric.name = codec.REBIRTH
    codec.set_value(metric, codec.DT.Boolean, True)
    return bytes(request.SerializeToString())


@pytest.mark.slow
@pytest.mark.parametrize("spooled", [False, True])
def test_a_machine_disabled_on_reload_gets_its_ddeath_and_no_more_births(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client], spooled: bool
) -> None:
    extra = {"spool": {"path": str(tmp_path / "spool")}} if spooled else {}
    block, group = sparkplug_block(mosquitto, **extra)
    sub = subscriber(f"spBv1.0/{group}/#")
    cfg = write_config(tmp_path / "c.yaml", {"m": block})
    proc = spawn(cfg)
    try:
        born_then_four_records(proc, sub)
        raw = yaml.safe_load(cfg.read_text())
        raw["machines"]["press-2"]["enable"] = False
        cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        (ddeath,) = _wait_kind(sub, "DDEATH")
        host = Client(mosquitto).connect()
        host.publish(f"spBv1.0/{group}/NCMD/gw-test", rebirth_request(), qos=0)
        host.close()
        _wait_kind(sub, "NBIRTH", 2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        # the node's last message: everything before it has reached the subscriber too
        _wait_kind(sub, "NDEATH")
    finally:
        proc.kill()
    got = sub.messages
    assert ddeath.topic == f"spBv1.0/{group}/DDEATH/gw-test/press-2"
    i = kinds(got).index("DDEATH/gw-test/press-2")
    assert seq_of(got[i].payload) == 7  # NBIRTH 0, 2 DBIRTHs, 4 DDATA, then this
    after = kinds(got)[kinds(got).index("NCMD/gw-test") :]
    assert after[1:3] == ["NBIRTH/gw-test", "DBIRTH/gw-test/press-1"]
    assert "DBIRTH/gw-test/press-2" not in after


# -- the edge node's bookkeeping, without a broker ----------------------------------------


def edge(aliases: bool = False) -> EdgeNode:
    cfg = MqttSinkConfig(
        type="mqtt", host="localhost", format="sparkplug_b", group_id="g", aliases=aliases
    )
    node = EdgeNode(cfg, "gw")
    node.connect_sent()
    node.birth()
    return node


def meta(machine: str, variables: dict[str, Any]) -> Envelope:
    return Envelope(METADATA, "gw", {"info": {"name": machine}, "variables": variables}, machine)


def rec(machine: str, attributes: dict[str, Any]) -> Envelope:
    data = {"machine": machine, "time": "2026-11-26T10:00:00.000Z", "attributes": attributes}
    return Envelope(RECORD, "gw", data, machine)


def test_a_record_that_changes_a_datatype_rebirths_its_device_first() -> None:
    node = edge()
    v = {"x": {"name": "x", "format": "int8"}}
    assert [m.topic for m in node.encode(meta("m", v))] == ["spBv1.0/g/DBIRTH/gw/m"]
    same = node.encode(rec("m", {"x": {**v["x"], "value": 1}}))
    assert [m.topic for m in same] == ["spBv1.0/g/DDATA/gw/m"]
    listed = node.encode(rec("m", {"x": {**v["x"], "value": [1, 2]}}))  # now an Int8Array
    assert [m.topic.split("/")[2] for m in listed] == ["DDEATH", "DBIRTH", "DDATA"]
    assert [seq_of(m.payload) for m in [*same, *listed]] == [2, 3, 4, 5]
    born = codec.decode(listed[1].payload).metric("x")
    assert born is not None and born.datatype == codec.DT.Int8Array


def test_a_retired_device_dies_once_and_is_left_out_of_births() -> None:
    node = edge()
    node.encode(meta("m", {"x": {"name": "x", "format": "int8"}}))
    node.encode(meta("n", {"x": {"name": "x", "format": "int8"}}))
    (death,) = node.retire("m")
    assert death.topic == "spBv1.0/g/DDEATH/gw/m" and seq_of(death.payload) == 3
    assert node.retire("m") == []  # not born any more
    assert [m.topic.split("/")[-1] for m in node.birth()] == ["gw", "n"]


def test_a_bad_value_is_refused_without_taking_a_seq() -> None:
    node = edge()
    bad = rec("m", {"x": {"name": "x", "format": "uint8", "value": 300}})
    with pytest.raises(EncodeError, match="out of range for UInt8"):
        node.encode(bad)
    good = node.encode(rec("m", {"x": {"name": "x", "format": "uint8", "value": 3}}))
    assert [seq_of(m.payload) for m in good] == [1, 2]  # DBIRTH, DDATA: no gap
    with pytest.raises(EncodeError, match="device ID"):
        node.encode(rec("a/b", {"x": {"name": "x", "format": "uint8", "value": 3}}))


M_ALIAS = 2


def wire_metrics(payload: bytes) -> list[dict[int, list[protowire.Field]]]:
    """Each metric's fields as on the wire (read without our codec)."""
    out = []
    for f in protowire.by_number(payload).get(P_METRICS, []):
        assert isinstance(f.value, bytes)
        out.append(protowire.by_number(f.value))
    return out


def test_aliases_births_carry_name_and_alias_data_the_alias_only() -> None:
    node = edge(aliases=True)
    v = {
        "x": {"name": "x", "format": "int8"},
        "y": {"name": "y", "format": "float"},
    }
    births = [*node.encode(meta("m", v)), *node.encode(meta("n", v))]
    named: dict[tuple[str, int], str] = {}  # (device, alias) -> name, from the births
    for msg in births:
        device = msg.topic.split("/")[-1]
        for m in wire_metrics(msg.payload):
            named[(device, int(m[M_ALIAS][0].value))] = m[M_NAME][0].text  # type: ignore[arg-type]
    assert sorted(named.values()) == ["x", "x", "y", "y"]
    aliases = [alias for _, alias in named]
    assert len(set(aliases)) == 4  # unique across the edge node, not per device
    (data,) = node.encode(rec("n", {"x": {**v["x"], "value": 5}, "y": {**v["y"], "value": 1.5}}))
    wire = wire_metrics(data.payload)
    assert all(M_NAME not in m and M_ALIAS in m for m in wire)
    by_name = {named[("n", int(m[M_ALIAS][0].value))]: m for m in wire}  # type: ignore[arg-type]
    assert by_name["x"][M_INT][0].value == 5
    assert by_name["y"][M_DATATYPE][0].value == 9  # Float
    # a new metric: DDEATH, DBIRTH with a fresh alias, then the DDATA by alias
    more = node.encode(rec("n", {"z": {"name": "z", "format": "int8", "value": 1}}))
    assert [m.topic.split("/")[2] for m in more] == ["DDEATH", "DBIRTH", "DDATA"]
    reborn = {m[M_NAME][0].text: int(m[M_ALIAS][0].value) for m in wire_metrics(more[1].payload)}  # type: ignore[arg-type]
    assert reborn["x"] == next(a for (d, a), n in named.items() if d == "n" and n == "x")
    assert reborn["z"] not in aliases
    # a retired device's aliases are never given to another metric
    node.retire("m")
    fresh = node.encode(meta("m", {"w": {"name": "w", "format": "int8"}}))
    (w_alias,) = [int(m[M_ALIAS][0].value) for m in wire_metrics(fresh[0].payload)]  # type: ignore[arg-type]
    assert w_alias not in {*aliases, *reborn.values()}
    # without aliases nothing changes: names, no alias
    plain = edge()
    (b,) = plain.encode(meta("m", v))
    assert all(M_NAME in m and M_ALIAS not in m for m in wire_metrics(b.payload))


def test_bdseq_counts_connects_sent_and_wraps() -> None:
    cfg = MqttSinkConfig(type="mqtt", host="localhost", format="sparkplug_b")
    node = EdgeNode(cfg, "gw")
    wills = []
    for _ in range(258):
        will = node.will()
        assert bd_seq(node.will().payload) == bd_seq(will.payload)  # only a CONNECT counts
        node.connect_sent()
        wills.append(bd_seq(will.payload))
        assert node.bd_seq == wills[-1]
        assert bd_seq(node.death().payload) == node.bd_seq
    assert wills[:3] == [0, 1, 2] and wills[255:] == [255, 0, 1]


def test_edge_node_id_defaults_to_a_valid_host() -> None:
    cfg = MqttSinkConfig(type="mqtt", host="localhost", format="sparkplug_b")
    assert EdgeNode(cfg, "gw-1").edge == "gw-1"
    with pytest.raises(Exception, match="edge_node_id"):
        EdgeNode(cfg, "gw/1")


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
VALUES = SCALARS | st.lists(SCALARS, max_size=4) | st.dictionaries(st.text(max_size=3), SCALARS)
FORMATS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float", "double", "bool", "boolean", "char", "string", "object", "any"]  # fmt: skip


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(FORMATS), value=VALUES)
@example(fmt="double", value=2**53 + 1)  # found by hypothesis: it was sent rounded
def test_any_value_is_carried_faithfully_or_refused_in_one_line(fmt: str, value: Any) -> None:
    """Hostile values of every Spark format: the DDATA decodes to the same value (JSON
    text for objects and unpackable lists, 32-bit rounding for Float), or the envelope
    is refused with an ``EncodeError`` that names the metric, and takes no seq."""
    node = edge()
    before = node._seq.value
    try:
        messages = node.encode(rec("m", {"v": {"name": "v", "format": fmt, "value": value}}))
    except EncodeError as exc:
        assert "metric 'v'" in str(exc) and "\n" not in str(exc)
        assert node._seq.value == before
        return
    data = codec.decode(messages[-1].payload)
    (metric,) = data.metrics
    assert data.seq == (before + len(messages) - 1) % 256
    json_text = fmt not in ("char", "string") or type(value) is list
    if value is None:
        assert metric.value is None  # is_null
    elif metric.datatype == codec.DT.String and json_text:
        assert metric.value == orjson.dumps(value).decode()
    elif metric.datatype == codec.DT.Float:
        assert metric.value == struct.unpack("<f", struct.pack("<f", value))[0]
    elif metric.datatype == codec.DT.FloatArray:
        assert metric.value == [struct.unpack("<f", struct.pack("<f", v))[0] for v in value]
    else:
        assert metric.value == value
