"""Record assembly: per-machine cycles, incomplete records, metadata, publishDisabled."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_sinks.assembly import Assembler, InputError
from tests.helpers import MACHINES, machines

T0 = "2026-11-26T10:00:00.000Z"
T1 = "2026-11-26T10:00:01.000Z"


def make(on_incomplete="drop"):
    return Assembler(machines(), "gw", on_incomplete)


def test_record_is_emitted_once_every_variable_has_a_value():
    a = make()
    assert a.add_point("press-1", "temperature", 71.2, T0) == []
    [env] = a.add_point("press-1", "count", 12, T1)
    assert env.to_dict() == {
        "type": "record",
        "host": "gw",
        "data": {
            "machine": "press-1",
            "time": T0,  # the time of the cycle's first value, as the original did
            "attributes": {
                "temperature": {
                    "name": "temperature",
                    "description": "Oil temperature",
                    "format": "float",
                    "value": 71.2,
                },
                "count": {"name": "count", "format": "int32", "value": 12},
            },
        },
    }
    assert env.machine == "press-1"


def test_interleaved_machines_lose_no_record():
    a = make()
    out = []
    for i in range(50):
        out += a.add_point("press-1", "temperature", float(i), T0)
        out += a.add_point("press-2", "state", f"s{i}", T0)
        out += a.add_point("press-2", "temperature", float(-i), T0)
        out += a.add_point("press-1", "count", i, T0)
    by_machine = {"press-1": [], "press-2": []}
    for env in out:
        by_machine[env.data["machine"]].append(env.data["attributes"])
    assert len(by_machine["press-1"]) == 50
    assert len(by_machine["press-2"]) == 50
    assert [r["count"]["value"] for r in by_machine["press-1"]] == list(range(50))
    assert [r["state"]["value"] for r in by_machine["press-2"]] == [f"s{i}" for i in range(50)]
    assert a.incomplete_dropped == 0


def test_repeated_variable_drops_incomplete_record_by_default(caplog):
    a = make()
    a.add_point("press-1", "temperature", 1.0, T0)
    assert a.add_point("press-1", "temperature", 2.0, T1) == []
    [env] = a.add_point("press-1", "count", 5, T1)
    assert env.data["attributes"]["temperature"]["value"] == 2.0
    assert env.data["time"] == T1
    assert a.incomplete_dropped == 1
    assert "dropped an incomplete record of press-1" in caplog.text


def test_repeated_variable_emits_incomplete_record_when_configured():
    a = make("emit")
    a.add_point("press-1", "temperature", 1.0, T0)
    [partial] = a.add_point("press-1", "temperature", 2.0, T1)
    assert partial.data["time"] == T0
    assert list(partial.data["attributes"]) == ["temperature"]
    [full] = a.add_point("press-1", "count", 5, T1)
    assert full.data["attributes"]["temperature"]["value"] == 2.0
    assert a.incomplete_emitted == 1


def test_attributes_follow_the_configured_variable_order():
    a = make()
    a.add_point("press-1", "count", 1, T0)
    [env] = a.add_point("press-1", "temperature", 1.0, T0)
    assert list(env.data["attributes"]) == ["temperature", "count"]


def test_whole_record_input_becomes_one_record():
    a = make()
    [env] = a.feed({"machine": "press-2", "time": T0, "values": {"state": "ok", "temperature": 3}})
    assert env.data["attributes"]["temperature"]["value"] == 3
    assert env.data["time"] == T0


def test_whole_record_missing_a_variable_is_rejected_unless_emitting_partials():
    with pytest.raises(InputError, match="lacks variables: count"):
        make().feed({"machine": "press-1", "values": {"temperature": 1.0}})
    [env] = make("emit").feed({"machine": "press-1", "values": {"temperature": 1.0}})
    assert list(env.data["attributes"]) == ["temperature"]


def test_metadata_is_emitted_for_publishing_machines_only():
    envs = make().all_metadata()
    assert [e.machine for e in envs] == ["press-1", "press-2", "press-avg"]
    assert all(e.type == "metadata" for e in envs)
    p1 = envs[0].data
    assert p1["info"] == {"name": "press-1", "description": "Hydraulic press"}
    assert p1["variables"]["count"] == {"name": "count", "format": "int32"}


def test_virtual_machine_metadata_references_its_source():
    env = make().all_metadata()[2]
    var = env.data["variables"]["avg-temp"]
    assert var["srcVariables"] == [{"srcMachine": "press-1", "srcVariable": "temperature"}]
    assert var["referencedMachineInfo"] == {"name": "press-1", "description": "Hydraulic press"}
    assert var["referencedMachineConfig"] == {"enable": True, "publishDisabled": False}
    assert var["referencedVariable"] == {
        "name": "temperature",
        "description": "Oil temperature",
        "format": "float",
    }


def test_publish_disabled_machine_produces_nothing():
    a = make()
    assert a.add_point("hidden", "x", 1, T0) == []
    assert a.feed({"machine": "hidden", "values": {"x": 1}}) == []
    assert a.ignored == 2


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"machine": "nope", "variable": "x", "value": 1}, 'unknown machine "nope"'),
        ({"machine": "press-1", "variable": "nope", "value": 1}, 'has no variable "nope"'),
        ({"machine": "press-1", "variable": "count", "value": 1.5}, "not a valid int32"),
        ({"machine": "press-1", "variable": "count", "value": 2**31}, "not a valid int32"),
        ({"machine": "press-1", "variable": "count", "value": True}, "not a valid int32"),
        ({"machine": "press-2", "variable": "state", "value": 3}, "not a valid char"),
        ({"machine": "press-1", "variable": "count"}, "no 'value'"),
        ({"machine": "press-1", "variable": "count", "value": 1, "time": "soon"}, "ISO 8601"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_items_are_rejected_with_a_reason(item, message):
    with pytest.raises(InputError, match=message):
        make().feed(item)


def test_times_are_normalised_to_utc_milliseconds():
    a = make()
    [env] = a.feed(
        {
            "machine": "press-2",
            "time": "2026-11-26T11:00:00+01:00",
            "values": {"state": "a", "temperature": 1.0},
        }
    )
    assert env.data["time"] == "2026-11-26T10:00:00.000Z"
    [env] = a.feed(
        {
            "machine": "press-2",
            "time": 1_795_000_000_123,
            "values": {"state": "a", "temperature": 1.0},
        }
    )
    assert env.data["time"].endswith(".123Z")


def test_reconfigure_sends_metadata_for_changed_and_newly_enabled_machines():
    a = make()
    defs = {k: dict(v) for k, v in MACHINES.items()}
    defs["press-2"] = {
        **defs["press-2"],
        "variables": {**defs["press-2"]["variables"], "rpm": {"name": "rpm", "format": "uint16"}},
    }
    defs["hidden"] = {**defs["hidden"], "publishDisabled": False}
    envs = a.reconfigure(machines(defs))
    assert sorted(e.machine for e in envs) == ["hidden", "press-2"]
    # assembly follows the new variable list: a record now needs rpm too
    assert a.add_point("press-2", "temperature", 1.0, T0) == []
    assert a.add_point("press-2", "state", "x", T0) == []
    [env] = a.add_point("press-2", "rpm", 1500, T0)
    assert list(env.data["attributes"]) == ["temperature", "state", "rpm"]


@settings(deadline=None)  # timing is not what this tests; a loaded CI machine is slow
@given(st.data())
def test_any_interleaving_of_complete_cycles_yields_every_record(data):
    """Whatever the arrival order across machines, each machine's cycles come out whole."""
    a = make()
    cycles = data.draw(st.integers(1, 8))
    queues = {
        "press-1": [
            (v, val) for i in range(cycles) for v, val in (("temperature", float(i)), ("count", i))
        ],
        "press-2": [
            (v, val) for i in range(cycles) for v, val in (("state", str(i)), ("temperature", 0.5))
        ],
    }
    out = []
    while any(queues.values()):
        name = data.draw(st.sampled_from([k for k, q in queues.items() if q]))
        var, val = queues[name].pop(0)
        out += a.add_point(name, var, val, T0)
    counts = [e.data["attributes"]["count"]["value"] for e in out if e.machine == "press-1"]
    states = [e.data["attributes"]["state"]["value"] for e in out if e.machine == "press-2"]
    assert counts == list(range(cycles))
    assert states == [str(i) for i in range(cycles)]
    assert a.incomplete_dropped == 0


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(deadline=None)
@given(
    values=st.lists(_json_values, min_size=3, max_size=3), desc=st.text(), name=st.text(min_size=1)
)
@pytest.mark.slow
def test_records_are_encoded_exactly_as_json_of_their_dictionary(values, desc, name):
    """Records are encoded from pre-encoded parts; the bytes must be those of the dict."""
    defs = {
        name: {
            "info": {"name": name, "note": desc},
            "variables": {
                "a": {"format": "object", "description": desc},
                'b"\\': {"format": "any"},
                "c": {"format": "object"},
            },
        }
    }
    a = Assembler(machines(defs), f"gw-{desc}")
    keys = ["c", "a", 'b"\\']
    [env] = a.feed({"machine": name, "time": T0, "values": dict(zip(keys, values, strict=True))})
    expected = {
        "type": "record",
        "host": f"gw-{desc}",
        "data": {
            "machine": name,
            "time": T0,
            "attributes": {
                "a": {"name": "a", "description": desc, "format": "object", "value": values[1]},
                'b"\\': {"name": 'b"\\', "format": "any", "value": values[2]},
                "c": {"name": "c", "format": "object", "value": values[0]},
            },
        },
    }
    assert env.to_json() == orjson.dumps(expected)
    assert env.data == expected["data"]


