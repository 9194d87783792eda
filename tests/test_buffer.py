"""Each sink's buffer and worker (spark_sinks/buffer.py), with real threads and small
in-test sinks: order, the byte bound, when_full, counting, and stopping on time."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spark_sinks.buffer import GRACE, Batch, SinkWorker, _Idle
from spark_sinks.dispatch import ActiveSink, Dispatcher
from spark_sinks.envelope import Envelope
from spark_sinks.plugins import PluginInfo
from spark_sinks.sink import BufferConfig, Sink, SinkConfig, SinkContext


class Recorder(Sink):
    """Unbuffered: records what it was given, on which thread; ``gate`` holds writes."""

    type_name = "recorder"

    def __init__(self, config: SinkConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.gate = threading.Event()
        self.gate.set()
        self.got: list[int] = []
        self.calls: list[tuple[str, int]] = []
        """(lifecycle call, thread id), in order."""
        self.fail_on: set[int] = set()
        """Sequence numbers whose batch raises."""

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self.calls.append(("write", threading.get_ident()))
        self.gate.wait()
        seqs = [e.data["seq"] for e in envelopes]
        if self.fail_on.intersection(seqs):
            raise ConnectionError("destination down")
        self.got.extend(seqs)

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append(("flush", threading.get_ident()))

    def close(self) -> None:
        self.calls.append(("close", threading.get_ident()))


def active(
    name: str = "s", flush_timeout: float = 5.0, cls: type[Sink] = Recorder, **buffer: object
) -> ActiveSink:
    config = SinkConfig(type=cls.type_name, buffer=BufferConfig(**buffer))  # type: ignore[arg-type]
    sink = cls(config, SinkContext(name, "gw"))
    return ActiveSink(name, sink, PluginInfo(name="test"), flush_timeout)


def envs(n: int, start: int = 0, pad: int = 40) -> list[Envelope]:
    return [
        Envelope("record", "gw", {"machine": "m", "seq": i, "pad": "x" * pad}, "m")
        for i in range(start, start + n)
    ]


def identity(a: ActiveSink) -> dict[str, int]:
    s = a.stats.snapshot()
    settled = s["delivered"] + s["dead_lettered"] + s["dropped"] + s["failed"] + s["pending"]
    assert s["accepted"] == settled, s
    assert min(s[k] for k in ("delivered", "dropped", "failed", "pending")) >= 0, s
    return s


def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- properties -----------------------------------------------------------------------------

batches = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 300)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=batches,
    when_full=st.sampled_from(["block", "drop_newest", "drop_oldest"]),
    max_bytes=st.integers(1024, 30_000),
)
def test_order_bound_and_counts_hold_for_any_batches(sizes, when_full, max_bytes):
    """Whatever the batches and the mode: the sink gets whole batches in the order they
    were put, the queue never holds more than max_bytes (or one batch), what was not
    written was dropped and counted, and the counters add up."""
    a = active(max_bytes=max_bytes, when_full=when_full)
    sink, worker = a.sink, a.inlet
    assert isinstance(sink, Recorder) and isinstance(worker, SinkWorker)
    if when_full != "block":
        sink.gate.clear()  # the sink takes nothing: the queue must fill and drop
    put: list[list[int]] = []
    seq = 0
    dispatcher = Dispatcher()
    dispatcher.add(a)
    for n, pad in sizes:
        batch = envs(n, seq, pad)
        seq += n
        put.append([e.data["seq"] for e in batch])
        dispatcher.dispatch(batch)
        with worker._lock:  # over the bound only with a single batch, taken by an empty queue
            assert worker._bytes <= max_bytes or len(worker._queue) == 1, worker._bytes
    sink.gate.set()
    assert worker.begin_stop(10)()
    written = sink.got
    # whole batches, in order: the written sequence is a concatenation of a subsequence
    kept = [b for b in put if b[0] in set(written)]
    assert written == [s for b in kept for s in b]
    s = identity(a)
    assert s["accepted"] == seq
    assert s["delivered"] == len(written)
    assert s["pending"] == 0 and s["failed"] == 0
    assert s["dropped"] == seq - len(written)
    if when_full == "block":
        assert s["dropped"] == 0
    if when_full == "drop_oldest" and len(put) > 1:
        assert put[-1] in kept, "drop_oldest keeps the newest batch"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 20), st.integers(0, 200)),
        st.tuples(st.sampled_from(["flush", "post", "hold", "release", "settle"])),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, when_full=st.sampled_from(["block", "drop_newest", "drop_oldest"]))
@example(steps=[("put", 1, 0)], when_full="block")  # one batch into a sleeping worker
@example(steps=[("put", 1, 0), ("settle",), ("put", 1, 0)], when_full="block")
@example(steps=[("hold",), ("put", 5, 0), ("put", 5, 0), ("release",)], when_full="drop_oldest")
def test_the_last_batch_goes_out_without_more_input_whatever_came_before(steps, when_full):
    """The worker lets batches gather while it is idle and is not woken for each one.
    Whatever the interleaving of batches, flushes, posted calls, a held sink and an idle
    worker: the last batch reaches the sink on its own (no flush, no stop, no more input),
    in order, and the counters add up. ``settle`` waits until the worker sleeps for want
    of work; ``hold`` makes the sink's write wait (only where a full buffer drops)."""
    a = active(max_bytes=4096, when_full=when_full)
    sink, worker = a.sink, a.inlet
    assert isinstance(sink, Recorder) and isinstance(worker, SinkWorker)
    d = Dispatcher()
    d.add(a)
    put: list[list[int]] = []
    seen: list[tuple[list[int], list[int]]] = []
    """(what the sink had when a posted call ran, every sequence number put before it)"""
    seq = 0
    for step in steps:
        if step[0] == "put":
            batch = envs(step[1], seq, step[2])
            seq += step[1]
            put.append([e.data["seq"] for e in batch])
            d.dispatch(batch)
        elif step[0] == "flush" and sink.gate.is_set():
            assert worker.flush(10)
        elif step[0] == "post":
            before = [s for b in put for s in b]
            worker.post(lambda before=before: seen.append((list(sink.got), before)))
        elif step[0] == "hold" and when_full != "block":  # block would wait for ever
            sink.gate.clear()
        elif step[0] == "release":
            sink.gate.set()
        elif step[0] == "settle" and put and sink.gate.is_set():
            wait_for(lambda: worker._idle is _Idle.ASLEEP)
    sink.gate.set()
    # no flush, no stop: the tail must go out on its own
    wait_for(lambda: len(sink.got) + a.stats.dropped == seq)
    s = identity(a)
    assert (s["accepted"], s["pending"], s["failed"]) == (seq, 0, 0)
    kept = [b for b in put if b[0] in set(sink.got)]
    assert sink.got == [x for b in kept for x in b], "whole batches, in the order put"
    if when_full == "block":
        assert s["dropped"] == 0 and len(kept) == len(put)
    for had, before in seen:  # a posted call runs after the batches put before it
        assert had == sink.got[: len(had)]
        assert set(had) <= set(before)
        if when_full == "block":
            assert had == before
    assert worker.begin_stop(10)()
    names = [c for c, _ in sink.calls]
    assert names[-2:] == ["flush", "close"] and "write" not in names[names.index("close") :]


