"""The wire format kept from the original module: ``{"type", "host", "data"}``."""

from __future__ import annotations

from typing import Any

import orjson

RECORD = "record"
METADATA = "metadata"
CONNECTION_TEST = "connection_test"


class Envelope:
    """One message for the sinks.

    ``machine`` is carried beside the payload so that sinks can route (e.g.
    pick a partition key) without digging into ``data``. The JSON encoding is
    computed once and shared by every sink.
    """

    __slots__ = ("_json", "data", "host", "machine", "type")

    def __init__(
        self,
        type: str,
        host: str,
        data: dict[str, Any],
        machine: str | None = None,
        json: bytes | None = None,
    ) -> None:
        self.type = type
        self.host = host
        self.data = data
        self.machine = machine
        self._json = json

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "host": self.host, "data": self.data}

    def to_json(self) -> bytes:
        """The envelope as compact UTF-8 JSON, exactly what the original sent."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict())
        return self._json

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        """Rebuild an envelope from its JSON (spool replay, tests, consumers)."""
        obj = orjson.loads(raw)
        data = obj["data"]
        machine = data.get("machine") if isinstance(data, dict) else None
        if machine is None and isinstance(data, dict):
            info = data.get("info")
            if isinstance(info, dict):
                machine = info.get("name")
        raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
        return cls(obj["type"], obj["host"], data, machine, raw_bytes)

    def __repr__(self) -> str:
        return f"Envelope(type={self.type!r}, host={self.host!r}, machine={self.machine!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.machine == other.machine
