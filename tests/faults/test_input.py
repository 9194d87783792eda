"""Hostile input lines against a real `spark-sinks run`: every line is delivered or
rejected with one short counted line, the run goes on, memory stays bounded.

Generated cases are batched: one subprocess reads a whole generated stream, so that
hypothesis explores many lines per process start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import CLI, MACHINES, run_cli, write_config

ROOT = Path(__file__).resolve().parents[2]

# -- running the CLI ---------------------------------------------------------------------

# A small parent, so that the child's peak RSS is its own: ru_maxrss of a child also counts
# what it shared with a large parent (pytest) between fork and exec.
_PEAK_RSS = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""


class Outcome(NamedTuple):
    code: int
    records: list[dict[str, Any]]
    stderr: str
    dead: list[dict[str, Any]]


def run(cfg: Path, data: bytes, dead: Path | None = None) -> Outcome:
    proc = run_cli("run", "-c", str(cfg), input=data, timeout=120)
    envelopes = [orjson.loads(x) for x in proc.stdout.splitlines()]
    entries = (
        [orjson.loads(x) for x in dead.read_bytes().splitlines()] if dead and dead.exists() else []
    )
    records = [e for e in envelopes if e["type"] == "record"]
    return Outcome(proc.returncode, records, proc.stderr.decode(), entries)


def summary(stderr: str) -> dict[str, int]:
    m = re.search(
        r"input: (\d+) items, (\d+) envelopes assembled, (\d+) rejected, "
        r"(\d+) incomplete records dropped, (\d+) incomplete records emitted",
        stderr,
    )
    assert m, stderr[-2000:]
    keys = ("items", "envelopes", "rejected", "dropped", "emitted")
    return dict(zip(keys, map(int, m.groups()), strict=True))


def assert_clean(stderr: str, lines: int) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
    # one log line per input line at most, each short, plus start and summary lines
    assert len(stderr) < 2000 + 400 * lines, f"{len(stderr):,} bytes of log"
    assert max(map(len, stderr.splitlines()), default=0) < 500


def config(tmp_path: Path, **source: Any) -> tuple[Path, Path]:
    dead = tmp_path / "dead.jsonl"
    src = {"type": "ndjson", "path": "-", "dead_letter": str(dead), **source}
    cfg = write_config(tmp_path / "c.yaml", source=src, operations={"stats_interval": 0})
    return cfg, dead


# -- generated lines ---------------------------------------------------------------------

MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def dumps(obj: Any) -> bytes:
    """JSON as any writer might send it (big integers too, which orjson does not write)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


def good(i: int, time: Any = None) -> bytes:
    """A whole record of press-2, found again in the output by its ``state``."""
    rec: dict[str, Any] = {"machine": "press-2", "values": {"temperature": 1.5, "state": f"g{i}"}}
    if time is not None:
        rec["time"] = time
    return dumps(rec)


def record(**fields: Any) -> bytes:
    """A press-1 record with one thing changed: each use below makes it bad."""
    rec: dict[str, Any] = {"machine": "press-1", "values": {"temperature": 1.5, "count": 3}}
    rec.update(fields)
    return dumps(rec)


def _not_a_record(raw: bytes) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return not isinstance(obj, dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
bad_times = st.one_of(
    st.sampled_from([1e300, -1e300, 1e20, -1e20, 2**63 - 1, -(2**63), 2**64 - 1, True, False]),
    st.integers(min_value=MAX_MS + 1, max_value=2**64 - 1),
    st.integers(min_value=-(2**63), max_value=MIN_MS - 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda t: not MIN_MS <= t <= MAX_MS),
    st.text(max_size=40).filter(lambda s: not any(c.isdigit() for c in s)),
    st.sampled_from(["2026-02-30T00:00:00.000Z", "2026-13-01T00:00:00.000Z", "10000-01-01"]),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]),
    st.lists(st.integers(), max_size=3),
)
deep = st.integers(min_value=250, max_value=1100).map(lambda d: b"[" * d + b"]" * d)
bad_values = st.one_of(
    st.text(),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), json_values, min_size=1, max_size=3),
    st.integers(min_value=2**31),
    st.integers(max_value=-(2**31) - 1),
    st.sampled_from([10**30, 1.5, "three", [1, "x"]]),
)
bad_lines = st.one_of(
    # arbitrary bytes, valid UTF-8 or not
    st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b and b.strip()),
    st.binary(min_size=1, max_size=300)
    .map(lambda b: b'{"machine":"press-1","values":{"count":"' + b + b'"}}')
    .filter(lambda b: b"\n" not in b),
    json_values.map(dumps).filter(_not_a_record),
    bad_times.map(lambda t: record(time=t)),
    deep,
    deep.map(lambda d: b'{"machine":"press-1","values":{"temperature":' + d + b',"count":1}}'),
    bad_values.map(lambda v: record(values={"temperature": 1.5, "count": v})),
    st.text(max_size=3000).filter(lambda s: s not in MACHINES).map(lambda m: record(machine=m)),
    st.integers(1, 200_000).map(lambda n: record(values={"temperature": "x" * n, "count": 1})),
)


