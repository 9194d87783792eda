"""The CLI end to end, as a subprocess: NDJSON in, envelopes out on stdout, logs on stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import CLI, MACHINES, run_cli, write_config


def envelopes(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def test_readme_example_prints_metadata_then_the_record(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    result = run_cli(
        "run",
        "-c",
        str(cfg),
        input='{"machine":"press-1","values":{"temperature":1.5,"count":3}}\n',
    )
    assert result.returncode == 0, result.stderr
    out = envelopes(result.stdout)
    assert [(e["type"], e["data"].get("machine") or e["data"]["info"]["name"]) for e in out] == [
        ("metadata", "press-1"),
        ("metadata", "press-2"),
        ("metadata", "press-avg"),
        ("record", "press-1"),
    ]
    record = out[-1]
    assert record["host"] == "gw-test"
    assert record["data"]["attributes"]["count"] == {"name": "count", "format": "int32", "value": 3}
    assert "sink 'out': 4 accepted, 4 delivered" in result.stderr.decode()


def test_bad_lines_are_reported_and_everything_else_goes_through(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    cfg = write_config(
        tmp_path / "c.yaml", source={"type": "ndjson", "path": "-", "dead_letter": str(rejects)}
    )
    lines = [
        '{"machine":"press-1","values":{"temperature":1.0,"count":1}}',
        "{not json",
        '{"machine":"ghost","values":{"x":1}}',
        '{"machine":"press-1","variable":"count","value":"three"}',
        "",
        '{"machine":"press-2","variable":"temperature","value":2.5}',
        '{"machine":"press-2","variable":"state","value":"run"}',
    ]
    result = run_cli("run", "-c", str(cfg), input="\n".join(lines) + "\n")
    err = result.stderr.decode()
    assert result.returncode == 3, err  # delivered, but input was rejected
    records = [e for e in envelopes(result.stdout) if e["type"] == "record"]
    assert [r["data"]["machine"] for r in records] == ["press-1", "press-2"]
    assert "stdin line 2: invalid JSON" in err
    assert 'stdin line 3: unknown machine "ghost"' in err
    assert 'stdin line 4: press-1.count: "three" is not a valid int32' in err
    assert "Traceback" not in err
    dead = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [d["where"] for d in dead] == ["stdin line 2", "stdin line 3", "stdin line 4"]
    assert dead[0]["line"] == "{not json"
    assert dead[1]["item"] == {"machine": "ghost", "values": {"x": 1}}


def test_file_source_without_trailing_newline_reads_the_last_line(tmp_path):
    data = tmp_path / "in.ndjson"
    data.write_text(
        '{"machine":"press-1","values":{"temperature":1.0,"count":1}}\n'
        '{"machine":"press-1","values":{"temperature":2.0,"count":2}}'
    )
    cfg = write_config(tmp_path / "c.yaml", source={"type": "ndjson", "path": str(data)})
    result = run_cli("run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    records = [e for e in envelopes(result.stdout) if e["type"] == "record"]
    assert [r["data"]["attributes"]["count"]["value"] for r in records] == [1, 2]


def test_missing_input_file_is_one_clear_line(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", source={"type": "ndjson", "path": "nope.ndjson"})
    result = run_cli("run", "-c", str(cfg))
    err = result.stderr.decode()
    assert result.returncode == 2
    assert 'source.path: input file "nope.ndjson" does not exist' in err
    assert "Traceback" not in err


def test_sigterm_flushes_and_exits_cleanly_while_stdin_is_still_open(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write(b'{"machine":"press-1","values":{"temperature":1.0,"count":7}}\n')
    proc.stdin.flush()
    # wait until the record is out, proving the process runs, then signal it
    deadline = time.monotonic() + 20
    seen = b""
    while b'"record"' not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stdout.fileno(), 65536)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert b'"value":7' in seen
    assert b"SIGTERM received" in err


def test_simulator_feeds_the_stdout_sink(tmp_path):
    cfg = write_config(
        tmp_path / "c.yaml", source={"type": "simulator", "interval": 0, "count": 5, "seed": 1}
    )
    result = run_cli("run", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    records = [e for e in envelopes(result.stdout) if e["type"] == "record"]
    # three publishing machines, five cycles each; the disabled one is silent
    assert len(records) == 15
    assert {r["data"]["machine"] for r in records} == {"press-1", "press-2", "press-avg"}


def test_version_and_help(tmp_path):
    assert run_cli("--version").stdout.decode().startswith("spark-sinks, version ")
    for cmd in ([], ["run"], ["check"], ["plugins"]):
        result = run_cli(*cmd, "--help")
        assert result.returncode == 0
        assert b"Usage:" in result.stdout


def _pydantic_plugins_setting(extra: dict[str, str]) -> str:
    """PYDANTIC_DISABLE_PLUGINS as the command's process has it once its models are built."""
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"} | extra
    probe = (
        "import os, sys, spark_sinks.cli\n"
        "sys.stdout.write(os.environ.get('PYDANTIC_DISABLE_PLUGINS', '<unset>'))"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_the_command_skips_pydantic_plugins_unless_the_user_set_the_variable():
    # pydantic's scan for its own plugins costs every start about 30 ms; the user's choice,
    # even an empty one (load them all), is kept
    assert _pydantic_plugins_setting({}) == "__all__"
    assert _pydantic_plugins_setting({"PYDANTIC_DISABLE_PLUGINS": ""}) == ""
    assert _pydantic_plugins_setting({"PYDANTIC_DISABLE_PLUGINS": "logfire"}) == "logfire"


def test_items_of_disabled_machines_are_counted_in_the_summary_not_rejected(tmp_path):
    # a machine disabled by mistake must show: its data is set aside without an error,
    # and the summary counts it (before, the count existed but was reported nowhere)
    machines = json.loads(json.dumps(MACHINES))
    machines["press-2"]["enable"] = False
    cfg = write_config(tmp_path / "c.yaml", machines=machines)
    lines = [
        {"machine": "press-2", "variable": "state", "value": "x"},
        {"machine": "hidden", "values": {"x": 1}},
        {"machine": "press-1", "values": {"temperature": 1.5, "count": 2}},
        {"machine": "press-2", "values": {"temperature": 1.0, "state": "y"}},
    ]
    proc = run_cli("run", "-c", str(cfg), input="".join(json.dumps(x) + "\n" for x in lines))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "input: 4 items, " in err and ", 0 rejected, " in err
    assert "3 items of disabled machines ignored" in err
    records = [json.loads(x) for x in proc.stdout.splitlines() if b'"record"' in x]
    assert [r["data"]["machine"] for r in records] == ["press-1"]
