"""Run the consumer on this machine: poll every shard of a Kinesis stream and hand each batch
to the Lambda handler, shaped and retried the way Lambda's Kinesis event source mapping does.

    python -m spark_consumer.poller --endpoint-url http://127.0.0.1:5000 --stream spark \\
        --create-tables

By default it reads every shard from the oldest record (TRIM_HORIZON) until all shards are at
their tip, then exits; ``--follow`` keeps polling, once a second per shard, like Lambda.
Without ``--endpoint-url`` it reads a real stream with your AWS credentials; with
``--shard`` and ``--at-sequence`` it replays one shard from a given record (writes are
idempotent, so replaying more than needed is harmless).

Delivery follows Lambda with ``ReportBatchItemFailures``: when the handler reports failed
sequence numbers, the batch is delivered again from the lowest one, up to ``--max-retries``
times; then that record is given up (logged) and delivery goes on after it. A handler that
raises counts as a failure of the whole batch.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .store import DEFAULT_DATA_TABLE, DEFAULT_METADATA_TABLE

log = logging.getLogger("spark_consumer.poller")

Invoke = Callable[[dict[str, Any], Any], Any]


class LocalContext:
    """The parts of Lambda's context object that handlers commonly read."""

    def __init__(self, function_name: str = "spark-consumer-local", timeout_s: float = 60.0):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.memory_limit_in_mb = 256
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def lambda_event(
    records: list[dict[str, Any]], shard_id: str, stream_arn: str, region: str
) -> dict[str, Any]:
    """A Lambda Kinesis event for records as GetRecords returns them (boto3 shape)."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r["PartitionKey"],
                    "sequenceNumber": r["SequenceNumber"],
                    "data": base64.b64encode(r["Data"]).decode("ascii"),
                    "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp(),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/spark-consumer-local",
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for r in records
        ]
    }


@dataclass
class Stats:
    invocations: int = 0
    records: int = 0
    """Kinesis records read from the stream (each counted once, however often delivered)."""
    retries: int = 0
    given_up: list[str] = field(default_factory=list)
    """Sequence numbers abandoned after ``max_retries`` failed deliveries."""


@dataclass
class _Shard:
    shard_id: str
    parent_ids: tuple[str, ...]
    iterator: str | None = None
    started: bool = False
    closed: bool = False
    caught_up: bool = False


class Poller:
    def __init__(
        self,
        kinesis: Any,
        stream: str,
        invoke: Invoke,
        batch_size: int = 100,
        max_retries: int = 3,
        starting_position: str = "TRIM_HORIZON",
        retry_delay: float = 0.2,
        shard_id: str | None = None,
        at_sequence: str | None = None,
    ) -> None:
        self.kinesis = kinesis
        self.stream = stream
        self.invoke = invoke
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.starting_position = starting_position
        self.only_shard = shard_id
        """Read this shard only (a replay); ``at_sequence`` is where it starts."""
        self.at_sequence = at_sequence
        self.retry_delay = retry_delay
        self.stats = Stats()
        summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        self.stream_arn: str = summary["StreamARN"]
        self.region: str = kinesis.meta.region_name
        self.shards: dict[str, _Shard] = {}

    def refresh_shards(self) -> None:
        """Learn new shards (after a reshard). A child shard is read only once its parents are
        read to their end, which keeps each partition key in order, as Lambda does."""
        kwargs: dict[str, Any] = {"StreamName": self.stream}
        while True:
            page = self.kinesis.list_shards(**kwargs)
            for shard in page["Shards"]:
                if self.only_shard not in (None, shard["ShardId"]):
                    continue
                if shard["ShardId"] not in self.shards:
                    parents = tuple(
                        shard[key]
                        for key in ("ParentShardId", "AdjacentParentShardId")
                        if shard.get(key)
                    )
                    self.shards[shard["ShardId"]] = _Shard(shard["ShardId"], parents)
            if not page.get("NextToken"):
                return
            kwargs = {"NextToken": page["NextToken"]}

    def drain(self) -> Stats:
        """Deliver everything in the stream now, then return."""
        self.refresh_shards()
        while True:
            ready = [s for s in self.shards.values() if self._ready(s) and not s.caught_up]
            if not ready:
                return self.stats
            for shard in ready:
                got = self.poll(shard)
                if not got:
                    shard.caught_up = True

    def follow(self, interval: float = 1.0, until: Callable[[], bool] = lambda: False) -> Stats:
        """Keep polling every shard until ``until()`` is true (or Ctrl-C)."""
        while not until():
            self.refresh_shards()
            busy = False
            for shard in list(self.shards.values()):
                if self._ready(shard):
                    busy |= self.poll(shard)
            if not busy:
                time.sleep(interval)
        return self.stats

    def _ready(self, shard: _Shard) -> bool:
        if shard.closed:
            return False
        parents = [self.shards[p] for p in shard.parent_ids if p in self.shards]
        return all(p.closed for p in parents)

    def poll(self, shard: _Shard) -> bool:
        """One GetRecords on ``shard`` and the delivery of what it returns; True if it
        returned records."""
        if not shard.started:
            where: dict[str, str] = {"ShardIteratorType": self.starting_position}
            if self.at_sequence is not None:
                where = {
                    "ShardIteratorType": "AT_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": self.at_sequence,
                }
            shard.iterator = self.kinesis.get_shard_iterator(
                StreamName=self.stream, ShardId=shard.shard_id, **where
            )["ShardIterator"]
            shard.started = True
        if shard.iterator is None:
            shard.closed = True
            return False
        page = self.kinesis.get_records(ShardIterator=shard.iterator, Limit=self.batch_size)
        shard.iterator = page.get("NextShardIterator")
        records = page["Records"]
        if records:
            self.stats.records += len(records)
            self.deliver(shard.shard_id, records)
        if shard.iterator is None:
            shard.closed = True
        return bool(records) or page.get("MillisBehindLatest", 0) > 0

    def deliver(self, shard_id: str, records: list[dict[str, Any]]) -> None:
        """Invoke the handler until the batch is through, retrying from the first reported
        failure."""
        attempts = 0
        failing: str | None = None
        while records:
            event = lambda_event(records, shard_id, self.stream_arn, self.region)
            self.stats.invocations += 1
            first_failed = self._invoke(event, records)
            if first_failed is None:
                return
            failed_sequence = records[first_failed]["SequenceNumber"]
            # Retries count per failing record: progress past it starts a new count.
            attempts = attempts + 1 if failed_sequence == failing else 1
            failing = failed_sequence
            if attempts > self.max_retries:
                log.error(
                    "giving up record %s of %s after %d attempts",
                    failed_sequence,
                    shard_id,
                    attempts,
                )
                self.stats.given_up.append(failed_sequence)
                records = records[first_failed + 1 :]
                continue
            log.warning(
                "retrying %s from record %s (attempt %d)", shard_id, failed_sequence, attempts
            )
            self.stats.retries += 1
            records = records[first_failed:]
            time.sleep(self.retry_delay * attempts)

    def _invoke(self, event: dict[str, Any], records: list[dict[str, Any]]) -> int | None:
        """Index of the first record to redeliver, or None if the batch succeeded."""
        try:
            response = self.invoke(event, LocalContext())
        except Exception:
            log.exception("the handler failed; the whole batch is retried")
            return 0
        failures = (response or {}).get("batchItemFailures") or []
        if not failures:
            return None
        index = {r["SequenceNumber"]: i for i, r in enumerate(records)}
        positions = [index.get(f.get("itemIdentifier")) for f in failures]
        if any(p is None for p in positions):
            # An identifier that is not in the batch: Lambda treats the whole batch as failed.
            return 0
        return min(p for p in positions if p is not None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spark_consumer.poller",
        description="Feed a Kinesis stream to the Spark consumer's Lambda handler, locally.",
    )
    parser.add_argument("--stream", required=True, help="Kinesis stream name")
    parser.add_argument(
        "--endpoint-url",
        help="AWS endpoint for Kinesis and DynamoDB, e.g. a moto server (default: AWS)",
    )
    parser.add_argument("--region", help="AWS region (default: from the AWS environment)")
    parser.add_argument("--data-table", default=DEFAULT_DATA_TABLE)
    parser.add_argument("--metadata-table", default=DEFAULT_METADATA_TABLE)
    parser.add_argument(
        "--create-tables", action="store_true", help="create both tables if they are missing"
    )
    parser.add_argument(
        "--from",
        dest="starting_position",
        choices=["trim_horizon", "latest"],
        default="trim_horizon",
        help="where to start in each shard",
    )
    parser.add_argument(
        "--shard",
        help="read this shard only, e.g. to replay a batch the event source mapping gave up "
        "(its failure queue message names the shard and the sequence numbers)",
    )
    parser.add_argument(
        "--at-sequence", help="with --shard: start at this sequence number, not at --from"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--follow", action="store_true", help="keep polling until Ctrl-C")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _set_environment(args: argparse.Namespace) -> None:
    """The handler reads its configuration from the environment, as in Lambda."""
    os.environ["DATA_TABLE_NAME"] = args.data_table
    os.environ["METADATA_TABLE_NAME"] = args.metadata_table
    if args.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
        # A local endpoint needs some credentials, any will do.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    if args.region:
        os.environ["AWS_DEFAULT_REGION"] = args.region
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.at_sequence and not args.shard:
        parser.error("--at-sequence needs --shard")

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    _set_environment(args)

    import boto3

    from .handler import lambda_handler
    from .store import create_tables

    if args.create_tables:
        create_tables(boto3.client("dynamodb"), args.data_table, args.metadata_table)
    poller = Poller(
        boto3.client("kinesis"),
        args.stream,
        lambda_handler,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        starting_position=args.starting_position.upper(),
        shard_id=args.shard,
        at_sequence=args.at_sequence,
    )
    try:
        stats = poller.follow() if args.follow else poller.drain()
    except KeyboardInterrupt:
        stats = poller.stats
    print(
        f"{stats.records} Kinesis records from {len(poller.shards)} shards delivered in "
        f"{stats.invocations} invocations; {stats.retries} retries, "
        f"{len(stats.given_up)} given up",
        file=sys.stderr,
    )
    return 1 if stats.given_up else 0


if __name__ == "__main__":
    sys.exit(main())
