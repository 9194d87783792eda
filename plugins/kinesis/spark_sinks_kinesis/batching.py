"""When a lane sends, and what one PutRecords request takes from its shards' queues:
plain records, or (``aggregation: kpl``) KPL aggregates of the leading records of each
partition key.

Shared state: every function here that reads or changes queues runs in a lane's sender
thread holding ``Buffer.lock`` (said on each); ``encode`` runs without it, on records
already taken out of the queues. A ``Batching`` holds only settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import aggregation
from .config import KinesisConfig
from .queues import Aggregate, Buffer, Entry, Lane, Shard
from .rate import Sent

_AGG_SCAN_SKIPS = 5_000
"""While building aggregates, stop scanning a lane's queue after passing over this many
records of keys whose aggregate is already full (bounds the time the lock is held)."""


class Batching:
    """A lane's sending rules, from the sink's settings."""

    def __init__(self, config: KinesisConfig, lanes: int) -> None:
        self.config = config
        self.linger = config.linger_ms / 1000.0
        self.aggregate = config.aggregation == "kpl"
        self.send_bytes = config.max_batch_bytes
        """Queued bytes at which a lane sends at once."""
        if self.aggregate:
            # Aggregates make the record count irrelevant; send on bytes, but early enough
            # that all lanes together never wait for a buffer that cannot fill.
            self.send_bytes = min(
                config.max_batch_bytes, max(64 * 1024, config.max_buffered_bytes // (2 * lanes))
            )

    def wait_to_send(self, buf: Buffer, lane: Lane) -> list[Shard] | None:
        """Wait (holding the lock) until the lane should send; the shards to take records
        from, the first one first; None means exit.

        A lane sends once it holds ``max_batch_records`` or its send bytes, when a shard's
        oldest record has waited ``linger_ms``, or during a flush; then every shard whose
        meter lets it send joins the request."""
        while not buf.halted():
            now = time.monotonic()
            if buf.pausing or not lane.count:
                lane.cond.wait(0.5)
                continue
            if lane.retry_at > now:
                lane.cond.wait(min(lane.retry_at - now, 0.2))
                continue
            wait = self._due_in(buf, lane, now)
            if wait <= 0:
                ready = ready_shards(lane, now)
                if ready:
                    return ready
                wait = min(
                    sh.meter.wait_for(now, len(sh.queue), sh.bytes, sh.queue[0].size)
                    for sh in lane.shards
                    if sh.queue and sh.meter is not None
                )
            lane.cond.wait(min(max(wait, 0.001), 0.5))
        return None

    def _due_in(self, buf: Buffer, lane: Lane, now: float) -> float:
        """Seconds until the lane's records are due (0 when they are)."""
        if (
            (lane.count >= self.config.max_batch_records and not self.aggregate)
            or lane.bytes >= self.send_bytes
            or buf.flushing > 0
        ):
            return 0.0
        oldest = min(sh.queue[0].enqueued for sh in lane.shards if sh.queue)
        return max(self.linger - (now - oldest), 0.0)

    def take_records(self, lane: Lane, shards: list[Shard], limit: int) -> list[Entry]:
        """The leading queued records of ``shards``, up to ``limit``, ``max_batch_bytes``
        and what each shard's meter admits (holding the lock)."""
        max_bytes = self.config.max_batch_bytes
        batch: list[Entry] = []
        total = 0
        for sh in shards:
            q = sh.queue
            meter = sh.meter
            taken = 0
            count = 0
            while q and len(batch) < limit:
                size = q[0].size
                if batch and total + size > max_bytes:
                    break
                if meter is not None and not meter.admits(count + 1, taken + size):
                    break
                batch.append(q.popleft())
                total += size
                taken += size
                count += 1
            sh.bytes -= taken
            if meter is not None:
                _ticket(lane, sh, meter.spend(count, taken))
            if len(batch) >= limit or (q and total + q[0].size > max_bytes):
                break
        lane.bytes -= total
        lane.count -= len(batch)
        return batch

    def take_aggregates(self, lane: Lane, shards: list[Shard], limit: int) -> list[list[Entry]]:
        """Aggregation mode (holding the lock): for each key, in order of first appearance
        in its shard's queue, take its leading records that fit in one aggregate of at
        most ``max_record_bytes``; at most ``limit`` keys and ``max_batch_bytes`` per
        request, and what each shard's meter admits. What is not taken stays queued in
        its order, so each key's taken records are the oldest of that key."""
        picker = AggregatePicker(self.config.max_batch_bytes, limit)
        for sh in shards:
            cap = self.config.max_record_bytes
            if sh.meter is not None:
                # small aggregates keep the shard's pace even (one is one record, of its size)
                cap = min(cap, max(int(sh.meter.burst_bytes), 1024))
            _ticket(lane, sh, picker.take(sh, cap))
            if picker.full:
                break
        lane.bytes -= picker.taken_bytes
        lane.count -= picker.taken_records
        return list(picker.groups.values())


def ready_shards(lane: Lane, now: float) -> list[Shard]:
    """The lane's shards with records that their meters let go now, starting with
    the one whose turn it is (holding the lock)."""
    shards = lane.shards
    n = len(shards)
    ready = []
    for i in range(n):
        sh = shards[(lane.next + i) % n]
        if sh.queue and (
            sh.meter is None
            or sh.meter.wait_for(now, len(sh.queue), sh.bytes, sh.queue[0].size) <= 0
        ):
            ready.append(sh)
    if ready:
        lane.next = (lane.next + 1) % n
    return ready