made = st.lists(st.tuples(st.sampled_from(["data", "json", "compacted"]), st.text(max_size=60)))


@given(kinds=made)
@example(kinds=[("json", "a"), ("json", "b"), ("data", "\u00e9")])  # only the last unencoded
@example(kinds=[("data", "a"), ("json", "b")])
def test_a_batch_counts_the_bytes_of_its_envelopes_json_however_they_were_made(kinds):
    """What max_bytes bounds is real bytes: a batch's size is its envelopes' JSON, whether
    encoded when made (records), only on demand (metadata), or compacted; sizing changes
    none of them."""
    envelopes = []
    for i, (kind, text) in enumerate(kinds):
        data = {"machine": "m", "seq": i, "text": text}
        if kind == "json":
            e = Envelope.from_json(orjson.dumps({"type": "record", "host": "gw", "data": data}))
        else:
            e = Envelope("record", "gw", data, "m")
            if kind == "compacted":
                e.compact()
        envelopes.append(e)
    expected = [orjson.dumps(e.to_dict()) for e in envelopes]
    assert Batch(envelopes, 1, False).size == sum(len(j) for j in expected)
    assert [e.to_json() for e in envelopes] == expected


# -- the worker model -------------------------------------------------------------------------


def test_write_flush_and_close_come_from_one_worker_thread_in_order():
    a = active()
    sink = a.sink
    assert isinstance(sink, Recorder)
    d = Dispatcher()
    d.add(a)
    for i in range(5):
        d.dispatch(envs(3, i * 3))
    assert a.inlet.flush(5)
    d.dispatch(envs(2, 15))
    assert a.inlet.begin_stop(5)()
    names = [c for c, _ in sink.calls]
    assert names == ["write"] * 5 + ["flush"] + ["write", "flush", "close"]
    threads = {t for _, t in sink.calls}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert sink.got == list(range(17))


