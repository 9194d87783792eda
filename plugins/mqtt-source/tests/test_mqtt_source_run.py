"""The MQTT source end to end: a real Mosquitto, ``spark-sinks run`` as a subprocess, the
stdout sink; good messages come out as records, bad ones are rejected naming the topic."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_source_helpers import (
    Run,
    no_run_left_behind,  # noqa: F401 - autouse
    record,
    unique,
    write_config,
)

from tests.support.mosquitto import Client, Mosquitto


def test_json_messages_in_records_out_bad_ones_rejected(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    prefix = unique("plant")
    dead = tmp_path / "dead.jsonl"
    cfg = write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/#"], dead_letter=str(dead))
    run = Run(cfg)
    run.wait_subscribed()
    pub = Client(mosquitto).connect()
    for i in range(20):
        pub.publish(f"{prefix}/line/{i % 3}", record(i))
    # data points assemble into a record, and an array carries several items
    for variable, value in (("seq", 100), ("temperature", 1.5)):
        point = {"machine": "m1", "variable": variable, "value": value}
        pub.publish(f"{prefix}/points", orjson.dumps(point))
    pub.publish(f"{prefix}/batch", b"[" + record(101) + b"," + record(102) + b"]")
    bad = {
        f"{prefix}/bad/json": b"{not json",
        f"{prefix}/bad/machine": orjson.dumps({"machine": "nope", "values": {}}),
        f"{prefix}/bad/scalar": b"42",
        f'{prefix}/bad/"quoted" \\ ünïcode': b"\xff\xfe",
    }
    for topic, payload in bad.items():
        pub.publish(topic, payload)
    pub.publish(f"{prefix}/last", record(103))
    pub.close()
    run.wait(lambda: 103 in run.seqs(), what="the last record")
    rc = run.stop(signal.SIGTERM)

    assert sorted(run.seqs()) == [*range(20), 100, 101, 102, 103]
    assert rc == 3, run.err  # delivered, but some input was rejected
    lines = [ln for ln in run.err.splitlines() if "mqtt topic" in ln]
    assert len(lines) == len(bad), run.err
    for topic in bad:  # each names its topic, as a JSON string
        assert sum(orjson.dumps(topic).decode() in ln for ln in lines) == 1, (topic, lines)
    assert "Traceback" not in run.err
    entries = [orjson.loads(ln) for ln in dead.read_bytes().splitlines()]
    assert len(entries) == len(bad)
    assert {e["where"] for e in entries} == {f"mqtt topic {orjson.dumps(t).decode()}" for t in bad}


def test_sigterm_with_only_good_input_exits_0(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = unique("plant")
    run = Run(write_config(tmp_path / "c.yaml", mosquitto, [f"{prefix}/+"]))
    run.wait_subscribed()
    pub = Client(mosquitto).connect()
    pub.publish(f"{prefix}/a", record(1))
    pub.close()
    run.wait(lambda: run.seqs() == [1], what="the record")
    assert run.stop(signal.SIGTERM) == 0, run.err
    assert "1 items" in run.err and "0 rejected" in run.err


# what a broker lets through: no wildcards, no control or non-characters (Mosquitto drops
# the publisher for those)
TOPIC_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="+#"),
    max_size=30,
)


def _not_a_json_array(b: bytes) -> bool:
    try:
        return type(orjson.loads(b)) is not list
    except orjson.JSONDecodeError:
        return True


BAD = st.tuples(TOPIC_TEXT, st.binary(max_size=200).filter(_not_a_json_array))


@dataclass
class Shared:
    run: Run
    prefix: str
    pub: Client
    seq: int = 0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[Shared]:
    """One process for every hypothesis example (a process per example would take minutes);
    it must still end cleanly afterwards."""
    prefix = unique("fuzz")
    cfg = write_config(tmp_path_factory.mktemp("fuzz") / "c.yaml", mosquitto, [f"{prefix}/#"])
    run = Run(cfg)
    Run.started.remove(run)  # outlives each test: ended here, not by the conftest
    try:
        run.wait_subscribed()
        state = Shared(run, prefix, Client(mosquitto).connect())
        yield state
        state.pub.close()
    finally:
        rc = run.stop(signal.SIGTERM)
    assert rc in (0, 3), run.err
    assert "Traceback" not in run.err


@settings(max_examples=8, deadline=None)
@given(batch=st.lists(st.one_of(st.integers(0, 10**6), BAD), max_size=25))
def test_random_bytes_on_random_topics_never_stop_the_run(
    shared: Shared, batch: list[int | tuple[str, bytes]]
) -> None:
    """Random payloads on random topics mixed with good records, all through one running
    process: every good record out, every bad message one line naming its topic."""
    run, prefix, pub = shared.run, shared.prefix, shared.pub
    before_err = len([ln for ln in run.err.splitlines() if "mqtt topic" in ln])
    before = len(run.seqs())
    good = []
    for n, entry in enumerate(batch):
        if isinstance(entry, int):
            shared.seq += 1
            good.append(shared.seq)
            pub.publish(f"{prefix}/good/{n}", record(shared.seq))
        else:
            suffix, payload = entry
            pub.publish(f"{prefix}/bad/{suffix}", payload)
    shared.seq += 1
    marker = shared.seq
    pub.publish(f"{prefix}/marker", record(marker))
    run.wait(lambda: marker in run.seqs(), what="the marker")
    assert run.seqs()[before:] == [*good, marker]
    rejected = [ln for ln in run.err.splitlines() if "mqtt topic" in ln][before_err:]
    assert len(rejected) == len(batch) - len(good), rejected
    assert run.proc.poll() is None
    assert "Traceback" not in run.err
