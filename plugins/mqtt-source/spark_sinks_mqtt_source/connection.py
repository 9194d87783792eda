"""The broker connection: a paho-mqtt 2.x client (MQTT 5) with a persistent session.

paho's network thread only puts received messages into the bounded ``inbox``; the source
thread decodes them, feeds the pipeline and acknowledges them (``ack``) once the pipeline
has accepted what they carried. The MQTT 5 receive maximum (``max_pending``) keeps the
broker from sending more unacknowledged messages than that, so the inbox never grows
beyond it and the broker holds the rest.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from spark_sinks_sparkplug.broker import why_unreachable

from spark_sinks import SparkSinksError

from .config import MqttSourceConfig

log = logging.getLogger(__name__)

# CONNACK reason codes that no retry can fix: stop with one line instead of retrying forever
_FATAL = {0x84, 0x85, 0x86, 0x87, 0x8C}


class MqttSourceError(SparkSinksError):
    """The source cannot work (refused credentials, untrusted broker certificate)."""


@dataclass(frozen=True, slots=True)
class Incoming:
    connection: int
    """Number of the connection it arrived on (1, 2, ... as the client reconnects)."""
    mid: int
    qos: int
    topic: str
    payload: bytes


def new_client(cfg: MqttSourceConfig, client_id: str) -> mqtt.Client:
    """A paho client (MQTT 5, acknowledging only when told) with the configured username,
    password and TLS; the broker's certificate is always verified."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    if cfg.username is not None:
        secret = cfg.password.get_secret_value() if cfg.password is not None else None
        client.username_pw_set(cfg.username, secret)
    if cfg.tls is not None:
        client.tls_set(
            ca_certs=cfg.tls.ca_file,
            certfile=cfg.tls.cert_file,
            keyfile=cfg.tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    return client


class Connection:
    """Owns the paho client. ``_lock`` guards the connection state, written by paho's
    network thread (``_on_connect``, ``_on_disconnect``) and read by the source thread."""

    def __init__(self, cfg: MqttSourceConfig) -> None:
        self.cfg = cfg
        self.where = f"MQTT broker {cfg.host}:{cfg.broker_port}"
        self.inbox: queue.Queue[Incoming] = queue.Queue(maxsize=cfg.max_pending)
        self._lock = threading.Lock()
        self._current = 0  # the connection messages may be acknowledged on; 0 while down
        self._made = 0
        self._fresh_since = 1  # first connection of the broker's current session
        self._resumed_at = 0  # latest connection that resumed the session
        self.fatal: str | None = None
        """Why the broker's refusal cannot be retried: set once by paho's network thread,
        read by the source thread (one reference, one writer: no lock needed)."""
        self._closing = threading.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = new_client(self.cfg, self.cfg.client_id)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- source thread -------------------------------------------------------------------

    def open(self, stop: threading.Event) -> bool:
        """Connect, retrying with backoff and jitter until it works or ``stop`` is set (a
        gateway may boot before its network). Raises ``MqttSourceError`` when retrying
        cannot help."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry
        props.ReceiveMaximum = self.cfg.max_pending
        delay = 1.0
        while not stop.is_set():
            try:
                self._client.connect(
                    self.cfg.host,
                    self.cfg.broker_port,
                    self.cfg.keepalive,
                    clean_start=False,
                    properties=props,
                )
            except ssl.SSLCertVerificationError as exc:
                raise MqttSourceError(
                    f"source: {self.where}: TLS certificate not trusted: {exc.verify_message}"
                ) from None
            except (OSError, ValueError) as exc:
                wait = delay * random.uniform(0.5, 1.0)
                why = why_unreachable(exc, self.cfg.host, None)  # the certificate: above
                log.error("cannot reach %s: %s; retrying in %.1f s", self.where, why, wait)
                stop.wait(wait)
                delay = min(delay * 2, 30.0)
                continue
            self._client.loop_start()
            return True
        return False

    def ack(self, connection: int, mid: int) -> bool:
        """Acknowledge a QoS 1 message, if the connection it came on is still up (after a
        reconnect its packet id may name another message, and the broker resends it)."""
        with self._lock:
            if connection != self._current:
                return False
            self._client.ack(mid, 1)
            return True

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a command at QoS 0 (a Sparkplug rebirth request; repeated if need be)."""
        self._client.publish(topic, payload, qos=0)

    @property
    def current(self) -> int:
        with self._lock:
            return self._current

    def redelivered(self, msg: Incoming) -> bool:
        """True for a QoS 1 message of an earlier connection whose session the broker
        resumed since: the broker has sent it again, so this copy is skipped."""
        with self._lock:
            return msg.qos > 0 and self._fresh_since <= msg.connection < self._resumed_at

    def close(self) -> None:
        """Disconnect after the acknowledgements already queued (paho sends in order)."""
        self._closing.set()
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's network thread -----------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            msg = f"source: {self.where} refused the connection: {reason}"
            if reason.value in (0x86, 0x87):
                msg += " (check username, password and client certificate)"
            if reason.value in _FATAL:
                self.fatal = msg
                client.disconnect()
            else:
                log.error("%s; retrying", msg)
            return
        with self._lock:
            self._made += 1
            self._current = self._made
            if flags.session_present:
                self._resumed_at = self._made
            else:
                self._fresh_since = self._made
        log.info(
            "connected to %s as %r (%s)",
            self.where,
            self.cfg.client_id,
            "session resumed" if flags.session_present else "new session",
        )
        # retain handling 1: retained messages only for a subscription that is new, not
        # again on every reconnect of a resumed session
        opts = SubscribeOptions(qos=self.cfg.qos, retainHandling=1)
        client.subscribe([(f, opts) for f in self.cfg.topics])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        refused = [(t, r) for t, r in zip(self.cfg.topics, reasons, strict=False) if r.is_failure]
        for topic, reason in refused:
            log.error("%s refused the subscription to %r: %s", self.where, topic, reason)
        if not refused:
            log.info("subscribed to %s at QoS %d", ", ".join(self.cfg.topics), self.cfg.qos)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._lock:
            was_up, self._current = self._current != 0, 0
        if self._closing.is_set() or self.fatal is not None:
            return
        if was_up:
            log.warning("connection to %s lost (%s); reconnecting", self.where, reason)
        else:  # e.g. TLS without the client certificate the broker requires
            log.warning(
                "%s closed the connection before accepting it (%s); check the TLS client"
                " certificate; retrying",
                self.where,
                reason,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers should refuse such topics; be safe anyway
            topic = bytes(message._topic).decode("utf-8", "replace")
        item = Incoming(self._current, message.mid, message.qos, topic, bytes(message.payload))
        # The receive maximum bounds QoS 1 messages; QoS 0 ones wait here, which stops
        # reading from the socket: TCP pushes back on the broker.
        while not self._closing.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


class RateLimited:
    """A warning at most once per ``every`` seconds, with how often it was held back.
    Not thread-safe: each instance belongs to the source thread."""

    def __init__(self, every: float = 60.0, logger: logging.Logger = log) -> None:
        self.every = every
        self.log = logger
        self._last = -every
        self._held = 0

    def warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._held += 1
            return
        extra = f" ({self._held} more since the last warning)" if self._held else ""
        self.log.warning(msg + extra, *args)
        self._last = now
        self._held = 0
