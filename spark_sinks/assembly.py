"""Where records are assembled: data points in, envelopes out, one sample cycle per machine.

State is kept per machine, so values of different machines may interleave
freely (the original kept one global buffer and lost records that way).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import NoneType
from typing import Any, Literal, NamedTuple

import orjson

from . import timefmt
from .envelope import METADATA, RECORD, Envelope
from .machines import Machine, metadata_payload
from .show import show
from .timefmt import is_canonical as _canonical

log = logging.getLogger(__name__)

OnIncomplete = Literal["drop", "emit"]


class InputError(ValueError):
    """One input item is unusable; the message says why (the caller adds where)."""


class _Cycle:
    __slots__ = ("opened", "time", "values")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.time: str | None = None
        self.opened = 0
        """``Assembler.position`` of the data point that opened this cycle."""


_SIGNATURES = 32
"""Type signatures of values remembered per machine (``_Fast.ranges``): bounded, since
hostile input could bring a new one with every record."""


class _Range(NamedTuple):
    """An integer value's bounds, checked on the fast path (``_Fast``)."""

    position: int
    low: int
    high: int


class _Fast:
    """A machine's encoder for the usual record: every variable present, in the configured
    order, each value of a type its format takes without a check beyond an integer range.

    Such a record is encoded with one ``bytes %`` of a template that holds everything but
    the time and the values, and validated by the types of its values: which types a
    signature (one type per variable) needs checked further is worked out once and
    remembered. Any other record takes the general path (``Assembler._checked_record``),
    which gives the same bytes and the same errors (tests compare both). Owned, like the
    whole ``Assembler``, by the one thread that feeds it."""

    __slots__ = ("_signatures", "_variables", "order", "template")

    def __init__(self, head: bytes, m: Machine) -> None:
        self.order = tuple(m.variables)
        self._variables = tuple(m.variables.values())
        attributes = b"},".join(
            [v.json_prefix.replace(b"%", b"%%") + b"%b" for v in self._variables]
        )
        self.template = (
            head.replace(b"%", b"%%")
            + b'%b,"attributes":{'
            + attributes
            + (b"}}}}" if attributes else b"}}}")
        )
        self._signatures: dict[tuple[type, ...], tuple[_Range, ...] | None] = {}

    def ranges(self, signature: tuple[type, ...]) -> tuple[_Range, ...] | None:
        """The integer bounds left to check for values of these types, or None when a
        value needs the general check (e.g. a list, or a string for a number)."""
        try:
            return self._signatures[signature]
        except KeyError:
            pass
        found = self._learn(signature)
        if len(self._signatures) < _SIGNATURES:
            self._signatures[signature] = found
        return found

    def _learn(self, signature: tuple[type, ...]) -> tuple[_Range, ...] | None:
        ranges: list[_Range] = []
        for i, (tv, var) in enumerate(zip(signature, self._variables, strict=True)):
            if tv in var.plain or tv is NoneType:  # null is every format's "no reading"
                continue
            if tv is int and var.int_range is not None:
                ranges.append(_Range(i, *var.int_range))
                continue
            return None
        return tuple(ranges)


