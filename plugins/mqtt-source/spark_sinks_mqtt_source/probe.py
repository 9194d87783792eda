"""``spark-sinks check`` for the ``mqtt`` source: connect, authenticate, subscribe, leave.

The probe connects as ``<client_id>-check`` with a clean start and a session that ends
with the connection: with the configured ``client_id`` it would take over (and, with a
clean start, discard) the persistent session of a running ``spark-sinks run``, and the
messages the broker queues for it. Each problem is one line that names it: the host that
cannot be reached, the certificate the CA does not vouch for, the CONNACK reason code, the
topic filter whose subscription the broker refused (SUBACK reason code of 0x80 or more).
"""

from __future__ import annotations

import queue
from typing import Any, NamedTuple

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from spark_sinks_sparkplug.broker import why_unreachable

from .config import MqttSourceConfig
from .connection import MqttSourceError, new_client

TIMEOUT = 10.0
"""Seconds for each step: TCP and TLS, CONNACK, SUBACK."""


class _Answer(NamedTuple):
    """What paho's network thread saw: a CONNACK or SUBACK (``reasons``), or the end of
    the connection (``reasons`` empty)."""

    packet: str
    reasons: list[Any]


def probe(cfg: MqttSourceConfig) -> str:
    """A one-line description of what works; ``MqttSourceError`` naming what does not."""
    where = f"MQTT broker {cfg.host}:{cfg.broker_port}"
    client_id = f"{cfg.client_id}-check"
    answers: queue.SimpleQueue[_Answer] = queue.SimpleQueue()
    client = new_client(cfg, client_id)
    client.connect_timeout = TIMEOUT
    client.on_connect = lambda c, u, flags, reason, p: answers.put(_Answer("CONNACK", [reason]))
    client.on_subscribe = lambda c, u, mid, reasons, p: answers.put(_Answer("SUBACK", reasons))
    client.on_disconnect = lambda c, u, flags, reason, p: answers.put(_Answer("end", []))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    try:
        client.connect(cfg.host, cfg.broker_port, cfg.keepalive, clean_start=True, properties=props)
    except (OSError, ValueError) as exc:
        why = why_unreachable(exc, cfg.host, cfg.tls.ca_file if cfg.tls else None)
        raise MqttSourceError(f"cannot connect to {where}: {why}") from None
    client.loop_start()
    try:
        _connected(cfg, where, _await(answers, "CONNACK", where))
        opts = SubscribeOptions(qos=cfg.qos, retainHandling=2)  # no retained messages
        client.subscribe([(f, opts) for f in cfg.topics])
        _subscribed(cfg, where, _await(answers, "SUBACK", where))
    finally:
        client.disconnect()
        client.loop_stop()
    n = len(cfg.topics)
    return (
        f"connected to {cfg.host}:{cfg.broker_port} as {client_id!r}; subscribed to "
        f"{n} topic filter{'s' if n != 1 else ''} at QoS {cfg.qos}"
    )


def _await(answers: queue.SimpleQueue[_Answer], packet: str, where: str) -> _Answer:
    try:
        return answers.get(timeout=TIMEOUT)
    except queue.Empty:
        raise MqttSourceError(f"{where}: no {packet} within {TIMEOUT:g}s") from None


def _connected(cfg: MqttSourceConfig, where: str, answer: _Answer) -> None:
    if not answer.reasons:  # closed before its CONNACK: TLS without the client certificate
        hint = ""
        if cfg.tls is not None and cfg.tls.cert_file is None:
            hint = "; does it require a client certificate (tls.cert_file, tls.key_file)?"
        raise MqttSourceError(f"{where} closed the connection before accepting it{hint}")
    [reason] = answer.reasons
    if reason.is_failure:
        hint = ""
        if reason.value in (0x86, 0x87):
            hint = " (check username, password and client certificate)"
        if reason.value == 0x85:
            hint = f" (the check connects as '{cfg.client_id}-check')"
        raise MqttSourceError(
            f"{where} refused the connection: {reason} (CONNACK 0x{reason.value:02X}){hint}"
        )


def _subscribed(cfg: MqttSourceConfig, where: str, answer: _Answer) -> None:
    if not answer.reasons:
        raise MqttSourceError(f"{where} closed the connection after the SUBSCRIBE")
    for topic, reason in zip(cfg.topics, answer.reasons, strict=False):
        if reason.value >= 0x80:
            raise MqttSourceError(
                f"{where} refused the subscription to {topic!r}: {reason} "
                f"(SUBACK 0x{reason.value:02X})"
            )
