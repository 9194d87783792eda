"""A reload that changes the ``operations`` block says that it takes a restart, and the
run keeps the status file and reports it started with, up to its final report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from spark_sinks.config import load_config
from spark_sinks.plugins import load_registry
from spark_sinks.runtime import Runtime

MACHINE = {"m": {"info": {"name": "m"}, "variables": {"v": {"format": "int32"}}}}


def _config(path: Path, operations: dict[str, object]) -> Path:
    cfg = {"host": "gw", "machines": MACHINE, "sinks": {}, "operations": operations}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_reload_changing_operations_says_so_and_the_final_status_is_still_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    status = tmp_path / "status.json"
    config = _config(tmp_path / "c.yaml", {"stats_interval": 0, "status_file": str(status)})
    registry = load_registry()
    rt = Runtime(load_config(config, registry), registry)
    rt.start()
    assert json.loads(status.read_text())["final"] is False
    _config(config, {"stats_interval": 0})  # no status file any more
    with caplog.at_level(logging.WARNING, logger="spark_sinks"):
        assert rt.reload()
    assert "the operations settings changed: that takes a restart to apply" in caplog.text
    rt.shutdown()
    # the file the run started with says it ended (`spark-sinks status`: EXITED)
    assert json.loads(status.read_text())["final"] is True
