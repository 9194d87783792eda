"""A failing sink or a broken plugin is reported in one line that names it, never as a
bare traceback, and does not take the rest down.

Uses the test distributions in ``tests/plugins/`` installed into a temporary
directory (see ``tests/plugins/__init__.py``).
"""

from __future__ import annotations

import json

import pytest

from tests.plugins import HERE, environ, install, spark_sinks

DISTS = ["spark-sinks-probe", "spark-sinks-broken-import", "spark-sinks-broken-hook"]
N = 12  # records; plus one metadata envelope

CONFIG = """\
host: gw-1
machines:
  press-1:
    variables:
      count: {format: int32}
source: {type: simulator, interval: 0, count: COUNT, seed: 3}
sinks:
""".replace("COUNT", str(N))


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "plugins"
    return install([HERE / d for d in [*DISTS, "spark-sinks-mistakes"]], base)


@pytest.fixture
def probe_env(sites):
    return environ(sites["spark-sinks-probe"])


@pytest.fixture
def broken_env(sites):
    return environ(*(sites[d] for d in DISTS))


def write_config(tmp_path, sinks: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG + sinks)
    return str(path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or "error:" in line]


@pytest.mark.slow
def test_a_sink_failing_in_write_does_not_stop_the_others(probe_env, tmp_path):
    config = write_config(tmp_path, "  out: {type: stdout}\n  bad: {type: failing}\n")
    result = spark_sinks(probe_env, "run", "-c", config)
    delivered = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in delivered] == ["metadata"] + ["record"] * N
    failures = [line for line in result.stderr.splitlines() if "failed in write" in line]
    assert failures[0].endswith(
        "sink 'bad' (failing from spark-sinks-probe) failed in write: "
        "RuntimeError: boom in write; 1 envelopes not delivered"
    )
    assert f"sink 'out': {N + 1} accepted, {N + 1} delivered" in result.stderr
    assert f"sink 'bad': {N + 1} accepted, 0 delivered; {N + 1} NOT delivered" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("step", ["open", "check"])
def test_a_sink_failing_to_start_does_not_stop_the_others(probe_env, tmp_path, step):
    sinks = f"  out: {{type: stdout}}\n  bad: {{type: failing, fail_in: {step}}}\n"
    result = spark_sinks(probe_env, "run", "-c", write_config(tmp_path, sinks))
    delivered = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in delivered] == ["metadata"] + ["record"] * N
    why = f"sink 'bad' (failing from spark-sinks-probe) failed in {step}: RuntimeError: boom"
    [line] = [e for e in error_lines(result.stderr) if "spark_sinks.runtime" in e]
    assert why in line
    assert "Traceback" not in result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize("step", ["open", "check"])
def test_when_no_sink_can_start_the_run_ends_with_one_line_naming_it(probe_env, tmp_path, step):
    sinks = f"  bad: {{type: failing, fail_in: {step}}}\n"
    result = spark_sinks(probe_env, "run", "-c", write_config(tmp_path, sinks))
    assert result.stderr.strip().splitlines() == [
        f"spark-sinks: error: sink 'bad' (failing from spark-sinks-probe) failed in {step}: "
        f"RuntimeError: boom in {step}"
    ]
    assert result.returncode == 1


def every_plugin_config(tmp_path) -> str:
    """Its source type, ``counter``, names no entry point (spark-sinks-probe's is ``probe``),
    so every installed plugin loads, the broken ones too (a config naming only types with
    an entry point of their own never imports the others: tests/test_plugin_loading.py)."""
    path = tmp_path / "config.yaml"
    simulator = f"source: {{type: simulator, interval: 0, count: {N}, seed: 3}}"
    counter = f"source: {{type: counter, machine: press-1, variable: count, count: {N}}}"
    assert simulator in CONFIG
    path.write_text(CONFIG.replace(simulator, counter) + "  out: {type: stdout}\n")
    return str(path)


