"""Hostile config files against real `spark-sinks run`, `check` and a SIGHUP reload: one
line, exit 2, bounded memory; a running daemon keeps its configuration and delivers on."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_sinks.config import load_config
from spark_sinks.errors import ConfigError
from spark_sinks.plugins import load_registry
from tests.helpers import CLI
from tests.test_reload import Running, config, is_record, record

# The child's own peak RSS: started from a small parent, since ru_maxrss of a child also
# counts what it shared with a large parent (pytest) between fork and exec.
_PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)
sys.stdout.buffer.write(proc.stderr)
sys.stdout.write(f"\\npeak-rss-kb {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
sys.exit(proc.returncode)
"""

GOOD = yaml.safe_dump(config({"out": {"type": "stdout"}}), sort_keys=False)


def _deep_block(levels: int) -> str:
    return "host: gw\ninfo:\n" + "".join(f"{'  ' * (i + 1)}k{i}:\n" for i in range(levels))


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    machines = f"{{m: {{info: {{x: *a{levels}}}, variables: {{v: {{format: float}}}}}}}}"
    return "\n".join(lines) + f"\nmachines: {machines}\n"


def _many_errors(n: int) -> str:
    machines = {f"m{i}": {"variables": {"v": {"format": "float128"}}} for i in range(n)}
    return yaml.safe_dump({"machines": machines})


_COUNT = "      count:\n        name: count\n        format: int32\n"

BAD: dict[str, tuple[bytes, str]] = {
    # name: (file content, what the one line says)
    "not-utf8": (GOOD.replace("Oil temperature", "Öl °C").encode("latin-1"), "not UTF-8"),
    "nul-byte": (GOOD.encode().replace(b"host: gw", b"host: g\x00w"), "invalid YAML"),
    "deep-flow": (("x: " + "[" * 5000 + "]" * 5000).encode(), "invalid YAML"),
    "deep-flow-900": (("x: " + "[" * 900 + "]" * 900).encode(), "nested deeper than 64"),
    "deep-block": (_deep_block(900).encode(), "nested deeper than 64"),
    "alias-bomb": (_alias_bomb().encode(), "aliases expanded"),
    "recursive-alias": (b"machines: &a {m: *a}\n", "refers to a node that contains it"),
    "huge": (GOOD.encode() + b"#" * (8 << 20), "larger than 1 MiB"),
    "many-errors": (_many_errors(3000).encode(), "and 2995 more"),
    "key-with-newline": (
        GOOD.replace("press-1:", '"press\\n1":', 1).encode(),
        'machines."press\\n1".info.name',
    ),
    "a-set-in-info": (
        GOOD.replace("hpl: virtual", "hpl: !!set {a, b}").encode(),
        "cannot be sent as JSON",
    ),
    "list-as-sink-type": (
        GOOD.replace("type: stdout", "type: [stdout]").encode(),
        "unknown sink type [",
    ),
    "bad-timestamp": (GOOD.replace("host: gw", "host: !!timestamp 2001-13-45").encode(), "YAML"),
    "python-tag": (b"host: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
    "top-level-list": (b"- a\n- b\n", "expected a mapping"),
    # before: the last one won, silently (a second `sinks:` block dropped the first's sinks)
    "duplicate-sinks": (
        (GOOD + "sinks:\n  spare:\n    type: stdout\n").encode(),
        'duplicate key "sinks" (first at line 47)',
    ),
    "duplicate-variable": (
        GOOD.replace(_COUNT, _COUNT + _COUNT.replace("int32", "float")).encode(),
        'line 15, column 7: duplicate key "count" (first at line 12)',
    ),
}


def peak_run(*args: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in kB) of a spark-sinks command."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *CLI, *args], capture_output=True, timeout=60
    )
    text, _, peak = proc.stdout.decode(errors="replace").rpartition("\npeak-rss-kb ")
    return proc.returncode, text, int(peak)


