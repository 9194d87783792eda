"""Helpers for the MQTT sink tests: configs, NDJSON input, and running the CLI."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.helpers import CLI
from tests.support.mosquitto import Client, Mosquitto, Received

MACHINES: dict[str, Any] = {
    "press-1": {
        "info": {"name": "press-1", "description": "Hydraulic press"},
        "variables": {
            "seq": {"name": "seq", "format": "uint32"},
            "temperature": {"name": "temperature", "format": "double", "description": "Oil"},
            "delta": {"name": "delta", "format": "int8"},
            "state": {"name": "state", "format": "char"},
        },
    },
    "press-2": {
        "info": {"name": "press-2"},
        "variables": {
            "seq": {"name": "seq", "format": "uint32"},
            "ok": {"name": "ok", "format": "bool"},
            "profile": {"name": "profile", "format": "int16", "array": True},
            "extra": {"name": "extra", "format": "object"},
        },
    },
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Whole records alternating between the two machines; ``seq`` numbers them."""
    out = []
    for i in range(start, start + n):
        t = f"2026-11-26T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
        if i % 2:
            values = {
                "seq": i,
                "ok": i % 3 == 0,
                "profile": [i % 100, -(i % 50)],
                "extra": {"i": i},
            }
            out.append({"machine": "press-2", "time": t, "values": values})
        else:
            values = {"seq": i, "temperature": i / 8, "delta": (i % 256) - 128, "state": f"s{i}"}
            out.append({"machine": "press-1", "time": t, "values": values})
    return out


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in items)


def mqtt_block(broker: Mosquitto, **overrides: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "mqtt",
        "host": broker.host,
        "port": broker.port,
        "client_id": unique("sink"),
        "topic": unique("t") + "/{host}/{machine}/{type}",
        "flush_timeout": 20,
        "connect_timeout": 3,
        "reconnect_min_delay": 0.1,
        "reconnect_max_delay": 0.5,
    }
    block.update(overrides)
    return block


def write_config(path: Path, sinks: dict[str, Any], **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "host": "gw-test",
        "machines": MACHINES,
        "source": {"type": "ndjson", "path": "-"},
        "sinks": sinks,
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def spawn(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "run", "-c", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def prefix_of(block: dict[str, Any]) -> str:
    return str(block["topic"]).split("/", 1)[0]


def seq_numbers(payloads: list[bytes]) -> list[int]:
    """The ``seq`` value of every record envelope among ``payloads``."""
    out = []
    for p in payloads:
        env = orjson.loads(p)
        if env["type"] == "record":
            out.append(env["data"]["attributes"]["seq"]["value"])
    return out


MARKER = b"~settled "
"""How the payload of ``settled``'s marker starts; such messages are left out."""


def settled(client: Client, limit: float = 30.0, at_least: int = 0) -> list[Received]:
    """What ``client`` received: at least ``at_least`` messages (or all there are after
    ``limit`` seconds), and every one the broker had for it by then. ``client`` publishes
    a marker matching its first subscription, which comes back after all of those (the
    broker sends a subscriber its messages in the order it took them). No quiet period
    to wait out: a loaded machine can be silent for longer than any such guess."""
    deadline = time.monotonic() + limit
    client.wait_for(at_least, limit)
    marker = MARKER + uuid.uuid4().hex.encode()
    topic = "/".join("~" if level == "+" else level for level in client.topics[0].split("/"))
    client.publish(topic.replace("#", "~settled"), marker)
    while time.monotonic() < deadline + 10:
        got = client.messages
        ends = [i for i, m in enumerate(got) if m.payload == marker]
        if ends:
            return [m for m in got[: ends[0]] if not m.payload.startswith(MARKER)]
        time.sleep(0.02)
    raise AssertionError(f"the marker on {topic!r} never came back")
