"""Delivery by the ``mqtt`` sink, driven step by step against a real Mosquitto."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_helpers import mqtt_block, prefix_of, settled
from spark_sinks_mqtt_sink import MqttSink
from spark_sinks_mqtt_sink.sink import POISON_LOSSES
from spark_sinks_sparkplug.codec import topic_problem

from spark_sinks import METADATA, RECORD, Envelope
from spark_sinks.testing import SinkHarness
from tests.support.mosquitto import Certs, Client, Mosquitto


def record(i: int, machine: str = "press-1") -> Envelope:
    data = {"machine": machine, "time": "2026-11-26T10:00:00.000Z",
            "attributes": {"seq": {"name": "seq", "format": "uint32", "value": i}}}  # fmt: skip
    return Envelope(RECORD, "gw", data, machine)


def balanced(sink: Any) -> dict[str, int]:
    snap = sink.stats.snapshot()
    assert snap["accepted"] == (
        snap["delivered"] + snap["dead_lettered"] + snap["dropped"] + snap["failed"]
        + snap["pending"]
    )  # fmt: skip
    assert all(snap[k] >= 0 for k in ("delivered", "pending", "retried"))
    return snap


@pytest.fixture
def harnesses() -> Iterator[Callable[..., SinkHarness]]:
    made: list[SinkHarness] = []

    def make(block: dict[str, Any]) -> SinkHarness:
        h = SinkHarness(MqttSink, {k: v for k, v in block.items() if k != "type"}, host="gw")
        made.append(h)
        return h

    yield make
    for h in made:
        h.abandon()


def test_write_waits_while_max_in_flight_are_held_and_stops_waiting_at_shutdown(
    mosquitto_own: Mosquitto, harnesses: Callable[..., SinkHarness]
) -> None:
    mosquitto_own.stop()  # nothing can be acknowledged
    h = harnesses(mqtt_block(mosquitto_own, max_in_flight=3, flush_timeout=0.5))
    h.start(check=False)
    writer = threading.Thread(target=h.write, args=([record(i) for i in range(5)],))
    writer.start()
    writer.join(1.0)
    assert writer.is_alive(), "write returned although 3 envelopes were already held"
    h.sink.context.shutdown.set()
    writer.join(2.0)
    assert not writer.is_alive(), "write kept waiting after shutdown was set"
    h.stop()
    snap = balanced(h.sink)
    assert (snap["accepted"], snap["delivered"], snap["pending"]) == (5, 0, 5)


def test_queued_while_the_broker_is_down_then_delivered_in_order(
    mosquitto_own: Mosquitto, harnesses: Callable[..., SinkHarness]
) -> None:
    block = mqtt_block(mosquitto_own, max_in_flight=50)
    # a persistent session, subscribed before the broker goes down: whichever of the
    # subscriber and the sink reconnects first, the broker keeps every envelope for it
    # (a subscriber connecting after the sink had sent everything once saw nothing)
    sub = Client(mosquitto_own, "queued-sub", clean=False).connect()
    sub.subscribe(prefix_of(block) + "/#")
    mosquitto_own.stop()
    h = harnesses(block)
    h.start(check=False)
    writer = threading.Thread(target=h.write, args=([record(i) for i in range(120)],))
    writer.start()
    time.sleep(0.5)
    assert h.sink.stats.delivered == 0
    mosquitto_own.start()
    writer.join(20)
    h.stop()
    got = [
        orjson.loads(m.payload)["data"]["attributes"]["seq"]["value"]
        for m in settled(sub, at_least=120)
    ]
    sub.close()
    assert got == list(range(120))
    snap = balanced(h.sink)
    assert (snap["delivered"], snap["pending"]) == (120, 0)


def test_unacknowledged_envelopes_are_sent_again_after_a_broker_restart(
    mosquitto_own: Mosquitto, harnesses: Callable[..., SinkHarness]
) -> None:
    block = mqtt_block(mosquitto_own, max_in_flight=500)
    sub = Client(mosquitto_own, "sub-restart", clean=False).connect()
    sub.subscribe(prefix_of(block) + "/#")
    h = harnesses(block)
    h.start()
    stop = threading.Event()

    def restart() -> None:
        time.sleep(0.05)
        mosquitto_own.restart(down_for=0.5)
        stop.set()

    threading.Thread(target=restart).start()
    i = 0
    while not stop.is_set() or i < 3000:
        h.write([record(n) for n in range(i, i + 50)])
        i += 50
    h.stop()
    got = {
        orjson.loads(m.payload)["data"]["attributes"]["seq"]["value"]
        for m in settled(sub, at_least=i)
    }
    sub.close()
    snap = balanced(h.sink)
    assert (snap["delivered"], snap["pending"]) == (i, 0)
    assert got == set(range(i)), f"missing: {sorted(set(range(i)) - got)[:20]}"


def test_one_connection_delivers_many_small_writes_in_order_each_once(
    mosquitto: Mosquitto,
    subscriber: Callable[..., Client],
    harnesses: Callable[..., SinkHarness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the connection's network thread writes to its socket. paho, left alone, also
    sends from publish() on the calling thread, without a lock: a packet popped by one
    thread could reach the socket after one popped later by another (seen: two envelopes
    swapped in about one run in three of 5,000, with no reconnect). The thread check is
    what fails every time; the order check is what a user would see."""
    block = mqtt_block(mosquitto, max_in_flight=1000)
    senders: dict[int, set[str]] = {}
    """id of the sink's paho client -> names of the threads that wrote to its socket"""
    send = paho.Client._sock_send  # private, but the one place paho writes a packet

    def recording_send(client: paho.Client, buf: bytes) -> int:
        if client._client_id == block["client_id"].encode():  # not the test's subscriber
            senders.setdefault(id(client), set()).add(threading.current_thread().name)
        return send(client, buf)

    monkeypatch.setattr(paho.Client, "_sock_send", recording_send)
    sub = subscriber(prefix_of(block) + "/#")
    h = harnesses(block)
    h.start()
    n = 5000
    envelopes = [record(i) for i in range(n)]
    for i in range(0, n, 3):  # small writes: each publishes while PUBACKs come in
        h.write(envelopes[i : i + 3])
    h.stop()
    got = [orjson.loads(m.payload)["data"]["attributes"]["seq"]["value"]
           for m in settled(sub, at_least=n)]  # fmt: skip
    snap = balanced(h.sink)
    assert (snap["delivered"], snap["retried"]) == (n, 0), snap
    assert len(senders) == 1, "one connection expected"
    (names,) = senders.values()
    assert names == {f"mqtt-{h.sink.name}-net"}, f"threads that wrote to the socket: {names}"
    wrong = [(i, g) for i, g in enumerate(got) if g != i][:10]
    assert len(got) == n and not wrong, f"{len(got)} arrived; first out of place: {wrong}"


