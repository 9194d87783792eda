"""One slow or stuck sink never stalls another: real `spark-sinks run` processes with a
Kinesis sink on moto, a stdout sink and the test plugin ``slow`` (tests/plugins/
spark-sinks-slow: seconds per write, or a write that never returns), real signals."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from spark_sinks.supervisor import SHUTDOWN_GRACE
from tests.plugins import HERE, SPARK_SINKS, environ, install
from tests.support.streams import new_stream, shard_records

MACHINES = {
    f"m{i}": {"variables": {"seq": {"format": "int64"}, "temperature": {"format": "float"}}}
    for i in range(4)
}
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
N = 2000  # four batches of 500 records, after the metadata batch
BATCH_BYTES = 500 * 170  # about: the records' JSON is 160-180 bytes


def lines(n: int) -> bytes:
    return b"".join(
        orjson.dumps({"machine": f"m{i % 4}", "values": {"seq": i, "temperature": 1.5}}) + b"\n"
        for i in range(n)
    )


@pytest.fixture(scope="module")
def slow_site(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "plugins"
    return install([HERE / "spark-sinks-slow"], base)["spark-sinks-slow"]


def config(tmp_path: Path, sinks: dict[str, Any], source: dict[str, Any]) -> Path:
    cfg = {
        "host": "gw",
        "machines": MACHINES,
        "source": source,
        "sinks": sinks,
        "operations": {"status_file": str(tmp_path / "status.json"), "stats_interval": 0.1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def final_counts(tmp_path: Path) -> dict[str, dict[str, Any]]:
    status = orjson.loads((tmp_path / "status.json").read_bytes())
    assert status["final"], "the run must write its final status"
    sinks = status["sinks"]
    for name, s in sinks.items():
        settled = s["delivered"] + s["dead_lettered"] + s["dropped"] + s["failed"] + s["pending"]
        assert s["accepted"] == settled, (name, s)
        assert min(s[k] for k in ("delivered", "dropped", "failed", "pending")) >= 0, (name, s)
    return sinks


def slow_writes(log: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in log.read_bytes().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("when_full", ["block", "drop_newest", "drop_oldest"])
def test_a_slow_sink_holds_up_neither_kinesis_nor_stdout(tmp_path, moto, slow_site, when_full):
    kinesis = moto.client("kinesis")
    stream = new_stream(kinesis, shards=2)
    data = tmp_path / "in.ndjson"
    data.write_bytes(lines(N))
    log = tmp_path / "slow.jsonl"
    # block: five writes, the source waits for three of them; drop_*: two writes, at most
    # a few seconds even on a busy machine, while Kinesis needs about a second
    seconds = 1.0 if when_full == "block" else 2.5
    sinks = {
        "cloud": {
            "type": "kinesis",
            "stream_name": stream,
            "region": "us-east-1",
            "endpoint_url": moto.url,
            "linger_ms": 20,
            "connection_test": False,
        },
        "out": {"type": "stdout"},
        "slow": {
            "type": "slow",
            "log": str(log),
            "seconds_per_write": seconds,
            # room for one batch of records: the others wait, or are dropped
            "buffer": {"type": "memory", "max_bytes": BATCH_BYTES + 10_000, "when_full": when_full},
        },
    }
    cfg = config(tmp_path, sinks, {"type": "ndjson", "path": str(data)})
    with (tmp_path / "stdout").open("wb") as out:
        result = subprocess.run(
            [SPARK_SINKS, "run", "-c", str(cfg)],
            env=environ(slow_site, **AWS),
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    err = result.stderr.decode()
    counts = final_counts(tmp_path)
    arrivals = [
        r["ApproximateArrivalTimestamp"].timestamp() for _, r in shard_records(kinesis, stream)
    ]
    writes = slow_writes(log)
    got = [s for w in writes for s in w["seqs"]]
    slow_done = writes[-1]["end"]

    # the fast sinks have everything, whatever the slow one did
    assert len(arrivals) == N + 4, err
    assert len((tmp_path / "stdout").read_bytes().splitlines()) == N + 4
    for fast in ("cloud", "out"):
        assert counts[fast]["delivered"] == N + 4, counts[fast]
    # ... and Kinesis had all of it well before the slow sink was done
    assert max(arrivals) < slow_done - 1.0, (max(arrivals), slow_done)
    assert got == sorted(got), "the slow sink got its records out of order"
    slow = counts["slow"]
    if when_full == "block":
        assert result.returncode == 0, err
        assert got == list(range(N))
        assert slow["dropped"] == 0 and slow["delivered"] == N + 4
        # the source waited for the slow sink (only the source): Kinesis got the last
        # batches seconds after the first
        assert max(arrivals) - min(arrivals) > 2 * seconds, arrivals
    else:
        assert result.returncode == 1, err  # drops are losses: exit 0 never hides one
        assert slow["dropped"] > 0 and slow["failed"] == slow["pending"] == 0, slow
        # the 4 metadata envelopes come first: drop_oldest may drop them too when the
        # worker is slow to start (a busy machine), drop_newest never does
        metadata = slow["delivered"] - len(got)
        assert metadata == 4 if when_full == "drop_newest" else 0 <= metadata <= 4, slow
        assert "DROPPED" in err
        newest_kept = N - 1 in got
        assert newest_kept == (when_full == "drop_oldest"), got[-5:]


def start(cfg: Path, site: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    """The run, fed through stdin; its stdout and stderr go to files (nothing blocks)."""
    with (tmp_path / "stdout").open("wb") as out, (tmp_path / "stderr").open("wb") as err:
        return subprocess.Popen(
            [SPARK_SINKS, "run", "-c", str(cfg)],
            env=environ(site),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
        )


def wait_for_status(tmp_path: Path, pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = orjson.loads((tmp_path / "status.json").read_bytes())
            if pred(status["sinks"]):
                return
        except (OSError, orjson.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run did not get going: {(tmp_path / 'status.json').read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["end of input", "SIGTERM"])
def test_a_sink_stuck_in_write_forever_does_not_hold_up_shutdown(tmp_path, slow_site, ending):
    flush_timeout = 2.0
    sinks = {
        "out": {"type": "stdout"},
        "stuck": {
            "type": "slow",
            "log": str(tmp_path / "stuck.jsonl"),
            "hang": True,
            "flush_timeout": flush_timeout,
        },
    }
    cfg = config(tmp_path, sinks, {"type": "ndjson", "path": "-"})
    proc = start(cfg, slow_site, tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(lines(100))
    proc.stdin.flush()
    wait_for_status(tmp_path, lambda s: s["out"]["delivered"] >= 104)
    t0 = time.monotonic()
    if ending == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.stdin.close()
    try:
        proc.wait(timeout=flush_timeout + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{ending}: a stuck sink held up the shutdown") from None
    took = time.monotonic() - t0
    text = (tmp_path / "stderr").read_text()
    out = (tmp_path / "stdout").read_bytes()
    # the documented bound (the longest flush_timeout plus SHUTDOWN_GRACE), plus 2 s for a
    # loaded machine to deliver the signal and end the process
    assert took < flush_timeout + SHUTDOWN_GRACE + 2.0, f"{ending}: shutdown took {took:.1f}s"
    assert proc.returncode == 1, text
    assert len(out.splitlines()) == 104  # the other sink delivered everything
    assert "sink 'stuck' (slow from spark-sinks-slow) did not finish within its flush_timeout" in (
        text
    )
    assert "Traceback" not in text
    stuck = final_counts(tmp_path)["stuck"]
    assert stuck["accepted"] == 104 and stuck["delivered"] == 0 and stuck["pending"] == 104
    print(f"{ending}: shutdown took {took:.2f}s with flush_timeout {flush_timeout}s")
