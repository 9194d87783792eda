"""Side-by-side comparison of bench cases (c) and (d) between source trees.

``bench/ab.py`` compares the core alone (f); this compares whole ``spark-sinks run``
processes into the Kinesis sink, as (c) and (d) time them, against ONE moto server shared
by every run (``make bench`` starts one per invocation, and moto's speed moves from one
server to the next). Each round runs every case in every tree, in an order that rotates
from round to round, each into a fresh stream, and checks the count that arrived. Per case
and tree it prints the medians of the process's user+sys CPU (``wait4``: start-up
included) and wall time, each as a ratio to this tree. The sink settings are those of the
bench (``rate_limit: off``, as (c) and (d)); a tree whose config has no ``rate_limit``
(older than the shard-aware sender) is given none.

Usage: ``.venv/bin/python bench/ab_cli.py TREE [TREE ...] [--rounds N] [--records N]
[--cases c,d] [--old-config]``; each TREE has its own ``.venv``. ``--old-config`` marks the
trees given as older than ``rate_limit`` and ``flush_timeout`` settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import ENV, HOST, KPL_SINK, MACHINES, UNMETERED, Bench, machines_config  # noqa: E402

from tests.support.moto_server import MotoServer  # noqa: E402


class Sample(NamedTuple):
    cpu: float
    """User+sys seconds of the whole process."""
    wall: float


def sink_settings(case: str, old: bool, stream: str, url: str) -> dict[str, Any]:
    sink: dict[str, Any] = {
        "type": "kinesis",
        "stream_name": stream,
        "region": "us-east-1",
        "endpoint_url": url,
        "connection_test": False,
        **(KPL_SINK if case == "d" else UNMETERED),
    }
    if old:  # settings an older tree's config does not know; it has no rate limit at all
        sink.pop("rate_limit", None)
    else:
        sink["flush_timeout"] = 600  # as bench/run.py: a loaded host makes a run slow, not fail
    return sink


def run_once(b: Bench, tree: Path, case: str, old: bool, ndjson: Path) -> Sample:
    stream = b.fresh_stream()
    cfg = {
        "host": HOST,
        "machines": machines_config(),
        "source": {"type": "ndjson", "path": str(ndjson)},
        "sinks": {"cloud": sink_settings(case, old, stream, b.moto.url)},
    }
    path = b.work / f"ab-{case}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exe = str(tree / ".venv" / "bin" / "spark-sinks")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [exe, "run", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{tree} ({case}): spark-sinks run failed: {err[-500:].decode()}")
    got = b.count(stream)
    assert got == b.records + MACHINES, (tree, case, got)  # records + one metadata each
    return Sample(usage.ru_utime + usage.ru_stime, wall)


def report(trees: list[Path], cases: list[str], runs: dict[tuple[str, Path], list[Sample]]) -> None:
    for case in cases:
        this = runs[(case, ROOT)]
        for tree in trees:
            print(f"({case}) {tree}:")
            for key in ("cpu", "wall"):
                mine = statistics.median(getattr(s, key) for s in this)
                theirs = statistics.median(getattr(s, key) for s in runs[(case, tree)])
                print(
                    f"  median {key:4}: {theirs:.3f}s, this tree {mine:.3f}s ({mine / theirs:.3f})"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", type=Path, nargs="+", help="trees to compare with, each with .venv")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--records", type=int, default=20_000, help="as (c) and (d) in make bench")
    ap.add_argument("--cases", default="c,d")
    ap.add_argument("--old-config", action="store_true", help="the trees predate rate_limit")
    args = ap.parse_args()
    trees: list[Path] = [t.resolve() for t in args.trees]
    cases = [c for c in args.cases.split(",") if c]
    everyone = [*trees, ROOT]
    runs: dict[tuple[str, Path], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="ab-cli-") as tmp:
        moto = MotoServer().start()
        try:
            b = Bench(moto, Path(tmp), args.records, args.records)
            ds = b.dataset(args.records)
            for i in range(args.rounds):
                k = i % len(everyone)
                for case in cases:
                    for tree in everyone[k:] + everyone[:k]:
                        old = args.old_config and tree != ROOT
                        s = run_once(b, tree, case, old, ds.ndjson)
                        runs.setdefault((case, tree), []).append(s)
                        print(f"round {i + 1} ({case}) {tree}: cpu {s.cpu:.2f}s wall {s.wall:.2f}s")
        finally:
            moto.stop()
    report(trees, cases, runs)


if __name__ == "__main__":
    main()
