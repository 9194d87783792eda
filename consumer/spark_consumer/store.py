"""The two DynamoDB tables and the idempotent writes into them.

Data table (default ``SparkData``): one item per record.
    pk  (partition key, S) = "{host}/{machine}"
    sk  (sort key, S)      = "{time}#{digest}"; ``time`` is the record's canonical UTC time,
                             ``digest`` a hash of the envelope, so that two different records
                             of one machine with the same millisecond both stay.
Metadata table (default ``SparkMetadata``): one item per host and machine, latest version.
    pk  (partition key, S) = "{host}/{machine}"
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from .envelope import BadRecord, Metadata, Position, Record

DEFAULT_DATA_TABLE = "SparkData"
DEFAULT_METADATA_TABLE = "SparkMetadata"

# Key schemas, shared by template.yaml (checked by a test) and the local runner.
DATA_TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ],
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
    ],
}
METADATA_TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
}

# DynamoDB refuses these items whatever the retry: the record is skipped, not retried.
_PERMANENT_VALIDATION_ERRORS = (
    "Item size has exceeded the maximum allowed size",
    "Nesting Levels have exceeded supported limits",
)


def arrival_time(arrival_ms: int) -> str:
    dt = datetime.fromtimestamp(arrival_ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{arrival_ms % 1000:03d}Z"


class Store:
    """Writes records and metadata; every write may be repeated safely, and writes may run
    in any order and concurrently (boto3 clients, unlike resources, are thread-safe)."""

    def __init__(self, client: Any, data_table: str, metadata_table: str) -> None:
        self.client = client
        self.data_table = data_table
        self.metadata_table = metadata_table

    @classmethod
    def connect(
        cls,
        data_table: str = DEFAULT_DATA_TABLE,
        metadata_table: str = DEFAULT_METADATA_TABLE,
        max_connections: int = 10,
    ) -> Store:
        """Tables by name. boto3 finds region, credentials and ``AWS_ENDPOINT_URL``."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "dynamodb", config=Config(max_pool_connections=max(10, max_connections))
        )
        return cls(client, data_table, metadata_table)

    def put_record(self, record: Record, position: Position) -> bool:
        """Store one record. False if this very record is already stored (a redelivery or a
        producer retry): the first copy is kept untouched."""
        item: dict[str, Any] = {
            "pk": record.pk,
            "sk": record.sk,
            "host": record.host,
            "machine": record.machine,
            "time": record.time,
            "attributes": record.attributes,
            "sequenceNumber": position.sequence_number,
            "arrivalTime": arrival_time(position.arrival_ms),
        }
        if position.sub_sequence_number is not None:
            item["subSequenceNumber"] = position.sub_sequence_number
        try:
            self.client.put_item(
                TableName=self.data_table,
                Item=_serialize(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            _raise_if_permanent(exc)
            raise
        return True

    def put_metadata(self, metadata: Metadata, position: Position) -> bool:
        """Store one metadata version unless a newer one is stored. False if the stored
        version is the same or newer (a redelivery, or an older version arriving late)."""
        fields: dict[str, Any] = {
            "host": metadata.host,
            "machine": metadata.machine,
            "info": metadata.info,
            "variables": metadata.variables,
            "version": position.version(metadata.time_ms),
            "sequenceNumber": position.sequence_number,
            "arrivalTime": arrival_time(position.arrival_ms),
        }
        if metadata.time is not None:
            fields["time"] = metadata.time
        names = {f"#{name}": name for name in (*fields, "pk")}
        try:
            self.client.update_item(
                TableName=self.metadata_table,
                Key=_serialize({"pk": metadata.pk}),
                UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in fields),
                ConditionExpression="attribute_not_exists(#pk) OR #version < :version",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_serialize({f":{k}": v for k, v in fields.items()}),
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            _raise_if_permanent(exc)
            raise
        return True


def create_tables(
    client: Any,
    data_table: str = DEFAULT_DATA_TABLE,
    metadata_table: str = DEFAULT_METADATA_TABLE,
) -> None:
    """Create both tables (on-demand billing) unless they exist; for local runs and tests.
    In AWS, template.yaml creates them."""
    existing = set(client.list_tables().get("TableNames", []))
    for name, schema in ((data_table, DATA_TABLE_SCHEMA), (metadata_table, METADATA_TABLE_SCHEMA)):
        if name not in existing:
            client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **schema)
    waiter = client.get_waiter("table_exists")
    for name in (data_table, metadata_table):
        waiter.wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


_SERIALIZER = TypeSerializer()


def _serialize(values: dict[str, Any]) -> dict[str, Any]:
    try:
        return {key: _SERIALIZER.serialize(value) for key, value in values.items()}
    except decimal.DecimalException as exc:  # envelope.to_dynamodb avoids this; be sure
        raise BadRecord(f"a number DynamoDB cannot store: {exc!r}") from exc


def _code(exc: ClientError) -> str:
    error: Mapping[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code", ""))


def _raise_if_permanent(exc: ClientError) -> None:
    if _code(exc) != "ValidationException":
        return
    message = str(exc.response.get("Error", {}).get("Message", ""))
    if any(text in message for text in _PERMANENT_VALIDATION_ERRORS):
        raise BadRecord(f"DynamoDB refuses the item: {message}") from exc