def test_a_value_json_cannot_hold_is_rejected_not_crashing():
    with pytest.raises(InputError, match="cannot be encoded"):
        make().feed({"machine": "press-2", "values": {"temperature": 2**70, "state": "x"}})


@pytest.mark.parametrize(
    ("where", "line", "named"),
    [("stdin", 12, "stdin line 12"), ("mqtt topic plant/a", None, "mqtt topic plant/a")],
)
def test_a_bad_item_from_a_source_is_named_by_where_and_line(tmp_path, where, line, named):
    from spark_sinks.dispatch import Dispatcher
    from spark_sinks.pipeline import Pipeline, Rejects

    rejects = Rejects(tmp_path / "dead.jsonl")
    pipeline = Pipeline(Assembler(machines(), "gw"), Dispatcher(), rejects)

    pipeline.item({"machine": "ghost", "variable": "x", "value": 1}, where, line)
    rejects.close()

    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert [d["where"] for d in dead] == [named]
    assert 'unknown machine "ghost"' in dead[0]["reason"]
    assert pipeline.items == 1


_FORMATS = ["int8", "uint8", "int32", "uint64", "int64", "float", "double", "bool", "string"]
_FORMATS += ["char", "object", "any", "boolean"]
_hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.sampled_from([2**8 - 1, 2**8, -(2**7) - 1, 2**31, 2**63, 2**64 - 1, 2**64, 2**70]),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.none() | st.integers(-300, 300) | st.floats() | st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _outcome(fn):
    try:
        return [e.to_json() for e in fn()]
    except InputError as exc:
        return f"InputError: {exc}"


