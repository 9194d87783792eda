"""The KCL reads the sink's aggregates: its own ``AggregatorUtil`` (from the KCL jars that
``kclpy-ext`` bundles), run by ``kcl/KclDeaggregate.java`` on a JVM, against what
``spark-sinks run`` with ``aggregation: kpl`` wrote into a moto stream."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from kinesis_helpers import config, records_ndjson, run_cli
from spark_sinks_kinesis import aggregation

from tests.support.streams import shard_records

HARNESS = Path(__file__).parent / "kcl" / "KclDeaggregate.java"
ALL_KEYS = (0, 2**128 - 1)


def kcl_jars() -> Path | None:
    try:
        import amazon_kclpy
    except ImportError:
        return None
    jars = Path(amazon_kclpy.__file__).parent / "jars"
    return jars if any(jars.glob("amazon-kinesis-client-*.jar")) else None


JAVA = shutil.which("java")
JARS = kcl_jars()
pytestmark = pytest.mark.skipif(
    JAVA is None or JARS is None, reason="needs java and the KCL jars (kclpy-ext)"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kcl_deaggregate(records: list[tuple[tuple[int, int], str, str, bytes]]) -> list[dict[str, Any]]:
    """The KCL's user records of ``(shard hash range, sequence number, key, data)``."""
    lines = "".join(
        f"{lo}\t{hi}\t{seq}\t{b64(key.encode())}\t{b64(data)}\n"
        for (lo, hi), seq, key, data in records
    )
    proc = subprocess.run(
        [str(JAVA), "-cp", f"{JARS}/*", str(HARNESS)],
        input=lines.encode(),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = []
    for line in proc.stdout.decode().splitlines():
        seq, sub, aggregated, key, data = line.split("\t")
        out.append(
            {
                "seq": seq,
                "sub": int(sub),
                "aggregated": aggregated == "true",
                "key": base64.b64decode(key).decode(),
                "data": base64.b64decode(data),
            }
        )
    return out


@pytest.mark.slow
def test_the_kcl_unpacks_every_aggregate_the_sink_wrote_into_the_same_user_records(
    tmp_path, moto, kinesis, make_stream
):
    stream = make_stream(4)
    n, machines = 2_000, 6
    cfg = config(tmp_path / "c.yaml", stream, moto.url, machines=machines, aggregation="kpl")
    data = records_ndjson(tmp_path / "in.ndjson", n, machines)
    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]

    ranges = {
        s["ShardId"]: (
            int(s["HashKeyRange"]["StartingHashKey"]),
            int(s["HashKeyRange"]["EndingHashKey"]),
        )
        for s in kinesis.list_shards(StreamName=stream)["Shards"]
    }
    stored = [
        (ranges[shard], r["SequenceNumber"], r["PartitionKey"], r["Data"])
        for shard, r in shard_records(kinesis, stream)
    ]
    aggregates = [r for r in stored if r[3][:4] == aggregation.MAGIC]
    assert len(aggregates) >= machines

    users = kcl_deaggregate(stored)

    # every user record, none dropped for its shard, in stream order; only plain records
    # (sent alone) come back as they were
    expected = []
    for _, seq, key, raw in stored:
        if raw[:4] == aggregation.MAGIC:
            expected.extend((seq, key, data, True) for data in _protobuf_datas(raw))
        else:
            expected.append((seq, key, raw, False))
    assert [(u["seq"], u["key"], u["data"], u["aggregated"]) for u in users] == expected
    envelopes = [orjson.loads(u["data"]) for u in users]
    assert Counter(e["type"] for e in envelopes) == {
        "record": n,
        "metadata": machines,
        "connection_test": 1,
    }


def _protobuf_datas(raw: bytes) -> list[bytes]:
    """The user records' data of an aggregate, by aws-kinesis-agg (a second reader)."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    event = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "k",
            "sequenceNumber": "1",
            "approximateArrivalTimestamp": 0,
            "data": b64(raw),
        }
    }
    return [base64.b64decode(u["kinesis"]["data"]) for u in iter_deaggregate_records(event)]


@pytest.mark.slow
def test_the_kcl_harness_tells_a_broken_or_misplaced_aggregate_apart():
    """The checks above can fail: a wrong digest makes the KCL pass the bytes through as
    one plain record, and a key outside the shard's range makes it drop the records."""
    key = "gw/press-1"
    datas = [b'{"n":1}', b'{"n":2}', b"x" * 300]
    good = aggregation.encode(key.encode(), datas)
    bad_digest = good[:-1] + bytes([good[-1] ^ 1])
    hashed = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    elsewhere = (hashed + 1, 2**128 - 1) if hashed < 2**128 - 1 else (0, hashed - 1)

    users = kcl_deaggregate(
        [(ALL_KEYS, "1", key, good), (ALL_KEYS, "2", key, bad_digest), (elsewhere, "3", key, good)]
    )

    assert [(u["seq"], u["sub"], u["aggregated"], u["data"]) for u in users] == [
        ("1", 0, True, datas[0]),
        ("1", 1, True, datas[1]),
        ("1", 2, True, datas[2]),
        ("2", 0, False, bad_digest),
    ]
