"""Reaching the stream: credentials and network settings of the Kinesis client.

* Credentials: ``access_key_id``/``secret_access_key``, a ``profile``, or botocore's
  default chain; with ``role_arn`` these are only the *source* credentials of an STS
  AssumeRole, and the Kinesis client signs with the role's temporary credentials.
  botocore renews them (``DeferredRefreshableCredentials`` around its own
  ``AssumeRoleCredentialFetcher``), shortly before they expire, while requests go on.
* Network: ``proxy``, ``ca_bundle``, ``use_fips_endpoint`` and ``use_dualstack_endpoint``
  map onto botocore's own settings, for the Kinesis client and for the STS client alike.
  Certificates are always verified.

The sink imports this module only when it opens, so that botocore is not loaded when the
plugin is merely registered.
"""

from __future__ import annotations

import base64
import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any, NamedTuple

import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.session

from spark_sinks import SinkError, logs

from .addresses import shared_session
from .config import KinesisConfig

DEFAULT_SESSION_NAME = "spark-sinks"


class _WithoutTraceback(logging.Filter):
    """botocore logs a failed credential refresh with its traceback; the sink reports the
    failure itself in one line, so only botocore's message is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


logging.getLogger("botocore.credentials").addFilter(_WithoutTraceback())


class RefreshWindows(NamedTuple):
    """When botocore renews credentials, in seconds before they expire: from ``advisory``
    on it tries (and keeps the old ones if STS fails), from ``mandatory`` on every request
    waits for new ones."""

    advisory: float
    mandatory: float


def refresh_windows(duration_seconds: int) -> RefreshWindows:
    """botocore's own windows (15 and 10 minutes) fit credentials of an hour or more; for
    shorter ones they would renew on every request (15-minute credentials are always
    within 15 minutes of expiring), so they shrink in proportion."""
    return RefreshWindows(
        advisory=min(15 * 60, duration_seconds / 4),
        mandatory=min(10 * 60, duration_seconds / 6),
    )


def proxy_secrets(url: str) -> list[str]:
    """The parts of a proxy URL that must never be printed: the password (as written and
    decoded) and the ``user:password`` pair as it travels (base64 in Proxy-Authorization)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return []
    password = urllib.parse.unquote(parts.password)
    pair = f"{urllib.parse.unquote(parts.username or '')}:{password}"
    return [parts.password, password, pair, base64.b64encode(pair.encode()).decode("ascii")]


def masked_proxy(url: str) -> str:
    """The proxy URL fit for a log line: ``http://***@host:port``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{'***@' if '@' in parts.netloc else ''}{netloc}"


def client_config(cfg: KinesisConfig, **settings: Any) -> botocore.config.Config:
    """botocore settings shared by the Kinesis and STS clients of this sink."""
    proxy = cfg.proxy.get_secret_value() if cfg.proxy else None
    network: dict[str, Any] = {}
    if proxy is not None:
        network["proxies"] = {"http": proxy, "https": proxy}
        if cfg.ca_bundle is not None:  # an https:// proxy of the same private CA
            network["proxies_config"] = {"proxy_ca_bundle": cfg.ca_bundle}
    return botocore.config.Config(
        region_name=cfg.region,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        use_fips_endpoint=cfg.use_fips_endpoint,
        use_dualstack_endpoint=cfg.use_dualstack_endpoint,
        tcp_keepalive=True,
        **network,
        **settings,
    )


def _session(cfg: KinesisConfig) -> Any:
    try:
        if cfg.profile is None:
            return shared_session()
        return botocore.session.Session(profile=cfg.profile)
    except botocore.exceptions.ProfileNotFound:
        raise SinkError(_no_profile(cfg)) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SinkError(f"cannot set up AWS credentials: {exc}") from None


def _no_profile(cfg: KinesisConfig) -> str:
    return f"AWS profile {cfg.profile!r} is not in the shared config or credentials file"


def _static_keys(cfg: KinesisConfig) -> dict[str, str | None]:
    return {
        "aws_access_key_id": cfg.access_key_id,
        "aws_secret_access_key": (
            cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None
        ),
        "aws_session_token": cfg.session_token.get_secret_value() if cfg.session_token else None,
    }


def kinesis_client(cfg: KinesisConfig, **settings: Any) -> Any:
    """The botocore Kinesis client of a sink; ``settings`` are more botocore Config
    settings. SinkError with one line when it cannot be made."""
    if cfg.proxy is not None:
        for secret in proxy_secrets(cfg.proxy.get_secret_value()):
            logs.add_secret(secret)
    session = _session(cfg)
    keys = _static_keys(cfg)
    try:
        if cfg.role_arn is not None:
            session = _role_session(cfg, session, keys)
            keys = {}
        return session.create_client(
            "kinesis",
            region_name=cfg.region,
            endpoint_url=cfg.endpoint_url,
            verify=cfg.ca_bundle,
            config=client_config(cfg, **settings),
            **keys,
        )
    except botocore.exceptions.ProfileNotFound:
        raise SinkError(_no_profile(cfg)) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SinkError(f"cannot create the Kinesis client: {exc}") from None


class AssumeRoleError(Exception):
    """STS refused or could not be asked for the role's credentials (one line)."""