@pytest.mark.parametrize("good_before", [1, 30])
def test_an_envelope_the_broker_never_takes_is_dead_lettered_not_retried_forever(
    tmp_path: Path, mqtt_certs: Certs, harnesses: Callable[..., SinkHarness], good_before: int
) -> None:
    """Mosquitto closes the connection on a packet over max_packet_size: after
    POISON_LOSSES such losses in a row the envelope is set aside and the rest flows.
    Never a good one sent just before it, whose PUBACK the closing broker drops (seen in
    CI: the record before it was dead-lettered too)."""
    broker = Mosquitto(tmp_path / "broker", mqtt_certs)
    with broker.config_file.open("a") as fh:
        fh.write("max_packet_size 2000\n")
    broker.start()
    try:
        h = harnesses(mqtt_block(broker, flush_timeout=20))
        h.start()
        big = Envelope(RECORD, "gw", {"machine": "m", "blob": "x" * 5000}, "m")
        h.write([*(record(i) for i in range(good_before)), big, record(good_before + 1)])
        h.stop()
    finally:
        broker.stop()
    snap = balanced(h.sink)
    expected = (good_before + 1, 1, 0)
    assert (snap["delivered"], snap["dead_lettered"], snap["pending"]) == expected
    assert f"closed the connection {POISON_LOSSES} times" in (snap["last_error"] or "")


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(machine=st.text(min_size=0, max_size=8))
def test_hostile_machine_names_are_dead_lettered_or_delivered_never_lost(
    mosquitto: Mosquitto, machine: str
) -> None:
    block = mqtt_block(mosquitto)
    h = SinkHarness(MqttSink, {k: v for k, v in block.items() if k != "type"}, host="gw")
    try:
        h.start()
        meta = Envelope(METADATA, "gw", {"info": {"name": machine}, "variables": {}}, machine)
        h.write([meta, record(1, machine)])
        h.stop()
    finally:
        h.abandon()
    snap = balanced(h.sink)
    bad = topic_problem(machine)  # checked on its own below
    assert snap["dead_lettered"] == (2 if bad else 0)
    assert snap["delivered"] == (0 if bad else 2)
    if bad:
        assert "not allowed in an MQTT topic" in (snap["last_error"] or "")


@pytest.mark.parametrize(
    ("text", "ok"),
    [("press-1", True), ("Grüße 日本", True), ("a+b", False), ("#", False), ("a\0", False),
     ("\x1d", False), ("\x7f", False), ("\x85", False), ("\ud800", False), ("\ufffe", False),
     ("\U0001ffff", False), ("\ufdd0", False), ("a/b", True)],
)  # fmt: skip
def test_topic_problem(text: str, ok: bool) -> None:
    assert (topic_problem(text) is None) is ok


class _SilentBroker:
    """Accepts one MQTT connection and never acknowledges a PUBLISH: what the sink has in
    flight is then exactly what it sent. Counts the PUBLISH packets it receives."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.published = 0  # written by the serving thread only
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        self._conn = conn
        stream = conn.makefile("rb")
        while header := stream.read(1):
            length, shift = 0, 0
            while True:  # MQTT's variable-length "remaining length"
                byte = stream.read(1)[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            stream.read(length)
            kind = header[0] >> 4
            if kind == 1:  # CONNECT -> CONNACK, accepted
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 3:
                self.published += 1

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._server.close()


def test_at_most_max_in_flight_unacknowledged_on_the_wire(
    harnesses: Callable[..., SinkHarness],
) -> None:
    """The sink alone bounds what is in flight (paho's own limit is off)."""
    broker = _SilentBroker()
    block = {"host": "127.0.0.1", "port": broker.port, "client_id": "bound", "qos": 1,
             "max_in_flight": 3, "flush_timeout": 0.5, "connect_timeout": 3}  # fmt: skip
    h = harnesses(block)
    h.start(check=False)
    writer = threading.Thread(target=h.write, args=([record(i) for i in range(10)],), daemon=True)
    writer.start()
    try:
        # wait for what the sink sends (a loaded machine may take a while), then give it
        # time to send a fourth: a fixed wait alone could end before the third arrived
        deadline = time.monotonic() + 20
        while broker.published < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        writer.join(1.0)
        assert writer.is_alive(), "write returned although 3 envelopes were unacknowledged"
        assert broker.published == 3
    finally:
        h.sink.context.shutdown.set()
        writer.join(2.0)
        h.stop()
        broker.close()
    snap = balanced(h.sink)
    assert (snap["accepted"], snap["delivered"]) == (10, 0)
