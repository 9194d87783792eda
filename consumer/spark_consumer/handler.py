"""The Lambda entry point: ``spark_consumer.handler.lambda_handler``.

Each Kinesis record of the batch is decompressed (gzip or zstd, told by its first bytes),
deaggregated (KPL) and every envelope in it is stored. A record whose envelope can never be
stored is logged with its sequence number and skipped; a record that fails for any other
reason (DynamoDB throttling, an outage) is reported in ``batchItemFailures``, so Lambda
retries it and what follows it, and the records before it are not redone. Every write is
idempotent, so a retried record lands once.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from .compression import decompress
from .envelope import BadRecord, ConnectionTest, Metadata, Position, Record, decode
from .store import DEFAULT_DATA_TABLE, DEFAULT_METADATA_TABLE, Store

DATA_TABLE_ENV = "DATA_TABLE_NAME"
METADATA_TABLE_ENV = "METADATA_TABLE_NAME"
CONCURRENCY_ENV = "WRITE_CONCURRENCY"
DEFAULT_CONCURRENCY = 8

logger = logging.getLogger("spark_consumer")


@dataclass
class Counts:
    records: int = 0
    metadata: int = 0
    duplicates: int = 0
    stale_metadata: int = 0
    connection_tests: int = 0
    skipped: int = 0


class Consumer:
    """Stores one Lambda batch at a time through ``store``.

    Every write is independent of the others: records have keys of their own and metadata
    versions are ordered by DynamoDB's condition, not by the order of the writes. So the
    Kinesis records of a batch are stored concurrently (``concurrency`` threads), and
    Powertools' BatchProcessor then collects each one's outcome into ``batchItemFailures``.
    """

    def __init__(self, store: Store, concurrency: int = 8) -> None:
        self.store = store
        # A batch whose every record failed is still answered with batchItemFailures rather
        # than an exception: Lambda then retries from the first record, as it would anyway.
        self.processor = BatchProcessor(
            event_type=EventType.KinesisDataStreams,
            raise_on_entire_batch_failure=False,
            logger=logger,
        )
        self.pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="store")
        self.counts = Counts()
        self._lock = threading.Lock()

    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        self.counts = Counts()
        if not event.get("Records"):  # Powertools refuses an empty batch; nothing to do
            return {"batchItemFailures": []}
        pending: dict[str, Future[None]] = {
            raw["kinesis"]["sequenceNumber"]: self.pool.submit(
                self.process_record, KinesisStreamRecord(raw)
            )
            for raw in event["Records"]
        }

        def outcome(record: KinesisStreamRecord) -> None:
            pending[record.kinesis.sequence_number].result()  # raises what the write raised

        response = process_partial_response(
            event=event,
            record_handler=outcome,
            processor=self.processor,
            context=context,
        )
        failed = [item["itemIdentifier"] for item in response.get("batchItemFailures", [])]
        logger.info(
            "batch of %d Kinesis records: %s, %d failed",
            len(event["Records"]),
            ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in vars(self.counts).items()),
            len(failed),
            extra={"failed_sequence_numbers": failed},
        )
        return dict(response)

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self.counts, what, getattr(self.counts, what) + 1)

    def process_record(self, record: KinesisStreamRecord) -> None:
        """One Kinesis record: every user record inside it, or an exception that marks the
        whole Kinesis record failed (its already stored user records are rewritten
        idempotently on the retry)."""
        sequence_number = record.kinesis.sequence_number
        raw = record.raw_event
        try:
            payload = _payload(record.kinesis.get("data"))
            data = decompress(payload)
        except BadRecord as exc:
            self.count("skipped")
            logger.error("skipping bad record %s: %s", sequence_number, exc)
            return
        if data is not payload:  # deaggregate (or decode) what was compressed
            text = base64.b64encode(data).decode("ascii")
            raw = {**raw, "kinesis": {**raw["kinesis"], "data": text}}
        try:
            for user_record in iter_deaggregate_records(raw):
                self.process_user_record(user_record["kinesis"])
        except Exception:
            logger.exception("failed to store record %s; it will be retried", sequence_number)
            raise

    def process_user_record(self, kinesis: dict[str, Any]) -> None:
        position = Position(
            sequence_number=str(kinesis["sequenceNumber"]),
            arrival_ms=round(float(kinesis["approximateArrivalTimestamp"]) * 1000),
            sub_sequence_number=kinesis.get("subSequenceNumber"),
        )
        try:
            envelope = decode(_payload(kinesis.get("data")))
            self.store_envelope(envelope, position)
        except BadRecord as exc:
            self.count("skipped")
            logger.error(
                "skipping bad record %s (partition key %r): %s",
                position.label,
                kinesis.get("partitionKey"),
                exc,
                extra={"sequence_number": position.sequence_number},
            )

    def store_envelope(
        self, envelope: Record | Metadata | ConnectionTest, position: Position
    ) -> None:
        if isinstance(envelope, Record):
            stored = self.store.put_record(envelope, position)
            self.count("records" if stored else "duplicates")
        elif isinstance(envelope, Metadata):
            stored = self.store.put_metadata(envelope, position)
            self.count("metadata" if stored else "stale_metadata")
        else:
            self.count("connection_tests")
            logger.info("connection test from %s acknowledged", envelope.host)


def _payload(data: Any) -> bytes:
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not isinstance(data, bytes):
        raise BadRecord("record has no data")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise BadRecord(f"data is not base64: {exc}") from None


class _Settings(NamedTuple):
    """What the consumer is built from: a change (between tests, or a new configuration
    in a warm container) builds a new one."""

    data_table: str
    metadata_table: str
    concurrency: str
    endpoint_url: str | None
    region: str | None

    @classmethod
    def from_env(cls) -> _Settings:
        env = os.environ.get
        return cls(
            data_table=env(DATA_TABLE_ENV) or DEFAULT_DATA_TABLE,
            metadata_table=env(METADATA_TABLE_ENV) or DEFAULT_METADATA_TABLE,
            concurrency=env(CONCURRENCY_ENV) or str(DEFAULT_CONCURRENCY),
            endpoint_url=env("AWS_ENDPOINT_URL"),
            region=env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        )


class _Built(NamedTuple):
    settings: _Settings
    consumer: Consumer


_cached: _Built | None = None


def consumer_from_env() -> Consumer:
    """The consumer for the current environment, built once per Lambda container."""
    global _cached
    settings = _Settings.from_env()
    if _cached is None or _cached.settings != settings:
        logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        concurrency = int(settings.concurrency)
        store = Store.connect(
            settings.data_table, settings.metadata_table, max_connections=concurrency
        )
        if _cached is not None:
            _cached.consumer.pool.shutdown(wait=False)
        _cached = _Built(settings, Consumer(store, concurrency))
    return _cached.consumer


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return consumer_from_env().handle(event, context)
