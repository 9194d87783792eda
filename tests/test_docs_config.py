"""Every config key of the core and of each built-in plugin is documented, the docs name
no key that does not exist, and a default the docs state is the model's default.

Where a key counts as documented:
- core keys (top level, machines, operations, every sink's and source's common keys, the
  `ndjson`/`simulator` sources, the `stdout` sink): at their place in a YAML example of
  README.md or config/example.yaml, the documented reference (a commented-out
  `# key: value` line counts);
- a plugin's keys: a row of the reference table in its README's "Configuration" section
  (a nested model's keys named in backticks in its parent's row), or a YAML example.

Every YAML example in README.md, docs/ and the plugins' READMEs, and every file under
config/, is walked against the models: a key a model does not have fails.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from spark_sinks_kinesis.config import KinesisConfig
from spark_sinks_mqtt_sink.config import MqttSinkConfig
from spark_sinks_mqtt_source.config import MqttSourceConfig
from spark_sinks_stdout import StdoutConfig

from spark_sinks.config import AppConfig
from spark_sinks.sink import BufferConfig, SinkConfig, SpoolConfig
from spark_sinks.sources import SourceConfig
from spark_sinks.sources.ndjson import NdjsonConfig
from spark_sinks.sources.simulator import SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "config" / "example.yaml"

SINKS: dict[str, type[SinkConfig]] = {
    "stdout": StdoutConfig,
    "kinesis": KinesisConfig,
    "mqtt": MqttSinkConfig,
}
SOURCES: dict[str, type[SourceConfig]] = {
    "ndjson": NdjsonConfig,
    "simulator": SimulatorConfig,
    "mqtt": MqttSourceConfig,
}
PLUGIN_README: dict[type[BaseModel], Path] = {
    KinesisConfig: ROOT / "plugins" / "kinesis" / "README.md",
    MqttSinkConfig: ROOT / "plugins" / "mqtt-sink" / "README.md",
    MqttSourceConfig: ROOT / "plugins" / "mqtt-source" / "README.md",
}
# The plugin distributions whose config this test knows (a new one must be added above).
KNOWN_PLUGINS = {"kinesis", "mqtt-sink", "mqtt-source", "sparkplug", "stdout"}


class Seen(NamedTuple):
    """A key found in the docs: the model it belongs to, the key, and where it was."""

    model: type[BaseModel]
    key: str
    where: str


# -- the models -------------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X | None``, ``dict[str, X]``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _nested(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    found = _models_in(model.model_fields[key].annotation)
    return found[0] if found else None


def _is_mapping_of_models(model: type[BaseModel], key: str) -> bool:
    ann = model.model_fields[key].annotation
    return typing.get_origin(ann) is dict or (
        isinstance(ann, types.UnionType)
        and any(typing.get_origin(a) is dict for a in typing.get_args(ann))
    )


def models_under(root: type[BaseModel]) -> set[type[BaseModel]]:
    out = {root}
    for key in root.model_fields:
        for nested in _models_in(root.model_fields[key].annotation):
            out |= models_under(nested)
    return out


CORE: set[type[BaseModel]] = (
    models_under(AppConfig)
    | models_under(SinkConfig)
    | models_under(NdjsonConfig)
    | models_under(SimulatorConfig)
    | models_under(StdoutConfig)
)
PLUGIN: set[type[BaseModel]] = set().union(*(models_under(m) for m in PLUGIN_README)) - CORE


def own_keys(model: type[BaseModel]) -> set[str]:
    """A model's keys, without those a core base class has (documented with the core)."""
    bases = [b for b in (SinkConfig, SourceConfig) if issubclass(model, b) and model is not b]
    inherited = set().union(*(b.model_fields for b in bases))
    return set(model.model_fields) - inherited


# -- YAML examples ----------------------------------------------------------------------------

COMMENTED_KEY = re.compile(r"^(\s*)#\s?(\s*[a-z_]\w*:(?:\s.*)?)$")  # prose starts Upper-case


def uncomment(text: str) -> str:
    """``# key: value`` lines as keys, where the line alone is a one-key YAML mapping."""
    lines = []
    for line in text.splitlines():
        m = COMMENTED_KEY.match(line)
        if m:
            try:
                alone = yaml.safe_load(m.group(2).strip())
            except yaml.YAMLError:
                alone = None
            if isinstance(alone, dict) and len(alone) == 1:
                line = m.group(1) + m.group(2).rstrip()  # nested keys keep their indent
        lines.append(line)
    return "\n".join(lines) + "\n"


def yaml_examples() -> Iterator[tuple[str, Any]]:
    """(where, parsed) for every YAML example: as written, and with keys uncommented."""
    texts: list[tuple[str, str]] = []
    for md in [README, *sorted((ROOT / "docs").glob("*.md")), *PLUGIN_README.values()]:
        for n, block in enumerate(
            re.findall(r"^```ya?ml\n(.*?)^```$", md.read_text(), re.S | re.M)
        ):
            texts.append((f"{md.relative_to(ROOT)} YAML block {n + 1}", block))
    for path in sorted((ROOT / "config").glob("*.yaml")):
        texts.append((str(path.relative_to(ROOT)), path.read_text()))
    for where, text in texts:
        yield where, yaml.safe_load(text)
        try:
            uncommented = yaml.safe_load(uncomment(text))
        except yaml.YAMLError:
            continue  # the keys as written still count
        yield where, uncommented


