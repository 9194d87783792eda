"""For the plugin tests: sink type ``probe`` appends each envelope's JSON to a file;
sink type ``failing`` raises in the lifecycle step named by ``fail_in``; source type
``counter`` feeds 0, 1, 2, ... to one variable."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from spark_sinks import Envelope, Sink, SinkConfig, hookimpl
from spark_sinks.sources import Feed, Source, SourceConfig


class ProbeConfig(SinkConfig):
    type: Literal["probe"] = "probe"
    path: Path


class ProbeSink(Sink):
    type_name = "probe"
    Config = ProbeConfig

    def open(self) -> None:
        self._fh = open(self.config.path, "ab")  # noqa: SIM115

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self._fh.write(b"".join(e.to_json() + b"\n" for e in envelopes))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class FailingConfig(SinkConfig):
    type: Literal["failing"] = "failing"
    fail_in: Literal["open", "check", "write", "flush", "close"] = "write"


class FailingSink(Sink):
    type_name = "failing"
    Config = FailingConfig

    def _maybe_fail(self, step: str) -> None:
        if self.config.fail_in == step:
            raise RuntimeError(f"boom in {step}")

    def open(self) -> None:
        self._maybe_fail("open")

    def check(self) -> str:
        self._maybe_fail("check")
        return "ok"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self._maybe_fail("write")

    def flush(self, timeout: float | None = None) -> None:
        self._maybe_fail("flush")

    def close(self) -> None:
        self._maybe_fail("close")


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(ProbeSink)
    register(FailingSink)


class CounterConfig(SourceConfig):
    type: Literal["counter"] = "counter"
    machine: str
    variable: str
    count: int = 3
    odd_counters: bool = False
    """Also count under names and values the core must leave out."""


class CounterSource(Source):
    """Feeds ``count`` data points 0, 1, 2, ... to one variable."""

    type_name = "counter"
    Config = CounterConfig

    def run(self, feed: Feed, stop: threading.Event) -> None:
        for i in range(self.config.count):
            if stop.is_set():
                break
            feed.point(self.config.machine, self.config.variable, i)
        feed.flush()

    def counters(self) -> dict[str, int]:
        good = {"points": self.config.count}
        if not self.config.odd_counters:
            return good
        return {**good, "per/second": 1, "negative": -1, "ratio": 0.5, "x" * 65: 1}  # type: ignore[dict-item]


@hookimpl
def spark_sinks_register_sources(register):  # type: ignore[no-untyped-def]
    register(CounterSource)