@settings(deadline=None, max_examples=300)
@given(data=st.data())
def test_the_fast_path_gives_the_bytes_and_errors_of_the_checked_one(data):
    """``add_record`` takes a shortcut for the usual record (every variable, configured
    order, plain types); whatever the definitions (``%`` and quotes in names, host and
    descriptions), values, order and time, it must answer exactly as the general path."""
    text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)
    names = data.draw(
        st.lists(
            text | st.sampled_from(["%b", "%%", "%s", '"']), min_size=1, max_size=5, unique=True
        )
    )
    variables = {
        n: {"format": data.draw(st.sampled_from(_FORMATS))}
        | ({"description": data.draw(text)} if data.draw(st.booleans()) else {})
        for n in names
    }
    machine = data.draw(text | st.just("p%b"))
    host = data.draw(text | st.just("gw%"))
    ms = machines({machine: {"info": {"name": machine}, "variables": variables}})
    values = {n: data.draw(_hostile_values) for n in names if data.draw(st.integers(0, 9))}
    if data.draw(st.booleans()):  # any order, not only the configured one
        keys = data.draw(st.permutations(list(values)))
        values = {k: values[k] for k in keys}
    when = data.draw(st.sampled_from([T0, 1790000000123, -(2**62), "2026-02-30T00:00:00.000Z"]))
    mode = data.draw(st.sampled_from(["drop", "emit"]))
    fast, checked = Assembler(ms, host, mode), Assembler(ms, host, mode)

    got = _outcome(lambda: fast.add_record(machine, values, when))
    expected = _outcome(lambda: checked._checked_record(ms[machine], values, when))

    assert got == expected
    assert fast.incomplete_emitted == checked.incomplete_emitted


def test_the_fast_path_is_taken_and_remembers_a_bounded_number_of_type_signatures():
    defs = {
        "m": {"info": {"name": "m"}, "variables": {f"v{i}": {"format": "any"} for i in range(6)}}
    }
    a = Assembler(machines(defs), "gw")
    kinds = [None, True, 1, 1.5, "s", [1]]  # 6**6 signatures, "any" takes them all
    sent = 0
    for i in range(200):
        values = {f"v{j}": kinds[(i // 6**j) % 6] for j in range(6)}
        [env] = a.add_record("m", values, T0)
        assert env.data["attributes"]["v5"]["value"] == values["v5"]
        sent += 1
    remembered = a._fast["m"]._signatures
    assert 0 < len(remembered) <= 32
    assert sent == 200
