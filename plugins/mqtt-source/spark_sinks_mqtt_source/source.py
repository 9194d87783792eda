"""The ``mqtt`` source: messages in, items to the pipeline, acknowledgements after.

A QoS 1 message is acknowledged once everything it carried is *settled* in the pipeline
(``Feed.settled``): dispatched to the sinks, rejected, or dropped. A data point waiting in
an open record keeps its message, and every later one (MQTT acknowledges in order),
unacknowledged until the record is complete; so a crash loses nothing the broker handed
over: the broker sends it again.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from spark_sinks import Feed, Source

from .config import MqttSourceConfig
from .connection import Connection, Incoming, MqttSourceError, RateLimited
from .probe import probe

if TYPE_CHECKING:
    from .sparkplug import SparkplugDecoder

log = logging.getLogger(__name__)

__all__ = ["MqttSource", "MqttSourceError"]

_BATCH = 500
"""Messages fed between two flushes (and acknowledgement rounds) at most."""
_POLL = 0.25
"""Seconds the source waits for a message before it looks at ``stop`` again."""
_HEAD = 4096
"""Bytes of an over-long message kept in the dead-letter file."""


class BadMessage(ValueError):
    """A message that cannot be decoded; the text says why (the topic is added)."""


Decoder = Callable[[Incoming], list[Any]]
"""Turns one message into the items it carries (JSON data points or records)."""


def decode_json(msg: Incoming) -> list[Any]:
    """One JSON item per message, or a JSON array of them."""
    try:
        obj = orjson.loads(msg.payload)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"invalid JSON: {exc}") from None
    return obj if type(obj) is list else [obj]


@functools.lru_cache(maxsize=4096)  # topics repeat: the label is made once per topic
def topic_label(topic: str) -> str:
    """``mqtt topic "<topic>"``: the topic as a JSON string (control characters escaped),
    cut to a readable length."""
    text = orjson.dumps(topic).decode()
    if len(text) > 120:
        text = f'{text[:100]}..." ({len(topic)} characters)'
    return f"mqtt topic {text}"


@dataclass(frozen=True, slots=True)
class _Unacked:
    connection: int
    mid: int
    position: int
    """Items fed up to and including this message's last one."""


class Acks:
    """QoS 1 messages fed but not yet acknowledged, in arrival order (source thread only)."""

    def __init__(self, connection: Connection, limit: int) -> None:
        self.connection = connection
        self.limit = limit
        self._waiting: collections.deque[_Unacked] = collections.deque()
        self.forced = 0
        """Acknowledged before their data points were settled, to keep the broker sending."""
        self._warn = RateLimited()

    def add(self, msg: Incoming, position: int) -> None:
        if msg.qos > 0:
            self._waiting.append(_Unacked(msg.connection, msg.mid, position))

    def settle(self, settled: int, idle: bool) -> None:
        """Acknowledge every message whose items are settled. When ``idle`` (nothing came
        for a while) and ``limit`` messages wait, the broker sends no more until some are
        acknowledged, while the records holding them back may wait for exactly those
        messages: acknowledge the older half anyway, and say so."""
        waiting = self._waiting
        current = self.connection.current
        while waiting and current and waiting[0].connection != current:
            waiting.popleft()  # came on an earlier connection: the broker sends it again
        while waiting and waiting[0].position <= settled:
            u = waiting.popleft()
            self.connection.ack(u.connection, u.mid)
        if idle and len(waiting) >= self.limit:
            n = max(1, len(waiting) // 2)
            for _ in range(n):
                u = waiting.popleft()
                self.connection.ack(u.connection, u.mid)
            self.forced += n
            self._warn.warn(
                "%d messages acknowledged while their data points still wait in open records:"
                " max_pending (%d) messages were waiting, so the broker sent no more; a crash"
                " now would lose those points (send whole records, or raise max_pending)",
                n,
                self.limit,
            )


class MqttSource(Source):
    type_name = "mqtt"
    Config = MqttSourceConfig
    config: MqttSourceConfig

    def __init__(self, config: MqttSourceConfig, machines: dict[str, Any]) -> None:
        super().__init__(config, machines)
        self.fed = 0
        """Items handed to the feed so far: the positions ``Feed.settled`` counts."""
        self._decode: Decoder = decode_json
        self._sparkplug: SparkplugDecoder | None = None
        self._acks: Acks | None = None

    def check(self) -> str:
        """Connect, authenticate and subscribe as ``<client_id>-check`` (see ``probe``)."""
        return probe(self.config)

    def run(self, feed: Feed, stop: threading.Event) -> None:
        conn = Connection(self.config)
        self._decode = self._decoder(conn)
        if not conn.open(stop):
            return
        acks = self._acks = Acks(conn, self.config.max_pending)
        try:
            while not stop.is_set():
                if conn.fatal is not None:
                    raise MqttSourceError(conn.fatal)
                got = self._take(conn, acks, feed)
                feed.flush()
                acks.settle(feed.settled(), idle=not got)
                if self._sparkplug is not None:
                    self._sparkplug.tick()
        finally:
            feed.flush()
            acks.settle(feed.settled(), idle=False)
            conn.close()

    def counters(self) -> dict[str, int]:
        """Read by other threads: each count is an int only the source thread writes."""
        out = {}
        sp = self._sparkplug
        if sp is not None:
            out["rebirth_requests"] = sp.rebirth_requests
            out["stale_values"] = sp.stale_values
            out["devices_forgotten"] = sp.devices_forgotten
            out["edge_nodes_forgotten"] = sp.sessions.forgotten
        if self._acks is not None:
            out["acknowledged_early"] = self._acks.forced
        return out

    def _decoder(self, conn: Connection) -> Decoder:
        if self.config.format == "json":
            return decode_json
        from .sessions import Sessions  # protobuf is imported only when Sparkplug is used
        from .sparkplug import SparkplugDecoder

        cfg = self.config
        ask = conn.publish if cfg.rebirth_requests else None
        sessions = Sessions(cfg.topics, cfg.reorder_timeout, cfg.rebirth_interval)
        self._sparkplug = SparkplugDecoder(self.machines, cfg.devices, BadMessage, ask, sessions)
        return self._sparkplug

    def _take(self, conn: Connection, acks: Acks, feed: Feed) -> int:
        """Feed the messages that are there (waiting a little for the first one)."""
        try:
            msg = conn.inbox.get(timeout=_POLL)
        except queue.Empty:
            return 0
        n = 0
        while True:
            if not conn.redelivered(msg):
                self._feed(msg, feed)
                acks.add(msg, self.fed)
            n += 1
            if n >= _BATCH:
                return n
            try:
                msg = conn.inbox.get_nowait()
            except queue.Empty:
                return n

    def _feed(self, msg: Incoming, feed: Feed) -> None:
        where = topic_label(msg.topic)
        size, limit = len(msg.payload), self.config.max_message_bytes
        try:
            if size > limit:
                raise BadMessage(
                    f"message of {size} bytes is longer than max_message_bytes ({limit})"
                )
            items = self._decode(msg)
        except BadMessage as exc:
            self.fed += 1
            feed.reject(where, str(exc), msg.payload[:_HEAD] if size > limit else msg.payload)
            return
        self.fed += len(items)  # no item (a birth certificate): nothing to settle
        if len(items) == 1:
            feed.item(items[0], where)
            return
        for i, item in enumerate(items, start=1):
            feed.item(item, f"{where} item {i}")