def _expected_time(ms: int) -> str:
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return f"{t.year:04d}-{t:%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


# -- 1. every line is delivered or rejected ------------------------------------------------


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    stream=st.lists(
        st.one_of(st.tuples(st.just("bad"), bad_lines), st.tuples(st.just("good"), st.none())),
        min_size=5,
        max_size=40,
    ),
    times=st.lists(st.integers(MIN_MS, MAX_MS), min_size=40, max_size=40),
)
def test_generated_hostile_lines_are_each_rejected_and_every_good_line_delivered(
    tmp_path_factory, stream, times
):
    tmp_path = tmp_path_factory.mktemp("lines")
    cfg, dead = config(tmp_path)
    lines, bad_at, want = [], [], {}
    for i, (kind, raw) in enumerate(stream):
        if kind == "bad":
            lines.append(raw)
            bad_at.append(i + 1)
        else:
            lines.append(good(i, times[i]))
            want[f"g{i}"] = _expected_time(times[i])
    out = run(cfg, b"\n".join(lines) + b"\n", dead)

    assert_clean(out.stderr, len(lines))
    assert out.code == (3 if bad_at else 0), out.stderr[-2000:]
    got = {r["data"]["attributes"]["state"]["value"]: r["data"]["time"] for r in out.records}
    assert got == want
    assert summary(out.stderr)["rejected"] == len(bad_at)
    assert [e["where"] for e in out.dead] == [f"stdin line {n}" for n in bad_at]
    for n in bad_at:
        assert len(re.findall(rf"ERROR .*: stdin line {n}: ", out.stderr)) == 1


# -- 1b. a line longer than max_line_bytes ----------------------------------------------


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    limit=st.integers(1024, 200_000),
    sizes=st.lists(st.integers(-3, 3) | st.integers(-2000, 300_000), min_size=1, max_size=6),
)
def test_lines_around_max_line_bytes_are_kept_or_skipped_by_their_exact_length(
    tmp_path_factory, limit, sizes
):
    tmp_path = tmp_path_factory.mktemp("long")
    cfg, dead = config(tmp_path, max_line_bytes=limit)
    lines, long_at, want = [], {}, set()
    for i, extra in enumerate(sizes):
        head = b'{"machine":"press-2","values":{"temperature":1.5,"state":"L%d-' % i
        body = head + b"y" * max(0, limit + extra - len(head) - 3) + b'"}}'
        lines.append(good(i))  # a good line between long ones: lines 1, 3, 5...
        want.add(f"g{i}")
        lines.append(body)
        if len(body) > limit:
            long_at[2 * i + 2] = body
        else:
            want.add(orjson.loads(body)["values"]["state"])
    out = run(cfg, b"\n".join(lines) + b"\n", dead)

    assert_clean(out.stderr, len(lines))
    assert out.code == (3 if long_at else 0), out.stderr[-2000:]
    assert {r["data"]["attributes"]["state"]["value"] for r in out.records} == want
    skipped = {int(e["where"].split()[-1]): e for e in out.dead}
    assert skipped.keys() == long_at.keys()
    for n, body in long_at.items():
        entry = skipped[n]
        assert entry["length"] == len(body)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["head"] == body[:1024].decode()
        assert f"stdin line {n}: line of {len(body):,} bytes is longer" in out.stderr


