"""Shared by test_spool.py, test_accounting.py and test_secrets.py: configs for a
`spark-sinks run` subprocess with the Kinesis sink (on moto, or behind a fault proxy),
input lines, reading the status file, a run's stderr as it comes and the stream back."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.helpers import CLI
from tests.test_reliability import ENV, seqs, wait_until

__all__ = ["ENV", "seqs", "wait_until"]

MACHINES = {
    f"m{i}": {
        "info": {"name": f"m{i}"},
        "variables": {
            "seq": {"name": "seq", "format": "int64"},
            "note": {"name": "note", "format": "string"},
        },
    }
    for i in range(4)
}


def line(i: int, note: str = "x") -> bytes:
    item = {
        "machine": f"m{i % 4}",
        "time": 1_790_000_000_000 + i,
        "values": {"seq": i, "note": note},
    }
    return orjson.dumps(item) + b"\n"


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(line(i) for i in range(start, start + n))


def kinesis_sink(stream: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "kinesis",
        "stream_name": stream,
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "linger_ms": 20,
        "retry_base_ms": 20,
        "retry_max_ms": 300,
        "connection_test": False,
        **extra,
    }


def write_config(tmp_path: Path, sinks: dict[str, Any], name: str = "c.yaml", **top: Any) -> Path:
    cfg = {
        "host": "gw",
        "machines": MACHINES,
        "source": {"type": "ndjson", "path": "-"},
        "sinks": sinks,
        "operations": {"status_file": str(tmp_path / "status.json"), "stats_interval": 0.1},
        **top,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    kw.setdefault("env", {**os.environ, **ENV})
    return subprocess.Popen(
        [*CLI, *args, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


def run(
    cfg: Path, data: bytes, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args, "run", "-c", str(cfg)],
        input=data,
        capture_output=True,
        env={**os.environ, **ENV},
        timeout=timeout,
    )


def status(tmp_path: Path, sink: str = "cloud") -> dict[str, Any] | None:
    try:
        snap: dict[str, Any] = orjson.loads((tmp_path / "status.json").read_bytes())
        return snap["sinks"][sink]  # type: ignore[no-any-return]
    except (OSError, orjson.JSONDecodeError, KeyError):
        return None


def identity(s: dict[str, Any]) -> bool:
    terms = [
        s[k] for k in ("accepted", "delivered", "dead_lettered", "dropped", "failed", "pending")
    ]
    return min(terms) >= 0 and terms[0] == sum(terms[1:])


class StderrLines:
    """Read a process's stderr in a thread, with the time each line arrived."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            self.lines.append((time.monotonic(), raw.decode(errors="replace")))

    def find(self, text: str) -> float | None:
        return next((t for t, s in list(self.lines) if text in s), None)

    @property
    def text(self) -> str:
        return "".join(s for _, s in list(self.lines))
