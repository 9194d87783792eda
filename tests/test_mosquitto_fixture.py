"""The Mosquitto fixture does what the MQTT plugins' tests rely on: each listener lets in
exactly whom it should, and a restart keeps persistent sessions with their queued messages."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

import tests.support.mosquitto as mosquitto_support
from tests.support.mosquitto import (
    FORBIDDEN,
    PASSWORD,
    USER,
    Certs,
    Client,
    Mosquitto,
    mosquitto_broker,
)


def test_anonymous_round_trip(mosquitto: Mosquitto) -> None:
    sub = Client(mosquitto, "fixture-sub").connect()
    sub.subscribe("fixture/plain/#")
    pub = Client(mosquitto, "fixture-pub").connect()
    pub.publish("fixture/plain/a", b"hello")
    got = sub.wait_for(1)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("fixture/plain/a", b"hello", 1)]
    sub.close()
    pub.close()


def test_password_listener(mosquitto: Mosquitto) -> None:
    Client(mosquitto, port=mosquitto.auth_port, username=USER, password=PASSWORD).connect().close()
    with pytest.raises(ConnectionRefusedError):
        Client(mosquitto, port=mosquitto.auth_port, username=USER, password="wrong").connect()
    with pytest.raises(ConnectionRefusedError):
        Client(mosquitto, port=mosquitto.auth_port).connect()


def test_tls_requires_a_client_certificate(mosquitto: Mosquitto) -> None:
    sub = Client(mosquitto, "fixture-tls", tls=True).connect()
    sub.subscribe("fixture/tls")
    sub.publish("fixture/tls", b"over tls")
    assert [m.payload for m in sub.wait_for(1)] == [b"over tls"]
    sub.close()
    # without a client certificate the broker ends the handshake (with TLS 1.3 the client
    # learns it at its first read)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(mosquitto, mosquitto.certs.ca, client_cert=False)
    # a client that trusts another CA refuses the broker
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mosquitto, mosquitto.certs.other_ca, client_cert=True)
    assert _handshake(mosquitto, mosquitto.certs.ca, client_cert=True) == CONNACK_OK


CONNECT = bytes.fromhex("101000044d5154540402001e0004746c7331")  # MQTT 3.1.1, client "tls1"
CONNACK_OK = bytes.fromhex("20020000")


def _handshake(broker: Mosquitto, ca: Path, client_cert: bool) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    if client_cert:
        ctx.load_cert_chain(broker.certs.client_cert, broker.certs.client_key)
    with (
        socket.create_connection((broker.host, broker.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(CONNECT)
        answer = tls.recv(4)
        if not answer:
            raise ConnectionError("the broker closed the connection")
        return answer


def test_restart_keeps_a_persistent_session(mosquitto_own: Mosquitto) -> None:
    sub = Client(mosquitto_own, "fixture-durable", clean=False).connect()
    sub.subscribe("fixture/durable", qos=1)
    sub.close()
    pub = Client(mosquitto_own, "fixture-durable-pub").connect()
    for i in range(5):
        pub.publish("fixture/durable", b"%d" % i)
    pub.close()
    mosquitto_own.restart()
    again = Client(mosquitto_own, "fixture-durable", clean=False).connect()
    got = again.wait_for(5)
    assert sorted(m.payload for m in got) == [b"0", b"1", b"2", b"3", b"4"]
    again.close()


def test_acl_listener_refuses_only_the_forbidden_subscriptions(mosquitto: Mosquitto) -> None:
    """What the source's check test relies on: a refusal in the SUBACK itself."""
    if mosquitto.acl_port is None:
        pytest.skip("this Mosquitto has no dynamic security plugin (Debian's package has it)")
    import paho.mqtt.client as mqtt

    got: list[list[int]] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        got.append([r.value for r in reasons])
        done.set()

    c.on_subscribe = on_subscribe
    c.connect(mosquitto.host, mosquitto.acl_port)
    c.loop_start()
    try:
        c.subscribe([("fixture/acl/#", 1), (FORBIDDEN, 1), ("forbidden/x", 0)])
        assert done.wait(10), "no SUBACK"
    finally:
        c.disconnect()
        c.loop_stop()
    assert got == [[1, 0x87, 0x87]]


def test_a_port_taken_before_the_broker_binds_it_is_replaced(
    tmp_path: Path, mqtt_certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other test sessions run alongside: a free port may be taken before the broker binds
    it. The broker then starts on other ports instead of failing the test's setup."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real = mosquitto_support.free_port
        first = iter([busy])
        monkeypatch.setattr(mosquitto_support, "free_port", lambda: next(first, None) or real())
        with mosquitto_broker(tmp_path / "m", mqtt_certs) as broker:
            assert broker.port != busy
            Client(broker, "fixture-moved").connect().close()
