"""The Lambda handler on realistic events (real producer envelopes), against DynamoDB served
by a moto server over HTTP."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import boto3
import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from boto3.dynamodb.conditions import Key
from spark_consumer.handler import lambda_handler

from .producer import HOST, Sequence, kinesis_event


def table(name: str) -> Any:
    return boto3.resource("dynamodb").Table(name)


def scan(name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = table(name).scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return sorted(items, key=lambda i: (i["pk"], i.get("sk", "")))
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def history(machine: str, data_table: str = "SparkData") -> list[dict[str, Any]]:
    """One machine's records: a single Query on the partition key, in time order."""
    page = table(data_table).query(KeyConditionExpression=Key("pk").eq(f"{HOST}/{machine}"))
    return page["Items"]


def as_decimal(raw: bytes) -> Any:
    return json.loads(raw, parse_float=Decimal)


def failures(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def test_every_record_is_stored_under_host_machine_and_time(tables, produced):
    event = kinesis_event(produced.envelopes)
    assert failures(lambda_handler(event, None)) == []

    items = scan("SparkData")
    assert len(items) == len(produced.records) == 6
    sent = [as_decimal(r) for r in produced.records]
    assert {(i["pk"], i["time"]) for i in items} == {
        (f"{s['host']}/{s['data']['machine']}", s["data"]["time"]) for s in sent
    }
    for item in items:
        assert item["sk"].startswith(item["time"] + "#")
        assert item["host"] == HOST
        assert item["pk"] == f"{HOST}/{item['machine']}"
    by_sequence = {r["kinesis"]["sequenceNumber"]: r for r in event["Records"]}
    assert all(item["sequenceNumber"] in by_sequence for item in items)


def test_one_machines_history_is_a_single_query_in_time_order(tables, produced):
    lambda_handler(kinesis_event(produced.records[::-1]), None)  # delivered newest first

    times = [item["time"] for item in history("press-1")]
    assert times == [
        "2026-11-26T10:00:00.000Z",
        "2026-11-26T10:00:01.000Z",
        "2026-11-26T10:00:02.000Z",
    ]
    assert [item["time"] for item in history("press-2")] == [
        "2026-11-26T10:00:00.500Z",
        "2026-11-26T10:00:01.500Z",
    ]


def test_attribute_values_of_every_spark_type_round_trip(tables, produced):
    lambda_handler(kinesis_event(produced.records), None)

    stored = {item["time"]: item["attributes"] for item in history("press-1")}
    for raw in produced.of_type("record"):
        sent = as_decimal(raw)["data"]
        if sent["machine"] == "press-1":
            assert stored[sent["time"]] == sent["attributes"]
    first = stored["2026-11-26T10:00:00.000Z"]
    assert first["temperature"] == {
        "name": "temperature",
        "description": "Oil temperature",
        "format": "float",
        "value": Decimal("71.2"),
    }
    assert first["running"]["value"] is True
    assert first["fault"]["value"] is None
    assert first["trace"]["value"] == [1, Decimal("2.5"), "x", None, [True]]
    assert first["settings"]["value"] == {
        "pressure": {"max": Decimal("250.5"), "unit": "bar"},
        "modes": [],
    }
    third = stored["2026-11-26T10:00:02.000Z"]
    assert third["trace"]["value"] == [Decimal("0.1"), Decimal("1e-7"), 12345678901234567]
    assert third["label"]["value"] == "ünïcødé ✓"
    assert "description" not in third["count"]


def test_metadata_is_one_item_per_host_and_machine(tables, produced):
    lambda_handler(kinesis_event(produced.metadata), None)

    items = scan("SparkMetadata")
    assert [i["pk"] for i in items] == ["gw/press-1", "gw/press-2", "gw/press-avg"]
    for item, raw in zip(items, produced.metadata, strict=True):
        sent = as_decimal(raw)["data"]
        assert item["info"] == sent["info"]
        assert item["variables"] == sent["variables"]
        assert item["host"] == HOST
        assert item["machine"] == sent["info"]["name"]
    virtual = items[2]["variables"]["avg-temp"]
    assert virtual["referencedMachineInfo"] == {"name": "press-1", "description": "Hydraulic press"}
    assert virtual["referencedVariable"]["name"] == "temperature"
    assert "referencedMachineConfig" in virtual


def metadata_version(description: str) -> bytes:
    return json.dumps(
        {
            "type": "metadata",
            "host": HOST,
            "data": {
                "info": {"name": "press-1", "description": description},
                "variables": {"t": {"name": "t", "format": "float"}},
            },
        },
        separators=(",", ":"),
    ).encode()


def test_a_newer_metadata_version_replaces_the_stored_one(tables):
    seq = Sequence()
    lambda_handler(kinesis_event([metadata_version("v1")], seq, arrival=1_800_000_000.0), None)
    lambda_handler(kinesis_event([metadata_version("v2")], seq, arrival=1_800_000_060.0), None)

    (item,) = scan("SparkMetadata")
    assert item["info"]["description"] == "v2"


def test_an_older_metadata_version_never_overwrites_a_newer_one(tables):
    seq = Sequence()
    old = kinesis_event([metadata_version("v1")], seq, arrival=1_800_000_000.0)
    new = kinesis_event([metadata_version("v2")], seq, arrival=1_800_000_060.0)
    lambda_handler(new, None)
    response = lambda_handler(old, None)  # arrives late, e.g. redelivered after a retry

    assert failures(response) == []
    (item,) = scan("SparkMetadata")
    assert item["info"]["description"] == "v2"
    assert item["sequenceNumber"] == new["Records"][0]["kinesis"]["sequenceNumber"]


def test_within_one_millisecond_the_later_sequence_number_wins(tables):
    seq = Sequence()
    event = kinesis_event([metadata_version("v1"), metadata_version("v2")], seq)
    for record in event["Records"]:
        record["kinesis"]["approximateArrivalTimestamp"] = 1_800_000_000.123
    lambda_handler(event, None)

    (item,) = scan("SparkMetadata")
    assert item["info"]["description"] == "v2"


def test_metadata_that_says_when_it_was_made_is_ordered_by_that_time(tables):
    # The original's metadata carries no time; a producer that adds one ("time" in data, as
    # records have) gets its versions ordered by it, so a late replay of an old version loses.
    def stamped(description: str, time: str) -> bytes:
        envelope = json.loads(metadata_version(description))
        envelope["data"]["time"] = time
        return json.dumps(envelope).encode()

    seq = Sequence()
    new = stamped("v2", "2026-11-26T10:00:00.000Z")
    old = stamped("v1", "2026-11-26T09:00:00.000Z")
    lambda_handler(kinesis_event([new], seq, arrival=1_800_000_000.0), None)
    lambda_handler(kinesis_event([old], seq, arrival=1_800_000_060.0), None)  # arrives later

    (item,) = scan("SparkMetadata")
    assert item["info"]["description"] == "v2"
    assert item["time"] == "2026-11-26T10:00:00.000Z"


def test_connection_test_is_acknowledged_and_stored_nowhere(tables):
    probe = b'{"type":"connection_test","host":"gw","data":{}}'
    response = lambda_handler(kinesis_event([probe]), None)

    assert failures(response) == []
    assert scan("SparkData") == [] and scan("SparkMetadata") == []


def test_an_empty_batch_is_answered_without_failures(tables):
    assert lambda_handler({"Records": []}, None) == {"batchItemFailures": []}


def test_the_same_batch_delivered_twice_leaves_the_tables_as_if_once(tables, produced):
    event = kinesis_event(produced.envelopes)
    lambda_handler(event, None)
    once = (scan("SparkData"), scan("SparkMetadata"))

    assert failures(lambda_handler(event, None)) == []
    assert (scan("SparkData"), scan("SparkMetadata")) == once


def test_a_producer_retry_of_the_same_envelope_is_stored_once(tables, produced):
    # The producer may resend an envelope whose acknowledgement it lost: a new sequence number,
    # the same bytes.
    seq = Sequence()
    lambda_handler(kinesis_event(produced.records[:1], seq), None)
    first = scan("SparkData")
    lambda_handler(kinesis_event(produced.records[:1], seq), None)

    assert scan("SparkData") == first


def test_two_different_records_with_the_same_time_are_both_kept(tables):
    def record(value: int) -> bytes:
        return json.dumps(
            {
                "type": "record",
                "host": HOST,
                "data": {
                    "machine": "press-1",
                    "time": "2026-11-26T10:00:00.000Z",
                    "attributes": {"count": {"name": "count", "format": "int32", "value": value}},
                },
            }
        ).encode()

    lambda_handler(kinesis_event([record(1), record(2)]), None)

    values = sorted(item["attributes"]["count"]["value"] for item in history("press-1"))
    assert values == [1, 2]


BAD_PAYLOADS = {
    "not JSON": b"\x00\x01 definitely not json",
    "not UTF-8": b'{"type":"record","host":"\xff"}',
    "a JSON array": b"[1, 2]",
    "an unknown type": b'{"type":"telemetry","host":"gw","data":{}}',
    "a record without time": (
        b'{"type":"record","host":"gw","data":{"machine":"m","attributes":{}}}'
    ),
    "a record with a bad time": (
        b'{"type":"record","host":"gw","data":{"machine":"m","time":"soon","attributes":{}}}'
    ),
    "metadata without info": b'{"type":"metadata","host":"gw","data":{"variables":{}}}',
    "an envelope without host": b'{"type":"record","data":{}}',
}


@pytest.mark.parametrize("reason", BAD_PAYLOADS)
def test_a_permanently_bad_record_is_logged_and_skipped_without_failing_its_neighbours(
    tables, produced, caplog, reason
):
    seq = Sequence()
    good_before, good_after = produced.records[0], produced.records[1]
    event = kinesis_event([good_before, BAD_PAYLOADS[reason], good_after], seq)
    bad_sequence = event["Records"][1]["kinesis"]["sequenceNumber"]

    with caplog.at_level(logging.ERROR, logger="spark_consumer"):
        response = lambda_handler(event, None)

    assert failures(response) == []
    assert len(scan("SparkData")) == 2
    assert any(bad_sequence in message for message in caplog.messages)


def test_data_that_is_not_base64_is_skipped(tables, produced, caplog):
    event = kinesis_event([produced.records[0], produced.records[1]])
    event["Records"][0]["kinesis"]["data"] = "@@not base64@@"

    with caplog.at_level(logging.ERROR, logger="spark_consumer"):
        response = lambda_handler(event, None)

    assert failures(response) == []
    assert len(scan("SparkData")) == 1
    assert event["Records"][0]["kinesis"]["sequenceNumber"] in caplog.text


def test_a_record_that_cannot_be_stored_is_reported_without_failing_its_neighbours(
    tables, produced
):
    # The metadata table is gone (an operator error, an outage): metadata cannot be stored
    # and must be retried; the records around it are stored and not reported.
    tables.delete_table(TableName="SparkMetadata")
    event = kinesis_event(produced.envelopes)

    response = lambda_handler(event, None)

    metadata_sequences = [
        r["kinesis"]["sequenceNumber"]
        for r in event["Records"]
        if json.loads(_data(r))["type"] == "metadata"
    ]
    assert failures(response) == metadata_sequences
    assert len(scan("SparkData")) == len(produced.records)


def test_a_batch_that_fails_entirely_reports_every_record(tables, produced):
    tables.delete_table(TableName="SparkData")
    event = kinesis_event(produced.records)

    response = lambda_handler(event, None)

    assert failures(response) == [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


def test_an_item_too_large_for_dynamodb_is_skipped_not_retried(tables, caplog):
    huge = json.dumps(
        {
            "type": "record",
            "host": HOST,
            "data": {
                "machine": "press-1",
                "time": "2026-11-26T10:00:00.000Z",
                "attributes": {
                    "blob": {"name": "blob", "format": "string", "value": "x" * 500_000}
                },
            },
        }
    ).encode()
    event = kinesis_event([huge])

    with caplog.at_level(logging.ERROR, logger="spark_consumer"):
        response = lambda_handler(event, None)

    assert failures(response) == []
    assert event["Records"][0]["kinesis"]["sequenceNumber"] in caplog.text
    assert "maximum allowed size" in caplog.text


def aggregate(payloads: list[bytes]) -> bytes:
    aggregator = RecordAggregator()
    for payload in payloads:
        aggregator.add_user_record(json.loads(payload)["host"] + "/x", payload)
    _, _, data = aggregator.clear_and_get().get_contents()
    return data


def test_kpl_aggregated_records_are_deaggregated_and_all_stored(tables, produced):
    seq = Sequence()
    event = kinesis_event([aggregate(produced.envelopes)], seq)

    response = lambda_handler(event, None)

    assert failures(response) == []
    items = scan("SparkData")
    assert len(items) == len(produced.records)
    assert sorted(int(i["subSequenceNumber"]) for i in items) == [3, 4, 5, 6, 7, 8]
    assert len(scan("SparkMetadata")) == len(produced.metadata)


def test_a_failed_user_record_fails_its_whole_aggregated_record_and_only_it(tables, produced):
    tables.delete_table(TableName="SparkMetadata")
    seq = Sequence()
    event = kinesis_event(
        [produced.records[0], aggregate([produced.records[1], *produced.metadata[:1]])], seq
    )

    response = lambda_handler(event, None)

    assert failures(response) == [event["Records"][1]["kinesis"]["sequenceNumber"]]
    # the aggregated record's own good user record may be stored already; on the retry it
    # is written again to the same key
    assert {i["time"] for i in scan("SparkData")} == {
        "2026-11-26T10:00:00.000Z",
        "2026-11-26T10:00:01.000Z",
    }


def test_table_names_come_from_the_environment(tables, produced, moto, monkeypatch):
    from spark_consumer.store import create_tables

    create_tables(moto.client("dynamodb"), "plant-a-data", "plant-a-metadata")
    monkeypatch.setenv("DATA_TABLE_NAME", "plant-a-data")
    monkeypatch.setenv("METADATA_TABLE_NAME", "plant-a-metadata")

    lambda_handler(kinesis_event(produced.envelopes), None)

    assert len(scan("plant-a-data")) == len(produced.records)
    assert len(scan("plant-a-metadata")) == len(produced.metadata)
    assert scan("SparkData") == [] and scan("SparkMetadata") == []


def test_a_number_dynamodb_cannot_hold_is_kept_as_its_text(tables):
    record = (
        b'{"type":"record","host":"gw","data":{"machine":"press-1",'
        b'"time":"2026-11-26T10:00:00.000Z","attributes":{'
        b'"tiny":{"name":"tiny","format":"double","value":5e-324},'
        b'"huge":{"name":"huge","format":"double","value":1.7976931348623157e308},'
        b'"long":{"name":"long","format":"any","value":123456789012345678901234567890123456789012}'
        b"}}}"
    )
    lambda_handler(kinesis_event([record]), None)

    (item,) = history("press-1")
    values = {k: v["value"] for k, v in item["attributes"].items()}
    assert values == {
        "tiny": "5E-324",
        "huge": "1.7976931348623157E+308",
        "long": "123456789012345678901234567890123456789012",
    }


def _data(record: dict[str, Any]) -> bytes:
    import base64

    return base64.b64decode(record["kinesis"]["data"])
