"""A contract test kit for sink authors: check your sink type against what the core
expects, in your own pytest suite, without installing or registering anything.

Subclass :class:`SinkContract` in a test module, name the subclass ``Test...``,
and give it your sink class, a valid config and a way to read back what reached
the destination::

    import json

    import pytest
    from spark_sinks.testing import MISSING, Invalid, SinkContract

    from my_sink import MySink


    class TestMySinkContract(SinkContract):
        sink_class = MySink
        invalid_configs = [Invalid({"path": MISSING}, "path", "required key is missing")]

        @pytest.fixture
        def sink_config(self, tmp_path):
            return {"path": str(tmp_path / "out.jsonl")}

        @pytest.fixture
        def read_back(self, sink_config):
            def read():
                with open(sink_config["path"], "rb") as fh:
                    return [json.loads(line) for line in fh]
            return read

Every ``test_...`` method below then runs against your sink. The kit drives
the real lifecycle through the core (``open -> check -> write* -> flush ->
close``) with a recording subclass of your sink, and checks:

* the lifecycle order, and that everything written is at the destination when
  ``flush`` returns, before ``close`` (flush-before-close);
* that a ``buffered`` sink acknowledges every envelope exactly once through
  ``context.delivered`` before ``flush`` returns, and an unbuffered one never
  does (the core counts it);
* that records, metadata and connection-test envelopes arrive intact (their
  JSON compares equal, including unicode, big integers and nested values), and
  that the sink leaves the envelopes it is given unmodified;
* that configuration errors name the failing key as ``sinks.<name>.<key>``;
* that the sink works under the worker model: every call on the sink's own worker
  thread (not the main thread), ``write`` from that one thread only, ``flush`` and
  ``close`` after the last ``write``.

:class:`SinkHarness` is the driver the contract uses; use it directly for
your own lifecycle tests. This module needs pytest, which spark-sinks itself
does not depend on: it is meant for test suites only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import orjson
import pluggy
import pytest

from . import hookspecs
from .config import SinkSpec, validate_block
from .dispatch import ActiveSink
from .envelope import CONNECTION_TEST, METADATA, RECORD, Envelope
from .errors import ConfigError
from .plugins import PluginInfo, Provided
from .runtime import start_sink
from .sink import Sink, SinkConfig

__all__ = ["MISSING", "Invalid", "SinkContract", "SinkHarness", "sample_envelopes"]

T = TypeVar("T")
HOST = "contract-host"
NAME = "contract"

MISSING: Any = object()
"""Use as a value in :attr:`Invalid.changes` to remove that key from the valid config."""


class Invalid(NamedTuple):
    """One invalid config for :attr:`SinkContract.invalid_configs`.

    ``changes`` is merged over your valid ``sink_config`` (a value of
    :data:`MISSING` removes the key), ``path`` is the key the error must name
    (``"path"``, or ``"retry.attempts"`` for a nested model) and ``message`` a
    piece of text the error must contain.
    """

    changes: Mapping[str, Any]
    path: str
    message: str


def sample_envelopes(host: str = HOST) -> list[Envelope]:
    """Metadata, records and a connection test for two machines, with the values that
    tend to get mangled: unicode, quotes, newlines, big and negative numbers, nulls,
    nested objects and arrays."""
    variables: dict[str, dict[str, Any]] = {
        "temperature": {"name": "temperature", "format": "float", "description": "Öl °C"},
        "count": {"name": "count", "format": "uint64"},
        "state": {"name": "state", "format": "string"},
        "profile": {"name": "profile", "format": "int32", "array": True},
    }
    out = [
        Envelope(
            METADATA,
            host,
            {"info": {"name": m, "description": f"Presse {m} — «test»"}, "variables": variables},
            m,
        )
        for m in ("press-1", "press-2")
    ]
    states = ["running", 'say "hi"', "line\nbreak", "日本語", "", "emoji 🙂"]
    for i in range(24):
        machine = "press-1" if i % 3 else "press-2"
        attrs = {
            "temperature": {**variables["temperature"], "value": 20.5 + i / 8 - (i % 2) * 41.25},
            "count": {**variables["count"], "value": 2**53 + i if i % 5 == 0 else i},
            "state": {**variables["state"], "value": states[i % len(states)]},
            "profile": {**variables["profile"], "value": [i, -i, 0] if i % 4 else []},
        }
        if i % 7 == 0:
            attrs["state"]["value"] = None
        data = {"machine": machine, "time": f"2026-01-02T03:04:{i:02d}.500Z", "attributes": attrs}
        out.append(Envelope(RECORD, host, data, machine))
    out.append(Envelope(CONNECTION_TEST, host, {"message": "connection test", "nested": {"a": 1}}))
    return out


def _plain(envelopes: Sequence[Envelope]) -> list[Any]:
    return [orjson.loads(e.to_json()) for e in envelopes]


class _Journal:
    """What the sink was asked to do and what it acknowledged, in order, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Guards ``events``, ``threads`` and ``acknowledged``."""
        self.events: list[str] = []
        self.threads: list[tuple[str, int]] = []
        """(lifecycle call, id of the thread it was made on), in order."""
        self.acknowledged: list[Envelope] = []
        self.local = threading.local()

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)
            if event in _LIFECYCLE:
                self.threads.append((event, threading.get_ident()))

    def on_delivered(self, envelopes: Sequence[Envelope]) -> None:
        with self.lock:
            self.events.append(f"delivered({len(envelopes)})")
            self.acknowledged.extend(envelopes)


_LIFECYCLE = ("open", "check", "write", "flush", "close")


def _recording(cls: type[Sink], journal: _Journal) -> type[Sink]:
    """A subclass of ``cls`` that journals the lifecycle calls the core makes (not the
    sink's calls to its own methods) and every ``context.delivered``."""

    def init(self: Sink, config: SinkConfig, context: Any) -> None:
        report = context.delivered

        def delivered(envelopes: Sequence[Envelope]) -> None:
            journal.on_delivered(envelopes)
            report(envelopes)

        context.delivered = delivered
        cls.__init__(self, config, context)

    def wrap(name: str) -> Callable[..., Any]:
        def method(self: Sink, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(journal.local, "depth", 0)
            if depth == 0:
                journal.add(name)
            journal.local.depth = depth + 1
            try:
                return getattr(cls, name)(self, *args, **kwargs)
            finally:
                journal.local.depth = depth
                if depth == 0:
                    journal.add(f"{name} returned")

        method.__name__ = name
        return method

    namespace: dict[str, Any] = {"__init__": init, "__module__": cls.__module__}
    namespace.update({name: wrap(name) for name in _LIFECYCLE})
    return type(cls.__name__, (cls,), namespace)


class SinkHarness:
    """Drive one sink instance through the core's lifecycle, step by step.

    The config is validated exactly as ``spark-sinks run`` does (errors are
    ``ConfigError("sinks.contract.<key>: ...")``); ``start`` opens and checks the
    sink with the core's ``start_sink``. As in a run, every call into the sink is
    made on the sink's own worker thread, never on the test's thread; each step
    waits for its call to return. An exception from the sink, ``write`` included,
    is raised again in the test as a ``SinkError`` naming the sink and the step,
    so a failing test says where (the core would count that batch failed and go on).
    """

    def __init__(
        self,
        sink_class: type[Sink],
        config: Mapping[str, Any],
        *,
        name: str = NAME,
        host: str = HOST,
    ) -> None:
        self.sink_class = sink_class
        self.name = name
        self.host = host
        self.journal = _Journal()
        block = {"type": sink_class.type_name, **config}
        self.config: SinkConfig = validate_block(sink_class.Config, block, f"sinks.{name}")
        self.written: list[Envelope] = []
        self.active: ActiveSink | None = None
        self.closed = False

    @property
    def sink(self) -> Sink:
        assert self.active is not None, "call start() first"
        return self.active.sink

    @property
    def events(self) -> list[str]:
        """The lifecycle calls, ``"<call> returned"`` markers and ``"delivered(n)"``."""
        with self.journal.lock:
            return list(self.journal.events)

    @property
    def calls(self) -> list[str]:
        """Only the lifecycle calls, in order: e.g. ``["open", "check", "write", ...]``."""
        return [e for e in self.events if e in _LIFECYCLE]

    @property
    def threads(self) -> list[tuple[str, int]]:
        """``(lifecycle call, thread id)`` of every call the core made, in order."""
        with self.journal.lock:
            return list(self.journal.threads)

    @property
    def acknowledged(self) -> list[Envelope]:
        with self.journal.lock:
            return list(self.journal.acknowledged)

    def start(self, check: bool = True) -> Sink:
        cls = _recording(self.sink_class, self.journal)
        plugin = PluginInfo(name="contract-test", distribution="contract-test")
        spec = SinkSpec(self.name, self.config, Provided(cls, plugin))
        self.active = start_sink(spec, self.host, check=check)
        return self.active.sink

    def write(self, envelopes: Sequence[Envelope]) -> None:
        """Hand one batch to the sink on its worker and count it as the core does;
        a failing ``write`` is counted failed and raised again here."""
        active = self._active()
        batch = list(envelopes)
        n = len(batch)
        active.stats.add("accepted", n)
        self.written.extend(batch)

        def write() -> None:
            try:
                active.call("write", active.sink.write, batch)
            except Exception:
                active.stats.add("failed", n)
                raise
            if not active.sink.buffered:
                active.stats.add("delivered", n)

        active.inlet.run(write)

    def flush(self, timeout: float | None = None) -> None:
        active = self._active()
        limit = active.flush_timeout if timeout is None else timeout
        active.inlet.run(lambda: active.call("flush", active.sink.flush, limit))

    def close(self) -> None:
        """Close the sink on its worker, which then ends."""
        active = self._active()
        self.closed = True
        active.inlet.run(lambda: active.call("close", active.sink.close), last=True)

    def on_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the sink's worker thread and return its result: for a test that
        reaches into the sink's state bound to that thread (e.g. a ``sqlite3``
        connection made in ``open``)."""
        return self._active().inlet.run(fn)

    def _active(self) -> ActiveSink:
        assert self.active is not None, "call start() first"
        return self.active

    def stop(self) -> None:
        """The core's shutdown: final flush, then close."""
        self.flush()
        self.close()

    def abandon(self) -> None:
        """Close a sink left open by a failed test; errors are ignored."""
        active = self.active
        if active is not None and not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                active.inlet.run(active.sink.close, last=True)


def _batches(envelopes: list[Envelope], sizes: Sequence[int]) -> Iterator[list[Envelope]]:
    i = 0
    for size in sizes:
        if i >= len(envelopes):
            return
        yield envelopes[i : i + size]
        i += size
    if i < len(envelopes):
        yield envelopes[i:]


class SinkContract:
    """Subclass as ``Test<YourSink>Contract`` and provide:

    * ``sink_class``: your ``Sink`` subclass;
    * a ``sink_config`` fixture: a valid config block for one instance, as a dict
      (as under ``sinks.<name>`` in YAML; ``type`` may be left out);
    * a ``read_back`` fixture: a function returning what reached the destination
      so far as a list of envelope dicts (``{"type", "host", "data"}``);
    * ``invalid_configs``: a list of :class:`Invalid`, at least one.

    Optional: ``plugin_module`` (the module your entry point names, to check its
    hook registers ``sink_class``), ``preserves_order = False`` when your
    destination may reorder envelopes, ``batch_sizes``, and an ``expected`` method
    for a sink that transforms what it writes.
    """

    sink_class: ClassVar[type[Sink]]
    invalid_configs: ClassVar[Sequence[Invalid]] = ()
    plugin_module: ClassVar[Any] = None
    preserves_order: ClassVar[bool] = True
    batch_sizes: ClassVar[Sequence[int]] = (1, 7, 20)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "invalid_config" in metafunc.fixturenames:
            cases: list[Invalid | None] = [*self.invalid_configs] or [None]
            ids = [c.path if c else "none-declared" for c in cases]
            metafunc.parametrize("invalid_config", cases, ids=ids)

    # -- fixtures the author provides -------------------------------------------------------

    @pytest.fixture
    def sink_config(self) -> dict[str, Any]:
        pytest.fail(
            f"{type(self).__name__} must define a `sink_config` fixture returning a valid "
            "config block for one sink instance (a dict, as under sinks.<name> in YAML)"
        )

    @pytest.fixture
    def read_back(self) -> Callable[[], list[dict[str, Any]]]:
        pytest.fail(
            f"{type(self).__name__} must define a `read_back` fixture returning a function "
            "that lists what reached the destination as envelope dicts"
        )

    # -- fixtures the kit provides ----------------------------------------------------------

    @pytest.fixture
    def harness(self, sink_config: dict[str, Any]) -> Iterator[SinkHarness]:
        h = SinkHarness(self.sink_class, sink_config)
        yield h
        h.abandon()

    @pytest.fixture
    def envelopes(self) -> list[Envelope]:
        return sample_envelopes()

    # -- what the author may override --------------------------------------------------------

    def expected(self, envelopes: Sequence[Envelope]) -> list[Any]:
        """What ``read_back`` should return once these envelopes are delivered: by default
        the envelopes as JSON dicts. Override it for a sink that transforms what it
        writes (e.g. only records, or a different layout)."""
        return _plain(envelopes)

    # -- helpers ----------------------------------------------------------------------------

    def assert_arrived(self, expected: Sequence[Envelope], got: list[Any], when: str) -> None:
        want = orjson.loads(orjson.dumps(self.expected(expected)))
        got = [orjson.loads(orjson.dumps(g)) for g in got]
        if not self.preserves_order:
            want = sorted(want, key=orjson.dumps)
            got = sorted(got, key=orjson.dumps)
        assert len(got) == len(want), f"{when}: {len(got)} envelopes arrived, {len(want)} written"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"{when}: envelope {i} arrived changed"

    def _run(self, harness: SinkHarness, envelopes: list[Envelope]) -> None:
        harness.start()
        for batch in _batches(envelopes, self.batch_sizes):
            harness.write(batch)

    # -- the contract -----------------------------------------------------------------------

    def test_sink_class_declares_type_name_and_config(self, sink_config: dict[str, Any]) -> None:
        cls = self.sink_class
        assert issubclass(cls, Sink), f"{cls!r} must subclass spark_sinks.Sink"
        assert cls.type_name, f"{cls.__name__}.type_name is empty"
        assert issubclass(cls.Config, SinkConfig), "Config must subclass spark_sinks.SinkConfig"
        config = validate_block(cls.Config, {"type": cls.type_name, **sink_config}, "sinks.x")
        assert config.type == cls.type_name

    def test_plugin_registers_the_sink_type(self) -> None:
        if self.plugin_module is None:
            pytest.skip("set plugin_module to the module your entry point names")
        pm = pluggy.PluginManager("spark_sinks")
        pm.add_hookspecs(hookspecs)
        pm.register(self.plugin_module)  # checks hook names and argument names
        pm.check_pending()
        registered: list[type[Sink]] = []
        pm.hook.spark_sinks_register_sink_types(register=registered.append)
        assert self.sink_class in registered

    def test_lifecycle_runs_in_order_and_flush_delivers_before_close(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]], envelopes: list[Envelope]
    ) -> None:
        self._run(harness, envelopes)
        harness.flush()
        self.assert_arrived(envelopes, read_back(), "after flush returned, before close")
        harness.close()
        writes = len(list(_batches(envelopes, self.batch_sizes)))
        assert harness.calls == ["open", "check", *["write"] * writes, "flush", "close"]

    def test_records_and_metadata_arrive_intact(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]], envelopes: list[Envelope]
    ) -> None:
        before = [orjson.dumps(e.to_dict()) for e in envelopes]
        self._run(harness, envelopes)
        harness.stop()
        changed = [i for i, e in enumerate(envelopes) if orjson.dumps(e.to_dict()) != before[i]]
        assert not changed, (
            f"the sink modified envelopes {changed}: the same objects go to every sink"
        )
        self.assert_arrived(envelopes, read_back(), "after close")

    def test_every_envelope_is_acknowledged_once_before_flush_returns(
        self, harness: SinkHarness, envelopes: list[Envelope]
    ) -> None:
        self._run(harness, envelopes)
        harness.stop()
        acked = harness.acknowledged
        stats = harness.sink.stats.snapshot()
        if not harness.sink.buffered:
            assert acked == [], (
                "an unbuffered sink must not call context.delivered: the core counts a "
                "write that returns as delivered (set buffered = True to report yourself)"
            )
        else:
            assert sorted(map(id, acked)) == sorted(map(id, envelopes)), (
                "a buffered sink must pass every envelope it received in write to "
                "context.delivered exactly once (the same objects)"
            )
            events = harness.events
            last_flush_returned = len(events) - 1 - events[::-1].index("flush returned")
            late = [e for e in events[last_flush_returned:] if e.startswith("delivered")]
            assert not late, f"acknowledged after the final flush returned: {events}"
        assert stats["accepted"] == stats["delivered"] == len(envelopes), stats
        assert stats["pending"] == 0, stats

    def test_flush_between_writes_delivers_what_was_written(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]], envelopes: list[Envelope]
    ) -> None:
        first, second = envelopes[:10], envelopes[10:]
        harness.start()
        harness.write(first)
        harness.flush()
        self.assert_arrived(first, read_back(), "after a flush between writes")
        harness.write(second)
        harness.stop()
        self.assert_arrived(envelopes, read_back(), "after close")

    def test_a_run_with_nothing_written_opens_and_closes_cleanly(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]]
    ) -> None:
        harness.start()
        harness.stop()
        assert harness.calls == ["open", "check", "flush", "close"]
        assert read_back() == []

    def test_works_when_the_connection_check_is_skipped(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]], envelopes: list[Envelope]
    ) -> None:
        harness.start(check=False)
        harness.write(envelopes)
        harness.stop()
        assert harness.calls == ["open", "write", "flush", "close"]
        self.assert_arrived(envelopes, read_back(), "after close")

    def test_runs_under_the_worker_model(
        self, harness: SinkHarness, read_back: Callable[[], list[Any]], envelopes: list[Envelope]
    ) -> None:
        """Every call comes from the sink's own worker thread, one at a time; the sink
        never calls its own lifecycle methods from another thread (a retry timer calling
        ``write``, say), and works though that thread is not the main thread."""
        self._run(harness, envelopes)
        harness.stop()
        threads = {t for _, t in harness.threads}
        writers = {t for call, t in harness.threads if call == "write"}
        assert len(writers) == 1, (
            f"write was called from {len(writers)} threads: only the core calls write, "
            "from the sink's worker (retry inside write or on your own thread instead)"
        )
        assert threads == writers, f"calls came from several threads: {harness.threads}"
        assert threading.get_ident() not in threads
        events = harness.events
        last_write = len(events) - 1 - events[::-1].index("write returned")
        assert "flush" in events[last_write:] and "close" in events[last_write:], events
        self.assert_arrived(envelopes, read_back(), "after close, written from a worker")

    def test_unknown_config_key_is_an_error_naming_it(self, sink_config: dict[str, Any]) -> None:
        with pytest.raises(ConfigError) as err:
            SinkHarness(self.sink_class, {**sink_config, "no_such_option": 1})
        assert f"sinks.{NAME}.no_such_option: unknown key" in str(err.value)

    def test_invalid_config_is_an_error_naming_its_key(
        self, sink_config: dict[str, Any], invalid_config: Invalid | None
    ) -> None:
        if invalid_config is None:
            pytest.fail(f"{type(self).__name__}.invalid_configs is empty: declare at least one")
        config = {**sink_config, **invalid_config.changes}
        config = {k: v for k, v in config.items() if v is not MISSING}
        with pytest.raises(ConfigError) as err:
            SinkHarness(self.sink_class, config)
        prefix = f"sinks.{NAME}.{invalid_config.path}: "
        text = str(err.value)
        # errors are joined by "; ", which a message may contain too: cut at the next key
        mine = [e.split(f"; sinks.{NAME}.")[0] for e in text.split(prefix)[1:]]
        assert text.startswith(prefix) or f"; {prefix}" in text, f"no {prefix!r} in: {text}"
        assert any(invalid_config.message in e for e in mine), (
            f"{invalid_config.message!r} not in: {mine}"
        )
