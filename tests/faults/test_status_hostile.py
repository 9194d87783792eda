"""Operations on hostile ground: `spark-sinks status` (run by a monitoring timer) on a
status path holding something that is no file must answer in one line, never wait (a FIFO
used to hang it forever: opening a FIFO for reading waits for a writer); a run started
without a standard output says so in one line; idle connections to the metrics port
cannot add threads without end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from spark_sinks.metrics import MAX_SCRAPES
from tests.faults.spoolkit import StderrLines, wait_until
from tests.faults.test_operations import _scrape, check_status_output, write_config
from tests.helpers import CLI, metrics_port, run_cli


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_status_of_a_path_that_is_no_regular_file_is_one_line_at_once(
    tmp_path: Path, kind: str
) -> None:
    status = tmp_path / "status.json"
    if kind == "fifo":
        os.mkfifo(status)
    elif kind == "device":
        status.symlink_to("/dev/zero")
    else:
        status.mkdir()
    cfg = write_config(tmp_path, status_file=str(status))
    try:
        result = run_cli("status", "-c", str(cfg), timeout=30)  # generous: it must not wait
    except subprocess.TimeoutExpired:
        pytest.fail(f"spark-sinks status hung on a {kind} as its status file")
    check_status_output(result, status)
    assert result.returncode == 1
    assert "not a regular file" in result.stderr.decode() or kind == "directory", result


def test_a_stdout_sink_without_a_standard_output_is_one_readable_line(tmp_path: Path) -> None:
    """Started with descriptor 1 closed (a service unit or a shell's `>&-`). Before: the
    line read "failed in open: AttributeError: 'NoneType' object has no attribute 'buffer'"."""
    cfg = write_config(tmp_path)
    done = subprocess.run(
        [*CLI, "run", "-c", str(cfg)],
        input=b"",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err and "AttributeError" not in err, err
    assert "sink 'out'" in err and "standard output is closed" in err, err


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


@pytest.mark.slow
def test_idle_connections_to_the_metrics_port_add_no_threads_without_end(tmp_path: Path) -> None:
    """A port scanner or a hostile peer opens connections and sends nothing. Before:
    prometheus_client served each in a thread of its own for as long as it stayed open
    (100 idle connections, 100 more threads, none ever closed)."""
    cfg = write_config(tmp_path, metrics_port=0)
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    idle: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        port = metrics_port(proc.stderr)
        err = StderrLines(proc)
        wait_until(lambda: _scrape(port), what="the metrics endpoint")
        base = _threads(proc.pid)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
        for s in idle:
            s.setblocking(False)
        # every connection beyond the bound is closed by the run at once
        wait_until(
            lambda: sum(map(_closed_by_peer, idle)) >= 100 - MAX_SCRAPES,
            timeout=30,
            what="the connections beyond the bound to be closed",
        )
        assert _threads(proc.pid) <= base + MAX_SCRAPES + 2
        for s in idle:
            s.close()
        wait_until(lambda: _scrape(port), what="the metrics endpoint to answer again")
    finally:
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "Traceback" not in err.text
