"""spark-sinks-kinesis: the ``kinesis`` sink for Amazon Kinesis Data Streams.

Every envelope becomes one Kinesis record whose data is the envelope's JSON
(``{"type", "host", "data"}``, as the original Node module wrote it), with the
partition key ``host/machine``. See ``README.md`` for configuration and delivery
guarantees.
"""

from __future__ import annotations

from typing import Any

from spark_sinks import hookimpl

from .config import KinesisConfig
from .keys import partition_key
from .sink import KinesisSink

__all__ = ["KinesisConfig", "KinesisSink", "partition_key"]


@hookimpl
def spark_sinks_register_sink_types(register: Any) -> None:
    register(KinesisSink)
