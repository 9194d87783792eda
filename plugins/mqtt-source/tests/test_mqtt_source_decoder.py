"""The Sparkplug decoder on its own (no broker): memory stays bounded whatever group and edge
node ids arrive, with what is forgotten counted and logged; a value published before the
current one never replaces it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spark_sinks_mqtt_source.connection import Incoming
from spark_sinks_mqtt_source.sessions import Sessions
from spark_sinks_mqtt_source.sparkplug import SparkplugDecoder
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug import sparkplug_b_pb2 as pb

from spark_sinks.machines import Machine, make_variable

T0 = 1_790_000_000_000
VARIABLES = {
    "seq": {"name": "seq", "format": "int64"},
    "temperature": {"name": "temperature", "format": "float"},
}
MACHINE = Machine(
    "m0", {"name": "m0"}, True, False, {k: make_variable(v) for k, v in VARIABLES.items()}
)


class Bad(ValueError):
    pass


class Asked:
    """Rebirth requests published, by topic."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.topics.append(topic)


def decoder(
    max_devices: int = 10_000, max_nodes: int = 10_000, rebirths: bool = True
) -> tuple[SparkplugDecoder, Asked]:
    asked = Asked()
    sessions = Sessions(["spBv1.0/#"], 2.0, 30.0, max_nodes=max_nodes)
    d = SparkplugDecoder(
        {"m0": MACHINE}, {}, Bad, asked if rebirths else None, sessions, max_devices
    )
    return d, asked


def msg(topic: str, payload: bytes) -> Incoming:
    return Incoming(1, 0, 1, topic, payload)


def values(seq: int | None = None, temperature: float | None = None, ts: int = T0) -> list[Any]:
    attrs = {}
    if seq is not None:
        attrs["seq"] = {"name": "seq", "format": "int64", "value": seq}
    if temperature is not None:
        attrs["temperature"] = {"name": "temperature", "format": "float", "value": temperature}
    return codec.record_values(attrs, ts)


ids = st.text("abcdefgh", min_size=1, max_size=3)


@given(
    nodes=st.lists(st.tuples(ids, ids, st.booleans()), min_size=1, max_size=60),
    max_devices=st.integers(1, 8),
    max_nodes=st.integers(1, 8),
)
def test_memory_stays_bounded_with_random_node_ids_and_every_eviction_counted(
    nodes: list[tuple[str, str, bool]], max_devices: int, max_nodes: int
) -> None:
    """Random group and edge node ids, each with the configured device m0, a birth or data
    first: the maps never exceed their limits, and every device or node that had to make
    room is counted (what came in = what is known + what was forgotten)."""
    d, _ = decoder(max_devices, max_nodes)
    new_devices = new_nodes = 0
    for i, (group, edge, birth) in enumerate(nodes):
        key = (group, edge, "m0")
        new_devices += key not in d._devices
        new_nodes += (group, edge) not in d.sessions._nodes
        kind = "DBIRTH" if birth else "DDATA"
        payload = (
            codec.dbirth(codec.metric_defs(VARIABLES), seq=i % 256)
            if birth
            else codec.ddata(values(i, 1.5), i % 256)
        )
        d(msg(f"spBv1.0/{group}/{kind}/{edge}/m0", payload))
        assert len(d._devices) <= max_devices
        assert len(d.sessions._nodes) <= max_nodes
    assert new_devices == len(d._devices) + d.devices_forgotten
    assert new_nodes == len(d.sessions._nodes) + d.sessions.forgotten


def test_forgetting_is_logged_once_per_interval_and_the_device_asked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d, asked = decoder(max_devices=3)
    defs = codec.metric_defs(VARIABLES)
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            d(msg(f"spBv1.0/g/NBIRTH/e{i}", codec.nbirth(0, seq=0)))
            d(msg(f"spBv1.0/g/DBIRTH/e{i}/m0", codec.dbirth(defs, seq=1)))
        assert d.devices_forgotten == 7 and len(d._devices) == 3
        [line] = [r.getMessage() for r in caplog.records if "forgotten" in r.getMessage()]
        assert line.startswith("1 devices forgotten so far: more than 3 devices were heard")
        assert asked.topics == []
        # e0's device was forgotten: its data comes without a known birth, so e0 is asked
        [record] = d(msg("spBv1.0/g/DDATA/e0/m0", codec.ddata(values(1, 2.5), 2)))
    assert record["values"] == {"seq": 1, "temperature": 2.5}
    assert asked.topics == ["spBv1.0/g/NCMD/e0"]


def born(d: SparkplugDecoder, node: str = "e1") -> None:
    d(msg(f"spBv1.0/g/NBIRTH/{node}", codec.nbirth(0, seq=0)))
    d(msg(f"spBv1.0/g/DBIRTH/{node}/m0", codec.dbirth(codec.metric_defs(VARIABLES), seq=1)))


def data(d: SparkplugDecoder, number: int, **kw: Any) -> list[Any]:
    """A DDATA of m0 with Sparkplug ``seq`` ``number`` (``kw``: its values)."""
    return d(msg("spBv1.0/g/DDATA/e1/m0", codec.ddata(values(**kw), number)))


