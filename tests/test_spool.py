"""The durable spool with real SQLite files and threads, around small in-test sinks."""

from __future__ import annotations

import sqlite3
import threading
import time

import orjson

from spark_sinks.envelope import Envelope
from spark_sinks.sink import Backlog, Sink, SinkConfig, SinkContext, SpoolConfig
from spark_sinks.spool import Spool
from spark_sinks.spooled import SpooledSink


def envs(n: int, start: int = 0, machine: str = "m") -> list[Envelope]:
    return [
        Envelope("record", "gw", {"machine": machine, "seq": i}, machine)
        for i in range(start, start + n)
    ]


class ListSink(Sink):
    """Unbuffered: a returning write is a delivery."""

    type_name = "list"

    def __init__(self, config, context):
        super().__init__(config, context)
        self.got: list[int] = []
        self.fail_next = 0

    def write(self, envelopes):
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("destination down")
        self.got.extend(e.data["seq"] for e in envelopes)


class AckLaterSink(Sink):
    """Buffered: holds envelopes until told to acknowledge them (an outage, then recovery)."""

    type_name = "acklater"
    buffered = True

    def __init__(self, config, context):
        super().__init__(config, context)
        self.held: list[Envelope] = []
        self.lock = threading.Lock()

    def write(self, envelopes):
        with self.lock:
            self.held.extend(envelopes)

    def ack_all(self) -> list[int]:
        with self.lock:
            held, self.held = self.held, []
        self.context.delivered(held)
        return [e.data["seq"] for e in held]


class Spooled(SpooledSink):
    """Counts what it is given as accepted, as the dispatcher does."""

    def write(self, envelopes):
        self.stats.add("accepted", len(envelopes))
        super().write(envelopes)


def spooled(cls, tmp_path, **spool_kw):
    cfg = SpoolConfig(path=tmp_path, **spool_kw)
    inner = cls(SinkConfig(type=cls.type_name), SinkContext("s1", "gw"))
    sink = Spooled(inner, Spool(tmp_path, "s1", cfg))
    sink.open()
    sink.check()
    return sink, inner


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_delivered_envelopes_leave_the_spool(tmp_path):
    sink, inner = spooled(ListSink, tmp_path)
    sink.write(envs(1200))
    sink.flush(10)
    assert inner.got == list(range(1200))
    wait_for(lambda: sink.spool.count() == 0)
    assert sink.spool.bytes == 0
    assert sink.stats.delivered == 1200
    sink.close()


def test_undelivered_envelopes_are_replayed_in_order_on_the_next_start(tmp_path):
    sink, inner = spooled(AckLaterSink, tmp_path)
    sink.write(envs(300))
    wait_for(lambda: len(inner.held) == 300)
    # acknowledge only the first 100, then "crash" (close without delivering the rest)
    first = inner.held[:100]
    inner.held = inner.held[100:]
    inner.context.delivered(first)
    sink.close()

    again, inner2 = spooled(AckLaterSink, tmp_path)
    assert again.stats.accepted == 200  # counted as accepted by this run
    again.write(envs(5, start=300))
    wait_for(lambda: len(inner2.held) == 205)
    assert inner2.ack_all() == list(range(100, 305))
    wait_for(lambda: again.spool.count() == 0)
    again.close()


def test_a_failing_sink_is_retried_from_the_spool_without_loss(tmp_path):
    sink, inner = spooled(ListSink, tmp_path)
    inner.fail_next = 2
    sink.write(envs(50))
    sink.flush(20)
    assert inner.got == list(range(50))
    assert sink.stats.retried >= 2 * 50
    assert sink.stats.failed == 0
    sink.close()


def test_full_spool_blocks_the_source_until_space_is_freed(tmp_path):
    sink, inner = spooled(AckLaterSink, tmp_path, max_bytes=20_000)
    sink.write(envs(300))
    assert 20_000 - 3_000 < sink.spool.bytes < 20_000  # 50 more (about 3.3 kB) do not fit
    done = threading.Event()

    def writer():
        sink.write(envs(50, start=10_000))
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert not done.wait(1.0), "write should block while the spool is full"
    wait_for(lambda: inner.held)
    inner.ack_all()
    assert done.wait(10), "write should resume once the sink acknowledged"
    assert sink.stats.dropped == 0
    sink.close()


def test_full_spool_drops_oldest_unsent_when_configured_and_counts_them(tmp_path, caplog):
    sink, inner = spooled(AckLaterSink, tmp_path, max_bytes=20_000, on_full="drop_oldest")
    inner_lock = inner.lock
    inner_lock.acquire()  # the sink takes nothing more: everything new stays unsent
    try:
        for i in range(20):
            sink.write(envs(50, start=i * 50))
    finally:
        inner_lock.release()
    assert sink.stats.dropped > 0
    assert "DROPPED" in caplog.text
    sink.flush(5)
    held = inner.ack_all()
    wait_for(lambda: sink.spool.count() == 0)
    # nothing dropped was delivered, nothing delivered was dropped, and the newest survived
    assert sink.stats.dropped + len(held) == 1000
    assert held[-1] == 999
    sink.close()


def test_corrupt_spool_file_is_set_aside_and_a_fresh_one_works(tmp_path, caplog):
    (tmp_path / "s1.spool.sqlite3").write_bytes(b"this is not a database" * 100)
    sink, inner = spooled(ListSink, tmp_path)
    assert "is corrupt" in caplog.text and "LOST" in caplog.text
    assert sink.stats.corrupt_spools == 1
    assert list(tmp_path.glob("s1.spool.sqlite3.corrupt-*"))
    sink.write(envs(3))
    sink.flush(5)
    assert inner.got == [0, 1, 2]
    sink.close()