def walk(model: type[BaseModel], data: Any, where: str) -> Iterator[Seen]:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        yield Seen(model, str(key), where)
        if key not in model.model_fields:
            continue
        if model is AppConfig and key == "sinks" and isinstance(value, dict):
            for name, block in value.items():
                if isinstance(block, dict) and block.get("type") in SINKS:
                    yield from walk(SINKS[block["type"]], block, f"{where}: sinks.{name}")
            continue
        if model is AppConfig and key == "source" and isinstance(value, dict):
            if value.get("type", "ndjson") in SOURCES:
                yield from walk(SOURCES[value.get("type", "ndjson")], value, f"{where}: source")
            continue
        nested = _nested(model, key)
        if nested is None:
            continue
        if isinstance(value, list):
            for item in value:
                yield from walk(nested, item, f"{where}: {key}")
        elif _is_mapping_of_models(model, key) and isinstance(value, dict):
            for name, item in value.items():
                yield from walk(nested, item, f"{where}: {key}.{name}")
        else:
            yield from walk(nested, value, f"{where}: {key}")


def seen_in_yaml() -> list[Seen]:
    out: list[Seen] = []
    for where, data in yaml_examples():
        if isinstance(data, dict) and set(data) <= set(AppConfig.model_fields):
            out += walk(AppConfig, data, where)
    return out


SEEN = seen_in_yaml()


# -- reference tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    keys: list[str]
    default: str
    text: str
    where: str


def table_rows(readme: Path) -> list[Row]:
    """The rows of the ``| key | default | meaning |`` table in the Configuration section."""
    text = readme.read_text()
    assert "\n## Configuration\n" in text, f"{readme.relative_to(ROOT)} has no Configuration"
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            keys = re.findall(r"`(\w+)`", cells[0])
            rows.append(Row(keys, cells[1], line, str(readme.relative_to(ROOT))))
    assert rows, f"{readme.relative_to(ROOT)}: no reference table rows"
    return rows


def seen_in_tables() -> list[Seen]:
    out: list[Seen] = []
    for model, readme in PLUGIN_README.items():
        for row in table_rows(readme):
            for key in row.keys:
                out.append(Seen(model, key, row.where))
                nested = _nested(model, key) if key in model.model_fields else None
                for inner in re.findall(r"`(\w+)`", row.text) if nested else []:
                    if inner in nested.model_fields:  # type: ignore[union-attr]
                        out.append(Seen(nested, inner, row.where))  # type: ignore[arg-type]
    return out


TABLES = seen_in_tables()


# -- documented keys --------------------------------------------------------------------------


def plugin_readme(model: type[BaseModel]) -> Path:
    """The README documenting a plugin model (a nested one: its parent's)."""
    return next(readme for parent, readme in PLUGIN_README.items() if model in models_under(parent))


def key_cases() -> list[tuple[type[BaseModel], str]]:
    return sorted(
        ((m, k) for m in CORE | PLUGIN for k in own_keys(m)),
        key=lambda c: (c[0].__module__, c[0].__name__, c[1]),
    )


