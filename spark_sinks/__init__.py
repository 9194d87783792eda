"""spark-sinks: deliver industrial machine data to pluggable sinks.

The public API for plugin authors is what this module exports.
"""

from .envelope import CONNECTION_TEST, METADATA, RECORD, Envelope
from .errors import ConfigError, SinkError, SparkSinksError
from .hookspecs import hookimpl
from .sink import MAX_SECONDS, Sink, SinkConfig, SinkContext, SinkStats
from .sources import Feed, Source, SourceConfig

__version__ = "0.1.0"

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
