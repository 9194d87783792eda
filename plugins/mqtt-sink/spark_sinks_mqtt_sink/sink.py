"""The ``mqtt`` sink: publish each envelope, count it delivered when the broker has it.

Data flow::

    write() --publish--> paho client --> broker
       |  (waits while max_in_flight are held)   |
       +--> queue while not connected            +-- PUBACK --> on_publish --> _acks
                                                                   |
    control thread: connect, births, requeue on loss, acks --> context.delivered

* QoS 1: an envelope is delivered when its PUBACK arrives; QoS 0 when paho has written
  it to the socket (the broker may still lose it).
* One paho client per MQTT connection. When a connection is lost, every envelope
  published on it and not yet acknowledged goes back to the front of the queue, in
  order, and is published again on the next connection (counted as retried; the broker
  may then see it twice). The sink, not paho, keeps what is unacknowledged: a Sparkplug
  session must start with a new NBIRTH and renumber every message, and a new bdSeq will
  is needed for every CONNECT.
* Reconnects back off exponentially (``reconnect_min_delay`` .. ``reconnect_max_delay``)
  with jitter: each wait is drawn between half and all of the current delay.
* Sparkplug with ``primary_host_id``: after CONNACK the edge node subscribes to the host's
  STATE and publishes nothing (envelopes wait in the queue, counted pending) until a STATE
  says online; then births, then the queue. An offline STATE newer than the last one
  accepted makes it publish its NDEATH and disconnect (what was unacknowledged goes back
  to the queue), and the next connection waits for online again.
* Only a connection's network thread (``_network``) writes to its socket: ``publish``
  queues the packet (see ``_network_thread_writes``), so envelopes leave in publish order.
* paho calls back on its network thread while holding its own locks; callbacks only put
  PUBACKs on ``_acks`` and other events on ``_events``, so they never wait for ``_lock``
  (which ``write`` holds while it calls into paho). The control thread takes the PUBACKs
  in batches, every ``_ACK_POLL`` seconds while envelopes are in flight.
"""

from __future__ import annotations

import contextlib
import queue
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from spark_sinks_sparkplug.broker import why_unreachable
from spark_sinks_sparkplug.errors import SparkplugError
from spark_sinks_sparkplug.state import parse_state, state_topic
from spark_sinks_sparkplug.topics import NCMD

from spark_sinks import Envelope, Sink, SinkContext, SinkError

from .config import MqttSinkConfig
from .encoding import EncodeError, JsonEncoder, Message

if TYPE_CHECKING:
    from .edge import EdgeNode

_LOG_EVERY = 10.0
_ACK_POLL = 0.005
"""Seconds between batches of acknowledgements while envelopes are in flight."""
POISON_LOSSES = 5
"""Connections lost in a row with the same envelope first unacknowledged: that envelope is
then dead-lettered, so that one the broker cannot take (over its packet size limit, say)
never wedges the sink."""
_SUCCESS = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
"""publish() results that leave the message with paho (NO_CONN: the connection just
dropped; the loss event then requeues it)."""


class _Ack(NamedTuple):
    gen: int
    mid: int


class _Connack(NamedTuple):
    gen: int
    refused: str | None


class _Lost(NamedTuple):
    gen: int
    reason: str


class _Command(NamedTuple):
    gen: int
    payload: bytes


class _State(NamedTuple):
    """A STATE message of the Primary Host Application."""

    gen: int
    payload: bytes


_Event = _Connack | _Lost | _Command | _State


class _Retire(NamedTuple):
    """In the queue among envelopes: a machine stopped publishing (its DDEATH goes here)."""

    machine: str


@dataclass(eq=False)
class _Connection:
    gen: int
    client: mqtt.Client
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def _edge_node(config: MqttSinkConfig, host: str) -> EdgeNode | None:
    """The Sparkplug B edge node, or None for JSON: imported only then (it needs protobuf)."""
    if config.format != "sparkplug_b":
        return None
    from .edge import EdgeNode

    return EdgeNode(config, host)


