"""The YAML configuration: loading, ``${VAR}`` substitution and validation.

Validation happens in full before anything starts. Each sink and source type
validates its own block with its own model; every error names its config path,
e.g. ``sinks.cloud.region: 'bad-region' is not an AWS region``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from .errors import ConfigError
from .machines import FORMATS, Machine, make_variable
from .metrics import OperationsConfig
from .plugins import Provided, Registry
from .sink import SinkConfig
from .sources import SourceConfig

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SrcVariable(_Strict):
    srcMachine: str
    srcVariable: str


class VariableConfig(_Strict):
    name: str | None = None
    description: str | None = None
    format: str
    srcVariables: list[SrcVariable] | None = None
    array: bool | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"{v!r} is not a Spark format (one of: {', '.join(FORMATS)})")
        return v


class MachineConfig(_Strict):
    info: dict[str, Any] = Field(default_factory=dict)
    enable: bool = True
    publishDisabled: bool = False
    variables: dict[str, VariableConfig] = Field(min_length=1)


class AppConfig(_Strict):
    host: str | None = None
    machines: dict[str, MachineConfig] = Field(min_length=1)
    on_incomplete: Literal["drop", "emit"] = "drop"
    """What to do with a record whose variable repeats before it is complete."""
    source: dict[str, Any] = Field(default_factory=lambda: {"type": "ndjson", "path": "-"})
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)


@dataclass
class SinkSpec:
    name: str
    config: SinkConfig
    provided: Provided


@dataclass
class Config:
    path: Path
    host: str
    machines: dict[str, Machine]
    on_incomplete: Literal["drop", "emit"]
    source: SourceConfig
    source_type: Provided
    sinks: dict[str, SinkSpec]
    operations: OperationsConfig


# -- environment substitution ------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(node: Any, path: str) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in string values; ``$$`` is a literal ``$``."""
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return default
        return value

    return _VAR.sub(repl, node)


# -- validation errors -------------------------------------------------------------------


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "(top level)"


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg: str = err["msg"]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line for all problems. Input values are not echoed (they may be secrets);
    validators that want a value in the message put it there themselves."""
    return "; ".join(f"{_loc(prefix, tuple(e['loc']))}: {_message(e)}" for e in exc.errors())


def validate_block(model: type[BaseModel], data: Any, prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


# -- loading -----------------------------------------------------------------------------

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        # safe_load's own loader, in C when libyaml is there: the same safe subset of YAML
        # (no Python objects), a few times faster on configs with many machines.
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None


def build_machines(machines: dict[str, MachineConfig]) -> dict[str, Machine]:
    out: dict[str, Machine] = {}
    for key, mc in machines.items():
        info = dict(mc.info)
        name = info.setdefault("name", key)
        if name != key:
            raise ConfigError(f"machines.{key}.info.name: {name!r} differs from the key {key!r}")
        variables = {}
        for vkey, vc in mc.variables.items():
            definition = vc.model_dump(exclude_none=True)
            definition.setdefault("name", vkey)
            if definition["name"] != vkey:
                raise ConfigError(
                    f"machines.{key}.variables.{vkey}.name: {definition['name']!r} "
                    f"differs from the key {vkey!r}"
                )
            # the published definition keeps the configured key order, name first
            definition = {"name": vkey, **{k: v for k, v in definition.items() if k != "name"}}
            variables[vkey] = make_variable(definition)
        out[key] = Machine(key, info, mc.enable, mc.publishDisabled, variables)
    for key, m in out.items():
        for var in m.variables.values():
            for i, src in enumerate(var.definition.get("srcVariables", [])):
                where = f"machines.{key}.variables.{var.name}.srcVariables[{i}]"
                ref = out.get(src["srcMachine"])
                if ref is None:
                    raise ConfigError(f"{where}.srcMachine: unknown machine {src['srcMachine']!r}")
                if src["srcVariable"] not in ref.variables:
                    raise ConfigError(
                        f"{where}.srcVariable: machine {ref.name!r} has no variable "
                        f"{src['srcVariable']!r}"
                    )
    return out


def _typed_block(
    kinds: dict[str, Provided], block: Any, prefix: str, what: str, registry: Registry
) -> tuple[Any, Provided]:
    if not isinstance(block, dict):
        raise ConfigError(f"{prefix}: expected a mapping")
    kind = block.get("type")
    if kind is None:
        raise ConfigError(f"{prefix}.type: required key is missing")
    provided = kinds.get(kind)
    if provided is None:
        known = ", ".join(sorted(kinds)) or "none installed"
        hint = ""
        if registry.broken:
            hint = f"; plugins that failed to load: {', '.join(sorted(registry.broken))}"
        raise ConfigError(f"{prefix}.type: unknown {what} type {kind!r} (known: {known}){hint}")
    return validate_block(provided.cls.Config, block, prefix), provided


def parse_config(raw: Any, path: Path, registry: Registry) -> Config:
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    app = validate_block(AppConfig, _substitute(raw, ""), "")
    machines = build_machines(app.machines)
    source, source_type = _typed_block(
        registry.source_types, app.source, "source", "source", registry
    )
    sinks = {}
    for name, block in app.sinks.items():
        cfg, provided = _typed_block(registry.sink_types, block, f"sinks.{name}", "sink", registry)
        sinks[name] = SinkSpec(name, cfg, provided)
        if cfg.spool is not None:
            log.warning(
                "sinks.%s.spool is deprecated: write buffer: {type: disk, path: ...} instead "
                "(on_full becomes when_full)",
                name,
            )
    return Config(
        path=path,
        host=app.host or socket.gethostname(),
        machines=machines,
        on_incomplete=app.on_incomplete,
        source=source,
        source_type=source_type,
        sinks=sinks,
        operations=app.operations,
    )


def load_config(path: str | Path, registry: Registry) -> Config:
    """Read, substitute and validate; raises ``ConfigError`` with the path in the message."""
    p = Path(path)
    try:
        return parse_config(read_yaml(p), p, registry)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
