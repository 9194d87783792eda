"""What a Kinesis failure means: error codes sorted by what the sender does about them,
an operator's sentence for each failure, and the rate-limited logging of failures.

Shared state: ``Notes`` is called from every lane thread; its two dicts belong to its
own lock (``Notes._lock``). ``Explainer`` holds only settings, read by every thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from spark_sinks import SinkStats

from .config import KinesisConfig

THROTTLED = "ProvisionedThroughputExceededException"
RETRYABLE_ENTRY_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
)
"""Per-entry codes that mean "busy, try again": retried with the usual backoff."""
INVALID_CODES = frozenset({"ValidationException", "InvalidArgumentException"})
"""Codes that mean the record itself is unacceptable: dead-lettered, never retried.
Any other per-entry code (e.g. KMS access problems) is retried slowly, since an
operator can fix it."""
THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
SERVER_CODES = frozenset({"InternalFailure", "ServiceUnavailable", "InternalServerError"})
"""Request-level codes of a passing failure on the service's side."""
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "InvalidAccessKeyId",
    }
)
ACCESS_CODES = frozenset({"AccessDeniedException", "AccessDenied", "KMSAccessDeniedException"})
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
STALE_MAP_CODES = frozenset({"InvalidArgumentException", "ResourceNotFoundException"})
"""Codes with which a write may be refused for a shard that a split or merge closed; the
message then names the shard (see ``closed_shard``)."""
_SHARD_ID = re.compile(r"shardId-[0-9]+")
_LOG_EVERY = 10.0
_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


class ErrorCode(NamedTuple):
    """What a botocore ``ClientError`` says."""

    code: str
    message: str
    status: int | None
    """The HTTP status."""


def error_code(exc: Any) -> ErrorCode:
    """The code, message and HTTP status of a botocore ``ClientError``.

    Some emulators answer a JSON API with an XML error body (moto does for bad
    credentials); botocore then reports the HTTP status as the code. Recover the real one.
    """
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    msg = str(err.get("Message", "")).strip()
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if msg.startswith("<"):
        m = _XML_CODE.search(msg)
        if m:
            code = m.group(1)
        m = _XML_MESSAGE.search(msg)
        msg = m.group(1).strip() if m else ""
    return ErrorCode(code, msg, status if isinstance(status, int) else None)


def closed_shard(code: str, message: str) -> str | None:
    """The shard a refusal names when it refuses a write for a shard, not for the record
    or the stream: a shard closed by a resharding, so the shard map is out of date.

    Kinesis itself puts each record on the open shard of its hash key, so it answers a
    split with records on shards the map does not know; an emulator or a proxy that routes
    by an old map answers ``InvalidArgumentException`` or ``ResourceNotFoundException``
    naming the shard instead. A refusal of the record itself (its size, its key) or of the
    stream never names a shard."""
    if code not in STALE_MAP_CODES:
        return None
    m = _SHARD_ID.search(message)
    return m.group(0) if m else None


def transient(err: ErrorCode) -> bool:
    """A request-level failure that passes by itself (throttling, a server error)."""
    status = err.status
    return err.code in THROTTLE_CODES or err.code in SERVER_CODES or bool(status and status >= 500)


