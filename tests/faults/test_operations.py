"""Operational faults and the operator's commands, each against a real `spark-sinks`
subprocess: damaged status files of every shape (hypothesis), what `status` says after a
clean exit, the global options after the subcommand, and `check` printing each verdict once.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spark_sinks.cli import main
from tests.helpers import CLI, MACHINES, metrics_port, run_cli
from tests.support.moto_server import FAKE_CREDENTIALS
from tests.support.streams import new_stream

HEADLINES = ("OK: ", "PROBLEM: ", "STALE: ", "EXITED: ")


def write_config(tmp: Path, sinks: dict[str, Any] | None = None, **operations: Any) -> Path:
    path = tmp / "c.yaml"
    cfg = {
        "host": "gw",
        "machines": MACHINES,
        "sinks": sinks or {"out": {"type": "stdout"}},
        "operations": operations,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def good_status(now: float) -> dict[str, Any]:
    sink = {
        "accepted": 10,
        "delivered": 10,
        "retried": 0,
        "dead_lettered": 0,
        "dropped": 0,
        "failed": 0,
        "pending": 0,
        "last_error": None,
        "spool_depth": None,
        "last_delivery_at": now,
    }
    return {
        "pid": 4242,
        "input": {
            "items": 10,
            "envelopes": 10,
            "rejected": 0,
            "incomplete_dropped": 0,
            "source": {"rebirth_requests": 1, "acknowledged_early": 0},
            "source_type": "mqtt",
        },
        "sinks": {"out": sink},
        "time": now,
        "interval": 5.0,
        "final": False,
    }


def check_status_output(result: Any, status: Path) -> None:
    """Whatever the file holds: exit 0 or 1, and either one error line naming the file or a
    verdict whose headline no line contradicts."""
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode in (0, 1), (out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if err:
        assert result.returncode == 1 and not out, (out, err)
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"spark-sinks: error: {status}: "), err
        return
    assert max(map(len, out.splitlines())) < 500, out[:3000]  # no 300-digit "seconds ago"
    head = out.splitlines()[0]
    assert head.startswith(HEADLINES), out
    assert (result.returncode == 0) == head.startswith("OK: "), out
    if head.startswith(("EXITED", "STALE")):
        assert "flowing" not in out, out
    if head.startswith("OK"):
        assert "STALLED" not in out and "LOST" not in out, out


# -- status ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A status file as a crash, a bug or an operator might leave it: any JSON, random bytes,
    or a real status with one key removed or replaced by any JSON value."""
    kind = draw(st.sampled_from(["json", "bytes", "mutated", "mutated", "mutated"]))
    if kind == "json":
        return orjson.dumps(draw(json_values))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    snap = good_status(time.time())
    node: Any = snap
    keys = [draw(st.sampled_from(sorted(snap)))]
    while isinstance(node[keys[-1]], dict) and node[keys[-1]] and draw(st.booleans()):
        node = node[keys[-1]]
        keys.append(draw(st.sampled_from(sorted(node))))
    if draw(st.booleans()):
        del node[keys[-1]]
    else:
        node[keys[-1]] = draw(json_values)
    return orjson.dumps(snap)


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


