"""The counters a snapshot shows (status file, log line, Prometheus) never go down while a
reload restarts a spooled sink, whatever moment the reporter or a scrape takes it: a
Prometheus counter that goes down reads as a restart of the process, and ``increase()``
then counts everything again."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from spark_sinks import runtime as runtime_module
from spark_sinks.config import load_config
from spark_sinks.dispatch import Dispatcher
from spark_sinks.envelope import Envelope
from spark_sinks.plugins import PluginInfo, Provided, load_registry
from spark_sinks.runtime import Runtime
from spark_sinks.sink import identity_holds
from tests.faults.test_accounting import MACHINE, FaultySink, _Faults

COUNTERS = ("accepted", "delivered", "dead_lettered", "dropped", "failed")


class Samples:
    """Snapshots of sink ``f``, taken from any thread; checks each against the last."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.taken = 0
        self.wrong: list[str] = []
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()  # samples come from the test and the sampler thread

    def take(self) -> None:
        if self.runtime is None:
            return
        with self._lock:  # one at a time, so "the last" is well defined
            s: dict[str, Any] = self.runtime.snapshot()["sinks"]["f"]
            self.taken += 1
            if not identity_holds(s):
                self.wrong.append(f"identity broken: {s}")
            for k in COUNTERS:
                if s[k] < self._last.get(k, 0):
                    self.wrong.append(f"{k} went down: {self._last[k]} -> {s[k]}")
                self._last[k] = s[k]


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> Samples:
    """Every dispatch (the batches, and the metadata a reload sends a restarted sink
    through a dispatcher of its own) first takes a snapshot."""
    taken = Samples()

    class Sampling(Dispatcher):
        def dispatch(self, envelopes: list[Envelope]) -> None:
            taken.take()
            super().dispatch(envelopes)

    monkeypatch.setattr(runtime_module, "Dispatcher", Sampling)
    return taken


def _config(path: Path, flush_timeout: float) -> Path:
    sink = {
        "type": "faulty",
        "flush_timeout": flush_timeout,
        "spool": {"path": str(path.parent / "spool"), "sync": "normal"},
    }
    cfg = {"host": "gw", "machines": MACHINE, "sinks": {"f": sink}}
    path.write_text(yaml.safe_dump({**cfg, "operations": {"stats_interval": 0}}))
    return path


def test_counters_never_go_down_while_a_reload_hands_a_spool_over(
    tmp_path: Path, samples: Samples
) -> None:
    registry = load_registry()
    registry.sink_types["faulty"] = Provided(FaultySink, PluginInfo("faulty-test"))
    _Faults.down, _Faults.reject, _Faults.delivered = True, False, []
    config = _config(tmp_path / "c.yaml", 0.2)
    rt = Runtime(load_config(config, registry), registry)
    rt.start()
    samples.runtime = rt
    done = threading.Event()

    def sampler() -> None:  # the reporter's and a scraper's view, at any moment
        while not done.wait(0.001):  # pacing only: the checks count, they do not time
            samples.take()

    thread = threading.Thread(target=sampler, name="sampler", daemon=True)
    thread.start()
    try:
        seq = 0
        for reload in range(6):
            for _ in range(50):  # the destination is down: they wait in the spool
                item = {"machine": "m", "time": 1_790_000_000_000 + seq, "values": {"seq": seq}}
                rt.pipeline.item(item, "test")
                seq += 1
            rt.pipeline.flush()
            # a changed sink: stopped with its spool full, restarted on the same spool
            _config(config, 0.2 if reload % 2 else 0.25)
            assert rt.reload()
        # the destination back, and time enough for the final flush to deliver it all
        _Faults.down = False
        _config(config, 20.0)
        assert rt.reload()
        rt.shutdown()
    finally:
        done.set()
        thread.join(10)
        _Faults.down = False
    assert not samples.wrong, samples.wrong[:5]
    assert samples.taken > 14  # at least the two samples of every reload were taken
    final = rt.report().sinks["f"]
    # every record once, plus the metadata envelope each restarted instance gets
    assert set(_Faults.delivered) == set(range(300)), final
    assert final["accepted"] == final["delivered"] == 307 and final["replayed"] == 0, final
