"""Partition keys: ``host/machine``, as the original module derived them."""

from __future__ import annotations

import hashlib

MAX_KEY_CHARS = 256
"""Kinesis's limit on a partition key, in Unicode characters."""
_DIGEST_CHARS = 16


def partition_key(host: str, machine: str | None) -> str:
    """The key for the records and metadata of ``machine`` on ``host``; ``host`` alone when
    there is no machine (the connection test).

    All records of one machine of one host hash to the same shard. A key longer than
    Kinesis's 256 characters keeps its first 239 characters and ends with ``~`` and 16
    hex digits of the SHA-256 of the whole key, so that it is deterministic and two long
    keys that share a prefix still differ.
    """
    key = host if machine is None else f"{host}/{machine}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    return f"{key[: MAX_KEY_CHARS - _DIGEST_CHARS - 1]}~{digest}"
