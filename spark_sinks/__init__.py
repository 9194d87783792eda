"""spark-sinks: deliver industrial machine data to pluggable sinks.

The public API for plugin authors is what this module exports. Each name is imported
from its module on first use (PEP 562), so ``import spark_sinks`` alone, or importing
a light module such as ``spark_sinks.timefmt``, does not pay for pydantic and the
sink models; ``from spark_sinks import Sink`` works as always.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .envelope import CONNECTION_TEST, METADATA, RECORD, Envelope
    from .errors import ConfigError, SinkError, SparkSinksError
    from .hookspecs import hookimpl
    from .sink import MAX_SECONDS, Sink, SinkConfig, SinkContext, SinkStats
    from .sources import Feed, Source, SourceConfig

__version__ = "0.1.0"

_FROM = {
    "CONNECTION_TEST": "envelope",
    "METADATA": "envelope",
    "RECORD": "envelope",
    "Envelope": "envelope",
    "ConfigError": "errors",
    "SinkError": "errors",
    "SparkSinksError": "errors",
    "hookimpl": "hookspecs",
    "MAX_SECONDS": "sink",
    "Sink": "sink",
    "SinkConfig": "sink",
    "SinkContext": "sink",
    "SinkStats": "sink",
    "Feed": "sources",
    "Source": "sources",
    "SourceConfig": "sources",
}
"""Exported name -> the module that defines it."""

_EAGER = frozenset(
    {"envelope", "errors", "files", "hookspecs", "logs", "names", "show", "sink", "sources"}
)
"""Modules this package imported eagerly before, so reachable as attributes without an
import of their own (``spark_sinks.sink`` after ``import spark_sinks``)."""


def __getattr__(name: str) -> Any:
    if name in _FROM:
        value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
        globals()[name] = value  # found directly from now on
        return value
    if name in _EAGER:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONNECTION_TEST",
    "MAX_SECONDS",
    "METADATA",
    "RECORD",
    "ConfigError",
    "Envelope",
    "Feed",
    "Sink",
    "SinkConfig",
    "SinkContext",
    "SinkError",
    "SinkStats",
    "Source",
    "SourceConfig",
    "SparkSinksError",
    "__version__",
    "hookimpl",
]
