"""The Sparkplug B codec, checked against the specification's field numbers and examples by
readers that are not our own (protoc's raw decoder, a hand-written wire reader)."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spark_sinks_sparkplug import codec
from spark_sinks_sparkplug.codec import DT, SparkplugError

from tests.support import protowire

# Field numbers and datatype codes as the Sparkplug 3.0.0 specification lists them.
PAYLOAD_TIMESTAMP, PAYLOAD_METRICS, PAYLOAD_SEQ = 1, 2, 3
M_NAME, M_TIMESTAMP, M_DATATYPE, M_IS_NULL = 1, 3, 4, 7
M_INT, M_LONG, M_FLOAT, M_DOUBLE, M_BOOL, M_STRING, M_BYTES = 10, 11, 12, 13, 14, 15, 16
SPEC_CODES = {
    "Int8": 1, "Int16": 2, "Int32": 3, "Int64": 4, "UInt8": 5, "UInt16": 6, "UInt32": 7,
    "UInt64": 8, "Float": 9, "Double": 10, "Boolean": 11, "String": 12, "DateTime": 13,
    "Text": 14, "UUID": 15, "DataSet": 16, "Bytes": 17, "File": 18, "Template": 19,
    "PropertySet": 20, "PropertySetList": 21, "Int8Array": 22, "Int16Array": 23,
    "Int32Array": 24, "Int64Array": 25, "UInt8Array": 26, "UInt16Array": 27,
    "UInt32Array": 28, "UInt64Array": 29, "FloatArray": 30, "DoubleArray": 31,
    "BooleanArray": 32, "StringArray": 33, "DateTimeArray": 34,
}  # fmt: skip

INT_RANGES = {
    DT.Int8: (-(2**7), 2**7 - 1),
    DT.Int16: (-(2**15), 2**15 - 1),
    DT.Int32: (-(2**31), 2**31 - 1),
    DT.Int64: (-(2**63), 2**63 - 1),
    DT.UInt8: (0, 2**8 - 1),
    DT.UInt16: (0, 2**16 - 1),
    DT.UInt32: (0, 2**32 - 1),
    DT.UInt64: (0, 2**64 - 1),
}


def test_datatype_codes_are_the_specifications() -> None:
    assert {name: DT.Value(name) for name in SPEC_CODES} == SPEC_CODES


def one_metric(datatype: int, value: object) -> bytes:
    mv = codec.MetricValue("v", datatype, value, 1_700_000_000_000)
    return codec.ddata([mv], seq=7, timestamp=1_700_000_000_001)


def metric_fields(payload: bytes) -> dict[int, list[protowire.Field]]:
    top = protowire.by_number(payload)
    (metric,) = top[PAYLOAD_METRICS]
    assert isinstance(metric.value, bytes)
    return protowire.by_number(metric.value)


@pytest.mark.parametrize(
    ("datatype", "value", "field", "raw"),
    [
        (DT.Int8, -1, M_INT, 0xFFFFFFFF),
        (DT.Int16, -30000, M_INT, (-30000) & 0xFFFFFFFF),
        (DT.Int32, -(2**31), M_INT, 2**31),
        (DT.Int64, -2, M_LONG, 2**64 - 2),
        (DT.UInt32, 2**32 - 1, M_INT, 2**32 - 1),
        (DT.UInt64, 2**64 - 1, M_LONG, 2**64 - 1),
        (DT.Boolean, True, M_BOOL, 1),
    ],
)
def test_integers_travel_in_the_specified_fields(
    datatype: int, value: object, field: int, raw: int
) -> None:
    m = metric_fields(one_metric(datatype, value))
    assert m[M_DATATYPE][0].value == datatype
    assert m[M_NAME][0].text == "v"
    assert m[M_TIMESTAMP][0].value == 1_700_000_000_000
    assert m[field][0].wire_type == protowire.VARINT
    assert m[field][0].value == raw


def test_floats_doubles_strings_and_payload_header_by_field_number() -> None:
    payload = codec.ddata(
        [
            codec.MetricValue("f", DT.Float, 1.5, 5),
            codec.MetricValue("d", DT.Double, -0.1, 5),
            codec.MetricValue("s", DT.String, "Grüße", 5),
            codec.MetricValue("o", DT.String, {"a": [1, None]}, 5, json_text=True),
            codec.MetricValue("n", DT.Int32, None, 5),
        ],
        seq=255,
        timestamp=42,
    )
    top = protowire.by_number(payload)
    assert top[PAYLOAD_TIMESTAMP][0].value == 42
    assert top[PAYLOAD_SEQ][0].value == 255
    metrics = [protowire.by_number(f.value) for f in top[PAYLOAD_METRICS]]  # type: ignore[arg-type]
    assert metrics[0][M_FLOAT][0].float == 1.5
    assert metrics[1][M_DOUBLE][0].double == -0.1
    assert metrics[2][M_STRING][0].text == "Grüße"
    assert metrics[3][M_STRING][0].text == '{"a":[1,null]}'
    assert metrics[4][M_IS_NULL][0].value == 1
    assert M_INT not in metrics[4]


def test_protoc_decode_raw_reads_a_dbirth() -> None:
    """protoc's own schema-less decoder (from grpcio-tools) sees our field numbers."""
    defs = [codec.MetricDef("temperature", DT.Float, "float", "Oil temperature")]
    payload = codec.dbirth(defs, seq=1, timestamp=1_000)
    out = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--decode_raw"],
        input=payload,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert out.startswith("1: 1000\n2 {\n")
    for line in (
        '  1: "temperature"',
        "  4: 9",
        "  7: 1",
        '    1: "format"',
        '    1: "description"',
    ):
        assert line in out, out
    assert '      8: "Oil temperature"' in out
    assert "3: 1\n" in out


