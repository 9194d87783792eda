"""The ``kinesis`` sink's configuration block and its validation.

Every check runs when the config is loaded, before anything starts, so that a
bad region or a missing stream name stops ``spark-sinks run`` with exit code 2
and one line naming the key (``sinks.<name>.region: ...``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from spark_sinks import SinkConfig
from spark_sinks.show import show

from .addresses import (
    EXTERNAL_ID,
    ROLE_ARN,
    SESSION_NAME,
    STREAM_NAME,
    StreamArn,
    check_url,
    normalize_region,
    proxy_parts,
)

MiB = 1024 * 1024

PUT_RECORDS_MAX_RECORDS = 500
"""Kinesis accepts at most 500 entries in one PutRecords request."""
REQUEST_MAX_BYTES = 10 * MiB
"""Largest request we allow to be configured (streams whose record size was raised)."""
AGGREGATED_BATCH_BYTES = MiB
"""The default ``max_batch_bytes`` with ``aggregation: kpl``. Without aggregation a request
of 500 small records stays far below 5 MiB; with it, requests fill up to the limit, and
each one in flight is held about four times over (records, aggregates, base64, body).
With 1 MiB, a 1,000,000-record run peaked at 105 MB instead of 149 MB (``make bench``'s
RSS run), at the same speed on 20,000 records."""
RECORD_MAX_BYTES = 10 * MiB
"""Largest record a stream can be configured for (``UpdateMaxRecordSize``)."""

ROLE_DURATION_MIN = 900
ROLE_DURATION_MAX = 43_200
"""AssumeRole's bounds for DurationSeconds (the role's own maximum may be lower)."""


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

    model_config = ConfigDict(hide_input_in_errors=True)
    """pydantic's own error text would repeat the input (a proxy URL with its password,
    a secret key); the messages here name what is wrong without it."""

    type: Literal["kinesis"] = "kinesis"

    stream_name: str
    """The Kinesis data stream; it must exist in ``region``. Filled in from ``stream_arn``
    when that is given instead."""
    stream_arn: str | None = None
    """The stream's ARN instead of ``stream_name`` (e.g. a stream of another account,
    reached through its resource policy); every call then names the stream by ARN."""
    region: str
    """A region code (``eu-west-1``) or the original module's UI name (``EU (Ireland)``);
    taken from ``stream_arn`` when not given."""
    endpoint_url: str | None = None
    """Another endpoint, e.g. a local emulator (``http://127.0.0.1:5000``). Without it
    boto3's own rules apply, including the ``AWS_ENDPOINT_URL`` variable."""

    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    profile: str | None = None
    """A profile of the shared AWS config files. Without keys and profile, boto3's
    default chain applies (environment, shared files, container or instance role)."""

    role_arn: str | None = None
    """An IAM role to assume (STS AssumeRole) with the credentials above; its temporary
    credentials are renewed by botocore before they expire."""
    external_id: str | None = None
    role_session_name: str | None = None
    """Shown in the stream account's CloudTrail; ``spark-sinks`` when not given."""
    duration_seconds: int = Field(3600, ge=ROLE_DURATION_MIN, le=ROLE_DURATION_MAX)
    """Lifetime of the assumed role's credentials (the role's maximum session duration
    must allow it)."""
    sts_endpoint_url: str | None = None
    """Another STS endpoint for AssumeRole (e.g. a VPC endpoint). Without it botocore's
    rules apply, including ``AWS_ENDPOINT_URL_STS``."""

    proxy: SecretStr | None = None
    """An HTTP(S) proxy for every AWS call of this sink: ``http://[user:password@]host:port``.
    The URL is never logged."""
    ca_bundle: str | None = None
    """A PEM file of the certificate authorities to trust (e.g. a TLS-inspecting proxy or
    a private endpoint) instead of the built-in ones. Verification always stays on."""
    use_fips_endpoint: bool = False
    """Use the FIPS 140 endpoints of Kinesis (and STS)."""
    use_dualstack_endpoint: bool = False
    """Use the IPv4/IPv6 endpoints of Kinesis (and STS)."""

    max_batch_records: int = Field(PUT_RECORDS_MAX_RECORDS, ge=1, le=PUT_RECORDS_MAX_RECORDS)
    max_batch_bytes: int = Field(5 * MiB, ge=1024, le=REQUEST_MAX_BYTES)
    """Bytes in one PutRecords request, counting data and partition keys; 1 MiB by
    default with ``aggregation: kpl`` (``AGGREGATED_BATCH_BYTES``)."""
    linger_ms: float = Field(100.0, ge=0, le=60_000)
    """How long a partial batch may wait for more records before it is sent."""
    max_record_bytes: int = Field(MiB, ge=1024, le=RECORD_MAX_BYTES)
    """Larger records (data + partition key) go to the dead letter. 1 MiB is Kinesis's
    default; raise it only for a stream whose maximum record size was raised. With
    ``rate_limit`` at most ``shard_limits.bytes_per_second``, and by default so when that
    is lower."""
    max_buffered_bytes: int = Field(16 * MiB, ge=MiB)
    """Bound on record bytes held (queued or being sent); ``write`` blocks beyond it. The
    envelopes behind them take about ten times as much memory as Python objects."""
    max_in_flight: int = Field(4, ge=1, le=64)
    """Concurrent PutRecords requests ("lanes"). Each shard (learnt with ListShards at
    start) is written by one lane only, or with ``rate_limit`` by up to
    ``max_in_flight_per_shard`` lanes; a partition key always uses the same lane, so the
    records of one machine still leave one request after the other."""

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

    compression: Literal["none", "gzip", "zstd"] = "none"
    """Compress each Kinesis record's data (each aggregate with ``aggregation: kpl``);
    limits apply to the compressed bytes. Consumers must then decompress: the one in
    ``consumer/`` tells the formats apart by their first bytes. ``zstd`` needs the
    ``zstandard`` package (``spark-sinks-kinesis[zstd]``)."""

    rate_limit: bool = True
    """Meter every shard's writes before sending, as Kinesis meters them
    (``shard_limits``), and adapt to the throttling the stream answers. ``off``: send as
    fast as the lanes go and rely on retries (for emulators that do not meter)."""
    shard_limits: ShardLimitsConfig = ShardLimitsConfig.model_validate({})
    max_in_flight_per_shard: int = Field(4, ge=1, le=64)
    """With ``rate_limit``: requests out to one shard at once (at most ``max_in_flight``).
    The shard's partition keys are spread over this many queues, each sent by one lane,
    so that the shard's budget is not idle while a request waits for its answer; one
    partition key is never in two requests at once."""
    shard_refresh_seconds: float = Field(60.0, ge=0.1, le=86_400)
    """How often the shard map is listed again (besides when a write lands on a shard the
    map does not know, or is refused for a closed one), to follow splits, merges and
    on-demand scaling. Not set: every 60 s, or 10 s for an on-demand stream."""

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

    @model_validator(mode="before")
    @classmethod
    def _record_bytes_default(cls, data: Any) -> Any:
        """With ``rate_limit``, ``max_record_bytes`` defaults to at most what a shard takes
        in a second (``shard_limits.bytes_per_second``): a larger record could never be
        sent, and would hold up its shard's queue for good."""
        if not isinstance(data, dict) or "max_record_bytes" in data:
            return data
        try:
            limits = ShardLimitsConfig.model_validate(data.get("shard_limits", {}))
            metered = TypeAdapter(bool).validate_python(data.get("rate_limit", True))
        except ValidationError:
            return data  # the fields' own validators name the problem
        if metered and limits.bytes_per_second < MiB:
            return {**data, "max_record_bytes": limits.bytes_per_second}
        return data

    @model_validator(mode="after")
    def _record_fits_a_shard(self) -> KinesisConfig:
        limit = self.shard_limits.bytes_per_second
        if self.rate_limit and self.max_record_bytes > limit:
            raise ValueError(
                f"max_record_bytes ({self.max_record_bytes}) exceeds "
                f"shard_limits.bytes_per_second ({limit}): with rate_limit such a record "
                "could never be sent; lower max_record_bytes, raise "
                "shard_limits.bytes_per_second, or set rate_limit: false"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _stream_from_arn(cls, data: Any) -> Any:
        """``stream_arn`` stands for ``stream_name`` (and ``region`` when not given)."""
        if not isinstance(data, dict) or data.get("stream_arn") is None:
            return data
        if data.get("stream_name") is not None:
            raise ValueError("give either stream_name or stream_arn, not both")
        arn = data["stream_arn"]
        if not isinstance(arn, str):
            return data  # the field's own type check reports it
        try:
            parts = StreamArn(arn)
        except ValueError:
            return {**data, "stream_name": "-"}  # stream_arn's validator names the problem
        filled = {**data, "stream_name": parts.name}
        if filled.get("region") is None:
            filled["region"] = parts.region
        return filled

    @field_validator("stream_name")
    @classmethod
    def _stream_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if not STREAM_NAME.fullmatch(v):
            raise ValueError(
                f"{show(v)} is not a valid Kinesis stream name "
                "(1-128 characters: letters, digits and any of _.-)"
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

    @field_validator("stream_arn")
    @classmethod
    def _stream_arn(cls, v: str | None) -> str | None:
        if v is not None:
            StreamArn(v)
            v = v.strip()
        return v

    @field_validator("endpoint_url", "sts_endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return check_url(v)

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, v: str | None) -> str | None:
        if v is not None and not ROLE_ARN.fullmatch(v.strip()):
            raise ValueError(
                f"{show(v)} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
            )
        return None if v is None else v.strip()

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, v: str | None) -> str | None:
        if v is not None and not EXTERNAL_ID.fullmatch(v):
            raise ValueError(
                "must be 2-1224 characters: letters, digits and any of _+=,.@:/-"
            )  # not echoed: an external id is often treated like a shared secret
        return v

    @field_validator("role_session_name")
    @classmethod
    def _session_name(cls, v: str | None) -> str | None:
        if v is not None and not SESSION_NAME.fullmatch(v):
            raise ValueError(
                f"{show(v)} is not a role session name "
                "(2-64 characters: letters, digits and any of _+=,.@-)"
            )
        return v

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            proxy_parts(v.get_secret_value())
            v = SecretStr(v.get_secret_value().strip())
        return v

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, v: str | None) -> str | None:
        if v is None:
            return None
        path = Path(v).expanduser()
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"file {show(v)} not found") from None
        except OSError as exc:
            raise ValueError(f"cannot read {show(v)}: {exc.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{show(v)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        return str(path)

    @field_validator("compression")
    @classmethod
    def _compression(cls, v: str) -> str:
        if v == "zstd" and importlib.util.find_spec("zstandard") is None:
            raise ValueError(
                "zstd needs the zstandard package: pip install 'spark-sinks-kinesis[zstd]'"
            )
        return v

    @field_validator("access_key_id", "profile")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty; remove the key to use the default chain")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KinesisConfig:
        self._check_credentials()
        self._check_sizes()
        self._check_stream_region()
        self._check_role_settings()
        return self

    def _check_credentials(self) -> None:
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

    def _check_sizes(self) -> None:
        for name in ("max_batch_bytes", "max_record_bytes"):
            if self.max_buffered_bytes < getattr(self, name):
                raise ValueError(
                    f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                    f"{name} ({getattr(self, name)})"
                )
        if self.retry_max_ms < self.retry_base_ms:
            raise ValueError("retry_max_ms must be at least retry_base_ms")

    def _check_stream_region(self) -> None:
        if self.stream_arn is None:
            return
        arn_region = StreamArn(self.stream_arn).region
        if arn_region != self.region:
            raise ValueError(
                f"region {show(self.region)} differs from the region of stream_arn "
                f"({show(arn_region)}); remove region or make them agree"
            )

    def _check_role_settings(self) -> None:
        if self.role_arn is not None:
            return
        given = self.model_fields_set & {
            "external_id",
            "role_session_name",
            "duration_seconds",
            "sts_endpoint_url",
        }
        if given:
            raise ValueError(f"{', '.join(sorted(given))} only apply with role_arn")

    @property
    def stream(self) -> dict[str, str]:
        """How API calls name the stream: ``StreamARN`` or ``StreamName``."""
        if self.stream_arn is not None:
            return {"StreamARN": self.stream_arn}
        return {"StreamName": self.stream_name}
