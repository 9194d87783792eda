"""Reading a Kinesis stream back over every shard, for tests that check what arrived."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson


def new_stream(client: Any, shards: int = 4) -> str:
    name = f"spark-test-{uuid.uuid4().hex[:10]}"
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )
    return name


def shard_records(client: Any, stream: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(shard id, GetRecords record)`` for every record of every shard, in shard order
    then sequence order."""
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10_000)
            if not resp["Records"]:
                break
            for r in resp["Records"]:
                yield shard["ShardId"], r
            it = resp.get("NextShardIterator")


def read_stream(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every record of every shard, in shard order then sequence order:
    ``{"shard", "key", "seq", "raw", "envelope"}``."""
    return [
        {
            "shard": shard,
            "key": r["PartitionKey"],
            "seq": int(r["SequenceNumber"]),
            "raw": r["Data"],
            "envelope": orjson.loads(r["Data"]),
        }
        for shard, r in shard_records(client, stream)
    ]
