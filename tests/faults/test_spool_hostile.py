"""The spool attacked from outside the process: rows damaged on disk (SQLite keeps no
checksum of a row's bytes, so a bad sector or a hand edit passes its integrity check), a
lock file removed by a cleaner while a run holds it, and a spool written by a newer
version. Real `spark-sinks run` processes with the stdout sink and a disk buffer."""

from __future__ import annotations

import base64
import sqlite3
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from spark_sinks.envelope import Envelope
from spark_sinks.sink import Sink, SinkConfig, SinkContext, SpoolConfig
from spark_sinks.spool import READ_BYTES, Spool
from spark_sinks.spooled import SpooledSink
from tests.faults.spoolkit import StderrLines, wait_until
from tests.helpers import CLI

MACHINE = {"info": {"name": "m0"}, "variables": {"seq": {"name": "seq", "format": "int64"}}}
SCHEMA = (
    "CREATE TABLE spool ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, machine TEXT, size INTEGER, body BLOB)"
)


def write_config(tmp_path: Path, **sink: Any) -> Path:
    cfg = {
        "host": "gw",
        "machines": {"m0": MACHINE},
        "source": {"type": "ndjson", "path": "-"},
        "sinks": {
            "out": {
                "type": "stdout",
                "format": "json",
                "buffer": {"type": "disk", "path": str(tmp_path / "spool"), "sync": "normal"},
                **sink,
            }
        },
        "operations": {"status_file": str(tmp_path / "status.json"), "stats_interval": 0.2},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def record(seq: int) -> bytes:
    data = {"machine": "m0", "time": "2026-12-01T00:00:00.000Z", "attributes": {"seq": seq}}
    return orjson.dumps({"type": "record", "host": "gw", "data": data})


def make_spool(tmp_path: Path, rows: list[tuple[Any, Any]], version: int = 0) -> Path:
    """A spool file as an earlier run left it: rows ``(machine, body)`` in order."""
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o700)
    path = directory / "out.spool.sqlite3"
    db = sqlite3.connect(path)
    db.execute(SCHEMA)
    db.executemany(
        "INSERT INTO spool (machine, size, body) VALUES (?, ?, ?)",
        [(m, len(b) if isinstance(b, bytes | str) else 0, b) for m, b in rows],
    )
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    path.chmod(0o600)
    return path


def run(cfg: Path, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, "run", "-c", str(cfg)], input=data, capture_output=True, timeout=120
    )


def records_out(stdout: bytes) -> list[bytes]:
    return [ln for ln in stdout.splitlines() if orjson.loads(ln)["type"] == "record"]


DAMAGED: list[tuple[Any, Any]] = [
    ("m0", b"garbage"),  # not JSON
    ("m0", None),  # no body at all
    ("m0", b"[1, 2]"),  # JSON, not an object
    ("m0", b'{"type": "record", "host": "gw"}'),  # no data: a sink would fail on it forever
    ("m0", b'{"type": 7, "host": "gw", "data": {}}'),
    ("m0", b"\xff\xfe\x00junk"),  # not UTF-8
    ("m0", 12345),  # a number
    ("m0", b'{"type": "record", "host": "gw", "data": [1]}'),
]


