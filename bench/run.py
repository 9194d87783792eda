"""Throughput benchmark against one local moto server (``make bench``).

Cases, each on a fresh 4-shard stream of the same moto server process:

  a  seed      the original module's approach: one boto3 ``put_record`` call per record
  b  batch     a bare boto3 ``put_records`` loop, 500 records per call (moto's ceiling)
  c  sink      ``spark-sinks run`` with the ndjson source and the kinesis sink, end to end
               from an NDJSON file (process start, config, check, assembly, delivery)

Every case sends the same records: 535 bytes of envelope JSON with 5 attributes, from
20 machines. Each case is a function ``(bench) -> records per second``; add a case by
writing one and listing it in ``CASES`` (aggregation, async clients, core-only, ...).

Usage: ``.venv/bin/python bench/run.py [--records N] [--seed-records N] [--repeat N]
[--only a,c]``. Prints a table (median of the runs) and writes it to ``bench/results.md``.

Every case sends the same 20,000 records by default (moto's put cost grows with the
records a shard already holds, so rates are only comparable at the same count; larger
runs measure moto more than the producer). (a) takes about a minute and runs once; (b)
and (c) run three times, interleaved; the table shows the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spark_sinks_kinesis import partition_key  # noqa: E402

from spark_sinks.assembly import Assembler  # noqa: E402
from spark_sinks.config import MachineConfig, build_machines  # noqa: E402
from tests.support.moto_server import MotoServer  # noqa: E402

HOST = "bench-gw"
MACHINES = 20
SHARDS = 4
RECORD_BYTES = 535
START_MS = 1_790_000_000_000
VARIABLES = {
    "temperature": ("float", "Oil temp"),
    "pressure": ("float", "Pressure"),
    "speed": ("double", "Spindle"),
    "state": ("string", "St"),
    "count": ("int32", "Parts"),
}


# -- dataset -----------------------------------------------------------------------------


def machines_config() -> dict[str, Any]:
    return {
        f"press-{i:02d}": {
            "info": {"name": f"press-{i:02d}", "description": "Hydraulic press"},
            "variables": {
                v: {"name": v, "description": d, "format": f} for v, (f, d) in VARIABLES.items()
            },
        }
        for i in range(MACHINES)
    }


def item(i: int) -> dict[str, Any]:
    """The i-th input record: machine round-robin, a distinct time, 5 values."""
    return {
        "machine": f"press-{i % MACHINES:02d}",
        "time": START_MS + i,
        "values": {
            "temperature": round(40.0 + (i % 997) / 10.0, 1),
            "pressure": round(180.0 + (i % 89) / 10.0, 1),
            "speed": round(1400.0 + (i % 600) / 10.0, 1),
            "state": "running",
            "count": 100_000 + i % 900_000,
        },
    }


@dataclass
class Dataset:
    n: int
    ndjson: Path
    records: list[tuple[bytes, str]] = field(repr=False)
    """(envelope JSON, partition key), exactly what the sink sends."""

    @property
    def mean_bytes(self) -> float:
        return sum(len(d) for d, _ in self.records) / max(1, len(self.records))


def make_dataset(n: int, work: Path) -> Dataset:
    machines = build_machines(
        {k: MachineConfig.model_validate(v) for k, v in machines_config().items()}
    )
    assembler = Assembler(machines, HOST)
    path = work / f"records-{n}.ndjson"
    records = []
    with path.open("wb") as fh:
        for i in range(n):
            it = item(i)
            fh.write(orjson.dumps(it) + b"\n")
            (env,) = assembler.feed(it)
            records.append((env.to_json(), partition_key(HOST, env.machine)))
    return Dataset(n, path, records)


# -- cases -------------------------------------------------------------------------------


@dataclass
class Bench:
    moto: MotoServer
    work: Path
    records: int
    seed_records: int
    _datasets: dict[int, Dataset] = field(default_factory=dict)

    def dataset(self, n: int) -> Dataset:
        if n not in self._datasets:
            self._datasets[n] = make_dataset(n, self.work)
        return self._datasets[n]

    def client(self) -> Any:
        return self.moto.client("kinesis")

    def fresh_stream(self) -> str:
        """A new stream per case: moto's put cost grows with the records a shard holds."""
        name = f"bench-{uuid.uuid4().hex[:8]}"
        c = self.client()
        c.create_stream(StreamName=name, ShardCount=SHARDS)
        c.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1})
        return name

    def count(self, stream: str) -> int:
        """Records in the stream, read back over every shard; the stream is then deleted."""
        c = self.client()
        total = 0
        for shard in c.list_shards(StreamName=stream)["Shards"]:
            it = c.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                recs = c.get_records(ShardIterator=it, Limit=10_000)
                if not recs["Records"]:
                    break
                total += len(recs["Records"])
                it = recs.get("NextShardIterator")
        c.delete_stream(StreamName=stream)
        return total


def case_seed_put_record(b: Bench) -> float:
    """(a) The original module's approach: one PutRecord per record."""
    ds = b.dataset(b.seed_records)
    stream = b.fresh_stream()
    c = b.client()
    t0 = time.perf_counter()
    for data, key in ds.records:
        c.put_record(StreamName=stream, Data=data, PartitionKey=key)
    took = time.perf_counter() - t0
    assert b.count(stream) == ds.n
    return ds.n / took


