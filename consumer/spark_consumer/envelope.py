"""Decode one Kinesis user record into what the tables store.

The producer sends compact UTF-8 JSON envelopes ``{"type", "host", "data"}``. Anything
that can never be stored, however often Lambda retries it, raises :class:`BadRecord`.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# DynamoDB numbers: 38 significant digits, magnitudes 1E-130 .. 9.99..E+125. boto3 serialises
# with this same context and raises on anything it would have to round or clamp.
DYNAMODB_CONTEXT = decimal.Context(
    Emin=-128,
    Emax=126,
    prec=38,
    traps=[
        decimal.Clamped,
        decimal.Overflow,
        decimal.Inexact,
        decimal.Rounded,
        decimal.Underflow,
    ],
)

_SMALLEST = Decimal("1E-130")
_TOO_LARGE = Decimal("1E+126")

# DynamoDB limits on key attributes, in UTF-8 bytes.
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024

_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


class BadRecord(Exception):
    """A record that can never be stored: it is logged and skipped, never retried."""


@dataclass(frozen=True)
class Position:
    """Where a user record sits in the stream; identical on every redelivery."""

    sequence_number: str
    arrival_ms: int
    sub_sequence_number: int | None = None
    """Index inside a KPL-aggregated Kinesis record, ``None`` for a plain record."""

    def version(self, time_ms: int | None = None) -> str:
        """A string that sorts like the stream: ``time_ms`` (by default the arrival time),
        then sequence number, then the index inside an aggregated record. All fields are
        zero-padded to a fixed width, so DynamoDB's string comparison orders versions."""
        ms = self.arrival_ms if time_ms is None else time_ms
        sub = -1 if self.sub_sequence_number is None else self.sub_sequence_number
        return f"{max(ms, 0):015d}.{self.sequence_number:0>130}.{sub + 1:010d}"

    @property
    def label(self) -> str:
        """How logs name the record: the Kinesis sequence number (and sub-sequence number)."""
        if self.sub_sequence_number is None:
            return self.sequence_number
        return f"{self.sequence_number}/{self.sub_sequence_number}"


@dataclass(frozen=True)
class Record:
    host: str
    machine: str
    time: str
    attributes: dict[str, Any]
    digest: str
    """Hash of the envelope's bytes: tells apart two different records with the same time."""

    @property
    def pk(self) -> str:
        return partition_key(self.host, self.machine)

    @property
    def sk(self) -> str:
        return f"{self.time}#{self.digest}"


@dataclass(frozen=True)
class Metadata:
    host: str
    machine: str
    info: dict[str, Any]
    variables: dict[str, Any] = field(default_factory=dict)
    time: str | None = None
    """When the producer made this version, if it says (the original never did)."""

    @property
    def time_ms(self) -> int | None:
        if self.time is None:
            return None
        dt = datetime.strptime(self.time, "%Y-%m-%dT%H:%M:%S.%f%z")
        return int(dt.timestamp()) * 1000 + dt.microsecond // 1000

    @property
    def pk(self) -> str:
        return partition_key(self.host, self.machine)


@dataclass(frozen=True)
class ConnectionTest:
    host: str


Envelope = Record | Metadata | ConnectionTest


def partition_key(host: str, machine: str) -> str:
    """The same key the producer uses as the Kinesis partition key."""
    return f"{host}/{machine}"


def decode(payload: bytes) -> Envelope:
    """Parse and validate one envelope. Floats become ``Decimal``."""
    obj = _parse(payload)
    kind = obj.get("type")
    host = _text(obj, "host", "envelope")
    data = obj.get("data")
    if kind == "connection_test":
        return ConnectionTest(host)
    if kind not in ("record", "metadata"):
        raise BadRecord(f"unknown envelope type {kind!r}")
    if not isinstance(data, dict):
        raise BadRecord(f"{kind} data is not an object")
    if kind == "record":
        return _record(host, data, payload)
    return _metadata(host, data)


def _parse(payload: bytes) -> dict[str, Any]:
    """The envelope's JSON object, numbers with a fraction as ``Decimal``."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"data is not UTF-8: {exc}") from None
    try:
        obj = json.loads(text, parse_float=Decimal, parse_constant=_constant)
    except ValueError as exc:
        raise BadRecord(f"data is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"envelope is a JSON {type(obj).__name__}, not an object")
    return obj


def _record(host: str, data: dict[str, Any], payload: bytes) -> Record:
    machine = _text(data, "machine", "record data")
    time = normalize_time(data.get("time"))
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        raise BadRecord("record data.attributes is not an object")
    record = Record(
        host=host,
        machine=machine,
        time=time,
        attributes=to_dynamodb(attributes),
        digest=hashlib.sha256(payload).hexdigest()[:16],
    )
    _check_key(record.pk, MAX_PARTITION_KEY_BYTES, "host/machine")
    _check_key(record.sk, MAX_SORT_KEY_BYTES, "time")
    return record


def _metadata(host: str, data: dict[str, Any]) -> Metadata:
    info = data.get("info")
    if not isinstance(info, dict):
        raise BadRecord("metadata data.info is not an object")
    machine = _text(info, "name", "metadata data.info")
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise BadRecord("metadata data.variables is not an object")
    time = data.get("time")
    metadata = Metadata(
        host,
        machine,
        to_dynamodb(info),
        to_dynamodb(variables),
        None if time is None else normalize_time(time),
    )
    _check_key(metadata.pk, MAX_PARTITION_KEY_BYTES, "host/machine")
    return metadata


def normalize_time(value: object) -> str:
    """The record time as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC), the producer's own format, so
    that sort keys compare in time order. Other ISO 8601 forms are converted."""
    if not isinstance(value, str):
        raise BadRecord(f"record time {value!r} is not a string")
    if _CANONICAL_TIME.match(value):
        return value
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise BadRecord(f"record time {value!r} is not an ISO 8601 timestamp") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def to_dynamodb(value: Any) -> Any:
    """JSON value -> value boto3 can store. Numbers become ``Decimal``; a number DynamoDB
    cannot hold exactly (more than 38 digits, or beyond its exponent range) is kept as its
    JSON text, so that nothing is lost or rounded silently."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return _number(value)
    if isinstance(value, dict):
        return {str(k): to_dynamodb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_dynamodb(v) for v in value]
    raise BadRecord(f"unexpected JSON value {value!r}")  # pragma: no cover - json never yields it


def _number(value: int | Decimal) -> Decimal | str:
    number = Decimal(value)
    if number.is_zero():
        return Decimal(0)
    try:
        exact = DYNAMODB_CONTEXT.create_decimal(number)
    except decimal.DecimalException:
        return str(value)
    # boto3's context still admits subnormals down to 1E-165 and 1E+126 itself;
    # DynamoDB does not, so test its documented range too.
    if not _SMALLEST <= abs(exact) < _TOO_LARGE:
        return str(value)
    return exact


def _constant(name: str) -> str:
    # NaN and Infinity are not JSON, but Python's parser accepts them: keep them as text.
    return name


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{where}.{key} is missing or not a non-empty string")
    return value


def _check_key(value: str, limit: int, what: str) -> None:
    if len(value.encode("utf-8")) > limit:
        raise BadRecord(f"{what} key is longer than DynamoDB's {limit} bytes")
