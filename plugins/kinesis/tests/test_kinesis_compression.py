"""``compression: gzip | zstd``: every Kinesis record's data (each aggregate with
``aggregation: kpl``) is compressed, limits apply to the compressed bytes, and what is
read back from the stream decompresses to exactly the envelopes written."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import os
from collections import Counter
from typing import Any

import orjson
import pytest
import zstandard
from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from kinesis_helpers import config, open_sink, records_ndjson, run_cli
from pydantic import ValidationError
from spark_sinks_kinesis import KinesisConfig, aggregation

from spark_sinks import Envelope
from tests.support.streams import shard_records

MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}


def _decompress(data: bytes) -> bytes:
    """An independent reader: the standard library's gzip, zstandard's own decompressor."""
    if data.startswith(MAGIC["gzip"]):
        return gzip.decompress(data)
    if data.startswith(MAGIC["zstd"]):
        return zstandard.ZstdDecompressor().decompress(data)
    return data


def read_compressed(client: Any, stream: str) -> list[tuple[bytes, list[dict[str, Any]]]]:
    """``(data as stored, envelopes inside)`` for every Kinesis record of ``stream``."""
    out = []
    for _, r in shard_records(client, stream):
        event = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "approximateArrivalTimestamp": 0,
                "partitionKey": r["PartitionKey"],
                "sequenceNumber": r["SequenceNumber"],
                "data": base64.b64encode(_decompress(r["Data"])).decode(),
            }
        }
        users = [
            orjson.loads(base64.b64decode(u["kinesis"]["data"]))
            for u in iter_deaggregate_records(event)
        ]
        out.append((r["Data"], users))
    return out


@pytest.mark.parametrize("agg", ["none", "kpl"])
@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_a_compressed_run_stores_every_envelope_compressed_and_fewer_bytes(
    tmp_path, moto, kinesis, make_stream, name, agg
):
    stream = make_stream(2)
    n, machines = 1_500, 4
    cfg = config(
        tmp_path / "c.yaml", stream, moto.url, machines=machines, aggregation=agg, compression=name
    )
    data = records_ndjson(tmp_path / "in.ndjson", n, machines)

    proc = run_cli("run", "-c", str(cfg), input=data.read_bytes())

    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert f"{n + machines} accepted, {n + machines} delivered" in err
    read = read_compressed(kinesis, stream)
    # every Kinesis record, the connection test included, is compressed
    assert all(stored.startswith(MAGIC[name]) for stored, _ in read)
    envelopes = [e for _, users in read for e in users]
    assert Counter(e["type"] for e in envelopes) == {
        "record": n,
        "metadata": machines,
        "connection_test": 1,
    }
    times = [e["data"]["time"] for e in envelopes if e["type"] == "record"]
    assert len(set(times)) == n  # each record once
    stored_bytes = sum(len(stored) for stored, _ in read)
    raw_bytes = sum(len(orjson.dumps(e)) for e in envelopes)
    assert stored_bytes < raw_bytes * (0.5 if agg == "kpl" else 0.95)
    if agg == "kpl":
        inside = [_decompress(stored)[:4] for stored, _ in read]
        assert inside.count(aggregation.MAGIC) >= machines  # compression wraps the aggregate


def _big(machine: str, pad: str, time: int) -> Envelope:
    return Envelope("record", "gw", {"machine": machine, "time": time, "pad": pad}, machine)


@pytest.mark.parametrize("agg", ["none", "kpl"])
def test_max_record_bytes_applies_to_the_compressed_bytes(moto, kinesis, make_stream, agg):
    stream = make_stream(1)
    limit = 2048
    sink = open_sink(
        moto.url,
        stream,
        max_record_bytes=limit,
        max_batch_bytes=64 * 1024,
        compression="gzip",
        aggregation=agg,
    )
    small = [_big("m1", "s" * 50, i) for i in range(50)]
    squeezable = _big("m1", "abc" * 10_000, 100)  # 30 kB of data, a few hundred compressed
    noise = base64.b64encode(os.urandom(3000)).decode()  # 4 kB that gzip cannot squeeze
    hopeless = _big("m2", noise, 101)
    batch = [*small[:25], squeezable, hopeless, *small[25:]]
    sink.stats.add("accepted", len(batch))  # what the core counts before a write
    sink.write(batch)
    sink.flush(30)
    sink.close()

    st = sink.stats
    assert (st.delivered, st.dead_lettered, st.dropped, st.failed) == (51, 1, 0, 0)
    assert "exceeds max_record_bytes (2048) even with gzip compression" in (st.last_error or "")
    read = read_compressed(kinesis, stream)
    assert all(len(stored) + len("gw/m1") <= limit for stored, _ in read)
    times = [e["data"]["time"] for _, users in read for e in users]
    assert sorted(times) == [*range(50), 100]  # in order, the large one in its place
    assert times == [*range(25), 100, *range(25, 50)]


def test_without_compression_the_same_large_record_is_dead_lettered(moto, make_stream):
    sink = open_sink(moto.url, make_stream(1), max_record_bytes=2048)
    sink.stats.add("accepted")
    sink.write([_big("m1", "abc" * 10_000, 1)])
    sink.flush(30)
    sink.close()
    assert (sink.stats.delivered, sink.stats.dead_lettered) == (0, 1)


def test_compression_accepts_only_none_gzip_or_zstd():
    with pytest.raises(ValidationError, match="compression"):
        KinesisConfig(type="kinesis", stream_name="s", region="us-east-1", compression="lz4")
    assert KinesisConfig(type="kinesis", stream_name="s", region="us-east-1").compression == "none"


def test_zstd_without_the_zstandard_package_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "zstandard" else real(name, *a),
    )
    with pytest.raises(ValidationError) as err:
        KinesisConfig(type="kinesis", stream_name="s", region="us-east-1", compression="zstd")
    assert "zstd needs the zstandard package: pip install 'spark-sinks-kinesis[zstd]'" in str(
        err.value
    )
