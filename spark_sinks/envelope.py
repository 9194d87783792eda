"""The wire format kept from the original module: ``{"type", "host", "data"}``."""

from __future__ import annotations

from typing import Any, cast

import orjson

RECORD = "record"
METADATA = "metadata"
CONNECTION_TEST = "connection_test"


class Envelope:
    """One message for the sinks.

    ``machine`` is carried beside the payload so that sinks can route (e.g.
    pick a partition key) without digging into ``data``. The JSON encoding is
    computed once and shared by every sink. Once every sink's worker is done
    with the envelope (``buffer.Batch.release``), the core may ``compact`` it to
    its JSON alone: ``data`` is then decoded again only if someone asks, so
    buffers of waiting envelopes hold bytes, not dictionaries.

    Compaction may run while a buffered sink's own thread reads ``data`` or
    calls ``to_json``: ``compact`` sets the JSON before it drops the dictionary,
    and each attribute is read and written whole, so a reader always finds one
    of the two and gets the same value (at worst it decodes the JSON again).
    """

    __slots__ = ("_data", "_json", "host", "machine", "type")

    def __init__(
        self,
        type: str,
        host: str,
        data: dict[str, Any] | None,
        machine: str | None = None,
        json: bytes | None = None,
    ) -> None:
        if data is None and json is None:
            raise ValueError("an envelope needs its data or its JSON")
        self.type = type
        self.host = host
        self._data = data
        self.machine = machine
        self._json = json

    @property
    def data(self) -> dict[str, Any]:
        d = self._data
        if d is None:
            d = self._data = orjson.loads(self._json)["data"]  # type: ignore[arg-type]
        return d

    def compact(self) -> None:
        """Keep only the JSON (see the class docstring)."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict())
        self._data = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "host": self.host, "data": self.data}

    def to_json(self) -> bytes:
        """The envelope as compact UTF-8 JSON, exactly what the original sent."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict())
        return self._json

    @classmethod
    def from_json(cls, raw: bytes | str, machine: str | None = None) -> Envelope:
        """Rebuild an envelope from its JSON (spool replay, tests, consumers).

        ``data`` stays encoded until asked for; pass ``machine`` when known. Raises
        ``ValueError`` for anything else than an envelope's JSON (a damaged spool row)."""
        obj = orjson.loads(raw)
        if not (
            isinstance(obj, dict)
            and isinstance(obj.get("type"), str)
            and isinstance(obj.get("host"), str)
            and isinstance(obj.get("data"), dict)
        ):
            raise ValueError('not a JSON object with a text "type" and "host" and a "data" object')
        if machine is None:
            data = obj["data"]
            machine = data.get("machine")
            info = data.get("info")
            if machine is None and isinstance(info, dict):
                machine = info.get("name")
            machine = machine if isinstance(machine, str) else None  # a route is text
        raw_bytes = raw.encode() if isinstance(raw, str) else bytes(raw)
        return cls(obj["type"], obj["host"], None, machine, raw_bytes)

    def __repr__(self) -> str:
        return f"Envelope(type={self.type!r}, host={self.host!r}, machine={self.machine!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.to_dict() == other.to_dict() and self.machine == other.machine


def json_size(envelopes: list[Envelope]) -> int:
    """Bytes of the envelopes' JSON: the sum of ``len(e.to_json())``.

    Called on every dispatched batch (what a memory buffer's bound counts). Reading the
    encoded JSON straight from the slot is cheaper than a ``to_json`` call per envelope,
    and it is nearly always there (the assembler encodes records as it makes them)."""
    # may hold None (not encoded yet): len() then raises, and the slow way takes over
    encoded = cast("list[bytes]", [e._json for e in envelopes])
    try:
        return sum(map(len, encoded))
    except TypeError:  # one not encoded yet (e.g. metadata): encode it now, once
        return sum([len(e.to_json()) for e in envelopes])
