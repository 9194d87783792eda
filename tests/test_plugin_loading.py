"""A run, check or reload loads only the plugins its config names (see
``spark_sinks/plugins.py``): a plugin the config does not use is never imported.

Which plugin modules a ``spark-sinks`` subprocess imported is read from its own
``sys.modules`` as it exits (``-X importtime`` cannot tell: entry points are loaded
through ``importlib.import_module``, which it does not log). The test distributions
in ``tests/plugins/`` are installed as in the other plugin tests; ``spark-sinks-probe``'s
entry point is ``probe`` and provides the sink types ``probe`` and ``failing`` and the
source type ``counter``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from tests.plugins import HERE, ROOT, environ, install, spark_sinks
from tests.test_reload import Running, config, is_record, record

DISTS = ["spark-sinks-probe", "spark-sinks-broken-import", "spark-sinks-broken-hook"]
PLUGIN_MODULES = {
    "spark_sinks_probe",
    "spark_sinks_broken_import",
    "spark_sinks_broken_hook",
    "spark_sinks_kinesis",
    "spark_sinks_mqtt_sink",
    "spark_sinks_mqtt_source",
    "spark_sinks_stdout",
}
SIMULATOR = {"type": "simulator", "interval": 0, "count": 3, "seed": 1}
MACHINES = {"press-1": {"variables": {"count": {"format": "int32"}}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sites = install([HERE / d for d in DISTS], tmp_path_factory.getbasetemp() / "plugins")
    return environ(*(sites[d] for d in DISTS))


def write(tmp_path, source, sinks):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"machines": MACHINES, "source": source, "sinks": sinks}))
    return str(path)


# The console script's own entry function, and the modules loaded when it exits.
RECORDING = """\
import atexit, sys
record = lambda: sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n")
atexit.register(record)
from spark_sinks.cli import main
main()
"""


def modules_at_exit(env, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``spark-sinks ARGS``, and every module it had imported when it exited."""
    result = subprocess.run(
        [sys.executable, "-c", RECORDING, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("MODULES ")]
    return result, set(line.split()[1:])


def traced(env, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``spark-sinks ARGS``, and the plugin modules it had imported when it exited."""
    result, modules = modules_at_exit(env, *args)
    return result, modules & PLUGIN_MODULES


def test_a_stdout_config_imports_no_other_plugin_and_meets_no_broken_one(env, tmp_path):
    result, imported = traced(
        env, "run", "-c", write(tmp_path, SIMULATOR, {"out": {"type": "stdout"}})
    )
    assert result.returncode == 0, result.stderr
    assert imported == {"spark_sinks_stdout"}
    assert len(result.stdout.splitlines()) == 4  # metadata and 3 records
    assert " ERROR " not in result.stderr and "Traceback" not in result.stderr


def test_check_imports_only_the_plugins_of_its_config(env, tmp_path):
    result, imported = traced(
        env,
        "check",
        "-c",
        write(tmp_path, SIMULATOR, {"p": {"type": "probe", "path": str(tmp_path / "p")}}),
    )
    assert result.returncode == 0, result.stderr
    assert imported == {"spark_sinks_probe"}


def test_a_type_from_an_entry_point_named_otherwise_still_works(env, tmp_path):
    counter = {"type": "counter", "machine": "press-1", "variable": "count", "count": 3}
    result, imported = traced(
        env, "run", "-c", write(tmp_path, counter, {"out": {"type": "stdout"}})
    )
    assert result.returncode == 0, result.stderr
    values = [json.loads(line)["data"] for line in result.stdout.splitlines()[1:]]
    assert [v["attributes"]["count"]["value"] for v in values] == [0, 1, 2]
    # 'counter' names no entry point: every plugin loads, the broken ones are named
    assert imported == PLUGIN_MODULES - {"spark_sinks_broken_import"}  # it failed
    assert "plugin 'broken-import' (spark-sinks-broken-import) failed to load" in result.stderr
    assert "plugin 'broken-hook' (spark-sinks-broken-hook) raised in" in result.stderr


def test_an_unknown_type_still_lists_every_installed_type(env, tmp_path):
    sinks = {"out": {"type": "stdout"}, "f": {"type": "frob"}}
    result = spark_sinks(env, "run", "-c", write(tmp_path, SIMULATOR, sinks))
    assert result.returncode == 2
    [line] = [ln for ln in result.stderr.splitlines() if "unknown sink type" in ln]
    assert line.endswith(
        'sinks.f.type: unknown sink type "frob" (known: failing, kinesis, mqtt, probe, '
        "stdout); plugins that failed to load: broken-hook, broken-import"
    )


def test_load_plugins_still_pins_what_may_load(env, tmp_path):
    pinned = {**env, "SPARK_SINKS_LOAD_PLUGINS": "stdout"}
    sinks = {"p": {"type": "probe", "path": str(tmp_path / "p")}}
    result, imported = traced(pinned, "run", "-c", write(tmp_path, SIMULATOR, sinks))
    assert result.returncode == 2
    assert 'unknown sink type "probe" (known: stdout)' in result.stderr
    assert imported == {"spark_sinks_stdout"}


def test_a_reload_can_add_a_sink_of_a_plugin_not_loaded_yet(env, tmp_path):
    path = tmp_path / "c.yaml"
    out = tmp_path / "probe.jsonl"
    path.write_text(yaml.safe_dump(config({"a": {"type": "stdout"}})))
    run = Running(path, env=env)
    try:
        run.send(record(1))
        run.take_until(is_record(1))
        sinks = {"a": {"type": "stdout"}, "p": {"type": "probe", "path": str(out)}}
        path.write_text(yaml.safe_dump(config(sinks)))
        run.proc.send_signal(signal.SIGHUP)
        run.wait_log("reload applied")
        run.send(record(2))
        run.take_until(is_record(2))
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.stderr_text
    probed = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(is_record(2)(e) for e in probed), probed
    assert "sink 'p': " in run.stderr_text


# Imported only by what needs them: a run without metrics, status file reading, Kinesis
# or Sparkplug pays for none of them.
HEAVY = {
    "prometheus_client": "metrics_port set",
    "urllib.request": "metrics_port set and taken (is it our own endpoint?)",
    "spark_sinks.status": "spark-sinks status",
    "botocore": "a kinesis sink",
    "google.protobuf": "Sparkplug B (mqtt format: sparkplug_b, or a Sparkplug source)",
    "spark_sinks_sparkplug.codec": "Sparkplug B",
}


def test_a_stdout_run_imports_nothing_heavy_it_does_not_use(env, tmp_path):
    result, modules = modules_at_exit(
        env, "run", "-c", write(tmp_path, SIMULATOR, {"out": {"type": "stdout"}})
    )
    assert result.returncode == 0, result.stderr
    assert {m: why for m, why in HEAVY.items() if m in modules} == {}


def test_the_mqtt_plugins_with_json_import_no_sparkplug_codec(tmp_path):
    """Their modules, and an MQTT sink configured for JSON (its config validated, the sink
    built); the sparkplug package's names still import from where they always did."""
    probe = """\
import sys
import spark_sinks_mqtt_sink, spark_sinks_mqtt_source
from spark_sinks_mqtt_sink import MqttSink, MqttSinkConfig
from spark_sinks import SinkContext
cfg = MqttSinkConfig(type="mqtt", host="127.0.0.1", port=1)
sink = MqttSink(cfg, SinkContext("m", "gw"))
print(sorted(m for m in sys.modules if m.startswith(("google.protobuf", "spark_sinks_sparkplug"))))
from spark_sinks_sparkplug import SparkplugError, decode
print(decode.__module__, SparkplugError.__module__)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    loaded, public = result.stdout.splitlines()
    assert "google.protobuf" not in loaded and "spark_sinks_sparkplug.codec" not in loaded
    assert public == "spark_sinks_sparkplug.codec spark_sinks_sparkplug.errors"


def test_import_spark_sinks_alone_is_light_and_every_public_name_still_imports():
    probe = """\
import sys
import spark_sinks
print(sorted(m for m in ("pydantic", "orjson", "pluggy", "spark_sinks.sink") if m in sys.modules))
import importlib
homes = [importlib.import_module("spark_sinks." + m) for m in
         ("envelope", "errors", "hookspecs", "sink", "sources")]
for name in spark_sinks.__all__:
    value = getattr(spark_sinks, name)
    if name != "__version__":
        assert any(value is getattr(h, name, object()) for h in homes), name
star = {}
exec("from spark_sinks import *", star)
assert set(spark_sinks.__all__) <= set(star), set(spark_sinks.__all__) - set(star)
print(spark_sinks.sink.Sink is spark_sinks.Sink, hasattr(spark_sinks, "nothing"))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True False"]
