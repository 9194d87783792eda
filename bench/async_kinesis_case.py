"""Bench cases (e) and (e-kpl): the async-kinesis library's ``Producer``.

Run by ``bench/run.py`` with the interpreter of its own virtualenv (``bench/work/
async-kinesis``, from ``bench/async-kinesis-requirements.txt``), against the bench's moto
server. Only the standard library and async-kinesis are used here.

``plain``: ``StringProcessor`` (no aggregation), one Kinesis record per envelope, with the
machine's partition key, as spark-sinks sends them.
``kpl``: ``KPLStringProcessor``, its KPL aggregating processor. It does not accept
partition keys (async-kinesis raises for them), so aggregates go out under the keys the
library makes up, not per machine.

The per-shard limits (1,000 records/s and 1,024 KB/s per shard by default) are lifted so
that only the library's own cost and moto's speed count, as for every other case.

Usage: ``python async_kinesis_case.py plain|kpl STREAM ENDPOINT RECORDS_FILE`` where each
line of RECORDS_FILE is ``partition key <TAB> envelope JSON``. Prints one JSON line:
``{"records": n, "seconds": s}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from kinesis import Producer
from kinesis.processors import KPLStringProcessor, StringProcessor

UNLIMITED = 10_000_000


async def produce(mode: str, stream: str, endpoint: str, records: list[tuple[str, str]]) -> float:
    kpl = mode == "kpl"
    processor = KPLStringProcessor() if kpl else StringProcessor()
    t0 = time.perf_counter()
    async with Producer(
        stream_name=stream,
        endpoint_url=endpoint,
        region_name="us-east-1",
        processor=processor,
        put_rate_limit_per_shard=UNLIMITED,
        put_bandwidth_limit_per_shard=UNLIMITED,
    ) as producer:
        put = producer.put
        if kpl:
            for _, data in records:
                await put(data)
        else:
            for key, data in records:
                await put(data, partition_key=key)
    return time.perf_counter() - t0


def main() -> None:
    mode, stream, endpoint, path = sys.argv[1:5]
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            key, data = line.rstrip("\n").split("\t", 1)
            records.append((key, data))
    took = asyncio.run(produce(mode, stream, endpoint, records))
    print(json.dumps({"records": len(records), "seconds": took}))


if __name__ == "__main__":
    main()
