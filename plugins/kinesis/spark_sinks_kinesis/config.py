"""The ``kinesis`` sink's configuration block and its validation.

Every check runs when the config is loaded, before anything starts, so that a
bad region or a missing stream name stops ``spark-sinks run`` with exit code 2
and one line naming the key (``sinks.<name>.region: ...``).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from spark_sinks import SinkConfig

MiB = 1024 * 1024

PUT_RECORDS_MAX_RECORDS = 500
"""Kinesis accepts at most 500 entries in one PutRecords request."""
REQUEST_MAX_BYTES = 10 * MiB
AGGREGATED_BATCH_BYTES = MiB
"""The default ``max_batch_bytes`` with ``aggregation: kpl``. Without aggregation a request
of 500 small records stays far below 5 MiB; with it, requests fill up to the limit, and
each one in flight is held about four times over (records, aggregates, base64, body).
With 1 MiB, a 1,000,000-record run peaked at 105 MB instead of 149 MB (``make bench``'s
RSS run), at the same speed on 20,000 records."""
"""Largest request we allow to be configured (streams whose record size was raised)."""
RECORD_MAX_BYTES = 10 * MiB
"""Largest record a stream can be configured for (``UpdateMaxRecordSize``)."""

UI_REGION_NAMES: dict[str, str] = {
    "us east (n. virginia)": "us-east-1",
    "us east (ohio)": "us-east-2",
    "us west (n. california)": "us-west-1",
    "us west (oregon)": "us-west-2",
    "asia pacific (tokyo)": "ap-northeast-1",
    "asia pacific (seoul)": "ap-northeast-2",
    "asia pacific (osaka-local)": "ap-northeast-3",
    "asia pacific (mumbai)": "ap-south-1",
    "asia pacific (singapore)": "ap-southeast-1",
    "asia pacific (sydney)": "ap-southeast-2",
    "canada (central)": "ca-central-1",
    "china (beijing)": "cn-north-1",
    "china (ningxia)": "cn-northwest-1",
    "eu (frankfurt)": "eu-central-1",
    "eu (ireland)": "eu-west-1",
    "eu (london)": "eu-west-2",
    "eu (paris)": "eu-west-3",
    "south america (são paulo)": "sa-east-1",
}
"""The region names the original module's UI offered, mapped to region codes."""

_STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,128}")


@functools.cache
def shared_session() -> Any:
    """One botocore session for region checks and for the clients of sinks without a
    ``profile``: the endpoint data is then read once per process. Nothing per sink is set
    on it: credentials are given to each client. botocore rather than boto3, whose
    import also loads s3transfer (about 40 ms of every start) for nothing here."""
    import botocore.session

    return botocore.session.get_session()


@functools.cache
def kinesis_regions() -> frozenset[str]:
    """Every region botocore knows Kinesis in, across all partitions (aws, cn, gov, ...)."""
    session = shared_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("kinesis", partition_name=partition))
    return frozenset(regions)


def normalize_region(value: str) -> str:
    """A region code for ``value`` (a code or one of the original's UI names), or ValueError."""
    text = " ".join(value.split()).lower()
    if not text:
        raise ValueError("must not be empty (e.g. us-east-1)")
    region = UI_REGION_NAMES.get(text, text)
    if region not in kinesis_regions():
        raise ValueError(f"{value!r} is not an AWS region where Kinesis is available")
    return region


