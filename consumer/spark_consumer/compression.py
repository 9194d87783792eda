"""Compressed Kinesis records (the producer's ``compression: gzip | zstd``).

A record's data is recognised by its first bytes: gzip ``1f 8b``, zstd ``28 b5 2f fd``.
Anything else (an envelope starts with ``{``, a KPL aggregate with ``f3 89 9a c2``) is
passed on as it is. Compression wraps the whole record, so a compressed record may hold a
KPL aggregate: decompress first, then deaggregate.
"""

from __future__ import annotations

import zlib

from .envelope import BadRecord

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_BYTES = 64 * 1024 * 1024
"""Largest data a record may expand to (the producer refuses to send more): a
decompression bomb is skipped as a bad record instead of exhausting the Lambda's memory."""
_GZIP_WBITS = 31


def decompress(data: bytes) -> bytes:
    """``data`` decompressed when it is gzip or zstd, else ``data`` itself."""
    if data.startswith(GZIP_MAGIC):
        return _gunzip(data)
    if data.startswith(ZSTD_MAGIC):
        return _unzstd(data)
    return data


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = inflater.decompress(data, MAX_BYTES)
    except zlib.error as exc:
        raise BadRecord(f"gzip data is corrupt: {exc}") from None
    if inflater.unconsumed_tail:
        raise BadRecord(f"gzip data expands to more than {MAX_BYTES} bytes")
    if not inflater.eof:
        raise BadRecord("gzip data is truncated")
    if inflater.unused_data:
        raise BadRecord("gzip data is followed by other bytes")
    return out


def _unzstd(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:  # a packaging fault, not a bad record: fail so Lambda retries
        raise RuntimeError(
            "a zstd-compressed record arrived but the zstandard package is not installed"
        ) from None
    try:
        size = zstandard.frame_content_size(data)
        if size > MAX_BYTES:
            raise BadRecord(f"zstd data expands to {size} bytes, more than {MAX_BYTES}")
        # the size is in the frame header when the producer wrote it; else bound the output
        limit = {"max_output_size": MAX_BYTES} if size < 0 else {}
        out: bytes = zstandard.ZstdDecompressor().decompress(data, **limit)
    except zstandard.ZstdError as exc:
        raise BadRecord(f"zstd data is corrupt, truncated or too large: {exc}") from None
    return out
