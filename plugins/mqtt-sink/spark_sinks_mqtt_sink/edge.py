"""The gateway as a Sparkplug B edge node (the ``mqtt`` sink's ``format: sparkplug_b``):
each machine is a device. ``EdgeNode`` keeps the state the specification asks for:
``bdSeq`` (one per MQTT connection), ``seq`` (0..255 across every message of a session),
which devices were born with which metrics, and with ``aliases`` each metric's alias
(births carry name and alias, DDATA the alias). It is used only under the sink's lock,
which therefore owns this state.
"""

from __future__ import annotations

from typing import Any

from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug.codec import MetricDef, Sequence256, SparkplugError

from spark_sinks import CONNECTION_TEST, METADATA, RECORD, Envelope

from .config import MqttSinkConfig
from .encoding import EncodeError, Message


class EdgeNode:
    """The gateway as a Sparkplug B edge node (see the module docstring)."""

    def __init__(self, config: MqttSinkConfig, host: str) -> None:
        self.group = config.group_id
        self.edge = config.edge_node_id or codec.check_id(host, "edge_node_id (the host)")
        self.qos = config.effective_qos
        self._bd_seq = Sequence256()
        self.bd_seq = 0
        """The bdSeq of the current (or last) MQTT connection."""
        self._seq = Sequence256()
        self.defs: dict[str, dict[str, MetricDef]] = {}
        """Each device's metrics as last declared (metadata, or records); kept across
        sessions, so that a new session re-births every device known so far."""
        self.born: set[str] = set()
        """Devices with a DBIRTH in this session."""
        self._aliases: dict[str, dict[str, int]] | None = {} if config.aliases else None
        """With ``aliases``: each device's metric name -> alias. An alias is unique across
        the edge node and never reused (the specification's rule); kept like ``defs``."""
        self._next_alias = 0

    def topic(self, kind: str, device: str | None = None) -> str:
        return str(codec.topic(self.group, kind, self.edge, device))

    def will(self) -> Message:
        """The NDEATH to register with the next CONNECT: the next bdSeq."""
        return Message(self.topic(codec.NDEATH), codec.ndeath(self._bd_seq.value), 1)

    def connect_sent(self) -> None:
        """A CONNECT with ``will()`` went out: its bdSeq is now current. Attempts that
        never sent one (the broker unreachable) take no number."""
        self.bd_seq = self._bd_seq.take()

    def death(self) -> Message:
        """The NDEATH published before an intentional disconnect (same bdSeq as the will)."""
        return Message(self.topic(codec.NDEATH), codec.ndeath(self.bd_seq), 1)

    def birth(self) -> list[Message]:
        """A new session (or a rebirth): NBIRTH with seq 0, then a DBIRTH per known device."""
        self._seq = Sequence256()
        self.born.clear()
        nbirth = codec.nbirth(self.bd_seq, self._seq.take())
        out = [Message(self.topic(codec.NBIRTH), nbirth, self.qos)]
        for device in self.defs:
            out.append(self._dbirth(device))
        return out

    @staticmethod
    def rebirth_requested(payload: bytes) -> bool:
        """Is this NCMD payload a Node Control/Rebirth request?"""
        return codec.is_rebirth_request(payload)

    def encode(self, env: Envelope) -> list[Message]:
        """The messages for one envelope; raises ``EncodeError`` taking no ``seq``."""
        if env.type == CONNECTION_TEST:
            return []
        try:
            device = codec.check_id(env.machine or "", "machine name (the device ID)")
            if env.type == METADATA:
                return self._metadata(device, env.data)
            if env.type == RECORD:
                return self._record(device, env.data)
        except (SparkplugError, KeyError, TypeError, AttributeError) as exc:
            raise EncodeError(f"cannot encode as Sparkplug B: {_why(exc)}") from None
        return []

    def retire(self, device: str) -> list[Message]:
        """The machine stopped publishing: its DDEATH if it was born in this session; it is
        forgotten, so later births leave it out (a record of it would birth it again)."""
        self.defs.pop(device, None)
        if self._aliases is not None:
            self._aliases.pop(device, None)
        if device not in self.born:
            return []
        self.born.discard(device)
        payload = codec.ddeath(self._seq.take())
        return [Message(self.topic(codec.DDEATH, device), payload, self.qos)]

    def _metadata(self, device: str, data: dict[str, Any]) -> list[Message]:
        new = {d.name: d for d in codec.metric_defs(data["variables"])}
        if device in self.born and self.defs.get(device) == new:
            return []
        self.defs[device] = new
        return self._rebirth(device)

    def _record(self, device: str, data: dict[str, Any]) -> list[Message]:
        values = codec.record_values(data["attributes"], codec.spark_time_ms(data["time"]))
        known = self.defs.get(device, {})
        changed = {
            v.name: MetricDef(v.name, v.datatype, str(a.get("format")), a.get("description"))
            for v, a in zip(values, data["attributes"].values(), strict=True)
            if v.name not in known or known[v.name].datatype != v.datatype
        }
        births = 0 if device in self.born and not changed else 1 + (device in self.born)
        # encode first with the seq it will have, so that a bad value takes no seq
        aliases = self._alias_map(device, [v.name for v in values])
        payload = codec.ddata(values, (self._seq.value + births) % 256, aliases=aliases)
        out = []
        if births:
            self.defs[device] = {**known, **changed}
            out = self._rebirth(device)
        self._seq.take()
        out.append(Message(self.topic(codec.DDATA, device), payload, self.qos))
        return out

    def _rebirth(self, device: str) -> list[Message]:
        """DBIRTH, after a DDEATH if the device was already born in this session."""
        out = []
        if device in self.born:
            payload = codec.ddeath(self._seq.take())
            out.append(Message(self.topic(codec.DDEATH, device), payload, self.qos))
        out.append(self._dbirth(device))
        return out

    def _dbirth(self, device: str) -> Message:
        self.born.add(device)
        defs = self.defs[device]
        aliases = self._alias_map(device, list(defs))
        payload = codec.dbirth(defs.values(), self._seq.take(), aliases=aliases)
        return Message(self.topic(codec.DBIRTH, device), payload, self.qos)

    def _alias_map(self, device: str, names: list[str]) -> dict[str, int] | None:
        """With ``aliases``: the device's, with a new one for each name that has none."""
        if self._aliases is None:
            return None
        known = self._aliases.setdefault(device, {})
        for name in names:
            if name not in known:
                known[name] = self._next_alias
                self._next_alias += 1
        return known


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"the envelope has no {exc.args[0]!r}"
    return str(exc)