class ShardLimitsConfig(BaseModel):
    """``shard_limits``: what Kinesis lets one shard take per second. The defaults are
    Kinesis's limits, the same for provisioned and on-demand streams."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records_per_second: float = Field(1000.0, gt=0, le=1_000_000)
    """A KPL aggregate counts as one record."""
    bytes_per_second: int = Field(MiB, ge=1024, le=1024 * MiB)
    """Data plus partition key; a KPL aggregate counts with its full size."""


class KinesisConfig(SinkConfig):
    """``sinks.<name>`` with ``type: kinesis``."""

    type: Literal["kinesis"] = "kinesis"

    stream_name: str
    """The Kinesis data stream; it must exist in ``region``."""
    region: str
    """A region code (``eu-west-1``) or the original module's UI name (``EU (Ireland)``)."""
    endpoint_url: str | None = None
    """Another endpoint, e.g. a local emulator (``http://127.0.0.1:5000``). Without it
    boto3's own rules apply, including the ``AWS_ENDPOINT_URL`` variable."""

    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    profile: str | None = None
    """A profile of the shared AWS config files. Without keys and profile, boto3's
    default chain applies (environment, shared files, container or instance role)."""

    max_batch_records: int = Field(PUT_RECORDS_MAX_RECORDS, ge=1, le=PUT_RECORDS_MAX_RECORDS)
    max_batch_bytes: int = Field(5 * MiB, ge=1024, le=REQUEST_MAX_BYTES)
    """Bytes in one PutRecords request, counting data and partition keys; 1 MiB by
    default with ``aggregation: kpl`` (``AGGREGATED_BATCH_BYTES``)."""
    linger_ms: float = Field(100.0, ge=0, le=60_000)
    """How long a partial batch may wait for more records before it is sent."""
    max_record_bytes: int = Field(MiB, ge=1024, le=RECORD_MAX_BYTES)
    """Larger records (data + partition key) go to the dead letter. 1 MiB is Kinesis's
    default; raise it only for a stream whose maximum record size was raised."""
    max_buffered_bytes: int = Field(16 * MiB, ge=MiB)
    """Bound on record bytes held (queued or being sent); ``write`` blocks beyond it. The
    envelopes behind them take about ten times as much memory as Python objects."""
    max_in_flight: int = Field(4, ge=1, le=64)
    """Concurrent PutRecords requests ("lanes"). Each shard (learnt with ListShards at
    start) is written by one lane only, and a partition key always uses the same lane, so
    the records of one machine still leave one request after the other."""

    connect_timeout: float = Field(5.0, gt=0, le=300)
    read_timeout: float = Field(15.0, gt=0, le=300)
    retry_base_ms: float = Field(50.0, gt=0, le=60_000)
    """First retry delay cap; it doubles per consecutive failure (full jitter)."""
    retry_max_ms: float = Field(5_000.0, gt=0, le=600_000)
    """Largest delay between two retries of throttled or failed requests."""

    connection_test: bool = True
    """Put one ``connection_test`` record at start, as the original did."""

    aggregation: Literal["none", "kpl"] = "none"
    """``kpl``: pack the records of one partition key into KPL-format aggregated records
    (readable by aws-kinesis-agg's deaggregator and the KCL), at most one aggregate per
    key in a request, so that one machine's records keep their order even under retries.
    ``max_batch_records`` then counts aggregates per request."""

    rate_limit: bool = True
    """Meter every shard's writes before sending, as Kinesis meters them
    (``shard_limits``), and adapt to the throttling the stream answers. ``off``: send as
    fast as the lanes go and rely on retries (for emulators that do not meter)."""
    shard_limits: ShardLimitsConfig = ShardLimitsConfig.model_validate({})
    shard_refresh_seconds: float = Field(60.0, ge=0.1, le=86_400)
    """How often the shard map is listed again (besides when a write lands on a shard the
    map does not know), to follow splits, merges and on-demand scaling."""

    @model_validator(mode="before")
    @classmethod
    def _aggregation_defaults(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("aggregation") == "kpl"
            and "max_batch_bytes" not in data
        ):
            return {**data, "max_batch_bytes": AGGREGATED_BATCH_BYTES}
        return data

    @field_validator("stream_name")
    @classmethod
    def _stream_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if not _STREAM_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid Kinesis stream name "
                "(1-128 characters: letters, digits, '_', '.', '-')"
            )
        return v

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, v: object) -> object:
        if v is None:
            raise ValueError("must not be empty (e.g. us-east-1)")
        if isinstance(v, str):
            return normalize_region(v)
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v

    @field_validator("access_key_id", "profile")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty; remove the key to use the default chain")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KinesisConfig:
        has_id = self.access_key_id is not None
        has_secret = self.secret_access_key is not None and bool(
            self.secret_access_key.get_secret_value()
        )
        if has_id != has_secret:
            raise ValueError(
                "access_key_id and secret_access_key must be given together "
                "(or neither, for a profile or boto3's default credential chain)"
            )
        if self.session_token is not None and not has_id:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        if self.profile is not None and has_id:
            raise ValueError("give either profile or access_key_id/secret_access_key, not both")
        if self.max_buffered_bytes < self.max_batch_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                f"max_batch_bytes ({self.max_batch_bytes})"
            )
        if self.max_buffered_bytes < self.max_record_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                f"max_record_bytes ({self.max_record_bytes})"
            )
        if self.retry_max_ms < self.retry_base_ms:
            raise ValueError("retry_max_ms must be at least retry_base_ms")
        return self
