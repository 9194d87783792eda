"""The contract kit catches the mistakes it exists for: each sink here breaks one rule,
and the kit's check for that rule fails on it (and passes on a correct sink)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar, Literal

import pytest
from pydantic import ConfigDict

from spark_sinks import Envelope, Sink, SinkConfig, SinkError
from spark_sinks.testing import SinkContract, SinkHarness, sample_envelopes

DESTINATION: list[dict] = []


class MemoryConfig(SinkConfig):
    type: Literal["memory"] = "memory"


class MemorySink(Sink):
    """Correct: unbuffered, a returned write is at the destination."""

    type_name = "memory"
    Config = MemoryConfig

    def write(self, envelopes: Sequence[Envelope]) -> None:
        DESTINATION.extend(e.to_dict() for e in envelopes)


class BufferedMemorySink(MemorySink):
    """Correct: buffered, delivers and acknowledges in flush."""

    buffered = True

    def open(self) -> None:
        self.queue: list[Envelope] = []

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self.queue.extend(envelopes)

    def flush(self, timeout: float | None = None) -> None:
        batch, self.queue = self.queue, []
        DESTINATION.extend(e.to_dict() for e in batch)
        self.context.delivered(batch)


class NeverAcknowledges(BufferedMemorySink):
    def flush(self, timeout: float | None = None) -> None:
        batch, self.queue = self.queue, []
        DESTINATION.extend(e.to_dict() for e in batch)


class AcknowledgesWhenUnbuffered(MemorySink):
    def write(self, envelopes: Sequence[Envelope]) -> None:
        super().write(envelopes)
        self.context.delivered(envelopes)


class AcknowledgesLate(BufferedMemorySink):
    def flush(self, timeout: float | None = None) -> None:
        batch, self.queue = self.queue, []
        DESTINATION.extend(e.to_dict() for e in batch)
        self.late = threading.Timer(0.05, self.context.delivered, [batch])
        self.late.start()

    def close(self) -> None:
        self.late.join()


class DeliversOnlyOnClose(BufferedMemorySink):
    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        super().flush()


class Mangles(MemorySink):
    def write(self, envelopes: Sequence[Envelope]) -> None:
        DESTINATION.extend({**e.to_dict(), "host": e.host.upper()} for e in envelopes)


class ModifiesEnvelopes(MemorySink):
    def write(self, envelopes: Sequence[Envelope]) -> None:
        for e in envelopes:
            e.data["sink"] = "memory"
        super().write(envelopes)


class RetriesOnItsOwnThread(MemorySink):
    """Wrong: puts the first batch off and writes it again from a timer thread."""

    def open(self) -> None:
        self.retry: threading.Timer | None = None

    def write(self, envelopes: Sequence[Envelope]) -> None:
        if self.retry is None:
            self.retry = threading.Timer(0.01, self.write, [envelopes])
            self.retry.start()
            return
        super().write(envelopes)

    def flush(self, timeout: float | None = None) -> None:
        if self.retry is not None:
            self.retry.join()


class LaxConfig(MemoryConfig):
    model_config = ConfigDict(extra="ignore")


class IgnoresUnknownKeys(MemorySink):
    Config = LaxConfig


class Contract(SinkContract):
    sink_class: ClassVar[type[Sink]] = MemorySink


@pytest.fixture(autouse=True)
def empty_destination():
    DESTINATION.clear()


def check(rule: str, sink_class: type[Sink]) -> None:
    """Run one contract test against ``sink_class``, as pytest would."""
    contract = Contract()
    contract.sink_class = sink_class
    harness = SinkHarness(sink_class, {})
    try:
        if rule == "acknowledged":
            contract.test_every_envelope_is_acknowledged_once_before_flush_returns(
                harness, sample_envelopes()
            )
        elif rule == "flush before close":
            contract.test_lifecycle_runs_in_order_and_flush_delivers_before_close(
                harness, lambda: list(DESTINATION), sample_envelopes()
            )
        elif rule == "intact":
            contract.test_records_and_metadata_arrive_intact(
                harness, lambda: list(DESTINATION), sample_envelopes()
            )
        elif rule == "worker model":
            contract.test_runs_under_the_worker_model(
                harness, lambda: list(DESTINATION), sample_envelopes()
            )
        elif rule == "unknown key":
            contract.test_unknown_config_key_is_an_error_naming_it({})
    finally:
        harness.abandon()


@pytest.mark.parametrize(
    "rule", ["acknowledged", "flush before close", "intact", "worker model", "unknown key"]
)
@pytest.mark.parametrize("sink_class", [MemorySink, BufferedMemorySink])
def test_correct_sinks_pass_every_rule(rule, sink_class):
    check(rule, sink_class)


@pytest.mark.parametrize(
    ("rule", "sink_class", "message"),
    [
        ("acknowledged", NeverAcknowledges, "must pass every envelope"),
        ("acknowledged", AcknowledgesWhenUnbuffered, "unbuffered sink must not call"),
        ("acknowledged", AcknowledgesLate, "acknowledged after the final flush returned"),
        ("flush before close", DeliversOnlyOnClose, "after flush returned, before close"),
        ("intact", Mangles, "arrived changed"),
        ("intact", ModifiesEnvelopes, "the sink modified envelopes"),
        ("worker model", RetriesOnItsOwnThread, "write was called from 2 threads"),
        ("unknown key", IgnoresUnknownKeys, "DID NOT RAISE"),
    ],
)
def test_a_sink_breaking_a_rule_fails_that_check(rule, sink_class, message):
    with pytest.raises((AssertionError, pytest.fail.Exception), match=message):
        check(rule, sink_class)


def test_harness_makes_every_call_on_one_worker_thread_and_raises_a_failing_write_again():
    class Fails(MemorySink):
        def write(self, envelopes: Sequence[Envelope]) -> None:
            raise ConnectionError("down")

    harness = SinkHarness(Fails, {})
    harness.start()
    with pytest.raises(SinkError, match="failed in write: ConnectionError: down"):
        harness.write(sample_envelopes()[:3])
    harness.stop()
    assert harness.sink.stats.failed == 3
    threads = {t for _, t in harness.threads}
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_harness_reports_the_lifecycle_and_acknowledgements_in_order():
    harness = SinkHarness(BufferedMemorySink, {})
    harness.start()
    harness.write(sample_envelopes()[:2])
    harness.flush()
    harness.write(sample_envelopes()[2:3])
    harness.stop()
    assert harness.events == [
        *["open", "open returned", "check", "check returned"],
        *["write", "write returned", "flush", "delivered(2)", "flush returned"],
        *["write", "write returned", "flush", "delivered(1)", "flush returned"],
        *["close", "close returned"],
    ]