def test_delivered_rows_whose_delete_failed_are_sent_again_at_the_next_start(tmp_path, caplog):
    """The documented at-least-once cost. A delete that cannot be made (here another
    process holds the spool file's write lock; a full disk does the same) leaves delivered
    rows in the file, and nothing else can be written to say so. At close the delete is
    tried once more; when it still fails, one line says they are sent again, and the next
    start replays them with the rest (counted as replayed). Kinesis consumers see them
    twice: the Lambda consumer stores by host, machine and time, so a copy changes nothing."""
    sink, inner = spooled(AckLaterSink, tmp_path)
    sink.write(envs(30))
    wait_for(lambda: len(inner.held) == 30)
    with sink.spool._lock:  # each failing delete gives up after 0.1 s, not SQLite's 5 s
        sink.spool._conn().execute("PRAGMA busy_timeout = 100")
    other = sqlite3.connect(sink.spool.file, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock: every delete fails
    try:
        with inner.lock:
            first, inner.held = inner.held[:10], inner.held[10:]
        inner.context.delivered(first)
        sink.close()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (sink.stats.accepted, sink.stats.delivered) == (30, 10)
    assert "10 delivered envelopes stay in spool" in caplog.text
    assert "sent again on the next start" in caplog.text

    again, inner2 = spooled(AckLaterSink, tmp_path)
    assert again.stats.replayed == 30  # the 10 delivered and the 20 never acknowledged
    wait_for(lambda: len(inner2.held) == 30)
    assert inner2.ack_all() == list(range(30))
    wait_for(lambda: again.spool.count() == 0)
    again.close()


class RejectSink(Sink):
    """Unbuffered: every envelope is one it can never deliver."""

    type_name = "reject"

    def __init__(self, config, context):
        super().__init__(config, context)
        self.seen = 0

    def write(self, envelopes):
        for e in envelopes:
            self.context.dead_letter(e, "never deliverable")
        self.seen += len(envelopes)


def rejecting(tmp_path, dead):
    """A spooled RejectSink whose dead letters wait in memory at most 2 at a time."""
    ctx = SinkContext("s1", "gw", dead, backlog=Backlog(envelopes=2))
    inner = RejectSink(SinkConfig(type="reject"), ctx)
    sink = Spooled(inner, Spool(tmp_path, "s1", SpoolConfig(path=tmp_path)))
    sink.open()
    sink.check()
    return sink


def test_dead_letters_beyond_the_backlog_stay_in_the_spool_for_the_next_start(tmp_path, caplog):
    """The dead-letter file cannot be written and 2 dead letters already wait in memory:
    with a spool the others stay on disk, pending, not lost. Before: the 3 beyond the
    backlog were counted failed and deleted from the spool."""
    dead = tmp_path / "dead.jsonl"
    dead.mkdir()  # a directory where the file goes: every write fails
    sink = rejecting(tmp_path, dead)
    sink.write(envs(5))
    wait_for(lambda: sink.inner.seen == 5 and not sink._writing)
    snap = sink.stats.snapshot()
    assert (snap["pending"], snap["failed"], snap["dead_lettered"]) == (5, 0, 0), snap
    assert sink.spool.count() == 5
    assert "stays in the spool, pending, for the next start" in caplog.text
    sink.write(envs(1, start=5))  # the kept rows are not handed to the sink again
    wait_for(lambda: sink.inner.seen == 6 and not sink._writing)
    assert sink.stats.pending == 6 and sink.spool.count() == 6
    sink.close()
    assert "LOST" not in caplog.text

    dead.rmdir()  # the file works again: the next start dead-letters every one, in order
    again = rejecting(tmp_path, dead)
    assert again.stats.replayed == 6
    wait_for(lambda: again.stats.dead_lettered == 6)
    wait_for(lambda: again.spool.count() == 0)
    again.close()
    written = [orjson.loads(x)["envelope"]["data"]["seq"] for x in dead.read_bytes().splitlines()]
    assert written == list(range(6))


class RejectThenFailSink(Sink):
    """Unbuffered: its first write dead-letters every envelope and then fails (the
    destination went down meanwhile); every later write delivers."""

    type_name = "rejectfail"

    def __init__(self, config, context):
        super().__init__(config, context)
        self.got: list[int] = []
        self.failed_once = False

    def write(self, envelopes):
        if not self.failed_once:
            self.failed_once = True
            for e in envelopes:
                self.context.dead_letter(e, "never deliverable")
            raise ConnectionError("destination down")
        self.got.extend(e.data["seq"] for e in envelopes)


def test_a_full_read_of_rows_waiting_as_dead_letters_does_not_stop_the_rows_behind(tmp_path):
    """The dead-letter file cannot be written, so a failed batch's dead letters wait in
    memory, their rows held in the spool; the batch's other rows are read again. A whole
    read (500 rows) of held rows must not stop the spool: before, the feeder read the same
    500 held rows again and again, and the 20 behind them were never handed over."""
    dead = tmp_path / "dead.jsonl"
    dead.mkdir()  # a directory where the file goes: every dead-letter write fails
    ctx = SinkContext("s1", "gw", dead)
    inner = RejectThenFailSink(SinkConfig(type="rejectfail"), ctx)
    sink = Spooled(inner, Spool(tmp_path, "s1", SpoolConfig(path=tmp_path)))
    sink.open()
    sink.check()
    sink.write(envs(520))
    wait_for(lambda: inner.got == list(range(500, 520)))
    assert sink.stats.delivered == 20
    assert sink.spool.count() == 500  # the held rows wait for the dead-letter file
    sink.close()