def test_every_built_in_plugin_is_known_to_this_test():
    found = {p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    assert found == KNOWN_PLUGINS


@pytest.mark.parametrize(
    ("model", "key"), key_cases(), ids=lambda v: v if isinstance(v, str) else v.__name__
)
def test_every_config_key_is_documented(model, key):
    places = SEEN if model in CORE else SEEN + TABLES
    # a base class's key counts where any sink or source block shows it
    assert any(issubclass(s.model, model) and s.key == key for s in places), (
        f"{model.__name__}.{key} is documented nowhere: "
        + (
            "add it to config/example.yaml (the reference; `# key: value` counts)"
            if model in CORE
            else f"add a row to the table in {plugin_readme(model).relative_to(ROOT)}"
        )
    )


def test_the_docs_name_no_key_that_does_not_exist():
    unknown = sorted(
        {f"{s.where}: {s.model.__name__} has no key {s.key!r}" for s in SEEN + TABLES}
        - {
            f"{s.where}: {s.model.__name__} has no key {s.key!r}"
            for s in SEEN + TABLES
            if s.key in s.model.model_fields
        }
    )
    assert not unknown, "\n".join(unknown)


def test_the_walk_reaches_every_kind_of_block():
    """Guards the test itself: the examples do reach sinks, sources and nested blocks."""
    reached = {s.model for s in SEEN}
    assert {AppConfig, KinesisConfig, StdoutConfig, BufferConfig, SpoolConfig} <= reached
    assert {NdjsonConfig, SimulatorConfig} <= reached


# -- documented defaults ----------------------------------------------------------------------

UNITS = {"KiB": 1024, "MiB": 1024 * 1024, "s": 1, "ms": 1}


class _Marker:
    """A default that is no value: stable in test ids (unlike a bare ``object()``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("required")
FACTORY = _Marker("computed")


def model_default(model: type[BaseModel], key: str) -> Any:
    f = model.model_fields[key]
    if f.default is not PydanticUndefined:
        return f.default.model_dump() if isinstance(f.default, BaseModel) else f.default
    if f.default_factory is not None:
        return FACTORY
    return REQUIRED


def parse_value(text: str) -> Any:
    """A documented default as a value: ``none``, ``true``/``on``, ``5 s``, ``1 MiB``,
    ``{a: 1}``, or a word; what is not one of these is returned as a string."""
    text = text.strip()
    if text in ("none", "false", "off"):
        return None if text == "none" else False
    if text in ("true", "on"):
        return True
    code = re.fullmatch(r"`([^`]*)`", text)
    if code:
        inner = code.group(1)
        if inner in ("on", "off"):
            return inner == "on"
        if inner.startswith("{"):
            return yaml.safe_load(inner)
        return inner
    m = re.fullmatch(r"(\d[\d,]*(?:\.\d+)?)\s*(KiB|MiB|ms|s)?", text)
    if m:
        return float(m.group(1).replace(",", "")) * UNITS.get(m.group(2) or "", 1)
    return text


def documented_default(row: Row) -> list[Any]:
    """The row's default for each of its keys: ``5 s, 15 s`` gives two; anything after
    ``;`` or ``, or`` or `` for ``/`` with `` (a default that depends) is left out."""
    text = re.split(r";|, or | \(or ", row.default, maxsplit=1)[0].strip()
    if text.startswith("required"):
        return [REQUIRED] * len(row.keys)
    parts = re.split(r",\s*", text) if len(row.keys) > 1 else [text]
    if len(parts) != len(row.keys):  # one default for all the row's keys
        parts = [text] * len(row.keys)
    return [parse_value(re.split(r" for | with ", p, maxsplit=1)[0]) for p in parts]


def same(doc: Any, code: Any) -> bool:
    if code is REQUIRED or doc is REQUIRED:
        return code is doc
    if code is FACTORY:
        return doc is None or isinstance(doc, str)  # computed at validation: described
    if code is None:
        return True  # None in the model means "derived from other keys", as the docs say
    if isinstance(code, bool) or isinstance(doc, bool):
        return doc is code
    if isinstance(code, int | float) and isinstance(doc, int | float):
        return float(doc) == float(code)
    return bool(doc == code)


class DefaultCase(NamedTuple):
    model: type[BaseModel]
    key: str
    documented: Any
    where: str


def table_defaults() -> list[DefaultCase]:
    out = []
    for model, readme in PLUGIN_README.items():
        for row in table_rows(readme):
            for key, value in zip(row.keys, documented_default(row), strict=True):
                if key in model.model_fields:
                    out.append(DefaultCase(model, key, value, row.where))
    return out


# `key: value  # default`, `key: a  # a (default) | b`, `key: a (default`
YAML_DEFAULT = re.compile(r"\b(\w+): (\S+?)\s+#\s+(?:default\b|\S+ \(default\))")
INLINE_DEFAULT = re.compile(r"\b(\w+): (\w+) \(default")
PROSE_DEFAULT = [
    re.compile(r"`(\w+): (\w+)` \(default"),
    re.compile(r"`\w+\.(\w+)` is\s+`(\w+)` \(default"),
    re.compile(r"`(\w+)` \(default (\d[\d,.]* ?(?:KiB|MiB|s)?)\)"),
]


def core_defaults() -> list[DefaultCase]:
    out = []
    for path in (README, EXAMPLE):
        text = path.read_text()
        found = YAML_DEFAULT.findall(text) + INLINE_DEFAULT.findall(text)
        for pattern in PROSE_DEFAULT:
            found += pattern.findall(text)
        for key, value in found:
            models = [m for m in CORE if key in m.model_fields]
            if models:
                doc = parse_value(value)
                # a name several core models share (`type`, `max_bytes`): the one that agrees
                fits = [m for m in models if doc == model_default(m, key)]
                out.append(DefaultCase(fits[0] if fits else models[0], key, doc, path.name))
    return out


DEFAULTS = table_defaults() + core_defaults()


def test_defaults_are_compared_at_all():
    """Guards the test itself: most documented defaults are read and compared."""
    compared = [
        c for c in DEFAULTS if model_default(c.model, c.key) not in (None, FACTORY, REQUIRED)
    ]
    assert len(compared) >= 40, compared
    assert {(c.model, c.key) for c in DEFAULTS} >= {
        (NdjsonConfig, "max_line_bytes"),
        (BufferConfig, "when_full"),
        (BufferConfig, "type"),
        (SpoolConfig, "max_bytes"),
    }


@pytest.mark.parametrize(
    "case", DEFAULTS, ids=lambda c: f"{c.where}:{c.model.__name__}.{c.key}={c.documented!r}"
)
def test_a_documented_default_is_the_models_default(case):
    code = model_default(case.model, case.key)
    assert same(case.documented, code), (
        f"{case.where}: {case.model.__name__}.{case.key} is documented with default "
        f"{case.documented!r}, the model has {code!r}"
    )
