"""``max_record_bytes`` at its boundary. Kinesis counts a record as its data plus its
partition key; a stream takes 1 MiB by default (moto enforces the same) and up to 10 MiB
once ``UpdateMaxRecordSize`` raised it (AWS API reference, ``MaxRecordSizeInKiB``: 1024 to
10240). A record of exactly the limit is sent; one byte more is dead-lettered by the sink,
before any request, with its size in the reason."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from kinesis_helpers import open_sink
from pydantic import ValidationError
from spark_sinks_kinesis import KinesisConfig
from spark_sinks_kinesis.config import MiB

from spark_sinks import Envelope
from tests.support.faultproxy import FaultProxy, _Handler
from tests.support.streams import shard_records

KEY = "gw/m1"  # the partition key of host "gw", machine "m1"


def sized(total: int, time: int) -> Envelope:
    """A record whose JSON plus partition key is exactly ``total`` bytes."""
    env = Envelope("record", "gw", {"machine": "m1", "time": time, "pad": ""}, "m1")
    pad = total - len(KEY) - len(env.to_json())
    env = Envelope("record", "gw", {"machine": "m1", "time": time, "pad": "x" * pad}, "m1")
    assert len(env.to_json()) + len(KEY) == total
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings", [{}, {"max_record_bytes": 4096}], ids=["default 1 MiB", "4 KiB"]
)
def test_a_record_of_exactly_max_record_bytes_is_sent_and_one_byte_more_is_dead_lettered(
    moto: Any, kinesis: Any, make_stream: Any, settings: dict[str, int]
) -> None:
    limit = settings.get("max_record_bytes", MiB)
    stream = make_stream(1)
    sink = open_sink(moto.url, stream, max_batch_bytes=4 * MiB, **settings)
    assert sink.config.max_record_bytes == limit
    sink.write([sized(limit - 1, 1), sized(limit, 2), sized(limit + 1, 3), sized(limit, 4)])
    sink.flush(60)
    sink.close()
    st = sink.stats
    assert (st.delivered, st.dead_lettered, st.failed, st.pending) == (3, 1, 0, 0)
    assert f"record of {limit + 1} bytes (data and partition key) exceeds" in (st.last_error or "")
    stored = [r["Data"] for _, r in shard_records(kinesis, stream)]
    assert [len(d) + len(KEY) for d in stored] == [limit - 1, limit, limit]


def test_max_record_bytes_goes_up_to_the_10_mib_a_stream_can_be_raised_to() -> None:
    base = {"type": "kinesis", "stream_name": "s", "region": "eu-west-1", "rate_limit": False}
    assert KinesisConfig(**base).max_record_bytes == MiB  # what AWS gives every stream
    assert KinesisConfig(**base, max_record_bytes=10 * MiB).max_record_bytes == 10 * MiB
    with pytest.raises(ValidationError, match="max_record_bytes"):
        KinesisConfig(**base, max_record_bytes=10 * MiB + 1)


class RecordSizeProxy(FaultProxy):
    """moto does not say a stream's ``MaxRecordSizeInKiB``; AWS's DescribeStreamSummary
    does: this proxy adds it to moto's answer."""

    def __init__(self, upstream: str, kib: int) -> None:
        super().__init__(upstream)
        self.kib = kib

    def _forward(
        self, h: _Handler, method: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, payload = super()._forward(h, method, body)
        if status == 200 and (h.headers.get("X-Amz-Target") or "").endswith("StreamSummary"):
            answer = json.loads(payload)
            answer["StreamDescriptionSummary"]["MaxRecordSizeInKiB"] = self.kib
            payload = json.dumps(answer).encode()
        return status, headers, payload


@pytest.mark.parametrize(
    ("kib", "ours", "expected"),
    [
        (1024, 2 * MiB, "exceeds the stream's maximum record size (1024 KiB)"),
        (4096, MiB, "the stream takes records up to 4096 KiB, max_record_bytes only 1048576"),
        (1024, MiB, None),
    ],
)
def test_the_start_compares_max_record_bytes_with_the_stream_s_own_maximum(
    moto: Any,
    make_stream: Any,
    caplog: pytest.LogCaptureFixture,
    kib: int,
    ours: int,
    expected: str | None,
) -> None:
    stream = make_stream(1)
    caplog.set_level(logging.INFO)
    with RecordSizeProxy(moto.url, kib) as proxy:
        sink = open_sink(proxy.url, stream, max_record_bytes=ours, rate_limit=False)
        sink.close()
    said = [r.getMessage() for r in caplog.records if "max_record_bytes" in r.getMessage()]
    if expected is None:
        assert said == []
    else:
        assert len(said) == 1 and expected in said[0], said