def _ticket(lane: Lane, shard: Shard, sent: Sent | None) -> None:
    if sent is not None:
        lane.tickets[shard] = sent


def encode(groups: list[list[Entry]], pack: Callable[[bytes, int], bytes]) -> list[Aggregate]:
    """One Kinesis record per group: a KPL aggregate, or the plain record when the
    group has one record; ``pack`` (data, key bytes) compresses it as configured."""
    units: list[Aggregate] = []
    for members in groups:
        route = members[0].route
        if len(members) == 1:
            raw = members[0].data
        else:
            raw = aggregation.encode(route.key.encode("utf-8"), [m.data for m in members])
        data = pack(raw, route.key_bytes)
        units.append(Aggregate(members, data, route, len(data) + route.key_bytes))
    return units


@dataclass(slots=True, eq=False)
class _Scan:
    """``AggregatePicker.take``'s pass over one shard's queue."""

    shard: Shard
    cap: int
    """Bytes of one aggregate, data plus key."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Size of each key's aggregate (data plus key); absent once the key is full."""
    skipped: list[Entry] = field(default_factory=list)
    units: int = 0
    """This shard's aggregates in the request,"""
    spent: int = 0
    """and their bytes."""
    taken: int = 0
    """Bytes of the records taken, as counted in the queue."""
    count: int = 0
    """Records taken."""

    def take(self, entry: Entry, added: int) -> None:
        """Take the queue's first record, ``entry``, adding ``added`` bytes."""
        self.shard.queue.popleft()
        self.spent += added
        self.taken += entry.size
        self.count += 1

    def skip(self) -> None:
        """Pass over the queue's first record: it stays queued, in order."""
        self.skipped.append(self.shard.queue.popleft())


class AggregatePicker:
    """Picks one request's aggregates from shard queues (holding the sink's lock): for
    each key, in order of first appearance in its shard's queue, its leading records
    that fit in one aggregate."""

    def __init__(self, budget: int, limit: int) -> None:
        self.budget = budget
        """``max_batch_bytes``."""
        self.limit = limit
        """Aggregates (keys) in the request."""
        self.groups: dict[str, list[Entry]] = {}
        self.request = 0
        """Bytes of the request, counting every group as an aggregate."""
        self.taken_bytes = 0
        """Bytes of the records taken, as counted in the queues."""
        self.taken_records = 0
        self.full = False
        """The request can take nothing more."""

    def take(self, shard: Shard, cap: int) -> Sent | None:
        """Take from ``shard`` aggregates of at most ``cap`` bytes, as far as the request
        and the shard's meter allow; what is passed over stays queued in order. Returns
        what the meter logged."""
        scan = _Scan(shard, cap)
        q = shard.queue
        while q:
            e = q[0]
            size = scan.sizes.get(e.route.key)
            go_on = self._start(scan, e) if size is None else self._extend(scan, e, size)
            if not go_on:
                break
        if scan.skipped:
            q.extendleft(reversed(scan.skipped))
        shard.bytes -= scan.taken
        self.taken_bytes += scan.taken
        self.taken_records += scan.count
        if len(self.groups) >= self.limit:
            self.full = True
        meter = shard.meter
        return None if meter is None else meter.spend(scan.units, scan.spent)

    def _start(self, scan: _Scan, e: Entry) -> bool:
        """Start the aggregate of ``e``'s key, if it gets one; False ends the scan."""
        key = e.route.key
        groups = self.groups
        if key in groups or len(groups) >= self.limit:
            # this key's aggregate is full, or the request has no room for another
            scan.skip()
            return len(scan.skipped) <= _AGG_SCAN_SKIPS and (
                len(groups) < self.limit or bool(scan.sizes)
            )
        klen = e.route.key_bytes
        size = aggregation.overhead_bytes(klen) + klen + aggregation.entry_bytes(len(e.data))
        if groups and self.request + size > self.budget:
            self.full = True
            return False
        meter = scan.shard.meter
        if meter is not None and not meter.admits(scan.units + 1, scan.spent + size):
            return False
        scan.take(e, size)
        scan.units += 1
        groups[key] = [e]
        self.request += size
        if size < scan.cap:
            scan.sizes[key] = size
        # else: alone it is sent as a plain record (e.size <= max_record_bytes)
        return True

    def _extend(self, scan: _Scan, e: Entry, size: int) -> bool:
        """Add ``e`` to its key's aggregate of ``size`` bytes if it fits; False ends
        the scan."""
        key = e.route.key
        inc = aggregation.entry_bytes(len(e.data))
        if size + inc > scan.cap:
            del scan.sizes[key]
            scan.skip()
            # go on unless every aggregate of this request is full
            return len(self.groups) < self.limit or bool(scan.sizes)
        if self.request + inc > self.budget:
            self.full = True
            return False
        meter = scan.shard.meter
        if meter is not None and not meter.admits(scan.units, scan.spent + inc):
            return False
        scan.take(e, inc)
        self.groups[key].append(e)
        scan.sizes[key] = size + inc
        self.request += inc
        return True