def case_bare_put_records(b: Bench) -> float:
    """(b) A bare boto3 put_records loop, 500 records per request."""
    ds = b.dataset(b.records)
    stream = b.fresh_stream()
    c = b.client()
    t0 = time.perf_counter()
    recs = ds.records
    for i in range(0, len(recs), 500):
        resp = c.put_records(
            StreamName=stream,
            Records=[{"Data": d, "PartitionKey": k} for d, k in recs[i : i + 500]],
        )
        assert resp["FailedRecordCount"] == 0
    took = time.perf_counter() - t0
    assert b.count(stream) == ds.n
    return ds.n / took


def case_spark_sinks_run(b: Bench) -> float:
    """(c) ``spark-sinks run``: ndjson file -> assembly -> kinesis sink, whole process."""
    ds = b.dataset(b.records)
    stream = b.fresh_stream()
    cfg = {
        "host": HOST,
        "machines": machines_config(),
        "source": {"type": "ndjson", "path": str(ds.ndjson)},
        "sinks": {
            "cloud": {
                "type": "kinesis",
                "stream_name": stream,
                "region": "us-east-1",
                "endpoint_url": b.moto.url,
                "connection_test": False,
            }
        },
    }
    path = b.work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PATH": "/usr/bin:/bin",
        "SPARK_SINKS_LOAD_PLUGINS": "kinesis",
    }
    exe = str(Path(sys.executable).parent / "spark-sinks")
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "run", "-c", str(path)], capture_output=True, env=env, check=False)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"spark-sinks run failed: {proc.stderr.decode()[-2000:]}")
    got = b.count(stream)
    assert got == ds.n + MACHINES, (got, ds.n + MACHINES)  # records + one metadata each
    return ds.n / took


CASES: list[tuple[str, str, Callable[[Bench], float]]] = [
    ("a", "seed: boto3 put_record loop", case_seed_put_record),
    ("b", "bare boto3 put_records loop, 500/request", case_bare_put_records),
    ("c", "spark-sinks run, ndjson file -> kinesis sink", case_spark_sinks_run),
]
RATIOS = [("c/a", "c", "a", 25.0), ("c/b", "c", "b", 0.8)]


# -- report ------------------------------------------------------------------------------


def report(b: Bench, runs: dict[str, list[float]], repeat: int, seed_repeat: int) -> str:
    ds = b.dataset(b.records)
    rates = {k: statistics.median(v) for k, v in runs.items()}
    lines = [
        f"Records: {ds.mean_bytes:.0f} bytes of envelope JSON, 5 attributes, {MACHINES} "
        f"machines, {SHARDS} shards; (a) {b.seed_records} records, (b) and (c) {b.records}.",
        f"moto server (separate process), Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; one fresh stream per run; "
        f"median of the runs (min-max in brackets): (a) {seed_repeat}, (b) and (c) {repeat}.",
        "",
        "| case | what | records/s |",
        "|---|---|---:|",
    ]
    for key, label, _ in CASES:
        if key in runs:
            lo, hi = min(runs[key]), max(runs[key])
            lines.append(f"| {key} | {label} | {rates[key]:,.0f} ({lo:,.0f}-{hi:,.0f}) |")
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    for name, num, den, target in RATIOS:
        if num in rates and den in rates:
            value = rates[num] / rates[den]
            ok = "met" if value >= target else "NOT met"
            lines.append(f"| {name} | {value:.2f} | >= {target:g} ({ok}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000, help="records for (b) and (c)")
    ap.add_argument(
        "--seed-records", type=int, default=0, help="records for (a); default: as (b) and (c)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of (b) and (c); median counts")
    ap.add_argument("--seed-repeat", type=int, default=1, help="runs of (a), which is slow")
    ap.add_argument("--only", default="", help="comma list of case keys, e.g. b,c")
    args = ap.parse_args()
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    with tempfile.TemporaryDirectory(prefix="spark-bench-") as tmp:
        moto = MotoServer().start()
        try:
            b = Bench(moto, Path(tmp), args.records, args.seed_records or args.records)
            b.dataset(args.records)
            runs: dict[str, list[float]] = {}
            for i in range(max(args.repeat, args.seed_repeat)):
                # interleaved, so that changes in the machine's load hit every case
                for key, label, fn in CASES:
                    if only and key not in only:
                        continue
                    if i >= (args.seed_repeat if key == "a" else args.repeat):
                        continue
                    rate = fn(b)
                    runs.setdefault(key, []).append(rate)
                    print(f"{key}  {label:48s} {rate:>10,.0f} records/s", flush=True)
            text = report(b, runs, args.repeat, args.seed_repeat)
        finally:
            moto.stop()
    print()
    print(text)
    (ROOT / "bench" / "results.md").write_text(
        "# Benchmark results\n\nCommand: `make bench` (`.venv/bin/python bench/run.py`)\n\n" + text
    )


if __name__ == "__main__":
    main()
