"""Sources feed the pipeline with decoded data points and records.

The core's own sources (``ndjson``, ``simulator``) are registered through the
same hook as a third party's would be.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from ..hookspecs import hookimpl
from ..names import valid_name
from ..show import show


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    dead_letter: Path | None = None
    """JSON-lines file that receives every rejected input item with the reason."""


@dataclass(frozen=True, slots=True)
class SkippedLine:
    """A line too long to keep, summarised as it streamed past (for the dead-letter file)."""

    head: bytes
    """Its first bytes."""
    length: int
    sha256: str
    """Hex digest of the whole line, to match it against the original input."""


class Feed(Protocol):
    """What a source pushes into; implemented by ``pipeline.Pipeline``."""

    def item(self, obj: Any, where: str, line: int | None = None, raw: bytes | None = None) -> None:
        """A decoded JSON object: a data point or a whole record. Bad items are
        reported by the feed, named by ``where`` and ``line`` (``stdin line 12``). The
        line number is separate so that the name is only formatted for a bad item.
        ``raw``, the JSON text ``obj`` was decoded from, lets the dead-letter file keep a
        bad item exactly (orjson decodes an integer beyond 64 bits as a float)."""

    def point(self, machine: str, variable: str, value: Any, time: Any = None) -> None: ...

    def reject(self, where: str, reason: str, raw: bytes | SkippedLine | None = None) -> None:
        """An input item that is unusable before decoding; ``raw`` is the line as read."""

    def flush(self) -> None:
        """Hand what is assembled to the sinks; call it before the source waits."""

    def settled(self) -> int:
        """How many of the items fed so far (``item``, ``point`` and ``reject`` calls, in
        order from the start of the run) are settled: handed to the sinks, rejected or
        dropped. An item stays unsettled while its data point waits in an open record,
        and so does every item after it. For a source that acknowledges its input (the MQTT
        source): right after ``flush``, acknowledge what produced items up to this count."""
        ...


class Source:
    type_name: ClassVar[str] = ""
    Config: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self, config: SourceConfig, machines: dict[str, Any]) -> None:
        self.config = config
        self.machines = machines

    def run(self, feed: Feed, stop: threading.Event) -> None:
        """Produce until the input ends or ``stop`` is set."""
        raise NotImplementedError

    def check(self) -> str | None:
        """Optional, for ``spark-sinks check``: prove the input can be read (connect and
        authenticate to a broker, say) without consuming it; raise ``SparkSinksError`` with
        one line naming the problem. Returns a short description of what works, or None
        (the default) when there is nothing to probe."""
        return None

    def counters(self) -> dict[str, int]:
        """Optional: the source's own counters (name -> count, growing over the run), shown
        in the run's summary, the status file (``input.source``), ``spark-sinks status`` and
        the metrics (``spark_sinks_source_events_total``). Names: letters, digits, ``_.-``
        (``names.NAME``); the core leaves out, and names once in an error line, a
        counter with another name or a count that is not an int of at least 0.
        Called from other threads while ``run`` runs: return a new dict each time."""
        return {}


class CheckedCounters(NamedTuple):
    valid: dict[str, int]
    refused: list[str]
    """The names (shown) of counters left out: a bad name, or a count that is not an int
    of at least 0."""


def check_counters(raw: Mapping[Any, Any]) -> CheckedCounters:
    """A source's ``counters()`` as the core may publish them: a plugin's odd name or
    value is left out (and named), so that it never damages the status file."""
    valid: dict[str, int] = {}
    refused: list[str] = []
    for name, count in raw.items():
        if valid_name(name) and type(count) is int and count >= 0:
            valid[name] = count
        else:
            refused.append(show(name))
    return CheckedCounters(valid, refused)


@hookimpl
def spark_sinks_register_sources(register: Any) -> None:
    from .ndjson import NdjsonSource
    from .simulator import SimulatorSource

    register(NdjsonSource)
    register(SimulatorSource)
