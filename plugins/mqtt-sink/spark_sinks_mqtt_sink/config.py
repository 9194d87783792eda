"""The ``mqtt`` sink's configuration block; every check runs when the config is loaded."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from spark_sinks_sparkplug.topics import check_id

from spark_sinks import MAX_SECONDS, SinkConfig
from spark_sinks.show import show

TOPIC_FIELDS = frozenset({"host", "machine", "type"})
DEFAULT_TOPIC = "spark/{host}/{machine}/{type}"


class TlsConfig(BaseModel):
    """TLS to the broker; the server certificate is always verified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    """CA certificates (PEM) to verify the broker with; default: the system's."""
    cert_file: Path | None = None
    """This client's certificate (PEM), for mutual TLS (AWS IoT Core needs it)."""
    key_file: Path | None = None
    """The private key of ``cert_file`` (PEM)."""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttSinkConfig(SinkConfig):
    type: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    """Default 1883, or 8883 with ``tls``."""
    client_id: str | None = Field(None, min_length=1, max_length=65535)
    """Default ``spark-sinks-<host>-<sink name>``: stable, so the session survives restarts."""
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(60, ge=5, le=65535)
    qos: Literal[0, 1] | None = None
    """1: delivered when the broker's PUBACK arrives (default for ``json``); 0: delivered
    once written to the socket (default for ``sparkplug_b``, as its specification says)."""
    topic: str = DEFAULT_TOPIC
    """``json`` format: topic template with ``{host}``, ``{machine}``, ``{type}``."""
    retain_metadata: bool = True
    """``json`` format: metadata envelopes are retained, so a late subscriber gets them."""
    format: Literal["json", "sparkplug_b"] = "json"
    group_id: str = "spark"
    edge_node_id: str | None = None
    """Sparkplug edge node ID; default: the gateway's ``host``."""
    primary_host_id: str | None = None
    """Sparkplug: the host id of the Primary Host Application (Sparkplug 3.0). The edge node
    then publishes its births, and data, only while that host's STATE says online; on an
    offline STATE it publishes its NDEATH, disconnects and waits for online again."""
    aliases: bool = False
    """Sparkplug: each DBIRTH metric gets an alias (unique across the edge node) and DDATA
    names metrics by alias only: smaller messages; the host must have seen the births."""
    max_in_flight: int = Field(1000, ge=1, le=65000)
    """Envelopes held (published and unacknowledged, or waiting for a connection); a write
    waits when this many are held. At most 65000: MQTT message IDs are 16 bits."""
    connect_timeout: float = Field(10.0, gt=0, le=MAX_SECONDS)
    """Seconds for TCP, TLS and CONNACK; also how long the start-up check waits."""
    reconnect_min_delay: float = Field(0.5, gt=0, le=MAX_SECONDS)
    reconnect_max_delay: float = Field(30.0, gt=0, le=MAX_SECONDS)

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, v: str) -> str:
        try:
            fields = [f for _, f, _spec, _conv in string.Formatter().parse(v) if f is not None]
        except ValueError as exc:
            raise ValueError(f"topic template {show(v)} is malformed: {exc}") from None
        unknown = sorted(set(fields) - TOPIC_FIELDS)
        if unknown:
            raise ValueError(
                f"topic template {show(v)} uses {{{unknown[0]}}}; "
                "only {host}, {machine} and {type} are known"
            )
        if any(c in v for c in "+#\0") or not v:
            raise ValueError(f"topic template {show(v)} contains a wildcard (+, #) or NUL")
        return v

    @field_validator("password")
    @classmethod
    def _with_username(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if v is not None and info.data.get("username") is None:
            raise ValueError("password is set but username is not")
        return v

    @field_validator("group_id", "edge_node_id", "primary_host_id")
    @classmethod
    def _sparkplug_id(cls, v: str | None) -> str | None:
        return v if v is None else check_id(v, "the ID")

    @field_validator("primary_host_id")
    @classmethod
    def _for_sparkplug(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("format") != "sparkplug_b":
            raise ValueError("a Primary Host Application is a Sparkplug setting: it needs"
                             " format: sparkplug_b")  # fmt: skip
        return v

    @field_validator("reconnect_max_delay")
    @classmethod
    def _not_below_min(cls, v: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min_delay")
        if low is not None and v < low:
            raise ValueError(f"reconnect_max_delay ({v:g}) is smaller than reconnect_min_delay")
        return v

    @property
    def effective_qos(self) -> int:
        if self.qos is not None:
            return self.qos
        return 0 if self.format == "sparkplug_b" else 1

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)
