"""The YAML configuration: loading, ``${VAR}`` substitution and validation.

Validation happens in full before anything starts. Each sink and source type
validates its own block with its own model; every error names its config path,
e.g. ``sinks.cloud.region: 'bad-region' is not an AWS region``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from . import logs
from .errors import ConfigError
from .machines import FORMATS, Machine, make_variable
from .metrics import OperationsConfig
from .plugins import Needed, Provided, Registry
from .show import show
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
            raise ValueError(f"{show(v)} is not a Spark format (one of: {', '.join(FORMATS)})")
        return v


class MachineConfig(_Strict):
    info: dict[str, Any] = Field(default_factory=dict)
    enable: bool = True
    publishDisabled: bool = False
    variables: dict[str, VariableConfig] = Field(min_length=1)

    @field_validator("info")
    @classmethod
    def _json(cls, v: dict[str, Any]) -> dict[str, Any]:
        # published in metadata as it stands: YAML's sets, bytes or keys other than
        # strings would only fail later, when the first envelope is encoded
        try:
            orjson.dumps(v)
        except TypeError as exc:
            raise ValueError(f"cannot be sent as JSON: {exc}") from None
        return v


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
        return {
            k: _substitute(v, f"{path}.{_key(k)}" if path else _key(k)) for k, v in node.items()
        }
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


_PLAIN_KEY = re.compile(r"\w[\w.:/@+-]{0,79}")
_SHOWN_ERRORS = 5


def _key(part: Any) -> str:
    """A key as a config path shows it: bare when plain, else quoted as JSON and cut."""
    text = str(part)
    return text if _PLAIN_KEY.fullmatch(text) else show(text, 60)


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{_key(part)}" if out else _key(part)
    return out or "(top level)"


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = " ".join(_as_json(str(err["msg"]), err).split())[:300]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


_PY_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'""")
"""A Python string literal in single quotes, as ``repr`` writes most strings."""
_MAX_VALUES = 200
"""Values of an input looked for in its message (a model validator gets a whole block)."""


def _as_json(msg: str, err: ErrorDetails) -> str:
    """Values a validator wrote with Python's ``repr`` (``'eu'``, ``True``, ``None``),
    written as JSON instead (``"eu"``, ``true``, ``null``), as ``show`` writes them.
    Only values of the input are replaced, and the choices of a ``Literal``, so that
    prose around them is never touched."""
    if err["type"] in ("literal_error", "enum"):
        return _PY_STRING.sub(lambda m: show(ast.literal_eval(m.group(0))), msg)
    for value in _scalars(err.get("input")):
        python = repr(value)
        if python in msg:
            # in full, as the validator wrote it: a cut value would escape redaction
            msg = msg.replace(python, show(value, 2 * len(python) + 10))
    return _context_as_json(msg, err.get("ctx") or {})


def _context_as_json(msg: str, ctx: dict[str, Any]) -> str:
    """Values pydantic's own checks computed and quoted in their message (the
    ``pattern`` of a ``Field``, the ``expected_schemes`` of a URL), as JSON too."""
    for value in ctx.values():
        if not isinstance(value, str):
            continue
        if f"'{value}'" in msg:  # pydantic quotes a pattern as is, not with repr
            msg = msg.replace(f"'{value}'", show(value, 2 * len(value) + 10))
        elif value in msg and _PY_STRING.fullmatch(value.partition(" ")[0]):
            # a list of choices: 'http' or 'https'
            listed = _PY_STRING.sub(lambda m: show(ast.literal_eval(m.group(0))), value)
            msg = msg.replace(value, listed)
    return msg


