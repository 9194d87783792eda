"""Following the stream's shards: the first listing, the watcher thread that lists them
again every ``shard_refresh_seconds`` (or at once when a write lands on a shard the map
does not know, or is refused for a shard a resharding closed), and applying a changed
map to the lanes.

Shared state: the watcher thread owns ``_failed`` and ``_listed`` (``load`` and
``load_later`` set them before it starts); ``period`` is set before ``load``; the two
events are thread-safe; the lanes, queues and map it changes belong to ``Buffer.lock``,
taken in ``apply``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .config import KinesisConfig
from .errors import Explainer
from .queues import Buffer
from .rate import ShardLimits, ShardMeter
from .shards import ShardMap, ShardRange, list_open_shards

_MIN_REFRESH_SECONDS = 1.0


class ShardWatcher:
    """Keeps the lanes on the stream's open shards."""

    def __init__(
        self,
        buf: Buffer,
        client: Any,
        stream: dict[str, str],
        config: KinesisConfig,
        explain: Explainer,
        log: logging.Logger,
        name: str,
    ) -> None:
        self._buf = buf
        self._client = client
        self._stream = stream
        self._config = config
        self._explain = explain
        self._log = log
        self._name = name
        self.refresh = threading.Event()
        """Set to have the watcher list the shards now."""
        self.closing = threading.Event()
        self.thread: threading.Thread | None = None
        self._failed = False
        """The last listing failed (say so once per failure spell)."""
        self.period = config.shard_refresh_seconds
        """Seconds between listings; set by the sink from the stream mode before ``load``."""
        self._listed = 0.0
        """Monotonic time of the last listing (the watcher thread's, after ``load``)."""

    def load(self) -> None:
        """Learn the open shards' hash ranges: each shard is then written by one lane
        only (concurrent requests never touch the same shard) and metered. Then watch
        for changes."""
        self._listed = time.monotonic()
        try:
            shards = list_open_shards(self._client, self._stream)
        except Exception as exc:
            self._log.warning(
                "cannot list the shards (%s); lanes are chosen by partition key instead, "
                "and no shard rate limits are applied",
                self._explain(exc, "ListShards"),
            )
            return
        if shards:
            self.apply(ShardMap(shards))
        self._start()

    def load_later(self) -> None:
        """The stream did not answer at start (e.g. a gateway that boots before its
        network): learn the shards from the watcher thread, at once and then every
        ``shard_refresh_seconds``, so that lanes stop sharing shards and the shards'
        rate limits apply once the stream answers. The failed check has said why: a
        listing that fails too says nothing more."""
        self._failed = True
        self.refresh.set()
        self._start()

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._watch, name=f"kinesis-{self._name}-shards", daemon=True
            )
            self.thread.start()

    def notice(self, results: list[dict[str, Any]]) -> None:
        """A record stored on a shard the map does not know means the stream was
        resharded: have the watcher list the shards."""
        known = self._buf.map
        if known is None:
            return
        ids = known.ids
        for r in results:
            shard_id = r.get("ShardId")
            if shard_id is not None and shard_id not in ids:
                self.refresh.set()
                return

    def stale(self) -> None:
        """A write was refused for a closed shard: list the shards now."""
        self.refresh.set()

    def stop(self) -> None:
        self.closing.set()
        self.refresh.set()

    def _watch(self) -> None:
        """List the shards every ``shard_refresh_seconds``, or at once when asked to;
        apply a changed map."""
        while not self._buf.halted():
            self.refresh.wait(self.period)
            # at most one listing a second, however many writes hit unknown shards
            rest = self._listed + _MIN_REFRESH_SECONDS - time.monotonic()
            if self.closing.wait(max(rest, 0.0)) or self._buf.halted():
                return
            self.refresh.clear()
            self._listed = time.monotonic()
            shards = self._list()
            current = self._buf.map
            if shards and (current is None or current.ids != {s.shard_id for s in shards}):
                new = ShardMap(shards)
                self.apply(new)
                # said once applied: a reader of the log may rely on the new map
                self._log.info(
                    "the stream's shards changed: %d open shards now (%d before)",
                    len(new),
                    0 if current is None else len(current),
                )

    def _list(self) -> list[ShardRange] | None:
        """The open shards, or None (keeping the current map) if they cannot be listed."""
        try:
            shards = list_open_shards(self._client, self._stream)
        except Exception as exc:
            if not self._failed:
                self._log.warning(
                    "cannot list the shards to follow a resharding (%s); "
                    "keeping the current shard map",
                    self._explain(exc, "ListShards"),
                )
            self._failed = True
            return None
        self._failed = False
        return shards

    def apply(self, new: ShardMap) -> None:
        """Make lanes, queues and meters follow ``new``. The lanes pause until no request
        is out, then every queued record moves, in order, to its key's new shard: one
        key's records keep their order, and none is sent twice or lost."""
        cfg = self._config
        limits = ShardLimits(cfg.shard_limits.records_per_second, cfg.shard_limits.bytes_per_second)
        buf = self._buf
        with buf.lock:
            buf.pausing = True
            try:
                while any(lane.busy for lane in buf.lanes):
                    if buf.halted():
                        return
                    buf.idle.wait(0.2)
                meters = buf.meters()

                def meter(shard_id: str, now: float) -> ShardMeter | None:
                    if not cfg.rate_limit:
                        return None
                    return meters.get(shard_id) or ShardMeter(limits, now)

                buf.rebuild(new, meter)
            finally:
                buf.pausing = False
                for lane in buf.lanes:
                    lane.cond.notify()