@pytest.mark.slow
def test_a_50_mb_line_through_a_pipe_streams_past_in_bounded_memory(tmp_path):
    """Before: the line was held whole and re-split on every read (quadratic)."""
    cfg, dead = config(tmp_path)
    peak = tmp_path / "peak"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEAK_RSS, str(peak), *CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    block = b"z" * (1 << 20)
    start = b'{"machine":"press-2","values":{"state":"'
    length = len(start) + 50 * len(block) + 3
    assert proc.stdin is not None
    proc.stdin.write(good(1) + b"\n" + start)
    for _ in range(50):
        proc.stdin.write(block)
    proc.stdin.write(b'"}}\n' + good(2) + b"\n")
    proc.stdin.close()
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    assert proc.wait(120) == 3, stderr[-2000:]
    records = [orjson.loads(x) for x in stdout.splitlines()[-2:]]
    assert [r["data"]["attributes"]["state"]["value"] for r in records] == ["g1", "g2"]
    assert f"stdin line 2: line of {length:,} bytes is longer".encode() in stderr
    entry = orjson.loads(dead.read_bytes())
    assert entry["length"] == length and len(entry["head"]) == 1024
    peak_mb = int(peak.read_text()) / 1024
    assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB for a 50 MB line"


# -- 1c. deep nesting reaches the dead-letter file in full ---------------------------------


def test_deep_items_and_unencodable_values_reach_the_dead_letter_file_whole(tmp_path):
    """Before: a 256-deep array ended the run (exit 70) in the reject writer."""
    cfg, dead = config(tmp_path)
    nested = b"[" * 1000 + b"1" + b"]" * 1000
    lines = [
        nested,
        b'{"machine":"press-1","values":{"temperature":' + nested + b',"count":1}}',
        record(values={"temperature": 1.5, "count": 2**64 - 1}),
        good(4),
    ]
    out = run(cfg, b"\n".join(lines) + b"\n", dead)
    assert out.code == 3, out.stderr[-2000:]
    assert_clean(out.stderr, 4)
    assert [r["data"]["attributes"]["state"]["value"] for r in out.records] == ["g4"]
    entries = dead.read_bytes().splitlines()  # compared as text: too deep for ==
    assert entries[0].endswith(b'"item":' + nested + b"}")
    assert b'"temperature":' + nested + b',"count":1}' in entries[1]
    assert out.dead[2]["item"]["values"]["count"] == 2**64 - 1


def test_values_in_messages_are_json_and_cut_to_a_readable_length(tmp_path):
    cfg, dead = config(tmp_path, max_line_bytes=64 << 20)
    lines = [
        record(values={"temperature": True, "count": 1}),
        record(values={"temperature": None, "count": None}, machine="x" * 20_000_000),
        record(values={"temperature": 1.5, "count": "v" * 20_000_000}),
    ]
    out = run(cfg, b"\n".join(lines) + b"\n", dead)
    assert "stdin line 1: press-1.temperature: true is not a valid float" in out.stderr
    assert f'unknown machine "{"x" * 99}… (20,000,000 characters)' in out.stderr
    assert f'press-1.count: "{"v" * 99}… (20,000,000 characters) is not' in out.stderr
    assert len(out.stderr) < 3000
    assert out.dead[2]["item"]["values"]["count"] == "v" * 20_000_000


# -- 1d. odd but valid lines, and numbers beyond 64 bits -----------------------------------

