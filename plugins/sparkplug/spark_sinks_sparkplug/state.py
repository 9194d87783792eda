"""A Sparkplug 3.0 Host Application's STATE message (chapter "Operational Behavior").

A host application publishes, retained at QoS 1, on ``spBv1.0/STATE/<host_id>`` a UTF-8
JSON object ``{"online": true|false, "timestamp": <UTC ms since the epoch>}``: online once
it has subscribed, offline as its will (or before it disconnects). An edge node configured
with that host as its Primary Host Application publishes its births only after an online
STATE, ignores a STATE whose timestamp is older than the newest one it accepted (a replay
of an earlier session's message), and on an offline one publishes its NDEATH, disconnects
and starts its session over.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from .errors import SparkplugError
from .topics import NAMESPACE, STATE, check_id


class HostState(NamedTuple):
    online: bool
    timestamp: int
    """UTC milliseconds since the epoch, as the host application stamped it."""


def state_topic(host_id: str) -> str:
    return f"{NAMESPACE}/{STATE}/{check_id(host_id, 'the host ID')}"


def parse_state(payload: bytes) -> HostState:
    """Raises ``SparkplugError`` saying what is wrong with a payload that is not one."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise SparkplugError(
            f"STATE payload is not JSON ({len(payload)} bytes; Sparkplug 3.0 wants"
            ' {"online": true|false, "timestamp": <ms>})'
        ) from None
    if not isinstance(obj, dict):
        raise SparkplugError(f"STATE payload is a JSON {type(obj).__name__}, not an object")
    online, timestamp = obj.get("online"), obj.get("timestamp")
    if type(online) is not bool:
        raise SparkplugError("STATE payload lacks a boolean 'online'")
    if type(timestamp) is not int or timestamp < 0:
        raise SparkplugError("STATE payload lacks a 'timestamp' (UTC milliseconds, an integer)")
    return HostState(online, timestamp)


def state_payload(online: bool, timestamp: int) -> bytes:
    """A STATE payload (what a host application publishes; for tests and tools)."""
    return orjson.dumps({"online": online, "timestamp": timestamp})
