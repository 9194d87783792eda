"""Small helpers for the core's tests: machine definitions and running the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import yaml

from spark_sinks.config import MachineConfig, build_machines
from spark_sinks.machines import Machine

CLI = [str(Path(sys.executable).with_name("spark-sinks"))]

MACHINES: dict[str, Any] = {
    "press-1": {
        "info": {"name": "press-1", "description": "Hydraulic press"},
        "variables": {
            "temperature": {
                "name": "temperature",
                "description": "Oil temperature",
                "format": "float",
            },
            "count": {"name": "count", "format": "int32"},
        },
    },
    "press-2": {
        "info": {"name": "press-2"},
        "variables": {
            "temperature": {"name": "temperature", "format": "float"},
            "state": {"name": "state", "format": "char"},
        },
    },
    "press-avg": {
        "info": {"name": "press-avg", "hpl": "virtual"},
        "variables": {
            "avg-temp": {
                "name": "avg-temp",
                "format": "float",
                "srcVariables": [{"srcMachine": "press-1", "srcVariable": "temperature"}],
            }
        },
    },
    "hidden": {
        "info": {"name": "hidden"},
        "publishDisabled": True,
        "variables": {"x": {"name": "x", "format": "int8"}},
    },
}


def machines(defs: dict[str, Any] | None = None) -> dict[str, Machine]:
    defs = MACHINES if defs is None else defs
    return build_machines({k: MachineConfig.model_validate(v) for k, v in defs.items()})


def write_config(path: Path, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "host": "gw-test",
        "machines": MACHINES,
        "source": {"type": "ndjson", "path": "-"},
        "sinks": {"out": {"type": "stdout", "format": "json"}},
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(
    *args: str, input: bytes | str | None = None, env: dict[str, str] | None = None, timeout=60
) -> subprocess.CompletedProcess[bytes]:
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(
        [*CLI, *args],
        input=input,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


_METRICS_AT = re.compile(rb"Prometheus metrics on http://[^:]+:(\d+)/metrics")


def metrics_port(stderr: IO[bytes], seen: list[bytes] | None = None) -> int:
    """The port a run started with ``metrics_port: 0`` serves on, read from the line it
    logs. A port chosen by the test and bound later by the run can be taken in between
    by another process; port 0 cannot. Lines read on the way go to ``seen``."""
    for line in iter(stderr.readline, b""):
        if seen is not None:
            seen.append(line)
        found = _METRICS_AT.search(line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"the run never said where its metrics are: {seen}")
