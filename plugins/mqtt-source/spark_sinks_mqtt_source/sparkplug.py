"""Sparkplug B in: device births and data of other edge nodes become whole records.

Each Sparkplug device is a machine: the device id names it, unless ``source.devices``
maps it (by ``group/edge node/device`` or by device id alone) to another name. Metrics
are matched to the machine's variables by name; other metrics are ignored.

- ``DBIRTH`` declares the device's metrics (their aliases, and values if it has any);
- ``DDATA`` updates some or all of them (report by exception) and becomes one whole record
  of the device: every variable's latest known value, at the newest metric timestamp of
  the message (else the payload's). When the edge node's session is followed, a value
  from a message published before the one that set the current value (it arrived late:
  ``seq`` order, see ``Sessions.place``) is discarded as stale and counted, unless its
  timestamp is newer than the current value's. ``seq`` decides because an edge node's
  clock may step back; the timestamp may only save a value, since a message more than 127
  places late looks ahead in ``seq`` and would make the next ones look stale;
- ``DDEATH``, ``NBIRTH``, and an ``NDEATH`` of the current session (its ``bdSeq`` is
  the NBIRTH's; an older will arriving late is ignored) end what was known of the device
  or edge node (aliases are valid for one birth only).

Sessions are followed as a Sparkplug host application does (see ``sessions``): a gap in
an edge node's ``seq`` not filled within ``reorder_timeout``, a message of a node whose
NBIRTH was not seen here, data of a device without its DBIRTH, or a metric alias unknown
here make the source ask the node for a rebirth (``NCMD`` with ``Node Control/Rebirth``),
at most every ``rebirth_interval`` seconds per node. The data itself is still read (a
``DDATA`` naming only an unknown alias is rejected).

At most ``max_devices`` devices are known at once; beyond it the one heard from least
recently is forgotten (counted, logged at most once a minute), as after its ``DDEATH``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug import sparkplug_b_pb2 as pb
from spark_sinks_sparkplug.codec import SparkplugError

from spark_sinks.machines import Machine, Variable

from .connection import Incoming, RateLimited
from .recent import Recent
from .sessions import Node, Order, Sessions

log = logging.getLogger(__name__)
_TEXT_FORMATS = ("char", "string")
_STATE = f"{codec.NAMESPACE}/STATE/"
MAX_DEVICES = 10_000
"""Devices known at once, at most (their aliases and latest values): memory stays bounded
whatever group and edge node ids arrive with a configured device id."""

DeviceKey = tuple[str, str, str]
"""Group, edge node and device id."""


class _Origin(NamedTuple):
    order: Order
    """Where the message stands in its edge node's order."""
    timestamp: int | None
    """The metric's timestamp, else the payload's."""

    def newer(self, other: _Origin) -> bool:
        """Whether this value is newer than ``other`` (see the module docstring)."""
        if not self.order.before(other.order):
            return True
        mine, current = self.timestamp, other.timestamp
        return mine is not None and current is not None and mine > current


@dataclass
class _Device:
    """What one birth told about a device (source thread only)."""

    machine: Machine
    born: bool = False
    """Its DBIRTH was seen: every alias of a configured variable is known."""
    aliases: dict[int, str] = field(default_factory=dict)
    """Alias -> name, for configured variables only (one alias each): a birth may declare
    hundreds of thousands of metrics, and memory must not grow with them."""
    values: dict[str, Any] = field(default_factory=dict)
    """Latest value per configured variable."""
    origins: dict[str, _Origin] = field(default_factory=dict)
    """Per variable, where its value came from (when the node's session is followed)."""


def rebirth_request(timestamp: int | None = None) -> bytes:
    """An ``NCMD`` payload asking an edge node to publish its births again."""
    p = pb.Payload()
    p.timestamp = int(time.time() * 1000) if timestamp is None else timestamp
    m = p.metrics.add()
    m.name = codec.REBIRTH
    m.timestamp = p.timestamp
    m.datatype = pb.DataType.Boolean
    m.boolean_value = True
    return bytes(p.SerializeToString())


