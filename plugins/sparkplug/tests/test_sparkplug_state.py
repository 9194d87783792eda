"""The Primary Host Application's STATE payload (Sparkplug 3.0): what is one, and that
anything else is refused with a reason, never an unexpected exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spark_sinks_sparkplug.codec import SparkplugError
from spark_sinks_sparkplug.state import HostState, parse_state, state_payload, state_topic


def test_a_state_payload_round_trips() -> None:
    assert parse_state(state_payload(True, 1_790_000_000_000)) == HostState(True, 1_790_000_000_000)
    assert parse_state(b'{"online": false, "timestamp": 5, "bdSeq": 1}') == HostState(False, 5)
    assert state_topic("scada-1") == "spBv1.0/STATE/scada-1"


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"ONLINE", "not JSON"),  # Sparkplug 2.2's plain text
        (b"[true]", "a JSON list, not an object"),
        (b'{"online": "true", "timestamp": 5}', "boolean 'online'"),
        (b'{"online": true}', "'timestamp'"),
        (b'{"online": true, "timestamp": 1.5}', "'timestamp'"),
        (b'{"online": true, "timestamp": -1}', "'timestamp'"),
    ],
)
def test_what_is_no_state_payload_says_why(payload: bytes, says: str) -> None:
    with pytest.raises(SparkplugError, match=says):
        parse_state(payload)


def test_a_host_id_that_is_no_topic_level_is_refused() -> None:
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(SparkplugError):
            state_topic(bad)


@given(st.binary(max_size=64) | st.text(max_size=40).map(str.encode))
def test_any_payload_is_a_state_or_refused(payload: bytes) -> None:
    try:
        state = parse_state(payload)
    except SparkplugError:
        return
    assert type(state.online) is bool and type(state.timestamp) is int
