"""A Kinesis-faithful throttling proxy in front of the moto server, for rate tests.

moto takes any rate. Real Kinesis meters every open shard's writes per second (1,000
records and 1 MiB of data plus partition key) and refuses, entry by entry, what goes over
with ``ProvisionedThroughputExceededException``; the rest of the request is stored. This
proxy does the same::

    with ThrottleProxy(moto.url, records_per_second=200) as proxy:
        ... point the sink's endpoint_url at proxy.url ...
        proxy.totals()   # per shard: records and bytes accepted, entries refused

* The shards and their hash key ranges are moto's own, from ListShards (listed again
  every ``refresh_seconds``, so a resharding during a test is followed); closed shards
  take nothing.
* Each PutRecords entry goes to the open shard holding its hash key: its
  ``ExplicitHashKey``, or the MD5 of its partition key, as Kinesis does.
* Each shard has a budget per wall-clock second (a fixed window). An entry that would
  take the shard over its records or bytes budget of the current second is refused;
  the entries that fit are forwarded to moto, and the answer is spliced back in request
  order with ``FailedRecordCount`` (see ``faultproxy.FaultProxy``).
* It watches the requests it holds at once: ``most_in_flight()`` tells, per shard, the
  most requests with entries for it at the same time, and ``overlaps()`` the partition
  keys that were in two requests at the same time (a sender that keeps each key's
  order never does that).

For a resharding on moto: ``with proxy.hold(): ...`` keeps requests waiting (none is in
moto meanwhile) while its SplitShard moves a shard's records, which moto does not guard
against concurrent puts. Concurrent puts to one shard (after a split moto keeps writing the
children's keys to the closed parent) need nothing here: the tests' moto stores one record
at a time (``moto_main.py``).

Every other fault of ``FaultProxy`` (errors, resets, slow answers) can be dialled in on
top with ``set_faults``; its ``partial`` share is not used here.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3

from tests.support.faultproxy import FaultProxy, _Handler

MiB = 1024 * 1024


@dataclass(slots=True)
class _Window:
    second: int = -1
    records: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Shards:
    starts: list[int]
    ids: list[str]
    listed_at: float


class ThrottleProxy(FaultProxy):
    """See the module docstring."""

    def __init__(
        self,
        upstream: str,
        records_per_second: int = 1000,
        bytes_per_second: int = MiB,
        refresh_seconds: float = 0.5,
    ) -> None:
        super().__init__(upstream)
        self.records_per_second = records_per_second
        self.bytes_per_second = bytes_per_second
        self.refresh_seconds = refresh_seconds
        self._kinesis = boto3.client(
            "kinesis",
            endpoint_url=upstream,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self._budget_lock = threading.Lock()
        """Owns everything below: requests are handled on concurrent threads."""
        self._shards: dict[str, _Shards] = {}
        self._windows: dict[str, _Window] = {}
        self._accepted: Counter[str] = Counter()
        self._accepted_bytes: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._most_in_flight: Counter[str] = Counter()
        self._keys_out: Counter[str] = Counter()
        self._overlaps: Counter[str] = Counter()
        self._mine = threading.local()
        """The shards and keys of the request the current thread handles."""
        self._gate = threading.Condition()
        """Owns ``_held`` and ``_inside``."""
        self._held = False
        self._inside = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Requests wait at the door while the block runs, once those inside are done."""
        with self._gate:
            self._held = True
            while self._inside:
                self._gate.wait()
        try:
            yield
        finally:
            with self._gate:
                self._held = False
                self._gate.notify_all()

    def _handle(self, h: _Handler, method: str) -> None:
        with self._gate:
            while self._held:
                self._gate.wait()
            self._inside += 1
        self._mine.shards, self._mine.keys = set(), set()
        try:
            super()._handle(h, method)
        finally:
            with self._budget_lock:
                self._in_flight.subtract(self._mine.shards)
                self._keys_out.subtract(self._mine.keys)
            with self._gate:
                self._inside -= 1
                self._gate.notify_all()

    def most_in_flight(self) -> dict[str, int]:
        """Per shard id: the most PutRecords requests with entries for it held at once."""
        with self._budget_lock:
            return dict(self._most_in_flight)

    def overlaps(self) -> dict[str, int]:
        """Per partition key: how often a request carried it while another did."""
        with self._budget_lock:
            return dict(self._overlaps)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per shard id: ``records`` and ``bytes`` accepted, ``throttled`` entries."""
        with self._budget_lock:
            ids = set(self._accepted) | set(self._refused)
            return {
                i: {
                    "records": self._accepted[i],
                    "bytes": self._accepted_bytes[i],
                    "throttled": self._refused[i],
                }
                for i in sorted(ids)
            }

    def ideal_seconds(self) -> float:
        """The least time the accepted writes needed: the busiest shard's records or bytes
        over its limits."""
        return max(
            max(t["records"] / self.records_per_second, t["bytes"] / self.bytes_per_second)
            for t in self.totals().values()
        )

    def _open_shards(self, stream: str, now: float) -> _Shards:
        known = self._shards.get(stream)
        if known is not None and now - known.listed_at < self.refresh_seconds:
            return known
        ranges = []
        for page in self._kinesis.get_paginator("list_shards").paginate(StreamName=stream):
            for shard in page["Shards"]:
                if "EndingSequenceNumber" not in shard["SequenceNumberRange"]:
                    start = int(shard["HashKeyRange"]["StartingHashKey"])
                    ranges.append((start, shard["ShardId"]))
        ranges.sort()
        shards = _Shards([r[0] for r in ranges], [r[1] for r in ranges], now)
        self._shards[stream] = shards
        return shards

    def _choose_throttled(self, request: dict[str, Any], records: list[Any]) -> list[int]:
        stream = request.get("StreamName") or str(request.get("StreamARN", "")).split("/")[-1]
        refused = []
        with self._budget_lock:
            now = time.time()
            second = int(now)
            shards = self._open_shards(stream, now)
            for i, r in enumerate(records):
                key = r["PartitionKey"].encode("utf-8")
                if r.get("ExplicitHashKey"):
                    key_hash = int(r["ExplicitHashKey"])
                else:
                    key_hash = int.from_bytes(hashlib.md5(key).digest(), "big")
                shard = shards.ids[max(bisect.bisect_right(shards.starts, key_hash) - 1, 0)]
                self._hold(shard, r["PartitionKey"])
                size = len(base64.b64decode(r["Data"])) + len(key)
                w = self._windows.setdefault(shard, _Window())
                if w.second != second:
                    w.second, w.records, w.bytes = second, 0, 0
                over = w.bytes + size > self.bytes_per_second
                if over or w.records + 1 > self.records_per_second:
                    refused.append(i)
                    self._refused[shard] += 1
                    continue
                w.records += 1
                w.bytes += size
                self._accepted[shard] += 1
                self._accepted_bytes[shard] += size
        return refused

    def _hold(self, shard: str, key: str) -> None:
        """(Holding the budget lock.) Note that this thread's request carries ``key`` to
        ``shard``, until it is answered."""
        mine = self._mine
        if shard not in mine.shards:
            mine.shards.add(shard)
            self._in_flight[shard] += 1
            self._most_in_flight[shard] = max(self._most_in_flight[shard], self._in_flight[shard])
        if key not in mine.keys:
            mine.keys.add(key)
            if self._keys_out[key]:
                self._overlaps[key] += 1
            self._keys_out[key] += 1
