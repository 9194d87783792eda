"""For the signal tests: sink type ``hang`` blocks forever in the lifecycle step named by
``hang_in``, ignoring ``context.shutdown``, ``context.stopping`` and the flush timeout (the
worst a plugin can do). With ``HANG_AT_IMPORT=1`` in the environment, importing the plugin
blocks instead (after creating the file ``HANG_IMPORT_MARKER`` names), which holds
``spark-sinks`` in its plugin-load phase.

Before blocking, each step appends its name to ``marker`` (when set), so that a test knows
which phase the process is in before it sends a signal."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from spark_sinks import Envelope, Sink, SinkConfig, hookimpl

if os.environ.get("HANG_AT_IMPORT") == "1":
    Path(os.environ["HANG_IMPORT_MARKER"]).touch()
    threading.Event().wait()


class HangConfig(SinkConfig):
    type: Literal["hang"] = "hang"
    hang_in: Literal["open", "check", "write", "flush", "close"] = "check"
    marker: Path | None = None


class HangSink(Sink):
    type_name = "hang"
    Config = HangConfig

    def _step(self, step: str) -> None:
        if self.config.marker is not None:
            with open(self.config.marker, "a") as fh:
                fh.write(step + "\n")
        if self.config.hang_in == step:
            threading.Event().wait()  # nobody ever sets it

    def open(self) -> None:
        self._step("open")

    def check(self) -> str:
        self._step("check")
        return "ok"

    def write(self, envelopes: Sequence[Envelope]) -> None:
        self._step("write")

    def flush(self, timeout: float | None = None) -> None:
        self._step("flush")

    def close(self) -> None:
        self._step("close")


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(HangSink)