def _scalars(value: Any) -> list[str | bool | None]:
    """The values in ``value`` whose ``repr`` is not their JSON (strings, booleans, null),
    longest first, so that a value inside a longer one is not replaced first; at most
    ``_MAX_VALUES`` looked at."""
    found: set[str | bool | None] = set()
    todo, seen = [value], 0
    while todo and seen < _MAX_VALUES:
        v = todo.pop()
        seen += 1
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
        elif v is None or isinstance(v, str | bool):
            found.add(v)
    return sorted(found, key=lambda v: -len(repr(v)))


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line for all problems (the first five, and how many more). Input values are not
    echoed (they may be secrets); validators that want a value in the message put it there
    themselves."""
    errors = exc.errors()
    shown = "; ".join(
        f"{_loc(prefix, tuple(e['loc']))}: {_message(e)}" for e in errors[:_SHOWN_ERRORS]
    )
    more = len(errors) - _SHOWN_ERRORS
    return f"{shown}; and {more} more" if more > 0 else shown


def validate_block(model: type[BaseModel], data: Any, prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None
    except (ValueError, TypeError, AttributeError, LookupError) as exc:
        # a plugin's validator that raised something pydantic does not wrap: still a
        # problem of this block, said in one line
        problem = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{prefix or '(top level)'}: {type(exc).__name__}: {problem}") from None


# -- loading -----------------------------------------------------------------------------

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_BYTES = 1 << 20
"""A config file larger than this is refused: a thousand machines of a dozen variables
fit, and validating it takes seconds on a small gateway."""
MAX_DEPTH = 64
"""Nesting levels, aliases expanded (a config needs about eight)."""
MAX_NODES = 200_000
"""Values, keys and collections once aliases are expanded: bounds the time and memory that
validation takes (a "billion laughs" alias bomb is refused before it is built)."""


class _Shape(NamedTuple):
    nodes: int
    """Nodes in it, itself included, aliases expanded."""
    height: int
    """Levels, itself included."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value  # type: ignore[no-any-return]  # a SequenceNode's list of nodes


def _check_shape(root: yaml.Node) -> None:
    """Refuse a composed document that would be too deep or too large once its aliases are
    expanded, before any of it is built. An alias is one node shared by several parents
    here, so this walk is linear in the file, whatever the expansion."""
    if isinstance(root, yaml.ScalarNode):
        return
    shapes: dict[int, _Shape] = {}
    """id of each collection walked -> its shape."""
    path: set[int] = set()
    """The collections being walked: the current one and its ancestors."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack[-1]
        key = id(node)
        if key not in path:  # first visit: walk the collections in it
            if key in shapes:  # walked already, through another alias
                stack.pop()
                continue
            path.add(key)
            stack.extend(_to_walk(node, depth, path, shapes))
            continue
        stack.pop()  # second visit: every collection in it is walked
        path.discard(key)
        shapes[key] = _shape(node, shapes)


def _to_walk(
    node: yaml.Node, depth: int, path: set[int], shapes: dict[int, _Shape]
) -> list[tuple[yaml.Node, int]]:
    """The collections in ``node`` (at ``depth``) with their depth; refuses a cycle, or
    one that is known already to nest too deep."""
    out = []
    for c in _children(node):
        if type(c) is yaml.ScalarNode:
            continue
        if id(c) in path:
            raise _shape_error(c, "an alias refers to a node that contains it")
        height = shapes[id(c)].height if id(c) in shapes else 1
        if depth + height > MAX_DEPTH:
            raise _shape_error(c, f"nested deeper than {MAX_DEPTH} levels")
        out.append((c, depth + 1))
    return out


def _shape(node: yaml.Node, shapes: dict[int, _Shape]) -> _Shape:
    """The shape of a collection whose collections all have theirs in ``shapes``."""
    if isinstance(node, yaml.MappingNode):
        _refuse_duplicate_keys(node)
    nodes, height = 1, 1
    for c in _children(node):
        if type(c) is yaml.ScalarNode:
            nodes += 1
            height = max(height, 2)
        else:
            n, h = shapes[id(c)]
            nodes += n
            height = max(height, h + 1)
    if nodes > MAX_NODES:
        raise _shape_error(node, f"more than {MAX_NODES:,} values and keys (aliases expanded)")
    return _Shape(nodes, height)


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """YAML requires the keys of a mapping to differ; PyYAML keeps the last of equal ones
    without a word, so a second ``sinks:`` block would silently replace the first. Merge
    keys (``<<``) are YAML's way to override on purpose and are left to the loader."""
    first: dict[tuple[str, str], yaml.Node] = {}
    for key, _ in node.value:
        if type(key) is not yaml.ScalarNode or key.tag == "tag:yaml.org,2002:merge":
            continue
        seen = first.setdefault((key.tag, key.value), key)
        if seen is not key:
            line = seen.start_mark.line + 1
            raise _shape_error(key, f"duplicate key {show(key.value)} (first at line {line})")