class Assembler:
    def __init__(
        self, machines: dict[str, Machine], host: str, on_incomplete: OnIncomplete = "drop"
    ) -> None:
        self._heads: dict[str, bytes] = {}
        self._fast: dict[str, _Fast] = {}
        self._host = host
        self.on_incomplete = on_incomplete
        self.incomplete_dropped = 0
        self.incomplete_emitted = 0
        self.ignored = 0
        """Items (data points or whole records) of machines that are disabled or do not
        publish; the run's summary reports them."""
        self.machines: dict[str, Machine] = {}
        self._cycles: dict[str, _Cycle] = {}
        self.position = 0
        """Number of the input item being fed, set by the pipeline: open cycles remember
        where they began (see ``settled``)."""
        self.reconfigure(machines)

    # -- definitions -----------------------------------------------------------------

    def reconfigure(self, machines: dict[str, Machine], host: str | None = None) -> list[Envelope]:
        """Adopt new machine definitions (and host); return the envelopes that go out now.

        A machine that changed, or stops publishing, ends its open cycle as
        ``on_incomplete`` says (emitted as it was defined, or dropped and counted); then
        comes metadata for each machine that became publishing or changed, or for every
        machine when the host changed."""
        old = self.machines
        restart = {
            name
            for name, m in machines.items()
            if m.publishing
            and (
                (prev := old.get(name)) is None
                or not prev.publishing
                or metadata_payload(prev, old) != metadata_payload(m, machines)
            )
        }
        out = self._close_cycles(
            name for name in self._cycles if name in restart or name not in machines
        )
        new_host = False
        if host is not None and host != self._host:
            self._host, new_host = host, True
        self.machines = machines
        self._build_heads()
        for name, m in machines.items():
            if not m.publishing:
                self._cycles.pop(name, None)
            elif name in restart:
                self._cycles[name] = _Cycle()
                if not new_host:
                    out.append(self.metadata(m))
        for name in old.keys() - machines.keys():
            self._cycles.pop(name, None)
        if new_host:
            out.extend(self.all_metadata())
        return out

    def finish(self) -> list[Envelope]:
        """The input ended: every machine's open cycle is emitted or dropped (counted and
        logged with its machine), as ``on_incomplete`` says."""
        return self._close_cycles(list(self._cycles), "the input ended")

    def _close_cycles(
        self, names: Iterable[str], why: str = "its definition changed"
    ) -> list[Envelope]:
        out: list[Envelope] = []
        for name in names:
            cycle = self._cycles.get(name)
            if cycle is not None and cycle.values:
                out.extend(self._incomplete(self.machines[name], cycle, why))
        return out

    @property
    def host(self) -> str:
        return self._host

    def _build_heads(self) -> None:
        """Each machine's record JSON up to its time: records are encoded from
        pre-encoded parts, without building the envelope's dictionaries."""
        host = orjson.dumps(self._host)
        self._heads = {
            name: b'{"type":"record","host":%b,"data":{"machine":%b,"time":'
            % (host, orjson.dumps(name))
            for name in self.machines
        }
        self._fast = {name: _Fast(self._heads[name], m) for name, m in self.machines.items()}

    def metadata(self, machine: Machine) -> Envelope:
        return Envelope(METADATA, self.host, metadata_payload(machine, self.machines), machine.name)

    def all_metadata(self) -> list[Envelope]:
        return [self.metadata(m) for m in self.machines.values() if m.publishing]

    # -- values ----------------------------------------------------------------------

    def feed(self, item: Any) -> list[Envelope]:
        """Take one decoded input object, a data point or a whole record."""
        if type(item) is not dict:
            raise InputError("expected a JSON object")
        machine_name = item.get("machine")
        if "values" in item:
            return self.add_record(machine_name, item["values"], item.get("time"))
        if "variable" not in item:
            raise InputError(
                "expected 'variable' and 'value' (a data point) or 'values' (a record)"
            )
        if "value" not in item:
            raise InputError("data point has no 'value'")
        return self.add_point(machine_name, item["variable"], item["value"], item.get("time"))

    def _machine(self, name: Any) -> Machine | None:
        m = self.machines.get(name) if type(name) is str else None
        if m is None:
            raise InputError(f"unknown machine {show(name)}")
        if not m.publishing:
            self.ignored += 1
            return None
        return m

    def add_point(self, machine_name: Any, variable: Any, value: Any, time: Any) -> list[Envelope]:
        m = self._machine(machine_name)
        if m is None:
            return []
        var = m.variables.get(variable) if type(variable) is str else None
        if var is None:
            raise InputError(f"machine {show(m.name)} has no variable {show(variable)}")
        if type(value) not in var.plain and not var.check(value):
            raise InputError(f"{m.name}.{var.name}: {show(value)} is not a valid {var.format}")
        t = _time(time)
        cycle = self._cycles[m.name]
        out: list[Envelope] = []
        if variable in cycle.values:
            out.extend(self._incomplete(m, cycle, f"{show(variable)} repeated first"))
        if cycle.time is None:
            cycle.time = t
            cycle.opened = self.position
        cycle.values[variable] = value
        if len(cycle.values) == len(m.variables):
            out.append(self._record(m, cycle.time, cycle.values))
            cycle.values = {}
            cycle.time = None
        return out

    def add_record(self, machine_name: Any, values: Any, time: Any) -> list[Envelope]:
        # The hot path for whole-record input: the usual record is validated by the
        # types of its values and encoded in one step (``_Fast``).
        m = self.machines.get(machine_name) if type(machine_name) is str else None
        if m is None or not m.publishing:
            m = self._machine(machine_name)
            if m is None:
                return []
        if type(values) is not dict:
            raise InputError("'values' must be an object of variable: value")
        fast = self._fast[m.name]
        if tuple(values) == fast.order:
            vals = tuple(values.values())
            ranges = fast.ranges(tuple(map(type, vals)))
            if ranges is not None:
                for i, low, high in ranges:
                    if not low <= vals[i] <= high:
                        break
                else:
                    return [self._encode(m, fast, _record_time(time), vals)]
        return self._checked_record(m, values, time)

    def _checked_record(self, m: Machine, values: dict[str, Any], time: Any) -> list[Envelope]:
        """``add_record`` for any record the fast path does not take: each value checked
        by its variable (errors name the first bad one), variables in any order."""
        variables = m.variables
        for k, v in values.items():
            var = variables.get(k)
            if var is None:
                raise InputError(f"machine {show(m.name)} has no variable {show(k)}")
            tv = type(v)
            if tv not in var.plain:
                r = var.int_range
                if not (r and tv is int and r[0] <= v <= r[1]) and not var.check(v):
                    raise InputError(f"{m.name}.{k}: {show(v)} is not a valid {var.format}")
        t = _record_time(time)
        if len(values) != len(variables):
            missing = ", ".join(sorted(variables.keys() - values.keys()))
            if self.on_incomplete == "drop":
                raise InputError(f"record of {show(m.name)} lacks variables: {missing}")
            self.incomplete_emitted += 1
        return [self._record(m, t, values)]

    def _encode(self, m: Machine, fast: _Fast, time: str, vals: tuple[Any, ...]) -> Envelope:
        dumps = orjson.dumps
        try:
            raw = fast.template % (dumps(time), *map(dumps, vals))
        except TypeError as exc:  # e.g. an integer beyond 64 bits for a float variable
            raise InputError(f"{m.name}: a value cannot be encoded: {exc}") from None
        return Envelope(RECORD, self._host, None, m.name, raw)

    def settled(self) -> int:
        """The position before the oldest data point still waiting in an open cycle, or
        the current position when none waits: every item up to it is out of the assembler."""
        opened = [c.opened for c in self._cycles.values() if c.time is not None]
        return min(opened) - 1 if opened else self.position

    def _incomplete(self, m: Machine, cycle: _Cycle, why: str) -> list[Envelope]:
        values, time = cycle.values, cycle.time
        cycle.values = {}
        cycle.time = None
        if self.on_incomplete == "emit":
            try:
                record = self._record(m, time, values)
            except InputError as exc:  # a value a plugin's source fed that JSON cannot hold
                why = f"{why}; it cannot be sent: {exc}"
            else:
                self.incomplete_emitted += 1
                return [record]
        self.incomplete_dropped += 1
        log.warning(
            "dropped an incomplete record of %s (%d of %d variables): %s",
            m.name,
            len(values),
            len(m.variables),
            why,
        )
        return []

    def _record(self, m: Machine, time: str | None, values: dict[str, Any]) -> Envelope:
        """Encode the record envelope directly: the same bytes as ``orjson.dumps`` of
        its dictionary (tests compare both), at a fraction of the cost; ``data`` is
        decoded only if a sink asks for it."""
        dumps = orjson.dumps
        try:
            body = b"},".join(
                [  # config order, whatever the arrival order
                    var.json_prefix + dumps(values[k])
                    for k, var in m.variables.items()
                    if k in values
                ]
            )
        except TypeError as exc:  # e.g. an integer beyond 64 bits for a float variable
            raise InputError(f"{m.name}: a value cannot be encoded: {exc}") from None
        raw = (
            self._heads[m.name]
            + dumps(time or timefmt.now())
            + b',"attributes":{'
            + body
            + (b"}}}}" if body else b"}}}")
        )
        return Envelope(RECORD, self._host, None, m.name, raw)


def _record_time(time: Any) -> str:
    """A whole record's time: canonical strings and epoch milliseconds come first."""
    if type(time) is str and _canonical(time):
        return time
    if type(time) is int:
        try:
            return timefmt.format_ms(time)
        except ValueError as e:
            raise InputError(str(e)) from None
    return _time(time)


def _time(value: Any) -> str:
    if value is None:
        return timefmt.now()
    try:
        return timefmt.normalize(value)
    except ValueError as e:
        raise InputError(str(e)) from None
