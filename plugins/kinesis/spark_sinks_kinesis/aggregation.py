"""KPL aggregated records: many user records of one partition key in one Kinesis record.

The format is the Kinesis Producer Library's documented one::

    F3 89 9A C2                     magic
    AggregatedRecord (protobuf)     partition_key_table = 1 (repeated string)
                                    explicit_hash_key_table = 2 (unused here)
                                    records = 3 (repeated Record:
                                        partition_key_index = 1, data = 3)
    MD5 of the protobuf             16 bytes

Every aggregate built here holds the records of exactly one partition key, so the key
table has one entry and every record points at index 0; the Kinesis record carries the
same key. aws-kinesis-agg's deaggregator and the KCL unpack it.

Why not aws-kinesis-agg's ``RecordAggregator``: the sink must know, before it encodes
anything, exactly which queued records fit into an aggregate of at most
``max_record_bytes`` and which envelopes each aggregate carries (they are delivered or
retried as a unit). With one key per aggregate, the encoded size of each record is a
closed formula (``entry_bytes``), so the sink picks records with plain arithmetic under
its lock and encodes outside it, with one ``bytes.join``. This also avoids a protobuf
runtime in the producer. The tests read every aggregate back with aws-kinesis-agg.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_BYTES = 16
_KEY_TAG = b"\x0a"  # field 1, length-delimited
_RECORD_TAG = b"\x1a"  # field 3, length-delimited
_RECORD_HEAD = b"\x08\x00\x1a"  # partition_key_index = 0, then the data field's tag


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_len(n: int) -> int:
    if n < 0x80:
        return 1
    if n < 0x4000:
        return 2
    if n < 0x200000:
        return 3
    if n < 0x10000000:
        return 4
    return len(varint(n))


def entry_bytes(data_len: int) -> int:
    """Bytes one user record of ``data_len`` bytes adds to an aggregate."""
    inner = 3 + varint_len(data_len) + data_len
    return 1 + varint_len(inner) + inner


def overhead_bytes(key_len: int) -> int:
    """Bytes of an aggregate besides its records: magic, key table, digest."""
    return len(MAGIC) + 1 + varint_len(key_len) + key_len + DIGEST_BYTES


class _Heads(dict[int, bytes]):
    """The bytes before a record's data, by data length: the ``records`` tag and length,
    ``partition_key_index = 0``, the ``data`` tag and length."""

    def __missing__(self, n: int) -> bytes:
        head = varint(n)
        out = _RECORD_TAG + varint(3 + len(head) + n) + _RECORD_HEAD + head
        if len(self) < 65_536:
            self[n] = out
        return out


_HEADS = _Heads()


def encode(key: bytes, datas: Iterable[bytes]) -> bytes:
    """The aggregated record of ``datas`` (in order), all with partition key ``key``."""
    heads = _HEADS
    parts = [_KEY_TAG + varint(len(key)) + key]
    append = parts.append
    for d in datas:
        append(heads[len(d)])
        append(d)
    body = b"".join(parts)
    return b"".join((MAGIC, body, hashlib.md5(body, usedforsecurity=False).digest()))