def test_a_stuck_sink_holds_up_neither_another_sink_nor_the_source():
    stuck = active("stuck", max_bytes=1024, when_full="drop_newest")
    fine = active("fine")
    assert isinstance(stuck.sink, Recorder) and isinstance(fine.sink, Recorder)
    stuck.sink.gate.clear()
    d = Dispatcher()
    d.add(stuck)
    d.add(fine)
    t0 = time.monotonic()
    for i in range(20):
        d.dispatch(envs(10, i * 10))
    wait_for(lambda: len(fine.sink.got) == 200, timeout=10)
    # The stuck sink never moves until the end, so holding up would be for ever; the bound
    # only has to catch a wait of a quarter second per batch, and leaves a loaded machine room.
    assert time.monotonic() - t0 < 5
    assert fine.sink.got == list(range(200))
    assert stuck.stats.dropped > 0
    stuck.sink.gate.set()
    assert stuck.inlet.begin_stop(5)() and fine.inlet.begin_stop(5)()
    identity(stuck)
    identity(fine)


def test_block_makes_only_the_source_wait_and_stops_waiting_at_shutdown():
    a = active(max_bytes=1024, when_full="block")
    assert isinstance(a.sink, Recorder)
    a.sink.gate.clear()
    d = Dispatcher()
    d.add(a)
    d.dispatch(envs(10))  # taken by the worker, which waits at the gate
    wait_for(lambda: a.sink.calls)
    d.dispatch(envs(10, 10))  # queued: the queue was empty
    done = threading.Event()

    def source() -> None:
        d.dispatch(envs(10, 20))
        done.set()

    threading.Thread(target=source, daemon=True).start()
    assert not done.wait(0.5), "a full buffer with when_full: block must make the source wait"
    a.sink.context.shutdown.set()
    assert done.wait(2), "the first signal must end the wait"
    a.sink.gate.set()
    assert a.inlet.begin_stop(5)()
    assert a.sink.got == list(range(30))
    assert identity(a)["dropped"] == 0


def test_a_failing_write_counts_its_batch_failed_and_the_next_batches_go_on(caplog):
    a = active()
    assert isinstance(a.sink, Recorder)
    a.sink.fail_on = {5}
    d = Dispatcher()
    d.add(a)
    for i in range(4):
        d.dispatch(envs(5, i * 5))
    assert a.inlet.begin_stop(5)()
    s = identity(a)
    assert (s["delivered"], s["failed"]) == (15, 5)
    assert a.sink.got == [*range(5), *range(10, 20)]
    assert "failed in write: ConnectionError: destination down" in caplog.text


class Hang(Sink):
    """A write that never returns (until the test ends)."""

    type_name = "hang"
    release = threading.Event()

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self.release.wait()

    def close(self) -> None:
        raise AssertionError("close must never run behind a write that did not return")


def test_stop_abandons_a_write_that_never_returns_within_flush_timeout(caplog):
    a = active("hung", flush_timeout=0.5, cls=Hang)
    d = Dispatcher()
    d.add(a)
    d.dispatch(envs(3))
    d.dispatch(envs(4, 3))
    t0 = time.monotonic()
    assert a.inlet.begin_stop(a.flush_timeout)() is False
    took = time.monotonic() - t0
    try:
        assert took < 0.5 + GRACE + 1.0, took  # the hung write would be for ever; 1 s: load
        s = identity(a)
        assert (s["accepted"], s["delivered"], s["pending"]) == (7, 0, 7)
        assert "did not finish within its flush_timeout of 0.5s" in caplog.text
    finally:
        Hang.release.set()


def test_what_the_deadline_leaves_in_the_buffer_stays_pending_and_is_reported(caplog):
    class Slow(Recorder):
        def write(self, envelopes: Sequence[Envelope]) -> None:
            time.sleep(0.2)
            super().write(envelopes)

    a = active("slow", flush_timeout=0.5, cls=Slow)
    d = Dispatcher()
    d.add(a)
    for i in range(10):
        d.dispatch(envs(2, i * 2))
    assert a.inlet.begin_stop(a.flush_timeout)()  # the worker did stop: it was not stuck
    s = identity(a)
    assert 0 < s["delivered"] < 20 and s["pending"] == 20 - s["delivered"]
    assert "still in its buffer when its flush_timeout ran out" in caplog.text
    assert [c for c, _ in a.sink.calls][-2:] == ["flush", "close"]