class MqttSink(Sink):
    type_name = "mqtt"
    Config = MqttSinkConfig
    buffered = True

    config: MqttSinkConfig

    def __init__(self, config: MqttSinkConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self._lock = threading.Lock()
        """Owns everything below up to ``_events``: queue, in-flight, connection, encoders."""
        self._space = threading.Condition(self._lock)
        """Notified when envelopes are settled (room for writes, progress for flush)."""
        self._queue: deque[Envelope | _Retire] = deque()
        self._inflight: dict[int, Envelope] = {}
        """mid -> envelope published on the current connection, in publish order."""
        self._held = 0
        """Envelopes accepted and not yet reported delivered or dead-lettered."""
        self._conn: _Connection | None = None
        self._ready = False
        """Connected, births sent and the queue drained: write may publish directly."""
        self._born = False
        """The current connection may carry data: Sparkplug births sent on it (JSON: always)."""
        self._suspect: Envelope | None = None
        self._suspect_losses = 0
        self._edge = _edge_node(config, context.host)
        self._json = JsonEncoder(config)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._acks: deque[_Ack] = deque()
        """PUBACKs (QoS 0: writes) from paho's thread; deque appends and pops are atomic."""
        self._closing = threading.Event()
        self._connected_once = threading.Event()
        self._first_outcome = threading.Event()
        """Set after the first connection attempt, whatever its result (for ``check``)."""
        self._control: threading.Thread | None = None
        # owned by the control thread
        self._gen = 0
        self._attempts = 0
        self._error_lock = threading.Lock()
        """Guards ``_last_error`` and ``_last_log``: ``_error`` runs on the control thread,
        and on the writing thread when paho refuses a publish (``_publish``, ``_drop``);
        ``flush`` and ``check`` only read ``_last_error``, for messages."""
        self._last_error = ""
        self._last_log = 0.0
        self._host_time: int | None = None
        """Timestamp of the newest Primary Host STATE accepted."""
        self._client_id = config.client_id or f"spark-sinks-{context.host}-{context.name}"
        host = config.primary_host_id
        self._state_topic = state_topic(host) if host is not None else None

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        self._check_files()
        if self.config.format == "sparkplug_b" and self.config.effective_qos == 0:
            self.log.info(
                "sparkplug_b at QoS 0, as its specification requires: an envelope counts as "
                "delivered once written to the socket; set qos: 1 for acknowledged delivery"
            )
        self._control = threading.Thread(target=self._run, name=f"mqtt-{self.name}", daemon=True)
        self._control.start()

    def check(self) -> str:
        cfg = self.config
        where = f"{cfg.host}:{cfg.effective_port}"
        # a TCP connect, TLS and CONNACK each take at most connect_timeout
        self._first_outcome.wait(3 * cfg.connect_timeout)
        if not self._connected_once.is_set():
            why = self._last_error or f"no answer within {cfg.connect_timeout:g}s"
            raise SinkError(f"cannot connect to MQTT broker {where}: {why}")
        what = "Sparkplug B edge node" if self._edge else "JSON envelopes"
        return f"connected to {where} as {self._client_id!r} ({what}, QoS {cfg.effective_qos})"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        limit = self.config.max_in_flight
        shutdown, stopping = self.context.shutdown, self.context.stopping
        dead: list[tuple[Envelope, str]] = []
        skipped: list[Envelope] = []
        with self._lock:
            for env in envelopes:
                # Backpressure. Once the run is ending nobody waits: the flush deadline
                # bounds the shutdown instead, and the bound is exceeded by one batch at most.
                while self._held >= limit and not (shutdown.is_set() or stopping.is_set()):
                    self._space.wait(0.2)
                self._held += 1
                if self._ready and not self._queue:
                    self._publish(env, dead, skipped)
                else:
                    self._queue.append(env)
        self._settle(dead, skipped)

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._held and not self.context.stopping.is_set():
                wait = 0.2
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                self._space.wait(wait)
            left = self._held
        if left:
            why = "stopped" if self.context.stopping.is_set() else "flush deadline"
            state = "connected" if self._ready else f"not connected: {self._last_error}"
            if self._conn is not None and not self._born:
                state = f"connected, waiting for primary host {self.config.primary_host_id!r}"
                state += " to be online"
            self.log.warning("%s: %d envelopes not yet acknowledged by the broker (%s)",
                             why, left, state)  # fmt: skip

    def machines_retired(self, machines: Sequence[str]) -> None:
        """Sparkplug: a DDEATH for each machine born in this session, in order after what
        was written before; the machine is left out of later births."""
        if self._edge is None:
            return
        with self._lock:
            for name in machines:
                if self._ready and not self._queue:
                    self._publish(_Retire(name), [], [])
                else:
                    self._queue.append(_Retire(name))

    def close(self) -> None:
        self._closing.set()
        if self._control is not None:
            self._control.join(10)
        with self._lock:
            conn, self._conn, self._ready = self._conn, None, False
            born, self._born = self._born, False
        if conn is not None:
            self._hang_up(conn, farewell=born)

    # -- publishing (caller holds _lock) --------------------------------------------------

    def _messages(self, env: Envelope) -> list[Message]:
        if self._edge is not None:
            return self._edge.encode(env)
        return self._json.encode(env)

    def _publish(
        self, env: Envelope | _Retire, dead: list[tuple[Envelope, str]], skipped: list[Envelope]
    ) -> None:
        """Publish one envelope on the current connection (lock held)."""
        conn = self._conn
        assert conn is not None
        if isinstance(env, _Retire):
            # not tracked: if the connection is lost before it arrives, the next session's
            # births leave the machine out, which tells a host application the same
            assert self._edge is not None
            for m in self._edge.retire(env.machine):
                conn.client.publish(m.topic, m.payload, m.qos, m.retain)
            return
        try:
            messages = self._messages(env)
        except EncodeError as exc:
            dead.append((env, str(exc)))
            return
        if not messages:  # nothing to send (metadata already born, connection test)
            skipped.append(env)
            return
        for i, m in enumerate(messages):
            try:
                info = conn.client.publish(m.topic, m.payload, m.qos, m.retain)
            except ValueError as exc:  # paho refuses the topic or the payload size
                dead.append((env, f"MQTT refuses the message: {exc}"))
                return
            if info.rc not in _SUCCESS:
                # paho could not take it (should not happen: its limits are off): retry
                # the whole envelope on the next connection
                self._queue.appendleft(env)
                poisoned = self._drop(conn, f"publish failed: {mqtt.error_string(info.rc)}")
                if poisoned is not None:
                    dead.append(poisoned)
                return
            if i == len(messages) - 1:
                self._inflight[info.mid] = env

    def _settle(self, dead: list[tuple[Envelope, str]], delivered: list[Envelope]) -> None:
        """Report outside the lock (the spool's acknowledgement takes its own locks)."""
        if not dead and not delivered:
            return
        for env, why in dead:
            self.context.dead_letter(env, why)
        if delivered:
            self.context.delivered(delivered)
        with self._lock:
            self._held -= len(dead) + len(delivered)
            self._space.notify_all()

    # -- the control thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Connect, and reconnect after every failure or loss with a growing delay that is
        reset only once a connection makes progress (an acknowledgement arrives): a broker
        that accepts and then drops every connection is not hammered."""
        cfg = self.config
        delay = cfg.reconnect_min_delay
        while not self._closing.is_set():
            if self._conn is None:
                if self._gen and self._closing.wait(random.uniform(delay / 2, delay)):
                    return
                delay = min(delay * 2, cfg.reconnect_max_delay)
                self._connect()
                continue
            if self._pump():
                delay = cfg.reconnect_min_delay

    def _pump(self) -> bool:
        """Handle what paho reported since the last call, waiting a little for it; True
        when an envelope was acknowledged. Acknowledgements are taken in batches (one wake-up
        per batch, not per PUBACK): that is most of the sink's cost per message."""
        wait = _ACK_POLL if self._inflight else 0.05  # a racy read is fine: a wait length
        events: list[_Event] = []
        try:
            events.append(self._events.get(timeout=wait))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        # taken after the events, so every PUBACK that came before a loss is handled first
        acks = self._take_acks()
        acked: list[Envelope] = []
        dead: list[tuple[Envelope, str]] = []
        skipped: list[Envelope] = []
        with self._lock:
            conn = self._conn
            for gen, mid in acks:
                env = self._inflight.pop(mid, None) if conn and conn.gen == gen else None
                if env is not None:
                    acked.append(env)
                if env is not None and env is self._suspect:  # it was not the cause
                    self._suspect, self._suspect_losses = None, 0
        for ev in events:
            self._handle(ev, dead, skipped)
        with self._lock:
            if self._conn is not None and self._born and not self._ready and not self._inflight:
                self._drain(self._conn, dead, skipped)  # the next one, or all once cleared
        self._settle(dead, acked + skipped)
        return bool(acked)

    def _take_acks(self) -> list[_Ack]:
        acks = self._acks
        out = []
        while acks:
            out.append(acks.popleft())
        return out

    def _handle(
        self, ev: _Event, dead: list[tuple[Envelope, str]], skipped: list[Envelope]
    ) -> None:
        with self._lock:
            conn = self._conn
            if conn is None or ev.gen != conn.gen:
                return  # from a connection already given up
            if isinstance(ev, _Lost):
                poisoned = self._drop(conn, ev.reason)
                if poisoned is not None:
                    dead.append(poisoned)
            elif isinstance(ev, _State):
                self._host_state(conn, ev.payload, dead, skipped)
            elif (
                isinstance(ev, _Command)
                and self._edge is not None
                and self._born  # no births before the primary host is online
                and self._edge.rebirth_requested(ev.payload)
            ):
                self.log.info("rebirth requested (NCMD): publishing NBIRTH and DBIRTHs")
                self._births(conn)

    def _host_state(
        self,
        conn: _Connection,
        payload: bytes,
        dead: list[tuple[Envelope, str]],
        skipped: list[Envelope],
    ) -> None:
        """The Primary Host Application's STATE (lock held): online lets the births and the
        queue go; offline, once born, ends the session (see the module docstring)."""
        host = self.config.primary_host_id
        try:
            state = parse_state(payload)
        except SparkplugError as exc:
            self._error(f"primary host {host!r}: {exc}; ignored")
            return
        if self._host_time is not None and state.timestamp < self._host_time:
            self.log.info("primary host %r: STATE older than the last one, ignored", host)
            return
        self._host_time = state.timestamp
        if state.online and not self._born:
            self.log.info("primary host %r is online: publishing NBIRTH and DBIRTHs", host)
            self._births(conn)
            self._drain(conn, dead, skipped)
        elif not state.online and self._born:
            assert self._edge is not None
            death = self._edge.death()  # before the DISCONNECT, as an intentional one
            conn.client.publish(death.topic, death.payload, death.qos)
            self._drop(conn, f"primary host {host!r} is offline: NDEATH published", blame=False)

    def _drop(
        self, conn: _Connection, reason: str, blame: bool = True
    ) -> tuple[Envelope, str] | None:
        """The connection is gone: requeue what it did not get acknowledged (lock held).
        Returns an envelope to dead-letter, with the reason, when it looks like the cause
        (see ``POISON_LOSSES``; not when we ended the connection: ``blame`` false)."""
        if self._conn is not conn:
            return None
        self._conn, self._ready, self._born = None, False, False
        conn.stop.set()
        unacked = list(self._inflight.values())
        self._inflight.clear()
        poisoned = None
        if unacked and blame:
            head = unacked[0]
            if head is self._suspect:
                self._suspect_losses += 1
            else:
                self._suspect, self._suspect_losses = head, 1
            if self._suspect_losses >= POISON_LOSSES:
                unacked.pop(0)
                self._suspect = None
                poisoned = (
                    head,
                    f"the broker closed the connection {POISON_LOSSES} times in a row "
                    f"as this envelope was sent ({reason})",
                )
        self._queue.extendleft(reversed(unacked))
        if unacked:
            self.stats.add("retried", len(unacked))
        what = "connection lost" if blame else "disconnected"
        self._error(f"{what}: {reason}; {len(unacked)} unacknowledged envelopes will be sent again")
        return poisoned

    def _connect(self) -> None:
        """One connection attempt: CONNECT, CONNACK, births, then the queue."""
        self._gen += 1
        self._attempts += 1
        conn = self._dial(self._gen)
        if conn is None:
            return
        refused = self._await_connack(conn)
        if refused is not None:
            conn.stop.set()
            self._error(refused)
            return
        self._begin_session(conn)
        cfg = self.config
        if self._attempts > 1 or self._last_error:
            self.log.info("connected to %s:%d after %d attempts", cfg.host,
                          cfg.effective_port, self._attempts)  # fmt: skip
        self._attempts = 0
        with self._error_lock:
            self._last_error = ""
        self._connected_once.set()
        self._first_outcome.set()

    def _dial(self, gen: int) -> _Connection | None:
        """Send CONNECT on a new client and start its network thread; None when the TCP
        or TLS connection failed (the reason is recorded)."""
        client = self._new_client(gen)
        conn = _Connection(gen, client)
        try:
            client.connect(self.config.host, self.config.effective_port, self.config.keepalive)
        except (OSError, ValueError) as exc:
            tls = self.config.tls
            self._error(why_unreachable(exc, self.config.host, tls.ca_file if tls else None))
            return None
        if self._edge is not None:
            with self._lock:
                self._edge.connect_sent()
        conn.thread = threading.Thread(
            target=self._network, args=(conn,), name=f"mqtt-{self.name}-net", daemon=True
        )
        conn.thread.start()
        return conn

    def _begin_session(self, conn: _Connection) -> None:
        """The connection is accepted: Sparkplug births, then everything queued."""
        dead: list[tuple[Envelope, str]] = []
        skipped: list[Envelope] = []
        with self._lock:
            self._conn = conn
            self._born = self._edge is None
            if self._edge is not None:
                conn.client.subscribe(self._edge.topic(NCMD), qos=1)
                if self._state_topic is None:
                    self._births(conn)
                else:  # the retained STATE answers at once, if the host ever published
                    conn.client.subscribe(self._state_topic, qos=1)
                    self.log.info("waiting for primary host %r to be online (%s)",
                                  self.config.primary_host_id, self._state_topic)  # fmt: skip
            if self._born:
                self._drain(conn, dead, skipped)
        self._settle(dead, skipped)

    def _drain(
        self, conn: _Connection, dead: list[tuple[Envelope, str]], skipped: list[Envelope]
    ) -> None:
        """Publish what is queued (lock held). While an envelope is suspected of breaking
        the connection (see ``POISON_LOSSES``), one at a time, each once the one before is
        acknowledged: a broker that closes the connection on a bad packet drops the PUBACKs
        of the good ones read with it, and the first of those would be blamed in its place."""
        while self._queue and self._conn is conn:
            if self._suspect is not None and self._inflight:
                break
            self._publish(self._queue.popleft(), dead, skipped)
        self._ready = self._conn is conn and not self._queue

    def _await_connack(self, conn: _Connection) -> str | None:
        """None when accepted, else why not; other events wait their turn."""
        deadline = time.monotonic() + self.config.connect_timeout
        later: list[_Event] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing.is_set():
                    return f"no CONNACK within {self.config.connect_timeout:g}s"
                try:
                    ev = self._events.get(timeout=min(left, 0.1))
                except queue.Empty:
                    continue
                if isinstance(ev, _Connack) and ev.gen == conn.gen:
                    return ev.refused
                if isinstance(ev, _Lost) and ev.gen == conn.gen:
                    tls = self.config.tls
                    hint = (
                        "; does it require a client certificate (tls.cert_file, tls.key_file)?"
                        if tls is not None and tls.cert_file is None
                        else ""
                    )
                    return f"the broker closed the connection before accepting it{hint}"
                later.append(ev)
        finally:
            for ev in later:
                self._events.put(ev)

    def _births(self, conn: _Connection) -> None:
        assert self._edge is not None
        for m in self._edge.birth():
            conn.client.publish(m.topic, m.payload, m.qos, m.retain)
        self._born = True

    def _new_client(self, gen: int) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            # Sparkplug requires a clean session; for JSON a persistent one keeps the
            # session state across reconnects and restarts of either side
            clean_session=self._edge is not None,
            protocol=mqtt.MQTTv311,
        )
        # No limits in paho: the sink bounds what is in flight itself (``_held``), and
        # paho's in-flight limit costs a scan of every unacknowledged message on each
        # PUBACK (``_update_inflight``), most of the network thread's time at 1000 in flight.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        # Only the connection's network thread writes to the socket. Without this hook paho
        # writes from publish() on the caller's thread too, with no lock: two threads each
        # pop a packet and send it, and the later one can reach the socket first (envelopes
        # reordered on one connection; a partial send would interleave their bytes).
        # With the hook set paho only queues the packet and wakes ``loop``, which writes.
        client.on_socket_register_write = _network_thread_writes
        client.connect_timeout = self.config.connect_timeout
        self._identify(client)
        if self._edge is not None:
            with self._lock:
                will = self._edge.will()
            client.will_set(will.topic, will.payload, qos=will.qos, retain=False)
        self._route_callbacks(client, gen)
        return client

    def _identify(self, client: mqtt.Client) -> None:
        """Username and password, and TLS (always verifying the broker's certificate)."""
        cfg = self.config
        if cfg.username is not None:
            pw = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, pw)
        if cfg.tls is not None:
            t = cfg.tls
            client.tls_set(
                ca_certs=str(t.ca_file) if t.ca_file else None,
                certfile=str(t.cert_file) if t.cert_file else None,
                keyfile=str(t.key_file) if t.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )

    def _route_callbacks(self, client: mqtt.Client, gen: int) -> None:
        """paho's callbacks only queue what happened, tagged with the connection's ``gen``."""
        events, acks, state = self._events, self._acks, self._state_topic

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            refused = f"the broker refused the connection: {reason}" if reason.is_failure else None
            events.put(_Connack(gen, refused))

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            acks.append(_Ack(gen, mid))

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            kind = _State if state is not None and msg.topic == state else _Command
            events.put(kind(gen, bytes(msg.payload)))

        client.on_connect = on_connect
        client.on_publish = on_publish
        client.on_message = on_message

    def _network(self, conn: _Connection) -> None:
        """The connection's network loop; ends when it is stopped or lost."""
        rc = mqtt.MQTT_ERR_SUCCESS
        while not conn.stop.is_set():
            rc = conn.client.loop(0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
        if not conn.stop.is_set():
            self._events.put(_Lost(conn.gen, mqtt.error_string(rc)))
            return
        if conn.client.is_connected():  # stopped by us: hang up, without a farewell
            conn.client.disconnect()
            conn.client.loop(0.2)

    def _hang_up(self, conn: _Connection, farewell: bool) -> None:
        """Close a connection: a Sparkplug node first publishes its NDEATH."""
        if farewell and self._edge is not None:
            death = self._edge.death()
            info = conn.client.publish(death.topic, death.payload, death.qos)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2.0)
        conn.stop.set()  # the network thread sends the DISCONNECT and ends
        if conn.thread is not None:
            conn.thread.join(5)

    def _error(self, message: str) -> None:
        """Remember and log a connection problem (at most every 10 s while it repeats)."""
        with self._error_lock:
            self._last_error = message
            now = time.monotonic()
            due = now - self._last_log >= _LOG_EVERY
            if due:
                self._last_log = now
        self._first_outcome.set()
        self.stats.error(message)
        if due:
            self.log.error("MQTT broker %s:%d: %s", self.config.host,
                           self.config.effective_port, message)  # fmt: skip

    def _check_files(self) -> None:
        tls = self.config.tls
        if tls is None:
            return
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is not None:
                try:
                    path.open("rb").close()
                except OSError as exc:
                    raise SinkError(f"tls.{key} {str(path)!r}: {exc.strerror}") from None


def _network_thread_writes(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's "socket wants writing" hook: nothing to do, ``_network``'s ``loop`` writes."""
