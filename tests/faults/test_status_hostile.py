"""`spark-sinks status` (run by a monitoring timer) on a status path holding something
that is no file: it must answer in one line, never wait. A FIFO used to hang it forever:
opening a FIFO for reading waits for a writer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.test_operations import check_status_output, write_config
from tests.helpers import run_cli


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
