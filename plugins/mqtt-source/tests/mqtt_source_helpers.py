"""Helpers for the MQTT source tests: configs, a running ``spark-sinks run`` subprocess whose
output is read as it comes, and the records it printed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import CLI
from tests.support.mosquitto import Mosquitto

MACHINES: dict[str, Any] = {
    f"m{i}": {
        "info": {"name": f"m{i}"},
        "variables": {
            "seq": {"name": "seq", "format": "int64"},
            "temperature": {"name": "temperature", "format": "float"},
        },
    }
    for i in range(3)
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def record(i: int, machine: str | None = None) -> bytes:
    """A whole record whose ``seq`` identifies it."""
    item = {
        "machine": machine or f"m{i % 3}",
        "time": 1_790_000_000_000 + i,
        "values": {"seq": i, "temperature": 20.5},
    }
    return orjson.dumps(item)


def stdout_sink(buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stdout sink, with a ``buffer:`` block if given."""
    sink: dict[str, Any] = {"type": "stdout", "format": "json"}
    if buffer is not None:
        sink["buffer"] = buffer
    return {"out": sink}


def disk_buffer(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"type": "disk", "path": str(tmp_path / "spool"), "sync": "normal", **more}


SMALL_MEMORY = {"type": "memory", "max_bytes": 1024}
"""A buffer that fills after a few envelopes: with nobody reading stdout, the source
thread itself then waits (``when_full: block``)."""


def write_config(
    path: Path,
    broker: Mosquitto,
    topics: list[str],
    sinks: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    operations: dict[str, Any] | None = None,
    **src: Any,
) -> Path:
    """An ``mqtt`` source on ``broker`` (or ``source`` instead), the stdout sink by default."""
    source = source or {
        "type": "mqtt",
        "host": broker.host,
        "port": broker.port,
        "client_id": unique("src"),
        "topics": topics,
        **src,
    }
    cfg = {
        "host": "gw",
        "machines": MACHINES,
        "source": source,
        "sinks": sinks or {"out": {"type": "stdout", "format": "json"}},
    }
    if operations is not None:
        cfg["operations"] = operations
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Run:
    """``spark-sinks run`` in the background; stdout and stderr lines collected as they come
    (one reader thread each, appending under ``_lock``)."""

    started: list[Run] = []
    """Every run of the current test; the conftest kills what a failed test left running."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, read_stdout: bool = True
    ) -> None:
        """With ``read_stdout`` false nobody reads its stdout until ``read_stdout()``: once
        the pipe is full, the stdout sink blocks in ``write``."""
        Run.started.append(self)
        self.proc = subprocess.Popen(
            [*CLI, "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self._err, True), daemon=True
            ),
        ]
        self._readers[1].start()
        if read_stdout:
            self.read_stdout()

    def read_stdout(self) -> None:
        self._readers[0].start()

    def _read(self, stream: Any, into: list[Any], text: bool = False) -> None:
        for line in stream:
            with self._lock:
                into.append(line.decode("utf-8", "replace") if text else line)

    @property
    def out(self) -> list[bytes]:
        with self._lock:
            return list(self._out)

    @property
    def err(self) -> str:
        with self._lock:
            return "".join(self._err)

    def records(self) -> list[dict[str, Any]]:
        """``data`` of every record envelope printed so far."""
        out = []
        for line in self.out:
            if not line.endswith(b"\n"):
                continue  # cut short by a kill -9: not printed
            env = orjson.loads(line)
            if env["type"] == "record":
                out.append(env["data"])
        return out

    def seqs(self) -> list[int]:
        return [r["attributes"]["seq"]["value"] for r in self.records()]

    def wait(self, cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if self.proc.poll() is not None and not cond():
                break
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what or cond}; stderr:\n{self.err}")

    def wait_subscribed(self, timeout: float = 20.0) -> None:
        self.wait(lambda: "subscribed to" in self.err, timeout, "the subscription")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        for t in self._readers:
            if t.is_alive():
                t.join(5)
        return rc

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself."""
        rc = self.proc.wait(timeout)
        for t in self._readers:
            if t.is_alive():
                t.join(5)
        return rc


@pytest.fixture(autouse=True)
def no_run_left_behind() -> Iterator[None]:
    """No ``spark-sinks run`` outlives its test, even a failed one. (A fixture here, not in
    a conftest.py: the sink's tests import their conftest by that name.) Test modules
    import it to use it."""
    yield
    while Run.started:
        run = Run.started.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