def test_damaged_rows_are_set_aside_and_every_good_row_around_them_is_delivered(
    tmp_path: Path,
) -> None:
    """One damaged row used to kill the spool's feeder thread (a traceback), so nothing,
    not even the rows before it, was delivered, in this run or any later one."""
    rows: list[tuple[Any, Any]] = []
    good: list[bytes] = []
    for i, bad in enumerate(DAMAGED):
        good += [record(2 * i), record(2 * i + 1)]
        rows += [("m0", good[-2]), bad, (17, good[-1])]  # a machine that is no text: kept
    make_spool(tmp_path, rows)
    cfg = write_config(tmp_path)

    first = run(cfg)
    err = first.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    assert records_out(first.stdout) == good, err[-3000:]
    assert first.returncode == 1, err[-3000:]  # damaged rows are a loss: never exit 0
    damaged_lines = [
        ln for ln in err.splitlines() if "spark_sinks.sink.out: " in ln and "is damaged" in ln
    ]
    assert len(damaged_lines) == len(DAMAGED), err[-3000:]
    for ln, row_id in zip(damaged_lines, range(2, 3 * len(DAMAGED), 3), strict=True):
        assert f"row {row_id} " in ln and "out.spool.sqlite3" in ln, ln
    status = orjson.loads((tmp_path / "status.json").read_bytes())["sinks"]["out"]
    assert status["failed"] == len(DAMAGED), status
    assert status["pending"] == 0 and status["replayed"] == len(rows), status

    # their bytes are kept, privately, for whoever investigates
    kept = tmp_path / "spool" / "out.spool.damaged.jsonl"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    saved = [orjson.loads(ln) for ln in kept.read_bytes().splitlines()]
    assert [s["row"] for s in saved] == list(range(2, 3 * len(DAMAGED), 3))
    for s, (_, body) in zip(saved, DAMAGED, strict=True):
        got = base64.b64decode(s["body_base64"]) if isinstance(body, bytes) else s["body"]
        assert got == body, s

    # they left the spool: the next start has nothing to replay and exits 0
    second = run(cfg)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert "replaying" not in second.stderr.decode()
    assert records_out(second.stdout) == []


def test_rows_with_a_damaged_size_are_delivered_once_and_leave_the_spool(tmp_path: Path) -> None:
    """The size column of a damaged or edited file: NULL, text, negative, huge. Before: a
    delete failed on each (TypeError), the run said they 'stay in the spool for the next
    start' after delivering them, and every later start sent them again (exit 0)."""
    sizes = [None, "abc", -(10**12), 10**12, 3]
    path = make_spool(tmp_path, [("m0", record(i)) for i in range(len(sizes))])
    db = sqlite3.connect(path)
    db.executemany(
        "UPDATE spool SET size = ? WHERE id = ?", [(s, i + 1) for i, s in enumerate(sizes)]
    )
    db.commit()
    db.close()
    cfg = write_config(tmp_path)
    first = run(cfg)
    err = first.stderr.decode()
    assert first.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "stay in the spool" not in err, err[-2000:]
    assert records_out(first.stdout) == [record(i) for i in range(len(sizes))]
    second = run(cfg)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert records_out(second.stdout) == [], "rows sent again by the next start"


class Batches(Sink):
    """Unbuffered: records the bytes of each batch it is given."""

    type_name = "batches"

    def __init__(self, config: SinkConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.sizes: list[int] = []
        self.seqs: list[int] = []

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self.sizes.append(sum(len(e.to_json()) for e in envelopes))
        self.seqs += [e.data["seq"] for e in envelopes]


def test_a_backlog_of_large_envelopes_reaches_the_sink_a_few_mib_at_a_time(
    tmp_path: Path,
) -> None:
    """Before: the feeder read 500 rows at a time whatever their size, so a backlog of
    2 MiB records (a line may be that long) put a gigabyte in memory at once; here 24 MiB
    went to the sink in one batch."""
    big = "x" * (1 << 20)
    config = SpoolConfig(path=tmp_path, max_bytes=1 << 30, sync="normal")
    first = SpooledSink(
        Batches(SinkConfig(type="batches"), SinkContext("s1", "gw")),
        Spool(tmp_path, "s1", config),
    )
    first.open_spool()  # the spool alone, as a run whose sink never started leaves it
    first.spool.append([Envelope("record", "gw", {"seq": i, "big": big}, "m") for i in range(24)])
    first.spool.close()

    inner = Batches(SinkConfig(type="batches"), SinkContext("s1", "gw"))
    sink = SpooledSink(inner, Spool(tmp_path, "s1", config))
    sink.open()
    sink.check()
    wait_until(lambda: len(inner.seqs) == 24, what="the backlog to be delivered")
    sink.close()
    assert inner.seqs == list(range(24))
    assert max(inner.sizes) <= READ_BYTES + (1 << 20) + 100, inner.sizes


def test_a_spool_of_a_future_schema_version_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """A newer spark-sinks may store rows differently: an older one must not read (and
    send, or set aside) what it cannot know the meaning of."""
    path = make_spool(tmp_path, [("m0", record(1))], version=99)
    before = path.read_bytes()
    done = run(write_config(tmp_path), b'{"machine": "m0", "values": {"seq": 5}}\n')
    err = done.stderr.decode()
    assert done.returncode != 0, err[-2000:]
    assert "Traceback" not in err
    assert "out.spool.sqlite3" in err and "version 99" in err, err[-2000:]
    assert records_out(done.stdout) == []
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))


