"""``Feed.settled()``: how far a source that acknowledges its input (MQTT) may acknowledge.

An item is settled once it is dispatched, rejected or dropped; a data point waiting in an
open record is not, and holds back every item after it (acknowledgements go in order)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spark_sinks.assembly import Assembler
from spark_sinks.dispatch import Dispatcher
from spark_sinks.pipeline import Pipeline, Rejects
from tests.helpers import machines

T0 = "2026-11-26T10:00:00.000Z"


def pipeline(on_incomplete: Any = "drop") -> Pipeline:
    return Pipeline(Assembler(machines(), "gw", on_incomplete), Dispatcher(), Rejects(None))


def point(machine: str, variable: str, value: Any) -> dict[str, Any]:
    return {"machine": machine, "variable": variable, "value": value, "time": T0}


def test_whole_records_and_rejects_settle_at_once() -> None:
    p = pipeline()
    p.item({"machine": "press-1", "values": {"temperature": 1.0, "count": 1}}, "t")
    p.item({"machine": "nope", "values": {}}, "t")  # rejected: unknown machine
    p.reject("t", "invalid JSON")
    p.flush()
    assert p.settled() == 3


def test_an_open_record_holds_back_what_follows_until_it_completes() -> None:
    p = pipeline()
    p.item(point("press-1", "temperature", 1.0), "t")  # 1 opens press-1
    p.item({"machine": "press-2", "values": {"temperature": 2.0, "state": "a"}}, "t")  # 2
    p.flush()
    assert p.settled() == 0
    p.item(point("press-2", "state", "b"), "t")  # 3 opens press-2
    p.item(point("press-1", "count", 7), "t")  # 4 completes press-1
    p.flush()
    assert p.settled() == 2  # press-2's point 3 still waits
    p.item(point("press-2", "temperature", 3.0), "t")  # 5 completes press-2
    p.flush()
    assert p.settled() == 5


def test_a_dropped_incomplete_record_settles() -> None:
    p = pipeline("drop")
    p.item(point("press-1", "temperature", 1.0), "t")  # 1
    p.item(point("press-1", "temperature", 2.0), "t")  # 2: drops 1, opens a new record
    p.flush()
    assert p.settled() == 1


def test_nothing_is_settled_before_it_is_dispatched() -> None:
    p = pipeline()
    p.item({"machine": "press-1", "values": {"temperature": 1.0, "count": 1}}, "t")
    assert p.settled() == 0
    p.flush()
    assert p.settled() == 1


VARS = {"press-1": ("temperature", "count"), "press-2": ("temperature", "state")}
VALUES = {"temperature": 1.5, "count": 3, "state": "run"}


@given(st.lists(st.tuples(st.sampled_from(sorted(VARS)), st.integers(0, 1)), max_size=40))
def test_settled_is_the_item_before_the_oldest_open_record(steps: list[tuple[str, int]]) -> None:
    """Against a small model: a machine's record is open from its first point until every
    variable has a value; a repeated variable drops it and opens a new one."""
    p = pipeline("drop")
    open_since: dict[str, tuple[int, set[str]]] = {}
    for n, (machine, which) in enumerate(steps, start=1):
        variable = VARS[machine][which]
        p.item(point(machine, variable, VALUES[variable]), "t")
        first, seen = open_since.get(machine, (n, set()))
        if variable in seen:
            first, seen = n, set()
        seen.add(variable)
        if len(seen) == len(VARS[machine]):
            open_since.pop(machine, None)
        else:
            open_since[machine] = (first, seen)
        p.flush()
        expect = min((f for f, _ in open_since.values()), default=n + 1) - 1
        assert p.settled() == expect