BOM = b"\xef\xbb\xbf"
odd_text = st.text(
    st.characters(codec="utf-8")  # every code point but the lone surrogates UTF-8 cannot hold
    | st.sampled_from(["\u2028", "\u2029", "\x85", "\x00", "\ufeff", "\r", "\n", "\U0001f600"]),
    max_size=30,
)
# number tokens as a writer may send them for a float variable: -0, exponents, integers
# beyond 64 bits (a float variable takes any JSON number)
float_tokens = st.one_of(
    st.sampled_from(["-0", "-0.0", "0e0", "-0E-0", "1E+2", "2.5e-320", "1.7976931348623157e308"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(2**80), 2**80).map(str),
)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lines=st.lists(
        st.tuples(odd_text, float_tokens, st.booleans(), st.booleans(), st.booleans()),
        min_size=1,
        max_size=30,
    )
)
@example(lines=[("bom", "1.5", False, False, True)]).via("a BOM was a rejected line")
def test_odd_but_valid_lines_are_delivered_exactly(tmp_path_factory, lines):
    """Any text in a value (U+2028, NUL, BOM, CR, escaped or raw), CRLF line ends, a BOM at
    the start of a line (a Windows tool's file, or files joined mid-stream), -0 and
    exponents: every line is delivered with its value unchanged. Before: a line starting
    with a BOM was rejected (RFC 8259 lets a parser ignore it; the config file may hold one)."""
    tmp_path = tmp_path_factory.mktemp("odd")
    cfg, dead = config(tmp_path)
    data, want = b"", {}
    for i, (text, number, ascii_only, crlf, bom) in enumerate(lines):
        state = f"{i}:{text}"
        value = json.dumps(state, ensure_ascii=ascii_only).encode("utf-8")
        line = b'{"machine":"press-2","values":{"temperature":%s,"state":%s}}' % (
            number.encode(),
            value,
        )
        data += (BOM if bom else b"") + line + (b"\r\n" if crlf else b"\n")
        want[state] = float(number)
    out = run(cfg, data, dead)
    assert out.code == 0 and out.dead == [], out.stderr[-2000:]
    assert_clean(out.stderr, len(lines))
    got = {
        r["data"]["attributes"]["state"]["value"]: r["data"]["attributes"]["temperature"]["value"]
        for r in out.records
    }
    assert got.keys() == want.keys()
    for state, number in want.items():  # as floats: a 64-bit integer stays an int
        assert float(got[state]) == number, (state, got[state], number)


big_ints = st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.lists(big_ints, min_size=1, max_size=10), point=st.booleans())
@example(values=[2**64], point=False).via("orjson decodes it as 1.8446744073709552e+19")
def test_integers_beyond_64_bits_reach_the_dead_letter_file_exactly(
    tmp_path_factory, values, point
):
    """Before: orjson decodes an integer beyond 64 bits as the nearest float, and the
    dead-letter file kept that float (18446744073709551616 became 1.8446744073709552e+19),
    not what was sent."""
    tmp_path = tmp_path_factory.mktemp("bigint")
    cfg, dead = config(tmp_path)
    lines = [
        dumps({"machine": "press-1", "variable": "count", "value": v})
        if point
        else record(values={"temperature": 1.5, "count": v})
        for v in values
    ]
    out = run(cfg, b"\n".join([*lines, good(0)]) + b"\n", dead)
    assert out.code == 3, out.stderr[-2000:]
    assert_clean(out.stderr, len(lines) + 1)
    assert [r["data"]["attributes"]["state"]["value"] for r in out.records] == ["g0"]
    # read back with the standard library: orjson would turn them into floats again
    items = [json.loads(x)["item"] for x in dead.read_bytes().splitlines()]
    kept = [x["value"] if point else x["values"]["count"] for x in items]
    assert kept == values
    assert all(type(k) is int for k in kept)


# -- 2. end of input -----------------------------------------------------------------------


def _partial_points(cuts: dict[str, int]) -> tuple[bytes, dict[str, set[str]]]:
    """For each machine, the first ``cuts[m]`` of its variables (not all): an open cycle."""
    lines, have = [], {}
    for m, n in cuts.items():
        names = list(MACHINES[m]["variables"])[:n]
        have[m] = set(names)
        lines += [orjson.dumps({"machine": m, "variable": v, "value": 1}) for v in names]
    return b"\n".join(lines), have


cycles = st.fixed_dictionaries(
    {}, optional={"press-1": st.just(1), "press-2": st.just(1), "press-avg": st.just(0)}
).map(lambda d: {k: v for k, v in d.items() if v})


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(cuts=cycles, trailing_newline=st.booleans())
def test_at_end_of_input_every_open_cycle_is_emitted_with_emit(
    tmp_path_factory, cuts, trailing_newline
):
    """Before: exit 0, "0 incomplete records dropped", and the records were gone."""
    tmp_path = tmp_path_factory.mktemp("emit")
    cfg = write_config(tmp_path / "c.yaml", on_incomplete="emit")
    data, have = _partial_points(cuts)
    out = run(cfg, data + (b"\n" if trailing_newline else b""))
    assert out.code == 0, out.stderr[-2000:]
    got = {r["data"]["machine"]: set(r["data"]["attributes"]) for r in out.records}
    assert got == have
    counts = summary(out.stderr)
    assert counts["dropped"] == 0 and counts["emitted"] == len(have), counts


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(cuts=cycles)
def test_at_end_of_input_every_open_cycle_is_counted_and_named_with_drop(tmp_path_factory, cuts):
    tmp_path = tmp_path_factory.mktemp("drop")
    cfg = write_config(tmp_path / "c.yaml")
    data, have = _partial_points(cuts)
    out = run(cfg, data)
    assert out.code == 0 and out.records == [], out.stderr[-2000:]
    assert summary(out.stderr)["dropped"] == len(have)
    for m in have:
        assert re.search(rf"dropped an incomplete record of {m} .*: the input ended", out.stderr)