def test_a_spool_this_version_writes_says_its_version(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    done = run(cfg, b'{"machine": "m0", "values": {"seq": 5}}\n')
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    db = sqlite3.connect(tmp_path / "spool" / "out.spool.sqlite3")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        db.close()
    # and an older spool (no version: 0) is still read as this version's
    (tmp_path / "spool" / "out.spool.sqlite3").unlink()
    for p in (tmp_path / "spool").glob("out.spool.sqlite3-*"):
        p.unlink()
    db = sqlite3.connect(tmp_path / "spool" / "out.spool.sqlite3")
    db.execute(SCHEMA)
    db.execute("INSERT INTO spool (machine, size, body) VALUES ('m0', 1, ?)", (record(3),))
    db.commit()
    db.close()
    again = run(cfg)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert records_out(again.stdout) == [record(3)]


def test_a_removed_lock_file_does_not_let_a_second_process_on_the_spool(tmp_path: Path) -> None:
    """A cleaner (tmpfiles.d, an operator removing a 'stale' lock) deletes the lock file of
    a running spark-sinks. A second run must still refuse: both would send every row."""
    cfg = write_config(tmp_path)
    first = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        err = StderrLines(first)
        wait_until(lambda: err.find("ready:"), what="the first run to start")
        (tmp_path / "spool" / "out.spool.lock").unlink()
        second = run(cfg, b'{"machine": "m0", "values": {"seq": 5}}\n')
        text = second.stderr.decode()
        assert second.returncode != 0, text[-2000:]
        assert "Traceback" not in text
        assert "out.spool.sqlite3" in text and "in use" in text, text[-2000:]
        assert records_out(second.stdout) == []
    finally:
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(60) == 0, err.text[-2000:]


def test_a_spool_file_removed_while_running_is_reported_lost_not_kept(tmp_path: Path) -> None:
    """Someone removes the spool file of a running spark-sinks (a cleaner, a mistaken
    `rm`): SQLite keeps writing the removed file, which vanishes at exit. The run used to
    say its undelivered envelopes 'stay in the spool for the next start': none did."""
    cfg = write_config(tmp_path, flush_timeout=1)
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.close()  # nothing can be delivered: every envelope waits in the spool
    err = StderrLines(proc)
    try:
        wait_until(lambda: err.find("ready:"), what="the run to start")
        proc.stdin.write(
            b"".join(b'{"machine": "m0", "values": {"seq": %d}}\n' % i for i in range(50))
        )
        proc.stdin.flush()

        def spooled() -> bool:
            try:
                s = orjson.loads((tmp_path / "status.json").read_bytes())["sinks"]["out"]
            except (OSError, ValueError, KeyError):
                return False
            return bool(s["accepted"] == 51 and s["spool_depth"] == 51)

        wait_until(spooled, what="51 envelopes in the spool")
        (tmp_path / "spool" / "out.spool.sqlite3").unlink()
        wait_until(
            lambda: err.find("was removed or replaced while this run uses it"),
            what="the run to notice",
        )
        proc.stdin.close()
        assert proc.wait(60) == 1, err.text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err.thread.join(5)
    assert "Traceback" not in err.text
    assert "stay in the spool for the next start" not in err.text, err.text[-3000:]
    assert "the 51 envelopes in it are LOST" in err.text, err.text[-3000:]
    final = orjson.loads((tmp_path / "status.json").read_bytes())["sinks"]["out"]
    assert (final["accepted"], final["failed"], final["pending"]) == (51, 51, 0), final