def assert_one_line(code: int, stderr: str, path: Path, says: str) -> None:
    assert code == 2, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"spark-sinks: error: {path}: "), lines[0][:500]
    assert says in lines[0], lines[0][:500]
    assert len(lines[0]) < 2000


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_config_file_is_one_line_and_exit_2_for_run_and_check(tmp_path, case):
    """Before: UnicodeDecodeError, RecursionError (exit 70); the alias bomb grew `check`
    past 3.4 GB."""
    content, says = BAD[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    for command in ("check", "run"):
        code, stderr, peak_kb = peak_run(command, "-c", str(path))
        assert_one_line(code, stderr, path, says)
        assert peak_kb < 150_000, f"{command}: peak RSS {peak_kb // 1024} MB"


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.tuples(st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=8)).map(
            lambda cut: GOOD.encode()[: cut[0]] + cut[1] + GOOD.encode()[cut[0] :]
        ),
        st.tuples(st.integers(0, len(GOOD)), st.integers(1, 40)).map(
            lambda cut: (GOOD[: cut[0]] + GOOD[cut[0] + cut[1] :]).encode()
        ),
    )
)
def test_garbage_and_damaged_config_files_never_crash_check(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("garbage") / "c.yaml"
    path.write_bytes(data)
    code, stderr, _ = peak_run("check", "-c", str(path))
    if code == 0:  # the damage left a valid file
        return
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
    assert code in (1, 2), stderr[-2000:]  # 1: the config is fine, a sink is not
    if code == 2:
        assert len(stderr.splitlines()) == 1, stderr[-3000:]


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a named function: Hypothesis reads a lambda's source to see that it recurses, and
    # once in `make fuzz` warned (HypothesisDeprecationWarning) that this multi-line one
    # did not, which a later Hypothesis may make an error
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    _nested,
    max_leaves=8,
)
places = st.sampled_from(
    [
        ("host",),
        ("on_incomplete",),
        ("machines",),
        ("machines", "press-1"),
        ("machines", "press-1", "info"),
        ("machines", "press-1", "enable"),
        ("machines", "press-1", "variables"),
        ("machines", "press-1", "variables", "count"),
        ("machines", "press-1", "variables", "count", "format"),
        ("machines", "press-avg", "variables", "avg-temp", "srcVariables"),
        ("source",),
        ("source", "type"),
        ("source", "max_line_bytes"),
        ("sinks",),
        ("sinks", "out"),
        ("sinks", "out", "type"),
        ("sinks", "out", "flush_timeout"),
        ("operations",),
        ("operations", "stats_interval"),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(place=places, value=json_like)
def test_any_value_anywhere_is_accepted_or_one_config_error(tmp_path_factory, place, value):
    """In-process, so that many cases run: the subprocess tests above show that a
    ConfigError becomes one line and exit 2."""
    cfg: dict[str, Any] = copy.deepcopy(config({"out": {"type": "stdout"}}))
    node = cfg
    for key in place[:-1]:
        node = node[key]
    node[place[-1]] = value
    path = tmp_path_factory.mktemp("any") / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        load_config(path, REGISTRY)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2000


REGISTRY = load_registry()

# -- a duration longer than a thread can wait ------------------------------------------------

DURATIONS = {
    "flush_timeout": ("sinks", "out", "flush_timeout"),
    "stats_interval": ("operations", "stats_interval"),
    "simulator interval": ("source", "interval"),
    "mqtt connect_timeout": ("sinks", "out", "connect_timeout"),
    "mqtt reconnect_min_delay": ("sinks", "out", "reconnect_min_delay"),
}
TOO_LONG = [
    *((key, value) for key in list(DURATIONS)[:3] for value in (1e10, float("inf"))),
    ("mqtt connect_timeout", 1e10),
    ("mqtt reconnect_min_delay", float("inf")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value"), TOO_LONG)
def test_a_duration_too_long_to_wait_for_is_one_line_and_exit_2_for_check_and_run(
    tmp_path, key, value
):
    """Before: `check` said ok (for MQTT: failed with a traceback), and `run` ended in an
    internal error (exit 70: OverflowError from a thread's wait, beyond
    threading.TIMEOUT_MAX, about 292 years) after data was accepted; with .inf before the
    record was even delivered."""
    cfg: dict[str, Any] = copy.deepcopy(config({"out": {"type": "stdout"}}))
    if key == "simulator interval":
        cfg["source"] = {"type": "simulator", "count": 1}
    if key.startswith("mqtt"):  # no broker needed: refused before any connection
        cfg["sinks"]["out"] = {"type": "mqtt", "host": "127.0.0.1", "port": 1}
    *parents, last = DURATIONS[key]
    node = cfg
    for name in parents:
        node = node[name]
    node[last] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for command in ("check", "run"):
        proc = subprocess.run(
            [*CLI, command, "-c", str(path)],
            input=b'{"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}\n',
            capture_output=True,
            timeout=60,
        )
        stderr = proc.stderr.decode()
        assert_one_line(proc.returncode, stderr, path, ".".join(DURATIONS[key]) + ": ")


def test_sighup_with_each_bad_file_keeps_the_daemon_running_and_delivering(tmp_path):
    """Before: a non-UTF-8 or deeply nested file ended the daemon (exit 70), and the alias
    bomb took it from 155 MB to 1.16 GB."""
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    run = Running(path)
    try:
        run.send(record(0))
        run.take_until(is_record(0))
        for n, (case, (content, says)) in enumerate(BAD.items(), start=1):
            path.write_bytes(content)
            run.proc.send_signal(1)  # SIGHUP
            run.wait_log("reload rejected, the running configuration stays")
            rejected = [x for x in run.stderr_text.splitlines() if "reload rejected" in x]
            assert len(rejected) == n and says in rejected[-1], case
            run.send(record(n))
            run.take_until(is_record(n))
        status = Path(f"/proc/{run.proc.pid}/status").read_text()
        peak_kb = int(status.split("VmHWM:")[1].split()[0])
        assert peak_kb < 200_000, f"daemon peak RSS {peak_kb // 1024} MB"
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.stderr_text[-3000:]
    assert "Traceback" not in run.stderr_text