def test_a_plugin_that_fails_to_import_is_named_and_the_others_still_run(broken_env, tmp_path):
    result = spark_sinks(broken_env, "run", "-c", every_plugin_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == N + 1
    [line] = [e for e in error_lines(result.stderr) if "broken-import" in e]
    assert line.endswith(
        "plugin 'broken-import' (spark-sinks-broken-import) failed to load: ImportError: "
        "spark_sinks_broken_import needs the 'libfrobnicate' library; "
        "set SPARK_SINKS_LOAD_PLUGINS to skip it"
    )
    assert "Traceback" not in result.stderr


def test_a_plugin_whose_hook_raises_is_named_and_the_others_still_run(broken_env, tmp_path):
    result = spark_sinks(broken_env, "run", "-c", every_plugin_config(tmp_path))
    assert result.returncode == 0, result.stderr
    [line] = [e for e in error_lines(result.stderr) if "broken-hook" in e]
    assert line.endswith(
        "plugin 'broken-hook' (spark-sinks-broken-hook) raised in "
        "spark_sinks_register_sink_types: RuntimeError: licence file /etc/frob.lic not found; "
        "set SPARK_SINKS_LOAD_PLUGINS to skip it"
    )
    assert "Traceback" not in result.stderr


def test_plugins_lists_broken_plugins_by_name_and_distribution_and_exits_1(broken_env):
    result = spark_sinks(broken_env, "plugins")
    assert result.returncode == 1
    assert (
        "broken-import (spark-sinks-broken-import 0.0.1): BROKEN: ImportError: "
        "spark_sinks_broken_import needs the 'libfrobnicate' library"
    ) in result.stdout.splitlines()
    assert (
        "broken-hook (spark-sinks-broken-hook 0.0.1): BROKEN: spark_sinks_register_sink_types "
        "raised RuntimeError: licence file /etc/frob.lic not found"
    ) in result.stdout.splitlines()
    hint = "list the plugins to load: SPARK_SINKS_LOAD_PLUGINS="
    assert hint in result.stderr
    assert "Traceback" not in result.stderr
    listing = json.loads(spark_sinks(broken_env, "plugins", "--json").stdout)
    assert sorted(listing["broken"]) == ["broken-hook", "broken-import"]


def test_the_hinted_load_plugins_value_starts_cleanly(broken_env, tmp_path):
    hint = spark_sinks(broken_env, "plugins").stderr.split("SPARK_SINKS_LOAD_PLUGINS=")[1]
    env = {**broken_env, "SPARK_SINKS_LOAD_PLUGINS": hint.strip()}
    result = spark_sinks(env, "run", "-c", write_config(tmp_path, "  out: {type: stdout}\n"))
    assert result.returncode == 0
    assert error_lines(result.stderr) == []
    assert len(result.stdout.splitlines()) == N + 1


def test_a_sink_type_from_a_broken_plugin_names_the_broken_plugins(broken_env, tmp_path):
    result = spark_sinks(broken_env, "run", "-c", write_config(tmp_path, "  f: {type: frob}\n"))
    assert result.returncode == 2
    assert 'sinks.f.type: unknown sink type "frob"' in result.stderr
    assert "plugins that failed to load: broken-hook, broken-import" in result.stderr


def test_hooks_pluggy_would_silently_ignore_are_reported(sites):
    env = environ(sites["spark-sinks-mistakes"])
    result = spark_sinks(env, "plugins", "--json")
    broken = json.loads(result.stdout)["broken"]
    broken.pop("duplicate", None) or broken.pop("stdout")
    broken.pop("badname")
    assert broken == {
        "forgot-hookimpl": "defines spark_sinks_register_sink_types without @hookimpl, "
        "so it is never called",
        "misspelt": "implements unknown hook spark_sinks_register_sink_type "
        "(known: spark_sinks_register_sink_types, spark_sinks_register_sources)",
    }
    assert "Traceback" not in result.stderr


def test_a_sink_type_provided_twice_names_both_plugins(sites):
    env = environ(sites["spark-sinks-mistakes"])
    broken = json.loads(spark_sinks(env, "plugins", "--json").stdout)["broken"]
    clash = {k: v for k, v in broken.items() if k in ("duplicate", "stdout")}
    assert clash in (
        {
            "duplicate": "spark_sinks_register_sink_types raised PluginError: "
            "sink type 'stdout' is already provided by 'stdout'"
        },
        {
            "stdout": "spark_sinks_register_sink_types raised PluginError: "
            "sink type 'stdout' is already provided by 'duplicate'"
        },
    )


def test_a_type_name_outside_letters_digits_and_dots_is_refused_with_its_plugin(sites):
    env = environ(sites["spark-sinks-mistakes"])
    broken = json.loads(spark_sinks(env, "plugins", "--json").stdout)["broken"]
    assert broken["badname"] == (
        "spark_sinks_register_sink_types raised PluginError: sink type 'my sink': a type "
        "name is letters, digits, _ . or - (at most 64 characters)"
    )
