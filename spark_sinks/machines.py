"""Machine and variable definitions as the core uses them, built from the validated config.

Holds the Spark data types and the value checks that go with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOATS = ("float", "double")
_BOOLS = ("bool", "boolean")
_STRINGS = ("char", "string")
_ANY = ("object", "any")
FORMATS = (*_INT_RANGES, *_FLOATS, *_BOOLS, *_STRINGS, *_ANY)


def _scalar_check(fmt: str) -> Callable[[Any], bool]:
    if fmt in _INT_RANGES:
        lo, hi = _INT_RANGES[fmt]
        return lambda v: type(v) is int and lo <= v <= hi
    if fmt in _FLOATS:
        return lambda v: type(v) in (float, int)
    if fmt in _BOOLS:
        return lambda v: type(v) is bool
    if fmt in _STRINGS:
        return lambda v: type(v) is str
    return lambda v: True


def value_check(fmt: str) -> Callable[[Any], bool]:
    """A predicate for values of a Spark format. ``null`` (no reading) is always allowed;
    a list is checked element by element, for array variables."""
    scalar = _scalar_check(fmt)

    def check(v: Any) -> bool:
        if v is None or scalar(v):
            return True
        if type(v) is list:
            return all(x is None or scalar(x) for x in v)
        return False

    return check


@dataclass(slots=True)
class Variable:
    name: str
    format: str
    definition: dict[str, Any]
    """The variable as configured (camelCase keys), published in metadata."""
    check: Callable[[Any], bool] = field(repr=False)
    attribute: dict[str, Any] = field(repr=False)
    """Template of this variable's entry in a record's ``attributes``, without the value."""
    plain: frozenset[type] = field(repr=False, default=frozenset())
    """Types always valid for this format: the hot path tests these before ``check``."""
    int_range: tuple[int, int] | None = field(repr=False, default=None)
    """For integer formats: the bounds, tested inline on the hot path."""
    json_prefix: bytes = field(repr=False, default=b"")
    """This variable's attribute as JSON up to its value: ``"name":{...,"value":``."""


def _plain_types(fmt: str) -> frozenset[type]:
    if fmt in _FLOATS:
        return frozenset((float, int))
    if fmt in _STRINGS:
        return frozenset((str,))
    if fmt in _BOOLS:
        return frozenset((bool,))
    return frozenset()  # integers need a range check; object formats are rare


@dataclass(slots=True)
class Machine:
    name: str
    info: dict[str, Any]
    enable: bool
    publish_disabled: bool
    variables: dict[str, Variable]

    @property
    def publishing(self) -> bool:
        return self.enable and not self.publish_disabled


def make_variable(definition: dict[str, Any]) -> Variable:
    attribute = {"name": definition["name"]}
    if definition.get("description") is not None:
        attribute["description"] = definition["description"]
    attribute["format"] = definition["format"]
    return Variable(
        name=definition["name"],
        format=definition["format"],
        definition=definition,
        check=value_check(definition["format"]),
        attribute=attribute,
        plain=_plain_types(definition["format"]),
        int_range=_INT_RANGES.get(definition["format"]),
        json_prefix=(
            orjson.dumps(definition["name"]) + b":" + orjson.dumps(attribute)[:-1] + b',"value":'
        ),
    )


def metadata_payload(machine: Machine, machines: dict[str, Machine]) -> dict[str, Any]:
    """``data`` of a metadata envelope: info and variables keyed by name.

    A virtual machine's variable also carries what it is derived from, taken
    from its first ``srcVariables`` entry, as the original did.
    """
    variables: dict[str, Any] = {}
    for var in machine.variables.values():
        entry = dict(var.definition)
        src = entry.get("srcVariables")
        if src:
            ref = machines.get(src[0]["srcMachine"])
            if ref is not None:
                entry["referencedMachineInfo"] = ref.info
                entry["referencedMachineConfig"] = {
                    "enable": ref.enable,
                    "publishDisabled": ref.publish_disabled,
                }
                ref_var = ref.variables.get(src[0]["srcVariable"])
                entry["referencedVariable"] = ref_var.definition if ref_var else None
        variables[var.name] = entry
    return {"info": machine.info, "variables": variables}
