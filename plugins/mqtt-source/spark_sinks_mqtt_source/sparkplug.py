"""Sparkplug B in: device births and data of other edge nodes become whole records.

Each Sparkplug device is a machine: the device id names it, unless ``source.devices``
maps it (by ``group/edge node/device`` or by device id alone) to another name. Metrics
are matched to the machine's variables by name; other metrics are ignored.

- ``DBIRTH`` declares the device's metrics (their aliases, and values if it has any);
- ``DDATA`` updates some or all of them (report by exception) and becomes one whole record
  of the device: every variable's latest known value, at the newest metric timestamp of
  the message (else the payload's);
- ``DDEATH``, ``NBIRTH`` and ``NDEATH`` end what was known of the device or edge node
  (aliases are valid for one birth only).

A ``DDATA`` whose metric carries only an alias unknown here (its birth came before this
source started) is rejected, and the edge node is asked for a rebirth (``NCMD`` with
``Node Control/Rebirth``), at most every 30 seconds per node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug import sparkplug_b_pb2 as pb
from spark_sinks_sparkplug.codec import SparkplugError

from spark_sinks.machines import Machine, Variable

from .connection import Incoming

_REBIRTH_EVERY = 30.0
_TEXT_FORMATS = ("char", "string")
_STATE = f"{codec.NAMESPACE}/STATE/"


@dataclass
class _Device:
    """What one birth told about a device (source thread only)."""

    machine: Machine
    aliases: dict[int, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    """Latest value per configured variable."""


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
    """Turns Sparkplug B messages into record items (see the module docstring)."""

    def __init__(
        self,
        machines: dict[str, Machine],
        devices: dict[str, str],
        bad: Callable[[str], Exception],
        request_rebirth: Callable[[str, bytes], None] | None,
    ) -> None:
        self.machines = machines
        self.names = devices
        self.bad = bad
        self.request_rebirth = request_rebirth
        self._devices: dict[tuple[str, str, str], _Device] = {}
        self._asked: dict[tuple[str, str], float] = {}
        """When each edge node was last asked for a rebirth."""

    def __call__(self, msg: Incoming) -> list[Any]:
        if msg.topic.startswith(_STATE):
            return []  # a host application's online state
        try:
            t = codec.parse_topic(msg.topic)
        except SparkplugError as exc:
            raise self.bad(str(exc)) from None
        kind = t.message_type
        if kind in ("NBIRTH", "NDEATH"):
            node = (t.group_id, t.edge_node_id)
            for key in [k for k in self._devices if k[:2] == node]:
                del self._devices[key]
            return []
        if kind not in ("DBIRTH", "DDATA", "DDEATH") or t.device_id is None:
            return []  # NDATA, NCMD, DCMD, STATE: nothing about a machine's values
        key = (t.group_id, t.edge_node_id, t.device_id)
        if kind == "DDEATH":
            self._devices.pop(key, None)
            return []
        try:
            payload = codec.decode(msg.payload)
        except SparkplugError as exc:
            raise self.bad(str(exc)) from None
        if kind == "DBIRTH":
            self._devices[key] = self._birth(key, payload)
            return []
        return self._data(key, payload)

    def _machine(self, key: tuple[str, str, str]) -> Machine:
        name = self.names.get("/".join(key)) or self.names.get(key[2]) or key[2]
        machine = self.machines.get(name)
        if machine is None:
            raise self.bad(
                f"device {key[2]!r} of edge node {key[1]!r} is no configured machine"
                f" ({name!r}; map device ids to machines under source.devices)"
            )
        return machine

    def _birth(self, key: tuple[str, str, str], payload: codec.Payload) -> _Device:
        device = _Device(self._machine(key))
        for m in payload.metrics:
            if m.name is None:
                continue
            if m.alias is not None:
                device.aliases[m.alias] = m.name
            var = device.machine.variables.get(m.name)
            if var is not None and m.value is not None:  # a null birth value: no reading yet
                device.values[m.name] = _value(var, m.value)
        return device

    def _data(self, key: tuple[str, str, str], payload: codec.Payload) -> list[Any]:
        device = self._devices.get(key)
        if device is None:  # no birth seen: metrics with names still say everything
            device = self._devices[key] = _Device(self._machine(key))
        newest: int | None = None
        changed = False
        for m in payload.metrics:
            name = (
                m.name
                if m.name is not None
                else device.aliases.get(m.alias)
                if m.alias is not None
                else None
            )
            if name is None:
                self._ask_rebirth(key)
                raise self.bad(
                    f"metric alias {m.alias} of device {key[2]!r} is unknown: no DBIRTH"
                    " seen since this source started (a rebirth was requested)"
                )
            var = device.machine.variables.get(name)
            if var is None:
                continue
            device.values[name] = _value(var, m.value)
            changed = True
            if m.timestamp is not None and (newest is None or m.timestamp > newest):
                newest = m.timestamp
        if not changed:
            return []
        time_ms = newest if newest is not None else payload.timestamp
        return [{"machine": device.machine.name, "time": time_ms, "values": dict(device.values)}]

    def _ask_rebirth(self, key: tuple[str, str, str]) -> None:
        node = key[:2]
        now = time.monotonic()
        if self.request_rebirth is None or now - self._asked.get(node, -1e9) < _REBIRTH_EVERY:
            return
        self._asked[node] = now
        self.request_rebirth(codec.topic(node[0], "NCMD", node[1]), rebirth_request())


def _value(var: Variable, value: Any) -> Any:
    """Values that travel as JSON text (objects, lists that are no Sparkplug array) come
    back as what they were; other text stays text."""
    if type(value) is str and (var.format not in _TEXT_FORMATS or var.definition.get("array")):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value
