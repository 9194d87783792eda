"""The host application's rules for an edge node's session (``Sessions``), on a clock the
tests move: gaps in ``seq`` wait for the Reorder Timeout, late messages close them,
births and deaths start and end sessions, and requests are rate-limited per node."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from spark_sinks_mqtt_source.sessions import Node, Sessions

NODE = Node("g", "e1")
TIMEOUT = 2.0
REBIRTH_EVERY = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def born(seq: int = 0, bd_seq: int = 0, filters: list[str] | None = None) -> tuple[Sessions, Clock]:
    clock = Clock()
    s = Sessions(filters or ["spBv1.0/#"], TIMEOUT, REBIRTH_EVERY, clock)
    s.birth(NODE, seq, bd_seq)
    return s, clock


def feed(s: Sessions, seqs: list[int]) -> list[str]:
    return [r for seq in seqs if (r := s.message(NODE, seq, "DDATA")) is not None]


def test_in_order_across_the_wrap_is_quiet() -> None:
    s, clock = born(seq=250)
    assert feed(s, [*range(251, 256), *range(0, 300 % 256)]) == []
    clock.now += 100
    assert s.due() == []


def test_a_gap_is_due_only_once_the_reorder_timeout_elapsed() -> None:
    s, clock = born()
    assert feed(s, [1, 2, 4, 5]) == []  # 3 skipped
    clock.now += TIMEOUT - 0.1
    assert s.due() == []
    clock.now += 0.1
    [(node, why)] = s.due()
    assert node == NODE
    assert why == "1 message(s) missing (seq 3 first) after reorder_timeout (2s)"
    assert s.due() == []  # said once


def test_a_late_message_within_the_timeout_closes_the_gap() -> None:
    s, clock = born()
    assert feed(s, [1, 3, 5, 2, 4, 6]) == []
    clock.now += 10 * TIMEOUT
    assert s.due() == []


def test_a_gap_across_the_wrap_names_the_oldest_missing_number() -> None:
    s, clock = born(seq=253)
    assert feed(s, [254, 1, 2]) == []  # 255 and 0 skipped
    clock.now += TIMEOUT
    assert s.due() == [(NODE, "2 message(s) missing (seq 255 first) after reorder_timeout (2s)")]


def test_a_copy_of_an_earlier_message_is_no_gap() -> None:
    s, clock = born()
    assert feed(s, [1, 2, 3, 2, 1, 3, 4]) == []
    clock.now += 10 * TIMEOUT
    assert s.due() == []


def test_messages_before_an_nbirth_are_out_of_step_at_once() -> None:
    s = Sessions(["spBv1.0/#"], TIMEOUT, REBIRTH_EVERY, Clock())
    assert s.message(NODE, 7, "DDATA") == "DDATA before the edge node's NBIRTH"
    s.birth(NODE, 0, 3)
    assert s.message(NODE, 1, "DBIRTH") is None


def test_an_ndeath_ends_the_session_only_with_its_births_bdseq() -> None:
    s, _ = born(bd_seq=5)
    assert not s.death(NODE, 4)  # an older connection's will, arriving late
    assert s.message(NODE, 1, "NDATA") is None
    assert s.death(NODE, 5)
    assert s.message(NODE, 2, "NDATA") == "NDATA before the edge node's NBIRTH"


def test_requests_are_rate_limited_per_node_and_leave_the_node_unborn() -> None:
    s, clock = born()
    other = Node("g", "e2")
    assert s.may_ask(NODE)
    assert s.may_ask(other)
    assert s.message(NODE, 1, "DDATA") == "DDATA before the edge node's NBIRTH"
    assert not s.may_ask(NODE)
    s.birth(NODE, 0, 1)  # the rebirth: in step again, and the limit still holds
    assert s.message(NODE, 1, "DDATA") is None
    clock.now += REBIRTH_EVERY - 1
    assert not s.may_ask(NODE)
    clock.now += 1
    assert s.may_ask(NODE)


@pytest.mark.parametrize(
    ("filters", "covered"),
    [
        (["spBv1.0/#"], True),
        (["spBv1.0/g/#"], True),
        (["spBv1.0/+/+/e1/#", "spBv1.0/g/+/e1"], True),
        (["spBv1.0/g/DDATA/#"], False),
        (["spBv1.0/g/+/e1/press"], False),
        (["spBv1.0/g/+/e1", "spBv1.0/g/+/e1/press"], False),
        (["$share/hosts/spBv1.0/#"], False),
    ],
)
def test_only_a_node_whose_every_message_comes_here_is_followed(
    filters: list[str], covered: bool
) -> None:
    assert Sessions(filters, TIMEOUT, REBIRTH_EVERY, Clock()).covered(NODE) is covered


@given(
    start=st.integers(0, 255),
    n=st.integers(1, 600),
    swaps=st.lists(st.integers(0, 599), max_size=40),
)
@example(start=255, n=2, swaps=[0])
def test_any_reordering_of_adjacent_messages_is_never_a_gap(
    start: int, n: int, swaps: list[int]
) -> None:
    s, clock = born(seq=start)
    seqs = [(start + 1 + i) % 256 for i in range(n)]
    for i in swaps:
        if i + 1 < n:
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    assert feed(s, seqs) == []
    clock.now += TIMEOUT
    assert s.due() == []


@given(
    start=st.integers(0, 255),
    n=st.integers(2, 600),
    lost=st.integers(0, 598),
)
@example(start=0, n=258, lost=255)
def test_any_lost_message_followed_by_another_is_due(start: int, n: int, lost: int) -> None:
    lost %= n - 1  # never the last one: a message after it shows the gap
    s, clock = born(seq=start)
    seqs = [(start + 1 + i) % 256 for i in range(n) if i != lost]
    assert feed(s, seqs) == []
    clock.now += TIMEOUT
    [(node, _why)] = s.due()
    assert node == NODE


def test_memory_stays_bounded_whatever_nodes_appear() -> None:
    limit = 200
    s = Sessions(["spBv1.0/#"], TIMEOUT, REBIRTH_EVERY, Clock(), max_nodes=limit)
    for i in range(limit + 50):
        node = Node("g", f"n{i}")
        s.covered(node)
        s.birth(node, 0, 0)
        s.message(node, 1, "DDATA")
    assert len(s._nodes) == limit and len(s._covered) <= limit
    assert s.forgotten == 50
    # the newest are still followed; the oldest, forgotten, is out of step when it sends
    assert s.message(Node("g", f"n{limit + 49}"), 2, "DDATA") is None
    assert s.message(Node("g", "n0"), 2, "DDATA") == "DDATA before the edge node's NBIRTH"
    assert s.forgotten == 51 and len(s._nodes) == limit


def test_the_node_heard_from_least_recently_is_forgotten_first() -> None:
    s = Sessions(["spBv1.0/#"], TIMEOUT, REBIRTH_EVERY, Clock(), max_nodes=2)
    a, b, c = (Node("g", n) for n in "abc")
    s.birth(a, 0, 0)
    s.birth(b, 0, 0)
    assert s.message(a, 1, "DDATA") is None  # a is heard from again: b is the oldest now
    s.birth(c, 0, 0)
    assert s.forgotten == 1
    assert s.message(a, 2, "DDATA") is None
    assert s.message(b, 1, "DDATA") == "DDATA before the edge node's NBIRTH"


@given(start=st.integers(0, 255), order=st.permutations(range(40)))
def test_place_orders_any_reordering_within_the_window(start: int, order: list[int]) -> None:
    """Messages shuffled among 40 (well within 128) are placed in publishing order."""
    s, _ = born(seq=start)
    placed = {}
    for i in order:
        p = s.place(NODE, (start + 1 + i) % 256)
        assert p is not None
        placed[i] = p
    assert sorted(placed, key=lambda i: placed[i]) == list(range(40))
    assert len({p.epoch for p in placed.values()}) == 1


def test_place_starts_a_new_epoch_with_each_session() -> None:
    s, _ = born(seq=0)
    first = s.place(NODE, 5)
    s.birth(NODE, 0, 1)
    again = s.place(NODE, 1)
    assert first is not None and again is not None
    assert not first.before(again) and not again.before(first)  # not comparable
    assert s.place(NODE, None) is None and s.place(NODE, 256) is None
