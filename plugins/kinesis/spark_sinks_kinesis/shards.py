"""The stream's open shards and their hash key ranges, as ListShards tells them.

Kinesis puts a record on the open shard whose hash key range holds the MD5 of its
partition key (read as a 128-bit big-endian number). The sink uses the same rule to know,
before sending, which shard each record will land on: for its lanes (one lane per shard)
and for the shard's rate meter.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ShardRange:
    shard_id: str
    start: int
    """First hash key of the shard."""
    end: int
    """Last hash key of the shard (inclusive)."""


def hash_key(partition_key: str) -> int:
    """The hash key Kinesis derives from a partition key."""
    digest = hashlib.md5(partition_key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


class ShardMap:
    """Open shards ordered by hash key; ``index`` finds the one holding a hash key."""

    __slots__ = ("_starts", "ids", "shards")

    def __init__(self, shards: Sequence[ShardRange]) -> None:
        self.shards = sorted(shards, key=lambda s: s.start)
        self._starts = [s.start for s in self.shards]
        self.ids = frozenset(s.shard_id for s in self.shards)

    def index(self, key_hash: int) -> int:
        return max(bisect.bisect_right(self._starts, key_hash) - 1, 0)

    def __len__(self) -> int:
        return len(self.shards)


def list_open_shards(client: Any, stream: dict[str, str]) -> list[ShardRange]:
    """Every open shard of the stream (``stream``: ``StreamName`` or ``StreamARN``), over
    all pages of ListShards. Closed shards (split or merged away) have an ending sequence
    number and take no writes."""
    shards: list[ShardRange] = []
    kwargs: dict[str, Any] = dict(stream)
    while True:
        resp = client.list_shards(**kwargs)
        for shard in resp.get("Shards", []):
            if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                continue
            hk = shard["HashKeyRange"]
            shards.append(
                ShardRange(
                    str(shard["ShardId"]), int(hk["StartingHashKey"]), int(hk["EndingHashKey"])
                )
            )
        token = resp.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}