@given(st.sampled_from(sorted(INT_RANGES)), st.data())
def test_every_integer_in_range_round_trips(datatype: int, data: st.DataObject) -> None:
    lo, hi = INT_RANGES[datatype]
    value = data.draw(st.integers(lo, hi))
    (metric,) = codec.decode(one_metric(datatype, value)).metrics
    assert (metric.datatype, metric.value) == (datatype, value)


@given(st.sampled_from(sorted(INT_RANGES)), st.data())
def test_integers_out_of_range_are_refused(datatype: int, data: st.DataObject) -> None:
    lo, hi = INT_RANGES[datatype]
    value = data.draw(st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1))
    with pytest.raises(SparkplugError, match="out of range"):
        one_metric(datatype, value)


def test_decoding_sign_extends_from_the_datatype_width() -> None:
    """An Int8 -1 wrapped at 8 bits (0xFF, as some encoders do) still reads as -1."""
    p = codec.pb.Payload()
    m = p.metrics.add()
    m.datatype = DT.Int8
    m.int_value = 0xFF
    assert codec.decode(p.SerializeToString()).metrics[0].value == -1


ARRAYS = {
    DT.Int8Array: st.integers(-(2**7), 2**7 - 1),
    DT.Int16Array: st.integers(-(2**15), 2**15 - 1),
    DT.Int32Array: st.integers(-(2**31), 2**31 - 1),
    DT.Int64Array: st.integers(-(2**63), 2**63 - 1),
    DT.UInt8Array: st.integers(0, 2**8 - 1),
    DT.UInt16Array: st.integers(0, 2**16 - 1),
    DT.UInt32Array: st.integers(0, 2**32 - 1),
    DT.UInt64Array: st.integers(0, 2**64 - 1),
    DT.FloatArray: st.floats(width=32, allow_nan=False),
    DT.DoubleArray: st.floats(allow_nan=False),
    DT.BooleanArray: st.booleans(),
    DT.StringArray: st.text().filter(lambda s: "\0" not in s),
    DT.DateTimeArray: st.integers(0, 2**64 - 1),
}


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(ARRAYS)), st.data())
def test_every_array_round_trips(datatype: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(ARRAYS[datatype], max_size=12))
    (metric,) = codec.decode(one_metric(datatype, values)).metrics
    assert metric.datatype == datatype
    assert metric.value == values


@pytest.mark.parametrize(
    ("datatype", "values", "expected"),
    [  # the specification's examples (its Int8 and FloatArray examples are misprinted)
        (DT.Int16Array, [-30000, 30000], "d08a3075"),
        (DT.Int32Array, [-1, 315338746], "fffffffffaafcb12"),
        (DT.UInt16Array, [30, 52360], "1e0088cc"),
        (DT.UInt32Array, [52, 3293969225], "3400000049fb55c4"),
        (DT.UInt64Array, [52, 16444743074749521625], "3400000000000000d99e02d1b27637e4"),
        (DT.StringArray, ["ABC", "hello"], "41424300" + "68656c6c6f00"),
        (DT.BooleanArray, [0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1], "0c00000034d0"),
        (DT.Int8Array, [-23, 123], "e97b"),
        (DT.FloatArray, [1.5], struct.pack("<f", 1.5).hex()),
    ],
)
def test_arrays_match_the_specification(datatype: int, values: list[object], expected: str) -> None:
    if datatype == DT.BooleanArray:
        values = [bool(v) for v in values]
    m = metric_fields(one_metric(datatype, values))
    assert m[M_BYTES][0].value == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        (DT.Int32Array, b"\x01\x02\x03"),
        (DT.BooleanArray, b"\x09\x00\x00\x00\xff"),
        (DT.BooleanArray, b"\x01"),
        (DT.StringArray, b"abc"),
        (DT.StringArray, b"\xff\x00"),
    ],
)
def test_malformed_arrays_are_refused(datatype: int, data: bytes) -> None:
    with pytest.raises(SparkplugError):
        codec.decode_array(datatype, data)


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_sparkplug_error(data: bytes) -> None:
    with contextlib.suppress(SparkplugError):
        codec.decode(data)


