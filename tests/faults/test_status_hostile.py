"""Operations on hostile ground: `spark-sinks status` (run by a monitoring timer) on a
status path holding something that is no file must answer in one line, never wait (a FIFO
used to hang it forever: opening a FIFO for reading waits for a writer); a run started
without a standard output says so in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.test_operations import check_status_output, write_config
from tests.helpers import CLI, run_cli


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
