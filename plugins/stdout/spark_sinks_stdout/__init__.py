"""The ``stdout`` sink: envelopes on standard output, for local debugging.

``format: json`` prints one envelope per line (pipe it into ``jq``);
``format: pretty`` prints a short human-readable line, coloured on a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

from spark_sinks import METADATA, RECORD, Envelope, Sink, SinkConfig, SinkError, hookimpl


class StdoutConfig(SinkConfig):
    type: Literal["stdout"] = "stdout"
    format: Literal["json", "pretty"] = "json"
    color: Literal["auto", "always", "never"] = "auto"


_COLORS = {RECORD: "\033[32m", METADATA: "\033[36m"}
_RESET = "\033[0m"


class StdoutSink(Sink):
    type_name = "stdout"
    Config = StdoutConfig
    config: StdoutConfig

    def open(self) -> None:
        if sys.stdout is None:  # started with file descriptor 1 closed (`>&-`)
            raise SinkError("standard output is closed: nothing can be printed")
        self._out = sys.stdout.buffer
        color = self.config.color
        self._color = color == "always" or (color == "auto" and sys.stdout.isatty())

    def write(self, envelopes: Sequence[Envelope]) -> None:
        if self.config.format == "json":
            data = b"".join([e.to_json() + b"\n" for e in envelopes])
        else:
            data = "".join([self._pretty(e) for e in envelopes]).encode()
        try:
            self._out.write(data)
            self._out.flush()  # a live view, and "returned" means "printed"
        except BrokenPipeError:
            raise SinkError("standard output was closed") from None

    def _pretty(self, e: Envelope) -> str:
        d = e.data
        if e.type == RECORD:
            values = " ".join(f"{k}={a.get('value')!r}" for k, a in d["attributes"].items())
            text = f"{d['time']} {e.host}/{d['machine']} record {values}"
        elif e.type == METADATA:
            names = ", ".join(d["variables"])
            text = f"{e.host}/{e.machine} metadata info={d['info']} variables=[{names}]"
        else:
            text = f"{e.host} {e.type} {d}"
        if self._color:
            text = f"{_COLORS.get(e.type, '')}{text}{_RESET}"
        return text + "\n"

    def flush(self, timeout: float | None = None) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            raise SinkError("standard output was closed") from None


@hookimpl
def spark_sinks_register_sink_types(register):  # type: ignore[no-untyped-def]
    register(StdoutSink)