@pytest.mark.parametrize("rebirths", [True, False])
def test_a_late_value_never_replaces_a_newer_one(rebirths: bool) -> None:
    d, _ = decoder(rebirths=rebirths)
    born(d)
    assert data(d, 2, seq=1, temperature=20.0, ts=T0 + 2)[0]["values"] == {
        "seq": 1,
        "temperature": 20.0,
    }
    # seq 4 overtakes seq 3: 3 updated both variables, 4 only the temperature
    [newer] = data(d, 4, temperature=22.0, ts=T0 + 4)
    assert newer == {"machine": "m0", "time": T0 + 4, "values": {"seq": 1, "temperature": 22.0}}
    [late] = data(d, 3, seq=2, temperature=21.0, ts=T0 + 3)
    # its seq value is the newest there is; its temperature is older than 22.0: discarded
    assert late == {"machine": "m0", "time": T0 + 3, "values": {"seq": 2, "temperature": 22.0}}
    assert d.stale_values == 1
    # a copy of seq 3 (QoS 1) arriving after seq 5 changes nothing and emits nothing
    data(d, 5, seq=3, temperature=23.0, ts=T0 + 5)
    assert data(d, 3, seq=2, temperature=21.0, ts=T0 + 3) == []
    assert d.stale_values == 3


def test_a_newer_timestamp_saves_a_value_that_looks_late() -> None:
    """A message 130 places late looks ahead in seq; the ones after it then look late, but
    their timestamps are newer: they are kept, not discarded."""
    d, _ = decoder()
    born(d)
    data(d, 200, seq=200, temperature=1.0, ts=T0 + 200)
    data(d, 70, seq=70, temperature=0.5, ts=T0 + 70)  # 130 late: taken for seq 326
    [after] = data(d, 201, seq=201, temperature=2.0, ts=T0 + 201)
    assert after["values"] == {"seq": 201, "temperature": 2.0}


def test_a_new_session_is_not_compared_with_the_old_one() -> None:
    d, _ = decoder()
    born(d)
    data(d, 100, seq=1, temperature=1.0, ts=T0 + 100)
    born(d)  # a rebirth: seq starts again at 0, and so do the positions
    [record] = data(d, 2, seq=2, temperature=2.0, ts=T0 + 1)
    assert record["values"] == {"seq": 2, "temperature": 2.0}
    assert d.stale_values == 0


# Births built to exhaust memory: what is kept of a device is bounded by its machine's
# configured variables, however many metrics (and aliases) a birth declares. Counted in
# what the decoder holds, not in RSS.


def huge_birth(metrics: int, name: str | None = None) -> bytes:
    """A DBIRTH near 1 MiB (the source's default max_message_bytes): ``metrics`` aliased
    metrics no machine configures (or all named ``name``), then the two configured ones."""
    p = pb.Payload()
    p.seq, p.timestamp = 1, T0
    for i in range(metrics):
        m = p.metrics.add()
        m.name, m.alias, m.datatype = name or f"x{i}", 1000 + i, pb.DataType.Int32
    for alias, (var, dt) in enumerate(
        [("seq", pb.DataType.Int64), ("temperature", pb.DataType.Float)]
    ):
        m = p.metrics.add()
        m.name, m.alias, m.datatype = var, alias, dt
    data = p.SerializeToString()
    assert len(data) < 1 << 20
    return data


def by_alias(values: dict[int, float]) -> bytes:
    p = pb.Payload()
    p.seq, p.timestamp = 2, T0
    for alias, value in values.items():
        m = p.metrics.add()
        m.alias, m.timestamp, m.datatype = alias, T0, pb.DataType.Int64
        m.long_value = int(value)
    return p.SerializeToString()


def test_births_with_sixty_thousand_metrics_keep_only_the_configured_aliases() -> None:
    """Before: every alias of every birth was kept, for up to 10,000 devices (one per
    group and edge node id): about 60,000 aliases per 1 MiB birth, 6 * 10^8 at the bound."""
    d, asked = decoder()
    birth = huge_birth(60_000)
    for node in range(5):
        d(msg(f"spBv1.0/g/NBIRTH/e{node}", codec.nbirth(0, seq=0)))
        assert d(msg(f"spBv1.0/g/DBIRTH/e{node}/m0", birth)) == []
    kept = sum(len(dev.aliases) for dev in d._devices.values())
    assert kept == 5 * len(VARIABLES), kept
    # the configured aliases still work, and the others are metrics not configured here
    got = d(msg("spBv1.0/g/DDATA/e0/m0", by_alias({0: 7, 1500: 9, 99_999_999: 1})))
    assert [item["values"]["seq"] for item in got] == [7]
    assert asked.topics == []  # born nodes and devices: no rebirth for an alias of no interest


def test_a_birth_naming_one_variable_45000_times_keeps_one_alias() -> None:
    d, _ = decoder()
    d(msg("spBv1.0/g/NBIRTH/e0", codec.nbirth(0, seq=0)))
    d(msg("spBv1.0/g/DBIRTH/e0/m0", huge_birth(45_000, name="temperature")))
    (dev,) = d._devices.values()
    assert dev.aliases == {0: "seq", 1: "temperature"}
