"""Compressed Kinesis records (the producer's ``compression: gzip | zstd``): recognised by
their first bytes, decompressed before deaggregation, and stored exactly like the plain
ones; corrupt, truncated or oversized compressed data is skipped as one bad record."""

from __future__ import annotations

import gzip
import logging
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from spark_consumer.compression import MAX_BYTES, decompress
from spark_consumer.envelope import BadRecord
from spark_consumer.handler import lambda_handler
from spark_consumer.store import create_tables
from spark_sinks_kinesis import aggregation, compression

from .producer import Sequence, kinesis_event
from .test_handler import failures, scan

COMPRESSORS = {"gzip": compression.compressor("gzip"), "zstd": compression.compressor("zstd")}


def _aggregate(payloads: list[bytes]) -> bytes:
    """The producer's own KPL aggregate (one partition key per aggregate)."""
    return aggregation.encode(b"gw/press-1", payloads)


@pytest.mark.parametrize("name", COMPRESSORS)
def test_compressed_plain_and_aggregated_records_are_stored_like_uncompressed_ones(
    tables, produced, name
):
    compress = COMPRESSORS[name]
    assert compress is not None
    plain = kinesis_event(produced.envelopes, Sequence())
    lambda_handler(plain, None)
    expected_data, expected_meta = scan("SparkData"), scan("SparkMetadata")
    for name_ in ("SparkData", "SparkMetadata"):
        tables.delete_table(TableName=name_)
    create_tables(tables)

    seq = Sequence()
    half = len(produced.envelopes) // 2
    event = kinesis_event(
        [
            *[compress(e) for e in produced.envelopes[:half]],
            compress(_aggregate(produced.envelopes[half:])),
        ],
        seq,
    )
    assert all(
        r["kinesis"]["data"][:3] != plain["Records"][0]["kinesis"]["data"][:3]
        for r in event["Records"]
    )  # the data really is compressed, not the envelope's '{"t'
    response = lambda_handler(event, None)

    assert failures(response) == []
    position = {"sequenceNumber", "subSequenceNumber", "arrivalTime", "version"}

    def content(items):  # type: ignore[no-untyped-def]
        return [{k: v for k, v in i.items() if k not in position} for i in items]

    assert content(scan("SparkData")) == content(expected_data)
    assert content(scan("SparkMetadata")) == content(expected_meta)


def _bomb_gzip() -> bytes:
    return zlib.compress(b"\0" * (MAX_BYTES + 1), 9, 31)


def _bomb_zstd() -> bytes:
    return zstandard.ZstdCompressor().compress(b"\0" * (MAX_BYTES + 1))


def _bomb_zstd_unknown_size() -> bytes:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    return cctx.compress(b"\0" * (MAX_BYTES + 1))


BAD = {
    "corrupt gzip": lambda env: b"\x1f\x8b" + b"\x00" * 30,
    "truncated gzip": lambda env: gzip.compress(env)[:-6],
    "gzip followed by junk": lambda env: gzip.compress(env) + b"junk",
    "gzip bomb": lambda env: _bomb_gzip(),
    "corrupt zstd": lambda env: b"\x28\xb5\x2f\xfd" + b"\xff" * 30,
    "truncated zstd": lambda env: zstandard.ZstdCompressor().compress(env)[:-4],
    "zstd bomb": lambda env: _bomb_zstd(),
    "zstd bomb without its size": lambda env: _bomb_zstd_unknown_size(),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_compressed_data_is_skipped_with_one_line_and_its_neighbours_are_stored(
    tables, produced, caplog, kind
):
    bad = BAD[kind](produced.records[2])
    event = kinesis_event([produced.records[0], bad, produced.records[1]], Sequence())
    bad_sequence = event["Records"][1]["kinesis"]["sequenceNumber"]

    with caplog.at_level(logging.ERROR, logger="spark_consumer"):
        response = lambda_handler(event, None)

    assert failures(response) == []
    assert len(scan("SparkData")) == 2
    lines = [m for m in caplog.messages if bad_sequence in m]
    assert len(lines) == 1 and "\n" not in lines[0], caplog.messages
    assert ("gzip" if "gzip" in kind else "zstd") in lines[0]


@pytest.mark.parametrize("kind", BAD)
def test_decompress_refuses_bad_data_with_bad_record(produced, kind):
    with pytest.raises(BadRecord):
        decompress(BAD[kind](produced.records[0]))


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(COMPRESSORS)),
    body=st.binary(max_size=4000),
    aggregate=st.booleans(),
    slack=st.integers(min_value=-200, max_value=200),
)
def test_whatever_the_producer_packs_the_consumer_reads_back_exactly(name, body, aggregate, slack):
    # what the producer sends starts with '{' (an envelope) or the KPL magic (an aggregate)
    data = _aggregate([b"{" + body]) if aggregate else b"{" + body
    compress = COMPRESSORS[name]
    assert compress is not None
    limit = max(1, len(data) + slack)
    packed = compression.pack(compress, data, limit)
    if packed is None:
        assert len(data) > limit and len(compress(data)) > limit
        return
    assert len(packed) <= limit
    assert decompress(packed) == data
