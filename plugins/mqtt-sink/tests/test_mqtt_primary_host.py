"""``primary_host_id``: the Sparkplug edge node waits for its Primary Host Application
(Sparkplug 3.0). A fake host publishes retained STATE messages on a real Mosquitto; the
envelopes wait, counted pending, while the host is offline, and nothing is lost."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from mqtt_helpers import ndjson, records, unique, write_config
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug.state import state_payload
from test_mqtt_sparkplug import kinds, sparkplug_block

from tests.helpers import CLI
from tests.support.mosquitto import Client, Mosquitto, Received

T0 = 1_790_000_000_000


class Gateway:
    """``spark-sinks run`` reading NDJSON from a pipe, its stderr in a file, its status file
    rewritten every 0.2 s."""

    def __init__(self, tmp_path: Path, block: dict[str, Any], name: str = "run") -> None:
        self.status = tmp_path / f"{name}-status.json"
        ops = {"status_file": str(self.status), "stats_interval": 0.2}
        cfg = write_config(tmp_path / f"{name}.yaml", {"m": block}, operations=ops)
        self.err_path = tmp_path / f"{name}-stderr.log"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "run", "-c", str(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def feed(self, items: list[dict[str, Any]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(ndjson(items))
        self.proc.stdin.flush()

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def sink(self) -> dict[str, Any]:
        try:
            snap = orjson.loads(self.status.read_bytes())
        except (OSError, orjson.JSONDecodeError):  # not written yet
            return {}
        return dict(snap["sinks"].get("m", {}))

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            assert self.proc.poll() is None, f"the run ended waiting for {what}:\n{self.err}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; stderr:\n{self.err}")

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def record_seqs(got: list[Received]) -> list[int]:
    """The ``seq`` variable of every DDATA, in order."""
    out = []
    for m in got:
        if "/DDATA/" in m.topic:
            seq = codec.decode(m.payload).metric("seq")
            assert seq is not None
            out.append(seq.value)
    return out


def test_births_and_data_wait_for_the_primary_host_and_stop_when_it_goes_offline(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    host_id = unique("scada")
    state = f"spBv1.0/STATE/{host_id}"
    host = Client(mosquitto).connect()
    host.publish(state, state_payload(False, T0), retain=True)
    block, group = sparkplug_block(mosquitto, qos=1, primary_host_id=host_id)
    sub = subscriber(f"spBv1.0/{group}/#")
    gw = Gateway(tmp_path, block)
    try:
        # 1. the host is offline: five records (and the metadata of both machines) wait,
        # pending, and nothing is published
        gw.wait(lambda: "waiting for primary host" in gw.err, "the STATE subscription")
        gw.feed(records(5))
        gw.wait(lambda: gw.sink().get("pending") == 7, "seven envelopes pending")
        assert gw.sink()["accepted"] == 7 and gw.sink()["delivered"] == 0
        assert sub.messages == []
        # 2. online: births, then the five
        host.publish(state, state_payload(True, T0 + 1), retain=True)
        gw.wait(lambda: len(record_seqs(sub.messages)) == 5, "the five DDATA")
        assert kinds(sub.messages)[0] == "NBIRTH/gw-test"
        # 3. an offline STATE older than the online one (a replay): ignored
        host.publish(state, state_payload(False, T0), retain=False)
        gw.wait(lambda: "STATE older than the last one, ignored" in gw.err, "the replay")
        gw.feed(records(2, start=5))
        gw.wait(lambda: len(record_seqs(sub.messages)) == 7, "seven DDATA")
        assert not any(k.startswith("NDEATH") for k in kinds(sub.messages))
        # 4. offline for real: NDEATH, disconnect; three envelopes wait after the reconnect
        host.publish(state, state_payload(False, T0 + 2), retain=True)
        gw.wait(lambda: kinds(sub.messages)[-1].startswith("NDEATH"), "the NDEATH")
        before = len(sub.messages)
        gw.wait(lambda: gw.err.count("waiting for primary host") == 2, "the new session")
        gw.feed(records(3, start=7))
        gw.wait(lambda: gw.sink().get("pending") == 3, "three envelopes pending")
        assert len(sub.messages) == before  # nothing born or sent while the host is offline
        # 5. online again: a new session (a new bdSeq), and the three
        host.publish(state, state_payload(True, T0 + 3), retain=True)
        gw.wait(lambda: len(record_seqs(sub.messages)) == 10, "all ten DDATA")
        assert gw.finish() == 0, gw.err
    finally:
        gw.kill()
        host.publish(state, b"", retain=True)  # clear the retained STATE
        host.close()

    got = sub.messages
    assert record_seqs(got) == list(range(10))  # each once, in order
    after = kinds(got[before:])
    assert after[0].startswith("NBIRTH") and after[-1].startswith("NDEATH"), after
    births = [m for m in got if "/NBIRTH/" in m.topic]
    bd_seqs = [getattr(codec.decode(m.payload).metric(codec.BD_SEQ), "value", None) for m in births]
    assert len(births) == 2 and None not in bd_seqs and bd_seqs[0] != bd_seqs[1]
    final = orjson.loads(gw.status.read_bytes())["sinks"]["m"]
    assert (final["accepted"], final["delivered"], final["pending"]) == (12, 12, 0)


def test_a_run_that_ends_while_the_host_is_offline_reports_the_envelopes_pending(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    """No STATE ever came: nothing is published (not even an NDEATH: the node was never
    born), and the exit says the envelopes were not delivered."""
    block, group = sparkplug_block(
        mosquitto, qos=1, primary_host_id=unique("scada"), flush_timeout=1
    )
    sub = subscriber(f"spBv1.0/{group}/#")
    gw = Gateway(tmp_path, block)
    try:
        gw.wait(lambda: "waiting for primary host" in gw.err, "the STATE subscription")
        gw.feed(records(3))
        assert gw.finish() == 1, gw.err
    finally:
        gw.kill()
    assert "5 envelopes not yet acknowledged by the broker" in gw.err  # with 2 metadata
    assert "waiting for primary host" in gw.err
    final = orjson.loads(gw.status.read_bytes())["sinks"]["m"]
    assert (final["accepted"], final["delivered"], final["pending"]) == (5, 0, 5)
    # the run has ended: whatever it published reached the broker before this fence
    fence = f"spBv1.0/{group}/fence"
    fencer = Client(mosquitto).connect()
    fencer.publish(fence, b"")
    fencer.close()
    assert [m.topic for m in sub.wait_for(1)] == [fence]


def test_with_a_spool_what_waited_for_the_host_is_sent_by_the_next_run(
    tmp_path: Path, mosquitto: Mosquitto, subscriber: Callable[..., Client]
) -> None:
    """The host stays offline for a whole run: its envelopes stay in the spool, and the
    next run, the host online, sends each record once."""
    host_id = unique("scada")
    state = f"spBv1.0/STATE/{host_id}"
    spool = {"path": str(tmp_path / "spool")}
    block, group = sparkplug_block(
        mosquitto, qos=1, primary_host_id=host_id, spool=spool, flush_timeout=1
    )
    sub = subscriber(f"spBv1.0/{group}/#")
    first = Gateway(tmp_path, block, "first")
    try:
        first.wait(lambda: "waiting for primary host" in first.err, "the STATE subscription")
        first.feed(records(4))
        first.wait(lambda: first.sink().get("pending") == 6, "six envelopes pending")
        assert first.finish() == 1, first.err
    finally:
        first.kill()
    host = Client(mosquitto).connect()
    host.publish(state, state_payload(True, T0), retain=True)
    second = Gateway(tmp_path, {**block, "flush_timeout": 20}, "second")
    try:
        assert second.finish() == 0, second.err  # no new input: the spool only
    finally:
        second.kill()
        host.publish(state, b"", retain=True)
        host.close()
    got = sub.wait_for(3 + 4 + 1)  # NBIRTH, two DBIRTHs, four DDATA, the NDEATH at exit
    assert record_seqs(got) == [0, 1, 2, 3]
    assert kinds(got)[0] == "NBIRTH/gw-test" and kinds(got)[-1] == "NDEATH/gw-test"
