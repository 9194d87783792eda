"""For the isolation tests: sink type ``slow`` takes ``seconds_per_write`` for every
``write`` (a webhook retrying, a paused terminal), or never returns from its first
``write`` with ``hang: true`` (a stalled NFS mount). It is unbuffered, and appends one
JSON line per finished write to ``log``: when it started and ended, and the ``seq``
values of the records it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field

from spark_sinks import RECORD, Envelope, Sink, SinkConfig, hookimpl


class SlowConfig(SinkConfig):
    type: Literal["slow"] = "slow"
    log: Path
    seconds_per_write: float = Field(1.0, ge=0)
    hang: bool = False


class SlowSink(Sink):
    type_name = "slow"
    Config = SlowConfig
    config: SlowConfig

    def open(self) -> None:
        self._fh = open(self.config.log, "ab")  # noqa: SIM115 - closed in close()

    def write(self, envelopes: Sequence[Envelope]) -> None:
        start = time.time()
        if self.config.hang:
            threading.Event().wait()  # never set: this write never returns
        time.sleep(self.config.seconds_per_write)
        seqs = [
            e.data["attributes"]["seq"]["value"]
            for e in envelopes
            if e.type == RECORD and "seq" in e.data["attributes"]
        ]
        line = {"n": len(envelopes), "start": start, "end": time.time(), "seqs": seqs}
        self._fh.write(orjson.dumps(line) + b"\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(SlowSink)