def _running_with_an_open_cycle(tmp_path: Path, **overrides: Any) -> subprocess.Popen[bytes]:
    """A `spark-sinks run` (config ``tmp_path/c.yaml``) that has read one data point of
    press-1 (of two variables)."""
    status = tmp_path / "status.json"
    ops = {"status_file": str(status), "stats_interval": 0.05}
    cfg = write_config(tmp_path / "c.yaml", operations=ops, **overrides)
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'{"machine":"press-1","variable":"count","value":7}\n')
    proc.stdin.flush()
    for _ in range(3):  # the metadata of the three publishing machines
        proc.stdout.readline()
    # A signal that came before the point was read would find no open cycle: wait until
    # the status file counts it (not a fixed sleep, which a loaded machine can outlast).
    deadline = time.monotonic() + 60
    while _items_read(status) < 1:
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the data point was never read"
        time.sleep(0.02)
    return proc


def _items_read(status: Path) -> int:
    try:
        return int(orjson.loads(status.read_bytes())["input"]["items"])
    except (OSError, orjson.JSONDecodeError, KeyError):
        return 0


def test_sigterm_with_open_cycles_emits_them_too(tmp_path):
    proc = _running_with_an_open_cycle(tmp_path, on_incomplete="emit")
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=30)
    records = [orjson.loads(x) for x in rest.splitlines()]
    assert [r["data"]["attributes"]["count"]["value"] for r in records] == [7], err


def test_a_reload_that_changes_a_machine_ends_its_open_cycle_as_configured(tmp_path):
    """Before: the open cycle of a changed machine vanished without a word."""
    proc = _running_with_an_open_cycle(tmp_path, on_incomplete="drop")
    cfg = tmp_path / "c.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw["machines"]["press-1"]["variables"]["pressure"] = {"name": "pressure", "format": "float"}
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc.send_signal(signal.SIGHUP)
    assert orjson.loads(proc.stdout.readline())["data"]["info"]["name"] == "press-1"  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    text = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait(30) == 0, text[-2000:]
    assert "dropped an incomplete record of press-1 (1 of 2 variables): its definition changed" in (
        text
    )
    assert summary(text)["dropped"] == 1


def test_the_kinesis_readme_example_line_delivers_its_record(tmp_path, moto, aws_env):
    from tests.support.streams import new_stream, read_stream

    readme = (ROOT / "plugins" / "kinesis" / "README.md").read_text()
    line = re.search(r"pipe lines such as\s+`([^`]+)`", readme).group(1)  # type: ignore[union-attr]
    kinesis = moto.client("kinesis")
    stream = new_stream(kinesis, shards=1)
    cfg = yaml.safe_load((ROOT / "config" / "kinesis-local.yaml").read_text())
    cfg["source"] = {"type": "ndjson", "path": "-"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {"KINESIS_STREAM": stream, "KINESIS_ENDPOINT": moto.url, "AWS_REGION": "us-east-1"}
    proc = subprocess.run(
        [*CLI, "run", "-c", str(tmp_path / "c.yaml")],
        input=line.encode() + b"\n",
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, **aws_env, **env},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    sent = orjson.loads(line)
    records = [r["envelope"] for r in read_stream(kinesis, stream)]
    got = [r["data"] for r in records if r["type"] == "record"]
    assert len(got) == 1 and got[0]["machine"] == sent["machine"]
    assert {k: a["value"] for k, a in got[0]["attributes"].items()} == sent["values"]