class SparkplugDecoder:
    """Turns Sparkplug B messages into record items (see the module docstring); follows the
    edge nodes' sessions (``Sessions``) and asks for rebirths. Source thread only."""

    def __init__(
        self,
        machines: dict[str, Machine],
        devices: dict[str, str],
        bad: Callable[[str], Exception],
        request_rebirth: Callable[[str, bytes], None] | None,
        sessions: Sessions,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.machines = machines
        self.names = devices
        self.bad = bad
        self.request_rebirth = request_rebirth
        self.sessions = sessions
        self._devices: Recent[DeviceKey, _Device] = Recent(max_devices, "devices", log)
        # counts read by other threads for the counters (ints only this thread writes)
        self.rebirth_requests = 0
        """Rebirth requests published."""
        self.stale_values = 0
        """Metric values discarded: published before the device's current value."""
        self._warn_stale = RateLimited(logger=log)

    def __call__(self, msg: Incoming) -> list[Any]:
        if msg.topic.startswith(_STATE):
            return []  # a host application's online state
        try:
            t = codec.parse_topic(msg.topic)
            kind = t.message_type
            if kind in ("NCMD", "DCMD"):
                return []  # commands to edge nodes: nothing about a machine's values
            payload = codec.decode(msg.payload)
        except SparkplugError as exc:
            raise self.bad(str(exc)) from None
        node = Node(t.group_id, t.edge_node_id)
        if t.device_id is None:
            self._node_message(node, kind, payload)
            return []
        key = (t.group_id, t.edge_node_id, t.device_id)
        order = self._follow(node, kind, payload.seq)
        if kind == "DDEATH":
            self._devices.pop(key, None)
            return []
        if kind == "DBIRTH":
            self._devices.put(key, self._birth(key, payload, order))
            return []
        if key not in self._devices:
            self._machine(key)  # a device that is no machine here is rejected, not asked about
            if self.sessions.covered(node):
                self._rebirth(node, f"DDATA of device {t.device_id!r} without its DBIRTH")
        return self._data(key, payload, order)

    def tick(self) -> None:
        """Ask the nodes whose Reorder Timeout elapsed for a rebirth (called often)."""
        for node, reason in self.sessions.due():
            self._rebirth(node, reason)

    def _node_message(self, node: Node, kind: str, payload: codec.Payload) -> None:
        """NBIRTH and NDEATH start and end the node's session, and every device's of it."""
        if kind == "NDATA":
            self._follow(node, kind, payload.seq)
            return
        bd = payload.metric(codec.BD_SEQ)
        bd_seq = bd.value if bd is not None and type(bd.value) is int else None
        if kind == "NBIRTH":
            self.sessions.birth(node, payload.seq, bd_seq)
        elif not self.sessions.death(node, bd_seq):
            return  # an earlier connection's will, arriving late: ignored
        for key in [k for k in self._devices if k[:2] == node]:
            del self._devices[key]

    def _follow(self, node: Node, kind: str, seq: int | None) -> Order | None:
        """Follow the node's session, if every message of the node comes here (asking for a
        rebirth when out of step); the message's place in the node's order, if known."""
        if not self.sessions.covered(node):
            return None
        reason = self.sessions.message(node, seq, kind)
        if reason is not None:
            self._rebirth(node, reason)
        return self.sessions.place(node, seq)

    def _rebirth(self, node: Node, reason: str) -> None:
        """Ask the node for a rebirth, with one line saying why (rate-limited per node)."""
        if self.request_rebirth is None or not self.sessions.may_ask(node):
            return
        log.warning(
            "edge node %s: %s; asking it for a rebirth (NCMD %s)", node, reason, codec.REBIRTH
        )
        self.request_rebirth(codec.topic(node.group, "NCMD", node.edge_node), rebirth_request())
        self.rebirth_requests += 1

    @property
    def devices_forgotten(self) -> int:
        """Devices forgotten to keep within ``max_devices`` (read by other threads)."""
        return self._devices.forgotten

    def _machine(self, key: DeviceKey) -> Machine:
        name = self.names.get("/".join(key)) or self.names.get(key[2]) or key[2]
        machine = self.machines.get(name)
        if machine is None:
            raise self.bad(
                f"device {key[2]!r} of edge node {key[1]!r} is no configured machine"
                f" ({name!r}; map device ids to machines under source.devices)"
            )
        return machine

    def _birth(self, key: DeviceKey, payload: codec.Payload, order: Order | None) -> _Device:
        device = _Device(self._machine(key), born=True)
        alias_of: dict[str, int] = {}
        for m in payload.metrics:
            var = device.machine.variables.get(m.name) if m.name is not None else None
            if m.name is None or var is None:
                continue  # not configured here: nothing of it is kept
            if m.alias is not None:
                alias_of[m.name] = m.alias  # a name born twice: its last alias counts
            if m.value is not None:  # a null birth value: no reading yet
                device.values[m.name] = _value(var, m.value)
                if order is not None:
                    device.origins[m.name] = _Origin(order, _timestamp(m, payload))
        device.aliases = {alias: name for name, alias in alias_of.items()}
        return device

    def _data(self, key: DeviceKey, payload: codec.Payload, order: Order | None) -> list[Any]:
        device = self._devices.get(key)
        # re-inserted: the most recently heard from; with no birth seen, metrics with names
        # still say everything
        device = self._devices.put(key, device or _Device(self._machine(key)))
        newest: int | None = None
        changed = False
        stale = 0
        for m in payload.metrics:
            name = self._metric_name(key, device, m)
            var = device.machine.variables.get(name) if name is not None else None
            if name is None or var is None:
                continue
            if order is not None:
                origin = _Origin(order, _timestamp(m, payload))
                last = device.origins.get(name)
                if last is not None and not origin.newer(last):
                    stale += 1
                    continue
                device.origins[name] = origin
            device.values[name] = _value(var, m.value)
            changed = True
            if m.timestamp is not None and (newest is None or m.timestamp > newest):
                newest = m.timestamp
        if stale:
            self._stale(key, payload.seq, stale)
        if not changed:
            return []
        time_ms = newest if newest is not None else payload.timestamp
        return [{"machine": device.machine.name, "time": time_ms, "values": dict(device.values)}]

    def _metric_name(self, key: DeviceKey, device: _Device, m: codec.Metric) -> str | None:
        """A metric's name, or the one its alias had in the device's DBIRTH (None: an alias
        the DBIRTH gave no configured variable, ignored like any metric not configured
        here); an alias of a device whose DBIRTH was not seen makes the message bad and
        asks the node for a rebirth."""
        if m.name is not None:
            return m.name
        name = device.aliases.get(m.alias) if m.alias is not None else None
        if name is not None or (device.born and m.alias is not None):
            return name
        self._rebirth(Node(*key[:2]), f"metric alias {m.alias} of device {key[2]!r} is unknown")
        asked = " (a rebirth is requested)" if self.request_rebirth else ""
        raise self.bad(
            f"metric alias {m.alias} of device {key[2]!r} is unknown: no DBIRTH"
            f" seen since this source started{asked}"
        )

    def _stale(self, key: DeviceKey, seq: int | None, n: int) -> None:
        self.stale_values += n
        self._warn_stale.warn(
            "edge node %s/%s: %d value(s) of device %r in DDATA seq %s discarded as stale:"
            " newer values published after it arrived first (%d stale values so far)",
            key[0],
            key[1],
            n,
            key[2],
            seq,
            self.stale_values,
        )


def _timestamp(m: codec.Metric, payload: codec.Payload) -> int | None:
    return m.timestamp if m.timestamp is not None else payload.timestamp


def _value(var: Variable, value: Any) -> Any:
    """Values that travel as JSON text (objects, lists that are no Sparkplug array) come
    back as what they were; other text stays text."""
    if type(value) is str and (var.format not in _TEXT_FORMATS or var.definition.get("array")):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value
