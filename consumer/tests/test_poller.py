"""The local runner: a moto Kinesis stream, fed with real producer envelopes by plain boto3
PutRecords, polled shard by shard into the real Lambda handler and DynamoDB."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from spark_consumer.handler import lambda_handler
from spark_consumer.poller import Poller

from .conftest import CONSUMER_DIR
from .test_handler import scan

STREAM = "spark"


def put(kinesis: Any, envelopes: list[bytes]) -> None:
    """What the Kinesis sink does: partition key host/machine, so one machine, one shard."""
    entries = []
    for raw in envelopes:
        obj = json.loads(raw)
        machine = obj["data"].get("machine") or obj["data"]["info"]["name"]
        entries.append({"Data": raw, "PartitionKey": f"{obj['host']}/{machine}"})
    response = kinesis.put_records(StreamName=STREAM, Records=entries)
    assert response["FailedRecordCount"] == 0


def expected_records(envelopes: list[bytes]) -> set[tuple[str, str]]:
    return {
        (f"{o['host']}/{o['data']['machine']}", o["data"]["time"])
        for o in map(json.loads, envelopes)
        if o["type"] == "record"
    }


def test_every_shard_is_delivered_to_the_handler(stream, produced):
    put(stream, produced.envelopes)

    stats = Poller(stream, STREAM, lambda_handler).drain()

    assert stats.records == len(produced.envelopes)
    assert {(i["pk"], i["time"]) for i in scan("SparkData")} == expected_records(produced.envelopes)
    assert [i["pk"] for i in scan("SparkMetadata")] == ["gw/press-1", "gw/press-2", "gw/press-avg"]
    assert stats.given_up == []


def test_batches_are_lambda_shaped_events_per_shard(stream, produced):
    put(stream, produced.envelopes)
    events: list[dict[str, Any]] = []

    def recording_handler(event: dict[str, Any], context: Any) -> Any:
        events.append(event)
        assert context.get_remaining_time_in_millis() > 0
        return lambda_handler(event, context)

    Poller(stream, STREAM, recording_handler, batch_size=2).drain()

    assert all(1 <= len(e["Records"]) <= 2 for e in events)
    for event in events:
        shard_ids = {r["eventID"].split(":")[0] for r in event["Records"]}
        assert len(shard_ids) == 1  # a batch never mixes shards
        for record in event["Records"]:
            assert record["eventSource"] == "aws:kinesis"
            assert record["eventSourceARN"].endswith(f":stream/{STREAM}")
            assert record["eventID"].endswith(":" + record["kinesis"]["sequenceNumber"])
            assert isinstance(record["kinesis"]["approximateArrivalTimestamp"], float)
    assert len({e["Records"][0]["eventID"].split(":")[0] for e in events}) >= 2
    delivered = [r["kinesis"]["partitionKey"] for e in events for r in e["Records"]]
    assert sorted(delivered) == sorted(
        f"gw/{m}" for m in ["press-1"] * 4 + ["press-2"] * 3 + ["press-avg"] * 2
    )
    # within one machine, the stream's order is kept
    press_1 = [
        json.loads(base64.b64decode(r["kinesis"]["data"]))
        for e in events
        for r in e["Records"]
        if r["kinesis"]["partitionKey"] == "gw/press-1"
    ]
    assert [p["type"] for p in press_1] == ["metadata", "record", "record", "record"]


def first_batch_of(kinesis: Any, shard_id: str) -> list[dict[str, Any]]:
    iterator = kinesis.get_shard_iterator(
        StreamName=STREAM, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return kinesis.get_records(ShardIterator=iterator)["Records"]


def first_shard_with_data(kinesis: Any) -> str:
    for shard in kinesis.list_shards(StreamName=STREAM)["Shards"]:
        if first_batch_of(kinesis, shard["ShardId"]):
            return shard["ShardId"]
    raise AssertionError("the stream is empty")


def first_batch(kinesis: Any) -> list[dict[str, Any]]:
    """The records of the first shard that has any, as the poller will read them."""
    return first_batch_of(kinesis, first_shard_with_data(kinesis))


def test_a_reported_failure_is_redelivered_from_that_record_on(stream, produced):
    put(stream, produced.records[:3])  # one machine: one shard, one batch
    flaky = first_batch(stream)[1]["SequenceNumber"]
    deliveries: list[list[str]] = []

    def fails_once(event: dict[str, Any], context: Any) -> Any:
        sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
        deliveries.append(sequences)
        response = lambda_handler(event, context)
        if len(deliveries) == 1:  # e.g. throttled on the second record, the first time
            return {"batchItemFailures": [{"itemIdentifier": flaky}]}
        return response

    stats = Poller(stream, STREAM, fails_once, retry_delay=0).drain()

    assert len(deliveries) == 2
    assert deliveries[1] == deliveries[0][1:]
    assert deliveries[1][0] == flaky
    assert stats.retries == 1 and stats.given_up == []
    assert len(scan("SparkData")) == 3


def test_a_record_that_keeps_failing_is_given_up_after_the_retries(stream, produced):
    put(stream, produced.records[:3])
    poison = first_batch(stream)[1]["SequenceNumber"]
    deliveries: list[list[str]] = []

    def always_fails_poison(event: dict[str, Any], context: Any) -> Any:
        sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
        deliveries.append(sequences)
        lambda_handler(event, context)
        return {"batchItemFailures": [{"itemIdentifier": s} for s in sequences if s == poison]}

    stats = Poller(stream, STREAM, always_fails_poison, max_retries=2, retry_delay=0).drain()

    assert stats.given_up == [poison]
    assert stats.retries == 2
    assert len(deliveries) == 1 + 2 + 1  # first try, two retries, then the rest after it
    assert poison not in deliveries[-1]


def test_a_handler_exception_retries_the_whole_batch(stream, produced):
    put(stream, produced.records[:1])
    calls: list[int] = []

    def crashes_once(event: dict[str, Any], context: Any) -> Any:
        calls.append(len(event["Records"]))
        if len(calls) == 1:
            raise RuntimeError("function error")
        return lambda_handler(event, context)

    stats = Poller(stream, STREAM, crashes_once, retry_delay=0).drain()

    assert calls == [1, 1]
    assert stats.retries == 1
    assert len(scan("SparkData")) == 1


def test_delivering_the_whole_stream_twice_leaves_the_tables_as_if_once(stream, produced):
    put(stream, produced.envelopes)
    Poller(stream, STREAM, lambda_handler).drain()
    once = (scan("SparkData"), scan("SparkMetadata"))

    stats = Poller(stream, STREAM, lambda_handler).drain()  # a new reader, from the start

    assert stats.records == len(produced.envelopes)
    assert (scan("SparkData"), scan("SparkMetadata")) == once


def test_the_runner_works_from_the_command_line(moto, produced):
    moto.reset()
    kinesis = moto.client("kinesis")
    kinesis.create_stream(StreamName=STREAM, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=STREAM)
    put(kinesis, produced.envelopes)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_")
    }  # only what the command line says

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "spark_consumer.poller",
            "--endpoint-url",
            moto.url,
            "--region",
            "us-east-1",
            "--stream",
            STREAM,
            "--data-table",
            "LocalData",
            "--metadata-table",
            "LocalMetadata",
            "--create-tables",
        ],
        cwd=CONSUMER_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert f"{len(produced.envelopes)} Kinesis records from 2 shards" in done.stderr
    dynamodb = moto.client("dynamodb")
    assert dynamodb.scan(TableName="LocalData")["Count"] == len(produced.records)
    assert dynamodb.scan(TableName="LocalMetadata")["Count"] == len(produced.metadata)


def test_follow_mode_delivers_records_put_while_it_runs(stream, produced):
    put(stream, produced.records[:2])  # before the start: skipped when starting at LATEST
    poller = Poller(stream, STREAM, lambda_handler, starting_position="LATEST")
    deadline = time.monotonic() + 20
    done = threading.Event()
    follower = threading.Thread(
        target=poller.follow,
        kwargs={"interval": 0.05, "until": lambda: done.is_set() or time.monotonic() > deadline},
    )
    follower.start()
    try:
        while not poller.shards or not all(s.started for s in poller.shards.values()):
            time.sleep(0.02)  # every shard has its LATEST position
        put(stream, produced.records[2:])
        while poller.stats.records < len(produced.records) - 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        follower.join(10)

    assert poller.stats.records == len(produced.records) - 2
    assert {i["time"] for i in scan("SparkData") if i["machine"] == "press-1"} == {
        "2026-11-26T10:00:02.000Z"
    }


def test_one_shard_can_be_replayed_from_a_sequence_number(stream, produced):
    put(stream, produced.records[:3])  # press-1: one shard
    records = first_batch(stream)
    shard_id = first_shard_with_data(stream)
    delivered: list[str] = []

    def recording(event: dict[str, Any], context: Any) -> Any:
        delivered.extend(r["kinesis"]["sequenceNumber"] for r in event["Records"])
        return lambda_handler(event, context)

    Poller(
        stream, STREAM, recording, shard_id=shard_id, at_sequence=records[1]["SequenceNumber"]
    ).drain()

    assert delivered == [r["SequenceNumber"] for r in records[1:]]
    assert len(scan("SparkData")) == 2