def test_envelopes_are_compacted_only_once_every_sink_is_done_with_them():
    class Keeper(Recorder):
        buffered = True  # keeps envelopes after write: asks the core to compact

        def write(self, envelopes: Sequence[Envelope]) -> None:
            super().write(envelopes)
            self.context.delivered(envelopes)

    slow = active("slow")
    keeper = active("keeper", cls=Keeper)
    assert isinstance(slow.sink, Recorder)
    slow.sink.gate.clear()
    d = Dispatcher()
    d.add(slow)
    d.add(keeper)
    batch = envs(3)
    d.dispatch(batch)
    wait_for(lambda: len(keeper.sink.got) == 3)  # type: ignore[attr-defined]
    assert all(e._data is not None for e in batch), "the slow sink has not written them yet"
    slow.sink.gate.set()
    wait_for(lambda: len(slow.sink.got) == 3)
    wait_for(lambda: all(e._data is None for e in batch))
    assert [e.data["seq"] for e in batch] == [0, 1, 2]  # still readable from the JSON
    assert slow.inlet.begin_stop(5)() and keeper.inlet.begin_stop(5)()


@pytest.mark.parametrize("when_full", ["drop_newest", "drop_oldest"])
def test_drops_are_logged_as_dropped(when_full, caplog):
    a = active(max_bytes=1024, when_full=when_full)
    assert isinstance(a.sink, Recorder)
    a.sink.gate.clear()
    d = Dispatcher()
    d.add(a)
    for i in range(6):
        d.dispatch(envs(10, i * 10))
    a.sink.gate.set()
    assert a.inlet.begin_stop(5)()
    s = identity(a)
    assert s["dropped"] > 0
    assert f"when_full: {when_full}): DROPPED" in caplog.text


# -- configuration ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    from spark_sinks.plugins import load_registry

    return load_registry()


def load(tmp_path, registry, **sink: object):
    from spark_sinks.config import load_config
    from tests.helpers import write_config

    path = write_config(tmp_path / "c.yaml", sinks={"out": {"type": "stdout", **sink}})
    return load_config(path, registry).sinks["out"].config


def test_every_sink_has_a_memory_buffer_of_8_mib_that_blocks_by_default(tmp_path, registry):
    buffer = load(tmp_path, registry).buffer
    assert (buffer.type, buffer.limit, buffer.when_full) == ("memory", 8 * 1024 * 1024, "block")


def test_spool_still_works_as_a_deprecated_alias_of_the_disk_buffer(tmp_path, registry, caplog):
    spool = {"path": str(tmp_path / "spool"), "on_full": "drop_oldest", "sync": "normal"}
    config = load(tmp_path, registry, spool=spool)
    assert (
        config.buffer
        == load(
            tmp_path,
            registry,
            buffer={
                "type": "disk",
                "path": spool["path"],
                "when_full": "drop_oldest",
                "sync": "normal",
            },
        ).buffer
    )
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [
        "sinks.out.spool is deprecated: write buffer: {type: disk, path: ...} instead "
        "(on_full becomes when_full)"
    ]


@pytest.mark.parametrize(
    ("buffer", "error"),
    [
        ({"type": "disk"}, "sinks.out.buffer: path is required with type: disk"),
        (
            {"type": "disk", "path": "/x", "when_full": "drop_newest"},
            "sinks.out.buffer: when_full: drop_newest needs type: memory",
        ),
        ({"path": "/x"}, "sinks.out.buffer: path needs type: disk"),
        ({"type": "ram"}, 'sinks.out.buffer.type: Input should be "memory" or "disk"'),
        ({"max_bytes": 10}, "sinks.out.buffer.max_bytes: Input should be greater than or equal"),
        ({"when_full": "wait"}, 'sinks.out.buffer.when_full: Input should be "block", "drop_'),
        ({"size": 1}, "sinks.out.buffer.size: unknown key"),
    ],
)
def test_a_bad_buffer_is_one_line_naming_the_key(tmp_path, registry, buffer, error):
    from spark_sinks.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        load(tmp_path, registry, buffer=buffer)
    message = str(exc.value)
    assert error in message and "\n" not in message, message


def test_buffer_and_spool_together_is_an_error(tmp_path, registry):
    from spark_sinks.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sinks\.out: give buffer or spool"):
        load(tmp_path, registry, buffer={}, spool={"path": "/x"})


def test_a_posted_call_runs_on_the_worker_after_the_batches_before_it(caplog):
    from spark_sinks.errors import SinkError

    a = active()
    assert isinstance(a.sink, Recorder)
    a.sink.gate.clear()
    d = Dispatcher()
    d.add(a)
    d.dispatch(envs(3))
    seen: list[tuple[list[int], int]] = []
    a.inlet.post(lambda: seen.append((list(a.sink.got), threading.get_ident())))

    def fails() -> None:
        raise SinkError("sink 's' failed in machines_retired: no")

    a.inlet.post(fails)  # returns at once: the worker is still held in write
    assert seen == []
    a.sink.gate.set()
    assert a.inlet.begin_stop(5)()
    assert seen == [([0, 1, 2], a.sink.calls[0][1])]
    assert "failed in machines_retired: no" in caplog.text