def _role_session(cfg: KinesisConfig, source: Any, keys: dict[str, str | None]) -> Any:
    """A botocore session of its own whose only credentials are the role's, renewed by
    botocore. ``source`` (with ``keys``, when given) signs the AssumeRole calls."""
    assert cfg.role_arn is not None
    windows = refresh_windows(cfg.duration_seconds)
    fetcher = _role_fetcher(cfg, source, _source_credentials(cfg, source, keys), windows)
    credentials = RoleCredentials(functools.partial(_assume, fetcher, cfg.role_arn), windows)
    session = botocore.session.Session()
    session.register_component(
        "credential_provider",
        botocore.credentials.CredentialResolver([_Given(credentials)]),
    )
    return session


def _source_credentials(cfg: KinesisConfig, source: Any, keys: dict[str, str | None]) -> Any:
    """The credentials that sign AssumeRole: the configured keys, else ``source``'s chain."""
    if cfg.access_key_id is not None and cfg.secret_access_key is not None:
        return botocore.credentials.Credentials(
            cfg.access_key_id,
            cfg.secret_access_key.get_secret_value(),
            keys["aws_session_token"],
        )
    found = source.get_credentials()
    if found is None:
        raise SinkError(
            f"no AWS credentials to assume role {cfg.role_arn} with: set access_key_id "
            "and secret_access_key, or profile, or provide them through the environment, "
            "the shared credentials file or an instance role"
        )
    return found


def _role_fetcher(
    cfg: KinesisConfig, source: Any, source_credentials: Any, windows: RefreshWindows
) -> botocore.credentials.AssumeRoleCredentialFetcher:
    """botocore's AssumeRole caller, with an STS client made like the Kinesis client."""
    assert cfg.role_arn is not None
    extra: dict[str, Any] = {
        "RoleSessionName": cfg.role_session_name or DEFAULT_SESSION_NAME,
        "DurationSeconds": cfg.duration_seconds,
    }
    if cfg.external_id is not None:
        extra["ExternalId"] = cfg.external_id
    return botocore.credentials.AssumeRoleCredentialFetcher(
        client_creator=functools.partial(
            source.create_client,
            region_name=cfg.region,
            endpoint_url=cfg.sts_endpoint_url,
            verify=cfg.ca_bundle,
            config=client_config(cfg),
        ),
        source_credentials=source_credentials,
        role_arn=cfg.role_arn,
        extra_args=extra,
        # its cache must not hand back credentials the refresher already wants renewed
        expiry_window_seconds=int(windows.advisory),
    )


def _assume(fetcher: Any, role_arn: str) -> dict[str, Any]:
    """One AssumeRole (botocore calls it when the credentials need renewing)."""
    try:
        fetched: dict[str, Any] = fetcher.fetch_credentials()
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise AssumeRoleError(
            f"cannot assume role {role_arn}: {err.get('Code')}: {err.get('Message')}"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AssumeRoleError(f"cannot assume role {role_arn}: {exc}") from None
    return fetched


class RoleCredentials(botocore.credentials.DeferredRefreshableCredentials):
    """The role's credentials: fetched at the first request, renewed by botocore within
    ``windows`` of their expiry."""

    def __init__(self, refresh_using: Callable[[], dict[str, Any]], windows: RefreshWindows):
        super().__init__(refresh_using=refresh_using, method="assume-role")
        # botocore's class-wide windows, per instance so that they follow the duration
        self._advisory_refresh_timeout = windows.advisory
        self._mandatory_refresh_timeout = windows.mandatory


class _Given(botocore.credentials.CredentialProvider):
    """A credential provider that returns the credentials it was made with."""

    METHOD = "assume-role"

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Any:
        return self._credentials
