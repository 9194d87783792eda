"""Bench case (f), run by ``bench/run.py`` in a process of its own (for its peak RSS).

``core``: ``NdjsonSource`` -> ``Pipeline`` (assembly) -> ``Dispatcher`` -> the sink's
buffer and worker (the default memory buffer) into a sink that discards, whose ``write``
encodes every envelope with ``to_json()`` as real sinks do; timed until the worker has
written everything.
``bare``: a plain Python loop over the same file that parses each line with orjson,
builds the identical envelope dict (ISO time string included) and encodes it.

``direct``: as ``core``, but the sink is written on the source thread (no worker): what
the hand-off to the worker costs is the difference.

Usage: ``python bench/core_case.py core|direct|bare FILE.ndjson``; prints one JSON line:
``{"envelopes": n, "records": n, "seconds": s, "first": "<first record's JSON>"}``.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import HOST, VARIABLES, machines_config  # noqa: E402

from spark_sinks import Sink, SinkConfig, SinkContext  # noqa: E402
from spark_sinks.assembly import Assembler  # noqa: E402
from spark_sinks.config import MachineConfig, build_machines  # noqa: E402
from spark_sinks.dispatch import ActiveSink, Dispatcher  # noqa: E402
from spark_sinks.pipeline import Pipeline, Rejects  # noqa: E402
from spark_sinks.plugins import PluginInfo  # noqa: E402
from spark_sinks.sources.ndjson import NdjsonConfig, NdjsonSource  # noqa: E402


class Discard(Sink):
    type_name = "discard"

    def __init__(self, config: SinkConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.records = 0
        self.first: bytes | None = None

    def write(self, envelopes: Any) -> None:
        for e in envelopes:
            data = e.to_json()
            if self.first is None and e.type == "record":
                self.first = data
        self.records += len(envelopes)


def run_core(path: str, direct: bool = False) -> dict[str, Any]:
    machines = build_machines(
        {k: MachineConfig.model_validate(v) for k, v in machines_config().items()}
    )
    assembler = Assembler(machines, HOST)
    sink = Discard(SinkConfig(type="discard"), SinkContext("discard", HOST))
    dispatcher = Dispatcher()
    active = ActiveSink("discard", sink, PluginInfo(name="bench"), 60.0, direct=direct)
    dispatcher.add(active)
    pipeline = Pipeline(assembler, dispatcher, Rejects(None))
    source = NdjsonSource(NdjsonConfig(type="ndjson", path=path), machines)
    t0 = time.perf_counter()
    pipeline.emit(assembler.all_metadata())
    source.run(pipeline, threading.Event())
    pipeline.flush()
    active.inlet.begin_stop(60.0)()  # the sink's worker has written everything
    took = time.perf_counter() - t0
    return {
        "envelopes": sink.records,
        "records": pipeline.items,
        "seconds": took,
        "first": (sink.first or b"").decode(),
    }


def run_bare(path: str) -> dict[str, Any]:
    cfg = machines_config()
    # per machine: variable -> the attribute's fixed part, in the configured order
    attrs = {
        name: {v: {"name": v, "description": d, "format": f} for v, (f, d) in VARIABLES.items()}
        for name in cfg
    }
    loads, dumps = orjson.loads, orjson.dumps
    last_sec, prefix = None, ""
    n = 0
    first = b""
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            obj = loads(line)
            machine = obj["machine"]
            sec, ms = divmod(obj["time"], 1000)
            if sec != last_sec:
                prefix = f"{datetime.fromtimestamp(sec, UTC):%Y-%m-%dT%H:%M:%S}."
                last_sec = sec
            values = obj["values"]
            fixed = attrs[machine]
            env = {
                "type": "record",
                "host": HOST,
                "data": {
                    "machine": machine,
                    "time": f"{prefix}{ms:03d}Z",
                    "attributes": {k: {**a, "value": values[k]} for k, a in fixed.items()},
                },
            }
            data = dumps(env)
            if not n:
                first = data
            n += 1
    took = time.perf_counter() - t0
    return {"envelopes": n, "records": n, "seconds": took, "first": first.decode()}


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    out = run_bare(path) if mode == "bare" else run_core(path, direct=mode == "direct")
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