def test_spark_formats_map_onto_sparkplug_datatypes() -> None:
    assert codec.datatype_for("int8") == DT.Int8
    assert codec.datatype_for("uint64") == DT.UInt64
    assert codec.datatype_for("float") == DT.Float
    assert codec.datatype_for("double") == DT.Double
    assert codec.datatype_for("bool") == codec.datatype_for("boolean") == DT.Boolean
    assert codec.datatype_for("char") == codec.datatype_for("string") == DT.String
    assert codec.datatype_for("object") == DT.String
    assert codec.datatype_for("int16", array=True) == DT.Int16Array
    assert codec.datatype_for("char", array=True) == DT.StringArray
    assert codec.datatype_for("object", array=True) == DT.String
    # a list that no array type can hold becomes JSON text
    assert codec.value_datatype("int32", [1, None]) == DT.String
    assert codec.value_datatype("int32", [1, 2]) == DT.Int32Array
    assert codec.value_datatype("string", ["a\0b"]) == DT.String


def test_record_values_from_a_spark_record() -> None:
    attributes = {
        "t": {"name": "t", "format": "float", "value": 1.5},
        "o": {"name": "o", "format": "object", "value": {"k": 1}},
        "l": {"name": "l", "format": "int8", "value": [1, None]},
        "s": {"name": "s", "format": "char", "value": "x"},
    }
    values = {v.name: v for v in codec.record_values(attributes, 9)}
    assert (values["t"].datatype, values["t"].json_text) == (DT.Float, False)
    assert (values["o"].datatype, values["o"].json_text) == (DT.String, True)
    assert (values["l"].datatype, values["l"].json_text) == (DT.String, True)
    assert (values["s"].datatype, values["s"].json_text) == (DT.String, False)
    decoded = codec.decode(codec.ddata(values.values(), seq=0)).metric("l")
    assert decoded is not None and decoded.value == "[1,null]"


def test_node_birth_and_death_carry_bdseq_as_int64() -> None:
    birth = codec.decode(codec.nbirth(bd_seq=255, seq=0))
    assert birth.seq == 0
    bd = birth.metric(codec.BD_SEQ)
    assert bd is not None and (bd.datatype, bd.value) == (DT.Int64, 255)
    rebirth = birth.metric(codec.REBIRTH)
    assert rebirth is not None and (rebirth.datatype, rebirth.value) == (DT.Boolean, False)
    death_raw = codec.ndeath(bd_seq=4)
    assert PAYLOAD_SEQ not in protowire.by_number(death_raw)  # NDEATH has no seq
    death = codec.decode(death_raw)
    assert [(m.name, m.value) for m in death.metrics] == [("bdSeq", 4)]


def test_rebirth_request() -> None:
    p = codec.pb.Payload()
    m = p.metrics.add()
    m.name = codec.REBIRTH
    codec.set_value(m, DT.Boolean, True)
    assert codec.is_rebirth_request(p.SerializeToString())
    m.boolean_value = False
    assert not codec.is_rebirth_request(p.SerializeToString())
    assert not codec.is_rebirth_request(b"\xff\xff")


def test_sequence_wraps_after_255() -> None:
    seq = codec.Sequence256(254)
    assert [seq.take() for _ in range(4)] == [254, 255, 0, 1]


@settings(max_examples=200)
@given(st.text(max_size=12))
def test_device_ids_refuse_what_mqtt_or_sparkplug_reserve(name: str) -> None:
    """Refused: empty, a level separator, a wildcard, a control character or surrogate
    (Mosquitto closes the connection on those); accepted IDs survive the topic round trip."""
    reserved = not name or any(c in "/+#" or unicodedata.category(c) in ("Cc", "Cs") for c in name)
    try:
        text = codec.topic("g", "DDATA", "edge", name)
    except SparkplugError as exc:
        assert "device ID" in str(exc)
        return
    assert not reserved, f"{name!r} was accepted"
    t = codec.parse_topic(text)
    assert (t.group_id, t.message_type, t.edge_node_id, t.device_id) == ("g", "DDATA", "edge", name)


@pytest.mark.parametrize(
    "text",
    ["spBv1.0/g/NBIRTH", "spAv1.0/g/NBIRTH/e", "spBv1.0/g/XDATA/e", "spBv1.0/g/DDATA/e",
     "spBv1.0/g/NDATA/e/d", "spBv1.0/g/DDATA/e/d/x"],
)  # fmt: skip
def test_bad_topics_are_refused(text: str) -> None:
    with pytest.raises(SparkplugError, match="topic"):
        codec.parse_topic(text)


def test_spark_time_in_milliseconds() -> None:
    assert codec.spark_time_ms("1970-01-01T00:00:01.234Z") == 1234
    assert codec.spark_time_ms("2026-11-26T10:00:00.000Z") == 1795687200000
    with pytest.raises(SparkplugError, match="before 1970"):
        codec.spark_time_ms("1969-12-31T23:59:59.000Z")
    with pytest.raises(SparkplugError, match="not a Spark timestamp"):
        codec.spark_time_ms("yesterday")
