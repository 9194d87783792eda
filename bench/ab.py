"""Side-by-side CPU comparison of the core (bench case (f)) between source trees.

On a loaded or slower host rates drift from run to run; what survives is a ratio measured
by interleaving. Each round runs ``bench/core_case.py`` of every tree given (each with its
own ``.venv``) and of this one, in an order that rotates from round to round, on the same
input file. Per tree it prints the medians of the process's user+sys CPU (from ``wait4``:
start-up and imports included), of its wall time, and of the run's own seconds as
``core_case.py`` reports them (what (f) in ``make bench`` divides by), each as a ratio to
this tree; and the median of the per-round CPU ratios. ``--mode bare`` runs the plain loop
instead (the same code in every tree): its ratios show how much the host alone moves.
``--mode direct`` runs this tree with its sink written on the source thread (no worker;
the other trees as ``core``): the part of the difference that is the hand-off to the
worker. Each run's voluntary context switches (``wait4``) are reported too: a thread
waiting for another (the worker for work or for the GIL) is one.

Usage: ``.venv/bin/python bench/ab.py TREE [TREE ...] [--rounds N] [--records N]
[--mode core|direct|bare]``; a tree of an older commit is made with ``git worktree add --detach
DIR COMMIT`` and ``make venv`` in it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import write_items  # noqa: E402


class Sample(NamedTuple):
    cpu: float
    """User+sys seconds of the whole process."""
    wall: float
    run: float
    """The run's own seconds, as ``core_case.py`` reports them."""
    switches: int
    """Voluntary context switches of the whole process."""


def run_once(tree: Path, mode: str, data: Path) -> Sample:
    if mode == "direct" and tree != ROOT:
        mode = "core"
    python = tree / ".venv" / "bin" / "python"
    cmd = [str(python), str(tree / "bench" / "core_case.py"), mode, str(data)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{tree}: core_case.py {mode} exited {proc.returncode}")
    seconds = float(json.loads(out)["seconds"])
    return Sample(usage.ru_utime + usage.ru_stime, wall, seconds, usage.ru_nvcsw)


def report(trees: list[Path], runs: dict[Path, list[Sample]]) -> None:
    this = runs[ROOT]
    for tree in trees:
        print(f"{tree}:")
        for key in ("cpu", "wall", "run"):
            mine = statistics.median(getattr(s, key) for s in this)
            theirs = statistics.median(getattr(s, key) for s in runs[tree])
            print(f"  median {key:4}: {theirs:.3f}s, this tree {mine:.3f}s ({mine / theirs:.3f})")
        mine_sw = statistics.median(s.switches for s in this)
        theirs_sw = statistics.median(s.switches for s in runs[tree])
        print(f"  median voluntary context switches: {theirs_sw:.0f}, this tree {mine_sw:.0f}")
        ratios = [a.cpu / b.cpu for a, b in zip(this, runs[tree], strict=True)]
        print(
            f"  cpu ratio per round, median {statistics.median(ratios):.3f}: "
            + " ".join(f"{r:.3f}" for r in sorted(ratios))
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", type=Path, nargs="+", help="trees to compare with, each with .venv")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--mode", choices=("core", "direct", "bare"), default="core")
    args = ap.parse_args()
    trees: list[Path] = [t.resolve() for t in args.trees]
    everyone = [*trees, ROOT]
    runs: dict[Path, list[Sample]] = {t: [] for t in everyone}
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        data = write_items(Path(tmp) / "core.ndjson", args.records)
        for i in range(args.rounds):
            k = i % len(everyone)
            for tree in everyone[k:] + everyone[:k]:
                s = run_once(tree, args.mode, data)
                runs[tree].append(s)
                print(
                    f"round {i + 1} {tree}: cpu {s.cpu:.2f}s wall {s.wall:.2f}s run {s.run:.2f}s"
                    f" switches {s.switches}"
                )
    report(trees, runs)


if __name__ == "__main__":
    main()
