"""Install the plugin like a user would and run it through ``spark-sinks run``.

The distribution is installed into a temporary directory (not the running
environment) and put on ``PYTHONPATH`` of a ``spark-sinks`` subprocess: spark-sinks
then finds it through its entry point, exactly as after ``pip install``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DIST = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIG = """\
host: gw-1
machines:
  press-1:
    variables:
      temperature: {format: float}
      count: {format: int32}
source: {type: simulator, interval: 0, count: 40, seed: 7}
sinks:
  archive:
    type: jsonl
    directory: {directory}
    max_bytes: 2000
"""


def pip_install(source: Path, target: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    work = target.parent / f"{source.name}-src"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    if importlib.util.find_spec("wheel"):  # can build here, offline
        cmd.append("--no-build-isolation")
    subprocess.run([*cmd, str(work)], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> dict[str, str]:
    """Environment for a spark-sinks subprocess that has the jsonl plugin installed."""
    target = tmp_path_factory.mktemp("jsonl") / "site"
    pip_install(DIST, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_SINKS_")}
    env["PYTHONPATH"] = str(target)
    return env


def spark_sinks(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "spark-sinks"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_spark_sinks_lists_the_installed_plugin(installed):
    result = spark_sinks(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["jsonl"]["distribution"] == "spark-sinks-jsonl"
    assert plugins["jsonl"]["sink_types"] == ["jsonl"]
    assert plugins["jsonl"]["hooks"] == ["spark_sinks_register_sink_types"]


def test_spark_sinks_run_writes_every_envelope_to_rotating_files(installed, tmp_path):
    out = tmp_path / "archive"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("{directory}", str(out)))
    result = spark_sinks(installed, "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "sink 'archive': 41 accepted, 41 delivered" in result.stderr
    files = sorted(out.glob("spark-*.jsonl"))
    assert len(files) > 1
    lines = [json.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert [line["type"] for line in lines] == ["metadata"] + ["record"] * 40
    assert [line["data"]["attributes"]["count"]["value"] for line in lines[1:]] == list(range(40))
    assert {line["host"] for line in lines} == {"gw-1"}


def test_spark_sinks_check_reports_a_bad_config_by_its_key(installed, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("{directory}", str(tmp_path)).replace("2000", "-5"))
    result = spark_sinks(installed, "check", "-c", str(config))
    assert result.returncode == 2
    assert "sinks.archive.max_bytes: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