def _shape_error(node: yaml.Node, problem: str) -> ConfigError:
    mark = node.start_mark
    return ConfigError(f"line {mark.line + 1}, column {mark.column + 1}: {problem}")


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from PyYAML's multi-line messages: where, and what."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = "; ".join(p for p in parts if p) or str(exc)
    return f"{where}invalid YAML: {' '.join(problem.split())[:300]}"


def read_yaml(path: Path) -> Any:
    text = _read_text(path)
    # safe_load's own loader, in C when libyaml is there: the same safe subset of YAML
    # (no Python objects), a few times faster on configs with many machines.
    loader = _SAFE_LOADER(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_shape(root)
        return loader.construct_document(root)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # from a tag's constructor
        problem = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{path}: invalid YAML: {type(exc).__name__}: {problem}") from None
    finally:
        loader.dispose()


def build_machines(machines: dict[str, MachineConfig]) -> dict[str, Machine]:
    out: dict[str, Machine] = {}
    for key, mc in machines.items():
        info = dict(mc.info)
        name = info.setdefault("name", key)
        if name != key:
            raise ConfigError(
                f"machines.{_key(key)}.info.name: {show(name)} differs from the key {show(key)}"
            )
        variables = {}
        for vkey, vc in mc.variables.items():
            definition = vc.model_dump(exclude_none=True)
            definition.setdefault("name", vkey)
            if definition["name"] != vkey:
                raise ConfigError(
                    f"machines.{_key(key)}.variables.{_key(vkey)}.name: {show(definition['name'])} "
                    f"differs from the key {show(vkey)}"
                )
            # the published definition keeps the configured key order, name first
            definition = {"name": vkey, **{k: v for k, v in definition.items() if k != "name"}}
            variables[vkey] = make_variable(definition)
        out[key] = Machine(key, info, mc.enable, mc.publishDisabled, variables)
    for key, m in out.items():
        for var in m.variables.values():
            for i, src in enumerate(var.definition.get("srcVariables", [])):
                where = f"machines.{_key(key)}.variables.{_key(var.name)}.srcVariables[{i}]"
                ref = out.get(src["srcMachine"])
                if ref is None:
                    raise ConfigError(
                        f"{where}.srcMachine: unknown machine {show(src['srcMachine'])}"
                    )
                if src["srcVariable"] not in ref.variables:
                    raise ConfigError(
                        f"{where}.srcVariable: machine {show(ref.name)} has no variable "
                        f"{show(src['srcVariable'])}"
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
    provided = kinds.get(kind) if isinstance(kind, str) else None
    if provided is None:
        known = ", ".join(sorted(kinds)) or "none installed"
        hint = ""
        if registry.broken:
            hint = f"; plugins that failed to load: {', '.join(sorted(registry.broken))}"
        raise ConfigError(f"{prefix}.type: unknown {what} type {show(kind)} (known: {known}){hint}")
    model = validate_block(provided.cls.Config, block, prefix)
    guard_secrets(model, prefix)
    return model, provided


def guard_secrets(model: BaseModel, prefix: str) -> None:
    """Register every ``SecretStr`` for redaction, and refuse one with surrounding
    whitespace or control characters (a pasted newline breaks a signature, and the
    error would print the value): the message names the key, never the value."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        where = f"{prefix}.{name}"
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            logs.add_secret(secret)
            if secret != secret.strip() or any(c < " " or c == "\x7f" for c in secret):
                raise ConfigError(
                    f"{where}: has surrounding whitespace or a control character "
                    "(the value is not shown)"
                )
        elif isinstance(value, BaseModel):
            guard_secrets(value, where)


def _needed(app: AppConfig) -> Needed:
    """The types the config names, so that only the plugins providing them load."""

    def kind(block: Any) -> list[str]:
        value = block.get("type") if isinstance(block, dict) else None
        return [value] if isinstance(value, str) else []

    sinks = [t for block in app.sinks.values() for t in kind(block)]
    return Needed(frozenset(sinks), frozenset(kind(app.source)))


def parse_config(raw: Any, path: Path, registry: Registry) -> Config:
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    app = validate_block(AppConfig, _substitute(raw, ""), "")
    registry.require(_needed(app))
    machines = build_machines(app.machines)
    source, source_type = _typed_block(
        registry.source_types, app.source, "source", "source", registry
    )
    sinks = {}
    for name, block in app.sinks.items():
        prefix = f"sinks.{_key(name)}"
        cfg, provided = _typed_block(registry.sink_types, block, prefix, "sink", registry)
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
