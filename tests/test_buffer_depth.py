"""The memory buffer's depth is visible: a real `spark-sinks run` whose stdout sink writes
into a pipe nobody reads fills its buffer; the status file, `spark-sinks status` and the
Prometheus endpoint then show the same envelopes and bytes queued, as part of `pending`,
and once the pipe is read, the buffer empties and everything is delivered."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import CLI, run_cli, write_config

LINE = b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n'
N = 3000
"""About 500 kB of envelopes: more than the stdout pipe, the buffer and a batch together."""
MAX_BYTES = 32 * 1024


def sink_status(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads(path.read_bytes())["sinks"].get("out")  # type: ignore[no-any-return]
    except (OSError, orjson.JSONDecodeError, KeyError):
        return None


def wait_until_still(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The sink's status once its buffer holds envelopes and two status files in a row
    agree: the sink is stuck in its write and the source waits for buffer space."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        now = sink_status(path)
        if now and now.get("buffer_envelopes") and now == last:
            return now
        last = now
        time.sleep(0.3)
    raise AssertionError(f"the buffer never filled: {last}")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^(spark_sinks_\w+)\{sink="out"\} (\S+)$', text, re.MULTILINE)
    }


def test_a_full_memory_buffer_shows_in_the_status_file_status_and_metrics(tmp_path):
    status = tmp_path / "status.json"
    sinks = {
        "out": {
            "type": "stdout",
            "buffer": {"type": "memory", "max_bytes": MAX_BYTES, "when_full": "block"},
        }
    }
    operations = {"status_file": str(status), "stats_interval": 0.1, "metrics_port": 0}
    cfg = write_config(tmp_path / "c.yaml", sinks=sinks, operations=operations)
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [*CLI, "run", "-c", str(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # read by nobody until the end: the sink's write blocks
            stderr=err,
        )
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:  # the source waits for buffer space: fed from a thread of its own
        stdin.write(LINE * N)
        stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        stuck = wait_until_still(status)
        port = int(re.search(rb"metrics on http://[\d.]+:(\d+)/", err_path.read_bytes())[1])
        seen = metrics(port)
        said = run_cli("status", "-c", str(cfg)).stdout.decode()

        queued, size = stuck["buffer_envelopes"], stuck["buffer_bytes"]
        # a part of pending, the rest being the batch stuck in the sink's write
        assert 0 < queued < stuck["pending"], stuck
        # the bound holds (only an empty buffer takes a batch, of up to 500, beyond it)
        assert 0 < size <= MAX_BYTES or queued <= 500, stuck
        assert stuck["accepted"] == stuck["delivered"] + stuck["pending"], stuck
        assert seen["spark_sinks_buffer_envelopes"] == queued, seen
        assert seen["spark_sinks_buffer_bytes"] == size, seen
        assert seen["spark_sinks_pending"] == stuck["pending"], seen
        assert f"{queued} in the memory buffer ({size:,} bytes)" in said, said

        # the pipe is read: the sink delivers, the buffer empties, the input ends
        out = proc.stdout.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == 0, err_path.read_text()
    assert len(out.splitlines()) == N + 3  # and the metadata of three machines
    final = sink_status(status)
    assert final is not None and final["delivered"] == N + 3 and final["pending"] == 0, final
