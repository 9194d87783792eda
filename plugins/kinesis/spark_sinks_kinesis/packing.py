"""A record's data as sent: compressed as configured, and within ``max_record_bytes``;
a record that can never fit goes to the dead letter here, with the reason.

Shared state: none; a ``Packer`` holds settings and is used by the write thread
(``record``) and the lane threads (``unit``).
"""

from __future__ import annotations

from collections.abc import Callable

from spark_sinks import Envelope

from . import compression
from .config import KinesisConfig


class Packer:
    def __init__(self, config: KinesisConfig, dead_letter: Callable[[Envelope, str], None]) -> None:
        self.config = config
        self._dead_letter = dead_letter
        self._aggregate = config.aggregation == "kpl"
        self._compress = compression.compressor(config.compression)
        self._compress_each = self._compress is not None and not self._aggregate
        """Compress each record as it is queued; with aggregation, aggregates are
        compressed as they are sent instead."""

    def record(self, env: Envelope, data: bytes, key_bytes: int) -> bytes | None:
        """The data to queue for ``env`` (its JSON ``data``), or None after
        dead-lettering a record that cannot fit."""
        if self._compress_each:
            assert self._compress is not None
            limit = self.config.max_record_bytes - key_bytes
            packed = compression.pack(self._compress, data, limit)
            if packed is None:
                self._too_large(env, data, key_bytes)
            return packed
        if len(data) + key_bytes > self.config.max_record_bytes and not self._fits_compressed(
            env, data, key_bytes
        ):
            return None
        return data

    def _fits_compressed(self, env: Envelope, data: bytes, key_bytes: int) -> bool:
        """For a record over ``max_record_bytes`` as it is: with aggregation and
        compression it is still sent (alone, compressed) when that fits; otherwise it is
        dead-lettered here."""
        limit = self.config.max_record_bytes - key_bytes
        if (
            self._aggregate
            and self._compress is not None
            and compression.pack(self._compress, data, limit) is not None
        ):
            return True
        self._too_large(env, data, key_bytes)
        return False

    def _too_large(self, env: Envelope, data: bytes, key_bytes: int) -> None:
        cfg = self.config
        if len(data) > compression.DECOMPRESSED_MAX_BYTES:
            reason = (
                f"record data of {len(data)} bytes exceeds the "
                f"{compression.DECOMPRESSED_MAX_BYTES} bytes a consumer decompresses"
            )
        else:
            how = f" even with {cfg.compression} compression" if self._compress else ""
            reason = (
                f"record of {len(data) + key_bytes} bytes (data and partition key) exceeds "
                f"max_record_bytes ({cfg.max_record_bytes}){how}"
            )
        self._dead_letter(env, reason)

    def unit(self, data: bytes, key_bytes: int) -> bytes:
        """The data as sent of a record compressed when it is sent: an aggregate, a lone
        record with aggregation, the connection test. Only what fits is queued, so
        ``pack`` returns bytes here."""
        if self._compress is None:
            return data
        packed = compression.pack(self._compress, data, self.config.max_record_bytes - key_bytes)
        return data if packed is None else packed