class Explainer:
    """Turns a boto3 failure into an operator's sentence that never contains secrets."""

    def __init__(self, config: KinesisConfig) -> None:
        self.config = config
        self.endpoint = config.endpoint_url
        """The endpoint called; set from the client once it exists."""

    def stream(self) -> str:
        cfg = self.config
        if cfg.stream_arn is not None:  # name the account too: it may not be ours
            return f"Kinesis stream {cfg.stream_arn}"
        return f"Kinesis stream {cfg.stream_name!r} in {cfg.region}"

    def __call__(self, exc: BaseException, what: str) -> str:
        from botocore import exceptions as bx

        from .access import AssumeRoleError

        if isinstance(exc, bx.ClientError):
            return self._client_error(error_code(exc), what)
        if isinstance(exc, AssumeRoleError):
            return f"{exc} ({what} on {self.stream()})"
        if isinstance(exc, bx.NoCredentialsError):
            return (
                f"no AWS credentials found for {self.stream()}: set access_key_id and "
                "secret_access_key, or profile, or provide them through the environment, "
                "the shared credentials file or an instance role"
            )
        return self._transport_error(exc, what)

    def _client_error(self, err: ErrorCode, what: str) -> str:
        from .access import masked_proxy

        cfg = self.config
        code, msg, stream = err.code, err.message, self.stream()
        if err.status == 407 and cfg.proxy is not None:
            return (
                f"the proxy {masked_proxy(cfg.proxy.get_secret_value())} refused the "
                f"credentials given in proxy ({what}: HTTP 407 Proxy Authentication "
                "Required)"
            )
        if code in NOT_FOUND_CODES:
            where = f" at {self.endpoint}" if cfg.endpoint_url or self.endpoint else ""
            return f"{stream} not found{where} ({what}: {code})"
        if code in ACCESS_CODES:
            return (
                f"access denied to {stream} ({what}: {code}); the credentials need "
                "kinesis:DescribeStreamSummary, kinesis:ListShards and kinesis:PutRecords"
                + (f": {msg}" if msg else "")
            )
        if code in CREDENTIAL_CODES:
            return (
                f"AWS rejected the credentials for {stream} ({what}: {code}); check "
                "access_key_id/secret_access_key, the profile, or the AWS_* environment"
            )
        return f"{what} on {stream} failed: {code or 'HTTP ' + str(err.status)}" + (
            f": {msg}" if msg else ""
        )

    def _transport_error(self, exc: BaseException, what: str) -> str:
        from botocore import exceptions as bx

        from .access import masked_proxy

        cfg, endpoint = self.config, self.endpoint
        if isinstance(exc, bx.ProxyConnectionError) and cfg.proxy is not None:
            return (
                f"cannot reach {self.stream()} through the proxy "
                f"{masked_proxy(cfg.proxy.get_secret_value())} ({what}): {exc}"
            )
        if isinstance(exc, bx.SSLError):
            return (
                f"the TLS certificate of {endpoint} is not trusted ({what}): {exc}; "
                "set ca_bundle to the PEM file of the authority that signed it"
            )
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            return f"cannot reach the Kinesis endpoint {endpoint} ({what}): {exc}"
        if isinstance(exc, bx.ReadTimeoutError):
            return (
                f"the Kinesis endpoint {endpoint} did not answer within "
                f"{cfg.read_timeout:g} s ({what})"
            )
        if isinstance(exc, bx.ConnectionClosedError):
            return f"the Kinesis endpoint {endpoint} closed the connection ({what})"
        if isinstance(exc, bx.BotoCoreError):
            return f"{what} on {self.stream()} failed: {exc}"
        return f"{what} on {self.stream()} failed: {type(exc).__name__}: {exc}"


class Notes:
    """Records each failure as the sink's last error and logs it at most every few
    seconds per kind, saying how many records the sink holds."""

    def __init__(self, stats: SinkStats, log: logging.Logger, held: Callable[[], int]) -> None:
        self._stats = stats
        self._log = log
        self._held = held
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        """Both belong to ``_lock``: every lane thread notes its failures."""

    def __call__(self, kind: str, message: str, slow: bool = False) -> None:
        self._stats.error(message)
        now = time.monotonic()
        with self._lock:
            if now - self._last_log.get(kind, 0.0) < _LOG_EVERY:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            n = self._suppressed.pop(kind, 0)
            self._last_log[kind] = now
        more = f" ({n} more like it since the last report)" if n else ""
        action = (
            "retrying slowly until it is fixed or the sink stops"
            if slow
            else "retrying the failed records"
        )
        self._log.log(
            logging.ERROR if slow else logging.WARNING,
            "%s%s; %s, %d records held",
            message,
            more,
            action,
            self._held(),
        )
