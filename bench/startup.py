"""Start-up CPU of ``spark-sinks`` between commits (what every start and reload pays).

Each commit's ``spark_sinks/`` and ``plugins/`` are extracted (``git archive``) into a
temporary directory and put first on ``PYTHONPATH``, so every commit runs with this
checkout's ``.venv`` (same interpreter, same libraries, same installed entry points).
Rounds interleave the commits in an order that rotates from round to round; per commit
and case it prints the median, minimum and maximum of the child's user+sys CPU
(``wait4``; not wall time, which the other processes of a shared host inflate).

Cases (no network needed):

  run     ``spark-sinks run`` of an empty input into one stdout sink
  check   ``spark-sinks check`` of a kinesis sink whose endpoint refuses connections
          (exit 1: the config, the plugin and botocore load; the probe fails fast)
  import  ``python -c "import spark_sinks"``; also the median of ``-X importtime``'s
          cumulative microseconds for ``spark_sinks``
  pass    ``python -c pass``, the floor

Usage: ``.venv/bin/python bench/startup.py COMMIT [COMMIT ...] [--rounds N] [--only CASES]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SPARK_SINKS = str(Path(PYTHON).with_name("spark-sinks"))
MACHINES = "machines:\n  press-1:\n    variables:\n      count: {format: int32}\n"
STDOUT = MACHINES + "sinks:\n  out: {type: stdout}\n"
KINESIS = (
    MACHINES + "sinks:\n  cloud: {type: kinesis, stream_name: s, region: eu-west-1, "
    'endpoint_url: "http://127.0.0.1:9"}\n'
)


class Sample(NamedTuple):
    cpu: float
    exit_code: int


def extract(commit: str, into: Path) -> Path:
    tree = into / commit
    tree.mkdir()
    data = subprocess.run(
        ["git", "archive", commit, "spark_sinks", "plugins"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def environ(tree: Path) -> dict[str, str]:
    plugins = sorted(str(p) for p in (tree / "plugins").iterdir() if p.is_dir())
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), *plugins]),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def measure(cmd: list[str], tree: Path) -> Sample:
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        proc = subprocess.Popen(
            cmd, stdin=null_in, stdout=null_out, stderr=null_out, env=environ(tree), cwd=tree
        )
        _, status, usage = os.wait4(proc.pid, 0)
    return Sample(usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status))


def importtime_ms(tree: Path) -> float:
    cmd = [PYTHON, "-X", "importtime", "-c", "import spark_sinks"]
    err = subprocess.run(cmd, env=environ(tree), capture_output=True, text=True, cwd=tree).stderr
    [line] = [ln for ln in err.splitlines() if ln.rstrip().endswith("| spark_sinks")]
    return int(line.split("|")[1]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("commits", nargs="+")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--only", default="run,check,import,pass")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spark-sinks-startup-") as tmp:
        work = Path(tmp)
        (work / "stdout.yaml").write_text(STDOUT)
        (work / "kinesis.yaml").write_text(KINESIS)
        cases = {
            "run": [PYTHON, SPARK_SINKS, "run", "-c", str(work / "stdout.yaml")],
            "check": [PYTHON, SPARK_SINKS, "check", "-c", str(work / "kinesis.yaml")],
            "import": [PYTHON, "-c", "import spark_sinks"],
            "pass": [PYTHON, "-c", "pass"],
        }
        trees = {c: extract(c, work) for c in args.commits}
        for case in args.only.split(","):
            report(case, cases[case], trees, args.rounds)


def rotated(trees: dict[str, Path], i: int) -> list[str]:
    names = list(trees)
    k = i % len(names)
    return names[k:] + names[:k]


def report(case: str, cmd: list[str], trees: dict[str, Path], rounds: int) -> None:
    for tree in trees.values():
        measure(cmd, tree)  # writes the bytecode caches; not counted
    samples: dict[str, list[Sample]] = {c: [] for c in trees}
    for i in range(rounds):
        for commit in rotated(trees, i):
            samples[commit].append(measure(cmd, trees[commit]))
    print(f"{case} ({rounds} rounds, CPU seconds):")
    for commit, got in samples.items():
        cpu = [s.cpu for s in got]
        codes = sorted({s.exit_code for s in got})
        print(
            f"  {commit}: median {statistics.median(cpu):.3f} "
            f"(min {min(cpu):.3f}, max {max(cpu):.3f}), exit {codes}"
        )
    if case == "import":
        times: dict[str, list[float]] = {c: [] for c in trees}
        for i in range(rounds):
            for commit in rotated(trees, i):
                times[commit].append(importtime_ms(trees[commit]))
        for commit, ms in times.items():
            print(f"  {commit}: -X importtime spark_sinks median {statistics.median(ms):.0f} ms")


if __name__ == "__main__":
    main()
