"""Settings of the ``mqtt`` source, validated with one readable line per problem."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from spark_sinks.show import show
from spark_sinks.sources import SourceConfig


def _readable_file(v: str | None) -> str | None:
    if v is not None and not os.access(v, os.R_OK):
        why = "does not exist" if not os.path.exists(v) else "is not readable"
        raise ValueError(f"file {show(v)} {why}")
    return v


class TlsSettings(BaseModel):
    """TLS to the broker; the server certificate is always verified. ``cert_file`` and
    ``key_file`` (a client certificate, as AWS IoT Core requires) go together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = None
    """CA certificates (PEM) that signed the broker's certificate; unset: the system's."""
    cert_file: str | None = None
    key_file: str | None = None

    _files = field_validator("ca_file", "cert_file", "key_file")(_readable_file)

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


def check_filter(f: str) -> str:
    """A topic filter as MQTT allows it: ``+`` and ``#`` fill a whole level, ``#`` last."""
    if not f:
        raise ValueError("a topic filter cannot be empty")
    if "\0" in f or len(f.encode()) > 65535:
        raise ValueError(f"{show(f)} is not a valid topic filter")
    levels = f.split("/")
    if f.startswith("$share/"):  # shared subscription: $share/<group>/<filter>
        if len(levels) < 3 or not levels[1] or any(c in levels[1] for c in "+#"):
            raise ValueError(f"{show(f)}: a shared subscription is $share/<group>/<filter>")
        levels = levels[2:]
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            raise ValueError(f"{show(f)}: '+' and '#' must fill a whole topic level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"{show(f)}: '#' must be the last level")
    return f


class MqttSourceConfig(SourceConfig):
    type: Literal["mqtt"] = "mqtt"
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    """Default 8883 with ``tls``, else 1883."""
    client_id: str = Field(
        default_factory=lambda: f"spark-sinks-source-{socket.gethostname()}", min_length=1
    )
    """Names the persistent session on the broker: keep it stable, and unique per gateway."""
    username: str | None = None
    password: SecretStr | None = None
    """Give it through the environment: ``password: ${MQTT_PASSWORD}``."""
    tls: TlsSettings | None = None
    qos: Literal[0, 1] = 1
    topics: list[str] = Field(min_length=1)
    format: Literal["json", "sparkplug_b"] = "json"
    keepalive: int = Field(60, ge=5, le=65535)
    session_expiry: int = Field(86400, ge=0, le=4294967295)
    """Seconds the broker keeps the session, and queues QoS 1 messages for it, while
    spark-sinks is away (the broker may cap it)."""
    max_pending: int = Field(1000, ge=1, le=65535)
    """Messages received but not yet acknowledged, at most: the MQTT 5 receive maximum.
    The broker holds everything beyond it, so memory stays bounded."""
    max_message_bytes: int = Field(1 << 20, ge=1)
    """A longer message is rejected (with its length) without being decoded."""

    devices: dict[str, str] = Field(default_factory=dict)
    """Sparkplug B: device id, or ``group/edge node/device``, -> machine name. A device
    not listed is the machine of the same name."""
    rebirth_requests: bool = True
    """Sparkplug B: follow each edge node's session (``seq``, births) and ask it for a
    rebirth (``NCMD``) when this source is out of step with it; false: never publish."""
    rebirth_interval: float = Field(30.0, ge=1, le=86400)
    """Sparkplug B: seconds between two rebirth requests to one edge node, at least."""
    reorder_timeout: float = Field(2.0, ge=0, le=3600)
    """Sparkplug B: seconds a message skipped in an edge node's ``seq`` may arrive late
    before a rebirth is requested (the specification's Reorder Timeout; 0: at once)."""

    @field_validator("topics")
    @classmethod
    def _filters(cls, v: list[str]) -> list[str]:
        return [check_filter(f) for f in v]

    @model_validator(mode="after")
    def _credentials(self) -> MqttSourceConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)
