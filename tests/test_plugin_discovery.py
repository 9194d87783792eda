"""Third-party plugins are found through a real ``spark_sinks`` entry point.

The test distribution ``tests/plugins/spark-sinks-probe`` is pip-installed into a
temporary directory and put on a ``spark-sinks`` subprocess's ``PYTHONPATH``.
"""

from __future__ import annotations

import json

import pytest

from tests.plugins import HERE, environ, install, spark_sinks

CONFIG = """\
host: gw-1
machines:
  press-1:
    variables:
      count: {format: int32}
source: {type: counter, machine: press-1, variable: count, count: 5}
sinks:
  out: {type: probe, path: "PATH"}
"""


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory):
    sites = install([HERE / "spark-sinks-probe"], tmp_path_factory.getbasetemp() / "plugins")
    return environ(sites["spark-sinks-probe"])


@pytest.mark.slow
def test_plugins_lists_an_installed_plugin_with_its_hooks_and_types(probe_env):
    result = spark_sinks(probe_env, "plugins")
    assert result.returncode == 0, result.stderr
    block = result.stdout.split("probe (spark-sinks-probe 0.0.1)\n", 1)[1].split("\n")[:3]
    assert block == [
        "  sink types:   failing, probe",
        "  source types: counter",
        "  hooks:        spark_sinks_register_sink_types, spark_sinks_register_sources",
    ]
    assert "BROKEN" not in result.stdout


def test_plugins_json_describes_each_plugin(probe_env):
    result = spark_sinks(probe_env, "plugins", "--json")
    listing = json.loads(result.stdout)
    probe = next(p for p in listing["plugins"] if p["name"] == "probe")
    assert probe == {
        "name": "probe",
        "distribution": "spark-sinks-probe",
        "version": "0.0.1",
        "hooks": ["spark_sinks_register_sink_types", "spark_sinks_register_sources"],
        "sink_types": ["failing", "probe"],
        "source_types": ["counter"],
    }
    assert listing["broken"] == {}


def test_run_delivers_through_sink_and_source_types_of_an_installed_plugin(probe_env, tmp_path):
    out = tmp_path / "out.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("PATH", str(out)))
    result = spark_sinks(probe_env, "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["metadata"] + ["record"] * 5
    values = [line["data"]["attributes"]["count"]["value"] for line in lines[1:]]
    assert values == [0, 1, 2, 3, 4]
    assert "sink 'out': 6 accepted, 6 delivered" in result.stderr


def test_without_the_plugin_installed_its_sink_type_is_unknown(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("PATH", str(tmp_path / "out")))
    result = spark_sinks(environ(), "run", "-c", str(config))
    assert result.returncode == 2
    assert 'source.type: unknown source type "counter"' in result.stderr


@pytest.mark.parametrize("pin", ["probe", "spark-sinks-probe"])
def test_load_plugins_loads_only_the_named_entry_points_or_distributions(probe_env, pin):
    env = {**probe_env, "SPARK_SINKS_LOAD_PLUGINS": pin}
    listing = json.loads(spark_sinks(env, "plugins", "--json").stdout)
    assert [p["name"] for p in listing["plugins"]] == ["probe", "spark_sinks.sources"]


def test_an_empty_load_plugins_loads_no_third_party_plugin(probe_env):
    env = {**probe_env, "SPARK_SINKS_LOAD_PLUGINS": ""}
    listing = json.loads(spark_sinks(env, "plugins", "--json").stdout)
    assert [p["name"] for p in listing["plugins"]] == ["spark_sinks.sources"]


def test_a_sources_odd_counters_are_left_out_and_named_once_not_a_damaged_status(
    probe_env, tmp_path
):
    status = tmp_path / "status.json"
    config = tmp_path / "c.yaml"
    text = CONFIG.replace("PATH", str(tmp_path / "out.jsonl"))
    text = text.replace("count: 5}", "count: 5, odd_counters: true}")
    config.write_text(text + f"operations: {{status_file: {status}}}\n")
    result = spark_sinks(probe_env, "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    refused = [line for line in result.stderr.splitlines() if "counters left out" in line]
    assert len(refused) == 1, result.stderr
    for name in ("per/second", "negative", "ratio", "x" * 65):
        assert name in refused[0], refused
    assert json.loads(status.read_text())["input"]["source"] == {"points": 5}
    shown = spark_sinks(probe_env, "status", "-c", str(config))
    assert "damaged" not in shown.stdout + shown.stderr
    assert "points" in shown.stdout + shown.stderr
