"""PutRecords bodies encoded by orjson (``wire.py``) must be the JSON botocore would send."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import botocore.config
import botocore.session
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kinesis_helpers import open_sink, read_stream
from spark_sinks_kinesis import wire


@pytest.fixture(scope="module")
def client() -> Any:
    """A client that is never used for a call: only its serializers are."""
    return botocore.session.get_session().create_client(
        "kinesis",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(parameter_validation=False),
    )


def both(client: Any, operation: str, params: dict[str, Any]) -> tuple[Any, Any]:
    """botocore's own request for ``params``, and the wrapped serializer's."""
    model = client.meta.service_model.operation_model(operation)
    plain = client._serializer
    if isinstance(plain, wire.PutRecordsSerializer):
        plain = plain.inner
    return (
        plain.serialize_to_request(params, model),
        wire.PutRecordsSerializer(plain).serialize_to_request(params, model),
    )


def assert_same_request(theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    assert orjson.loads(ours["body"]) == json.loads(theirs["body"])
    assert {k: v for k, v in ours.items() if k != "body"} == {
        k: v for k, v in theirs.items() if k != "body"
    }


record = st.fixed_dictionaries(
    {"Data": st.binary(max_size=600), "PartitionKey": st.text(min_size=1, max_size=256)},
    optional={"ExplicitHashKey": st.integers(0, 2**128 - 1).map(str)},
)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(record, min_size=1, max_size=20), arn=st.booleans())
def test_put_records_body_is_the_json_botocore_would_send(client, records, arn):
    params: dict[str, Any] = {"Records": records}
    if arn:
        params["StreamARN"] = "arn:aws:kinesis:eu-west-1:123456789012:stream/s\u00e9"
    else:
        params["StreamName"] = 'odd "name" \\ \u2028'
    theirs, ours = both(client, "PutRecords", params)
    assert_same_request(theirs, ours)


def test_text_data_is_sent_as_its_utf8_bytes_like_botocore_does(client):
    params = {
        "StreamName": "s",
        "Records": [{"Data": "z\u00fcrich \U0001f600", "PartitionKey": "k"}],
    }
    theirs, ours = both(client, "PutRecords", params)
    assert_same_request(theirs, ours)


def test_text_orjson_cannot_encode_is_left_to_botocore(client):
    params = {"StreamName": "s", "Records": [{"Data": b"x", "PartitionKey": "lone \ud800"}]}
    theirs, ours = both(client, "PutRecords", params)
    assert ours == theirs


def test_other_operations_are_serialized_by_botocore_unchanged(client):
    theirs, ours = both(client, "DescribeStreamSummary", {"StreamName": "s"})
    assert ours == theirs


def test_records_with_fields_it_does_not_know_are_left_to_botocore(client):
    model = client.meta.service_model.operation_model("PutRecords")
    calls: list[dict[str, Any]] = []
    inner = SimpleNamespace(serialize_to_request=lambda p, m: calls.append(p) or {"body": b"{}"})
    params = {"StreamName": "s", "Records": [{"Data": b"x", "PartitionKey": "k", "Other": 1}]}

    out = wire.PutRecordsSerializer(inner).serialize_to_request(params, model)

    assert calls == [params]  # handed over untouched
    assert out == {"body": b"{}"}


def test_install_wraps_a_json_client_once(client):
    assert wire.install(client)
    first = client._serializer
    assert isinstance(first, wire.PutRecordsSerializer)
    assert wire.install(client)
    assert client._serializer is first  # not wrapped twice


def test_install_leaves_clients_of_another_protocol_alone():
    inner = SimpleNamespace(serialize_to_request=lambda p, m: {})
    other = SimpleNamespace(
        meta=SimpleNamespace(service_model=SimpleNamespace(protocol="smithy-rpc-v2-cbor")),
        _serializer=inner,
    )
    assert not wire.install(other)
    assert other._serializer is inner


def test_the_sink_sends_through_it_and_records_with_odd_keys_arrive(moto, make_stream):
    stream = make_stream(2)
    sink = open_sink(moto.url, stream)
    try:
        assert isinstance(sink._client._serializer, wire.PutRecordsSerializer)
        key = 'h\u00f6st "1"\\\u2028/m\u00e4chine'
        data = [orjson.dumps({"i": i, "key": key}) for i in range(50)]
        resp = sink._client.put_records(
            StreamName=stream, Records=[{"Data": d, "PartitionKey": key} for d in data]
        )
        assert resp["FailedRecordCount"] == 0
    finally:
        sink.close()
    got = read_stream(moto.client("kinesis"), stream)
    assert sorted(r["raw"] for r in got) == sorted(data)
    assert {r["key"] for r in got} == {key}
