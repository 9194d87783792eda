"""The guide's worked example works as written: the quick-start distribution is taken
from the code blocks of docs/writing-plugins.md, installed, run through the CLI, and its
own tests (also from the guide) pass."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins import environ, install, spark_sinks

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md"
SQLITE = Path(__file__).resolve().parent / "plugins" / "spark-sinks-sqlite"


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M)


@pytest.fixture(scope="module")
def guide_example(tmp_path_factory) -> dict[str, Path]:
    """The quick start's files, exactly as the guide shows them."""
    guide = GUIDE.read_text()
    quick = guide.split("## A sink in five minutes", 1)[1].split("\n## ", 1)[0]
    dist = tmp_path_factory.mktemp("guide") / "spark-sinks-bymachine"
    (dist / "spark_sinks_bymachine").mkdir(parents=True)
    (dist / "tests").mkdir()
    [pyproject] = blocks(quick, "toml")
    (dist / "pyproject.toml").write_text(pyproject)
    module, contract = blocks(quick, "python")
    (dist / "spark_sinks_bymachine" / "__init__.py").write_text(module)
    harness_tests = [b for b in blocks(guide, "python") if "def test_one_file_per_machine" in b]
    (dist / "tests" / "test_bymachine.py").write_text(contract + "\n\n" + harness_tests[0])
    [config] = blocks(quick, "yaml")
    sites = install([dist, SQLITE], dist.parent / "install")
    return {"dist": dist, "site": sites[dist.name], "config": config, "sqlite": sites[SQLITE.name]}


@pytest.mark.slow
def test_the_guide_example_is_listed_by_spark_sinks_plugins(guide_example):
    result = spark_sinks(environ(guide_example["site"]), "plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["bymachine"]["sink_types"] == ["bymachine"]
    assert plugins["bymachine"]["distribution"] == "spark-sinks-bymachine"


def test_the_guide_example_runs_as_the_guide_says(guide_example, tmp_path):
    out = tmp_path / "by-machine"
    config = tmp_path / "bymachine.yaml"
    config.write_text(guide_example["config"].replace("/tmp/by-machine", str(out)))
    env = environ(guide_example["site"])
    check = spark_sinks(env, "check", "-c", str(config))
    assert check.stdout.splitlines() == [
        "config: ok (1 machines, source simulator)",
        f"sink archive: ok (writing {out})",
    ]
    result = spark_sinks(env, "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert len((out / "press-1.jsonl").read_text().splitlines()) == 11  # as the guide shows


@pytest.mark.slow
def test_the_guide_examples_own_tests_pass(guide_example):
    dist = guide_example["dist"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=dist,
        env=environ(guide_example["site"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^12 passed", result.stdout, re.M), result.stdout


SQLITE_CONFIG = """\
host: gw-1
machines:
  press-1:
    variables:
      count: {format: int32}
source: {type: simulator, interval: 0, count: 25, seed: 1}
sinks:
  db: {type: sqlite, path: "PATH", batch_size: 10}
"""


def test_a_second_sink_written_from_the_guide_alone_runs_installed(guide_example, tmp_path):
    """tests/plugins/spark-sinks-sqlite was written following only the guide (a buffered
    sink); its own tests run with the suite, and here it runs installed."""
    site = guide_example["sqlite"]
    db = tmp_path / "spark.db"
    config = tmp_path / "c.yaml"
    config.write_text(SQLITE_CONFIG.replace("PATH", str(db)))
    result = spark_sinks(environ(site), "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "sink 'db': 26 accepted, 26 delivered" in result.stderr
    with sqlite3.connect(db) as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM envelopes ORDER BY id")]
    assert types == ["metadata"] + ["record"] * 25
