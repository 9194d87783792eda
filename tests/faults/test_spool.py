"""The spool under attack: a full disk, two processes, unreadable and corrupt files, a
reload during an outage, and the modes of every data file. Real `spark-sinks run`
processes, a real moto server (behind the fault proxy for outages), a real tmpfs."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.spoolkit import (
    ENV,
    StderrLines,
    kinesis_sink,
    line,
    lines,
    run,
    seqs,
    start,
    status,
    wait_until,
    write_config,
)
from tests.helpers import CLI
from tests.support.faultproxy import FaultProxy
from tests.support.streams import new_stream


@pytest.fixture
def kinesis(moto: Any) -> Any:
    return moto.client("kinesis")


@pytest.fixture
def proxy(moto: Any) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, seed=5) as p:
        yield p


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a 2 MB tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def spooled(stream: str, endpoint: str, path: Path, **extra: Any) -> dict[str, Any]:
    return kinesis_sink(stream, endpoint, spool={"path": str(path), "sync": "normal"}, **extra)


@pytest.mark.slow
def test_a_full_disk_makes_the_source_wait_and_delivery_resumes_without_loss(
    tmp_path: Path, kinesis: Any, proxy: FaultProxy, small_disk: Path
) -> None:
    n = 6_000
    stream = new_stream(kinesis, shards=2)
    cfg = write_config(tmp_path, {"cloud": spooled(stream, proxy.url, small_disk / "spool")})
    proc = start(cfg)
    err = StderrLines(proc)
    # the sink starts (its connection check) before the endpoint goes down
    wait_until(lambda: err.find("ready:"), what="the sink to be ready")
    proxy.refuse_connections(True)  # the endpoint is down: everything goes to the spool
    assert proc.stdin is not None
    writer = threading.Thread(target=lambda: proc.stdin.write(lines(n)), daemon=True)  # type: ignore[union-attr]
    writer.start()
    # the disk fills up: the source waits, nothing is counted as failed
    wait_until(
        lambda: "cannot store" in err.text, timeout=60, what="the spool to hit the full disk"
    )
    time.sleep(1.0)
    s = status(tmp_path)
    assert s is not None and s["failed"] == 0 and s["dropped"] == 0, s
    assert s["accepted"] < n, "the whole input fit: the disk never filled"
    assert writer.is_alive(), "the source should be waiting for disk space"
    proxy.refuse_connections(False)
    writer.join(120)
    assert not writer.is_alive(), err.text[-3000:]
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(120) == 0, err.text[-3000:]
    err.thread.join(5)
    assert "Traceback" not in err.text
    got = seqs(kinesis, stream)
    assert set(got) == set(range(n)), f"{n - len(set(got))} records lost: {err.text[-1500:]}"
    # the delivered rows were deleted despite the full disk: a restart sends nothing again
    again = run(cfg, b"")
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert "replaying" not in again.stderr.decode()
    assert len(seqs(kinesis, stream)) == len(got)


def test_a_second_process_on_the_same_spool_refuses_to_start_naming_the_holder(
    tmp_path: Path, kinesis: Any, moto: Any
) -> None:
    stream = new_stream(kinesis, shards=1)
    cfg = write_config(tmp_path, {"cloud": spooled(stream, moto.url, tmp_path / "spool")})
    first = start(cfg)
    assert first.stdin is not None
    first.stdin.write(lines(500))
    first.stdin.flush()
    wait_until(lambda: (s := status(tmp_path)) and s["accepted"] >= 504, what="first run")
    second = run(cfg, lines(500, start=500), timeout=60)
    first.stdin.close()
    first_err = first.stderr.read().decode()  # type: ignore[union-attr]
    assert first.wait(60) == 0, first_err[-2000:]
    err = second.stderr.decode()
    assert second.returncode != 0, err[-2000:]
    assert f"pid {first.pid}" in err and "cloud.spool.sqlite3" in err and "in use" in err, err
    assert "Traceback" not in err
    assert sorted(seqs(kinesis, stream)) == list(range(500)), "records sent twice or lost"


def test_an_unreadable_spool_is_not_corrupt_the_run_refuses_and_touches_nothing(
    tmp_path: Path, kinesis: Any, moto: Any
) -> None:
    stream = new_stream(kinesis, shards=1)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "cloud.spool.sqlite3").mkdir()  # read() fails with EISDIR: an I/O error
    (spool / "cloud.spool.sqlite3" / "keep").write_text("mine")
    cfg = write_config(tmp_path, {"cloud": spooled(stream, moto.url, spool)})
    result = run(cfg, lines(10))
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert "cannot read spool file" in err and "refusing to start" in err, err
    assert "Traceback" not in err
    assert (spool / "cloud.spool.sqlite3" / "keep").read_text() == "mine"
    assert not list(spool.glob("*corrupt*"))
    assert seqs(kinesis, stream) == []


def test_a_spool_without_read_permission_is_refused_not_set_aside(
    tmp_path: Path, kinesis: Any, moto: Any
) -> None:
    """EACCES. Root reads every file, so as root the run drops the capabilities that let
    it (``setpriv``), and the file is mode 000."""
    stream = new_stream(kinesis, shards=1)
    spool = tmp_path / "spool"
    spool.mkdir()
    db = spool / "cloud.spool.sqlite3"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4080)
    db.chmod(0)
    before = db.read_bytes()
    cfg = write_config(tmp_path, {"cloud": spooled(stream, moto.url, spool)})
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot be denied a read")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    result = subprocess.run(
        [*prefix, *CLI, "run", "-c", str(cfg)],
        input=lines(5),
        capture_output=True,
        env={**os.environ, **ENV},
        timeout=60,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert "cannot read spool file" in err and "Permission denied" in err, err
    assert "Traceback" not in err
    db.chmod(0o600)
    assert db.read_bytes() == before and not list(spool.glob("*corrupt*"))
    assert seqs(kinesis, stream) == []


@pytest.mark.slow
def test_a_reload_during_an_outage_is_bounded_by_flush_timeout(
    tmp_path: Path, kinesis: Any, proxy: FaultProxy
) -> None:
    stream = new_stream(kinesis, shards=1)
    sink = spooled(
        stream,
        proxy.url,
        tmp_path / "spool",
        max_buffered_bytes=1024 * 1024,
        max_batch_bytes=256 * 1024,
    )
    cfg = write_config(tmp_path, {"cloud": {**sink, "flush_timeout": 1.0}})
    proc = start(cfg)
    err = StderrLines(proc)
    wait_until(lambda: err.find("ready:"), what="the sink to be ready")
    proxy.refuse_connections(True)
    assert proc.stdin is not None
    proc.stdin.write(lines(6_000, 0))  # more than the Kinesis buffer holds
    proc.stdin.flush()
    wait_until(lambda: (s := status(tmp_path)) and s["accepted"] >= 6_004, what="spooled")
    time.sleep(1.0)  # the feeder now waits in the Kinesis sink's write for buffer space
    write_config(tmp_path, {"cloud": {**sink, "flush_timeout": 1.5}})
    sent = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    applied = wait_until(lambda: err.find("reload applied"), timeout=30, what="reload applied")
    assert applied - sent < 1.0 + 1.0 + 5.0, "the reload waited longer than flush_timeout"
    proc.stdin.close()
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    assert time.monotonic() - stopped < 15
    err.thread.join(5)
    assert code == 1, err.text[-3000:]  # envelopes stay in the spool: not delivered yet
    assert "Traceback" not in err.text
    # the next start delivers everything, each envelope counted once
    proxy.refuse_connections(False)
    write_config(tmp_path, {"cloud": {**sink, "flush_timeout": 120}})
    again = run(cfg, b"", timeout=180)
    text = again.stderr.decode()
    assert again.returncode == 0, text[-3000:]
    assert set(seqs(kinesis, stream)) == set(range(6_000))


def test_data_files_are_private_whatever_the_umask(tmp_path: Path, moto: Any, kinesis: Any) -> None:
    stream = new_stream(kinesis, shards=1)
    data = tmp_path / "data"
    sink = spooled(stream, moto.url, data / "spool", max_record_bytes=1024)
    sink["dead_letter"] = str(data / "dl" / "dead.jsonl")
    cfg = write_config(
        tmp_path,
        {"cloud": sink},
        source={"type": "ndjson", "path": "-", "dead_letter": str(data / "rejects.jsonl")},
        operations={"status_file": str(data / "run" / "status.json"), "stats_interval": 0.1},
    )
    data.mkdir()
    result = subprocess.run(
        [*CLI, "run", "-c", str(cfg)],
        input=lines(20) + line(20, note="y" * 2000) + b"not json\n",
        capture_output=True,
        env={**os.environ, **ENV},
        timeout=60,
        umask=0,
    )
    assert result.returncode != 0  # one dead letter, one rejected line
    made = {
        "spool dir": data / "spool",
        "dead-letter dir": data / "dl",
        "status dir": data / "run",
        "spool": data / "spool" / "cloud.spool.sqlite3",
        "spool lock": data / "spool" / "cloud.spool.lock",
        "dead letters": data / "dl" / "dead.jsonl",
        "rejects": data / "rejects.jsonl",
        "status": data / "run" / "status.json",
    }
    modes = {k: oct(stat.S_IMODE(p.stat().st_mode)) for k, p in made.items()}
    want = {k: oct(0o700 if k.endswith("dir") else 0o600) for k in made}
    assert modes == want
    others = [p for p in (data / "spool").iterdir() if p.stat().st_mode & 0o077]
    assert not others, others
