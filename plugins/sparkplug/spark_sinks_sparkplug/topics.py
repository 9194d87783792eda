"""Sparkplug B topics: ``spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]``,
the message types, and the IDs and topic levels MQTT brokers accept."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SparkplugError

NAMESPACE = "spBv1.0"
NBIRTH, NDEATH, NDATA, NCMD = "NBIRTH", "NDEATH", "NDATA", "NCMD"
DBIRTH, DDEATH, DDATA, DCMD = "DBIRTH", "DDEATH", "DDATA", "DCMD"
STATE = "STATE"
MESSAGE_TYPES = frozenset({NBIRTH, NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA, DCMD})
NODE_TYPES = frozenset({NBIRTH, NDEATH, NDATA, NCMD})


@dataclass(frozen=True, slots=True)
class Topic:
    """``spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]``."""

    group_id: str
    message_type: str
    edge_node_id: str
    device_id: str | None = None

    def __str__(self) -> str:
        parts = [NAMESPACE, self.group_id, self.message_type, self.edge_node_id]
        if self.device_id is not None:
            parts.append(self.device_id)
        return "/".join(parts)


def topic_problem(text: str) -> str | None:
    """Why ``text`` cannot be (part of) a topic to publish on, or None.

    Besides the wildcards, brokers refuse what MQTT calls malformed UTF-8: NUL, control
    characters (U+0001..U+001F, U+007F..U+009F), surrogates and non-characters; Mosquitto
    then closes the connection, so such a topic must never be published."""
    bad = sorted({c for c in text if c in "+#" or _malformed(ord(c))})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)}, not allowed in an MQTT topic"
    if len(text.encode(errors="surrogatepass")) > 65535:
        return "is longer than the 65535 bytes of an MQTT topic"
    return None


def _malformed(cp: int) -> bool:
    return (
        cp <= 0x1F
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or cp & 0xFFFE == 0xFFFE
    )


def check_id(value: str, what: str) -> str:
    """A group, edge node or device ID: a topic level without ``/``, wildcards or
    characters MQTT refuses."""
    if not value:
        raise SparkplugError(f"{what} is empty")
    problem = "contains '/', not allowed in a Sparkplug ID" if "/" in value else None
    problem = problem or topic_problem(value)
    if problem:
        raise SparkplugError(f"{what} {value!r} {problem}")
    return value


def topic(group_id: str, message_type: str, edge_node_id: str, device_id: str | None = None) -> str:
    if device_id is not None:
        check_id(device_id, "device ID")
    return str(Topic(group_id, message_type, edge_node_id, device_id))


def parse_topic(text: str) -> Topic:
    """Split a Sparkplug B topic; raises ``SparkplugError`` naming what is wrong."""
    parts = text.split("/")
    if len(parts) < 4 or parts[0] != NAMESPACE:
        raise SparkplugError(f"topic {text!r} is not spBv1.0/<group>/<type>/<edge node>[/<device>]")
    if len(parts) > 5:
        raise SparkplugError(f"topic {text!r} has more than five levels")
    kind = parts[2]
    if kind not in MESSAGE_TYPES:
        raise SparkplugError(f"topic {text!r}: {kind!r} is not a Sparkplug message type")
    device = parts[4] if len(parts) == 5 else None
    if (device is None) != (kind in NODE_TYPES):
        raise SparkplugError(
            f"topic {text!r}: a {kind} topic {'needs' if device is None else 'has no'} device ID"
        )
    return Topic(parts[1], kind, parts[3], device)