def status_in_process(cfg: Path) -> Result:
    """`spark-sinks status` through the same entry point, in this process: a subprocess
    costs up to 2 s on a loaded machine, too much for hundreds of generated files."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["spark-sinks", "status", "-c", str(cfg)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
        gc.enable()  # main() turns it off for its own start-up
    return Result(code, out.getvalue().encode(), err.getvalue().encode())


def status_of(tmp: Path, content: bytes, run: Callable[[Path], Any]) -> None:
    status = tmp / "status.json"
    status.write_bytes(content)
    check_status_output(run(write_config(tmp, status_file=str(status))), status)


FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # tmp_path is reused: each file rewrites it


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURE_OK)
@given(content=damaged())
def test_status_of_any_damaged_file_is_one_clear_line_and_exit_0_or_1(tmp_path, content):
    status_of(tmp_path, content, lambda cfg: run_cli("status", "-c", str(cfg)))


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(content=damaged())
@example(  # found in CI: a sink named "\x85" split the error line in two
    content=b'{"pid":4242,"input":{"items":10,"envelopes":10,"rejected":0,"incomplete_dropped":0},'
    b'"sinks":{"\xc2\x85":null},"time":1796315455.4,"interval":5.0,"final":false}'
)
def test_status_of_many_damaged_files_in_process(tmp_path, content):
    status_of(tmp_path, content, status_in_process)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"pid": 1}', "time: required key is missing"),
        (orjson.dumps({**good_status(0), "sinks": {"out": {"accepted": "10"}}}), "sinks.out"),
        (orjson.dumps({**good_status(0), "pid": True}), "pid: Input should be a valid integer"),
        (
            orjson.dumps(
                good_status(0) | {"input": {"items": 1, "rejected": 0, "source": {"x": -1}}}
            ),
            "input.source.x: Input should be greater than or equal to 0",
        ),
        (
            orjson.dumps(
                good_status(0) | {"input": {"items": 1, "rejected": 0, "source_type": "a\nOK: b"}}
            ),
            "input.source_type: String should match pattern",
        ),
        # before: "STALE: ...; last status 1000000000000000010979063629440455417404923096773
        # (300 digits)s ago"; a time outside the years 1970 to 9999 is no status file's
        (orjson.dumps({**good_status(-1e308)}), "time: Input should be greater than or equal"),
        (orjson.dumps({**good_status(1e308)}), "time: Input should be less than or equal"),
        (orjson.dumps({**good_status(2**64 - 1)}), "time: Input should be less than or equal"),
    ],
)
def test_status_names_what_is_wrong_with_a_damaged_file(tmp_path, content, says):
    status = tmp_path / "status.json"
    status.write_bytes(content)
    result = run_cli("status", "-c", str(write_config(tmp_path, status_file=str(status))))
    check_status_output(result, status)
    assert result.returncode == 1
    assert "damaged status file" in result.stderr.decode() and says in result.stderr.decode()


def test_status_of_a_missing_and_of_a_stale_file(tmp_path):
    status = tmp_path / "status.json"
    cfg = write_config(tmp_path, status_file=str(status))
    result = run_cli("status", "-c", str(cfg))
    check_status_output(result, status)
    assert "no status file yet; is spark-sinks running?" in result.stderr.decode()

    status.write_bytes(orjson.dumps(good_status(time.time() - 3600)))
    result = run_cli("status", "-c", str(cfg))
    check_status_output(result, status)
    out = result.stdout.decode()
    assert out.startswith("STALE: pid 4242") and "last known" in out, out


@pytest.mark.parametrize("ahead", [60.0, 86_400.0 * 365])
def test_a_status_file_dated_in_the_future_is_stale_not_ok(tmp_path, ahead):
    """A gateway's clock set back (an NTP correction after it ran ahead): the file of a run
    that has since died is dated in the future. Before: "OK ... flowing", exit 0, until
    the clock caught up; a live run rewrites the file within one interval."""
    status = tmp_path / "status.json"
    status.write_bytes(orjson.dumps(good_status(time.time() + ahead)))
    result = status_in_process(write_config(tmp_path, status_file=str(status)))
    check_status_output(result, status)
    out = result.stdout.decode()
    assert result.returncode == 1 and out.startswith("STALE: "), out
    assert "in the future" in out.splitlines()[0], out


def test_status_without_a_status_file_exits_1_as_the_readme_says(tmp_path):
    result = run_cli("status", "-c", str(write_config(tmp_path)))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert len(err.splitlines()) == 1 and "operations.status_file is not set" in err


def test_status_after_a_clean_exit_says_exited_with_the_final_counts(tmp_path):
    status = tmp_path / "status.json"
    cfg = write_config(tmp_path, status_file=str(status), stats_interval=0.2)
    line = b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n'
    done = run_cli("run", "-c", str(cfg), input=line * 4)
    assert done.returncode == 0, done.stderr.decode()
    result = run_cli("status", "-c", str(cfg))
    check_status_output(result, status)
    out = result.stdout.decode()
    assert out.startswith("EXITED: pid ") and "input 4 items" in out, out
    assert "sink out: all delivered; 7 accepted, 7 delivered" in out, out


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--log-format", "json", "run", "-c", "CFG"],
        ["run", "-c", "CFG", "--log-format", "json"],
        ["run", "--log-format", "json", "-c", "CFG"],
        [
            "--log-format",
            "text",
            "--log-level",
            "ERROR",
            "run",
            "-c",
            "CFG",
            "--log-format",
            "json",
            "--log-level",
            "INFO",
        ],
    ],
)
def test_global_options_work_before_and_after_the_subcommand(tmp_path, args):
    cfg = write_config(tmp_path)
    line = b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n'
    result = run_cli(*[str(cfg) if a == "CFG" else a for a in args], input=line)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stderr.decode().splitlines()
    assert any("sink 'out': 4 accepted, 4 delivered" in json.loads(x)["message"] for x in lines)


def test_a_later_log_level_overrides_the_global_one(tmp_path):
    cfg = write_config(tmp_path)
    result = run_cli("--log-level", "INFO", "check", "-c", str(cfg), "--log-level", "ERROR")
    assert result.returncode == 0
    assert result.stderr == b""


def test_check_prints_each_sinks_verdict_once(tmp_path, moto):
    stream = new_stream(moto.client("kinesis"), 1)
    sinks = {
        "out": {"type": "stdout"},
        "cloud": {
            "type": "kinesis",
            "stream_name": stream,
            "region": "us-east-1",
            "endpoint_url": moto.url,
        },
    }
    env = {**FAKE_CREDENTIALS, "SPARK_SINKS_LOAD_PLUGINS": "stdout,kinesis"}
    result = run_cli("check", "-c", str(write_config(tmp_path, sinks)), env=env)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    assert out.count("sink cloud: ok") == 1 and out.count("sink out: ok") == 1, out
    # the verdicts are on stdout; the log repeats neither of them
    assert stream not in err and "ready" not in err, err


# -- operational faults: refused before any data is accepted, or survived -----------------

LINE = b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n'


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def assert_refused_before_data(result: Any, *needles: str) -> None:
    """Exit 2, one line on stderr naming the problem, nothing delivered."""
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spark-sinks: error: ") and all(n in err for n in needles), err
    assert result.stdout in (b"", b"config: ok"), result.stdout  # no envelope went out


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_metrics_port_in_use_is_refused_before_any_data(tmp_path, busy_port, command):
    cfg = write_config(tmp_path, metrics_port=busy_port)
    result = run_cli(command, "-c", str(cfg), input=LINE * 3)
    assert_refused_before_data(result, "operations.metrics_port", str(busy_port), "in use")


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_an_unwritable_status_file_is_refused_before_any_data(tmp_path, command, where):
    blocker = tmp_path / "blocker"
    if where == "under a file":  # even root cannot create a file below a regular file
        blocker.write_text("")
        status = blocker / "run" / "status.json"
    else:
        status = blocker
        status.mkdir()
    cfg = write_config(tmp_path, status_file=str(status))
    result = run_cli(command, "-c", str(cfg), input=LINE * 3)
    assert_refused_before_data(result, "operations.status_file", str(status))


def test_check_accepts_the_metrics_port_of_a_running_spark_sinks(tmp_path):
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(write_config(tmp_path / "run", metrics_port=0))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        port = metrics_port(proc.stderr)
        wait_until(lambda: _port_answers(port))
        result = run_cli("check", "-c", str(write_config(tmp_path, metrics_port=port)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert result.returncode == 0, result.stderr.decode()
    assert f"metrics port {port} is served by a running spark-sinks" in result.stdout.decode()


def test_a_status_file_that_becomes_unwritable_mid_run_never_stops_delivery(tmp_path):
    run_dir = tmp_path / "run"
    status = run_dir / "status.json"
    cfg = write_config(tmp_path, status_file=str(status), stats_interval=0.1, metrics_port=0)
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    seen: list[bytes] = []
    port = metrics_port(proc.stderr, seen)
    proc.stdin.write(LINE * 5)
    proc.stdin.flush()
    wait_until(lambda: status.exists() and orjson.loads(status.read_bytes())["input"]["items"] == 5)
    shutil.rmtree(run_dir)
    run_dir.write_text("now a file: the status file cannot be written, not even by root")
    wait_until(lambda: _scrape(port).get("spark_sinks_status_write_errors_total", 0) >= 2)
    out, err = proc.communicate(LINE * 5, timeout=30)
    text = b"".join([*seen, err]).decode()
    assert proc.returncode == 0, text  # everything was delivered
    assert len(out.splitlines()) == 3 + 10  # the metadata of 3 machines, then 10 records
    assert "sink 'out': 13 accepted, 13 delivered" in text
    complaints = [x for x in text.splitlines() if "cannot write the status file" in x]
    assert len(complaints) == 1 and "ERROR" in complaints[0], text
    assert "Traceback" not in text and "internal error" not in text, text


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    rows = (line.rsplit(" ", 1) for line in text.decode().splitlines() if line[:1] != "#")
    return {k: float(v) for k, v in rows}


def _port_answers(port: int) -> bool:
    return bool(_scrape(port))


def wait_until(what: Callable[[], Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_status_counts_a_corrupt_spool_as_lost_envelopes(tmp_path):
    snap = good_status(time.time())
    snap["sinks"]["out"].update(corrupt_spools=1, lost_in_corrupt_spool=7)
    status = tmp_path / "status.json"
    status.write_bytes(orjson.dumps(snap))
    result = status_in_process(write_config(tmp_path, status_file=str(status)))
    check_status_output(result, status)
    out = result.stdout.decode()
    assert result.returncode == 1 and out.startswith("PROBLEM: sink out LOST ENVELOPES"), out
    # the sentence of the log and the exit summary (``describe``), not one of its own
    assert "7 envelopes of an earlier run LOST in 1 corrupt spool file(s)" in out
