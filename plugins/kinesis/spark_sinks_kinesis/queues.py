"""The records the Kinesis sink holds and where each goes: partition key -> route ->
shard queue -> lane.

Shared state: everything in a ``Buffer`` (its lanes, their shards and queues, the
counters, the shard map) belongs to ``Buffer.lock``, with one exception named on
``Buffer.routes``. The write thread queues records, each lane's sender thread takes and
settles its own lanes' records, and the shard watcher moves queued records to a new map.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from spark_sinks import Envelope

from .keys import partition_key
from .rate import Sent, ShardMeter
from .shards import ShardMap, hash_key


@dataclass(slots=True, eq=False)
class Route:
    """Where the records of one partition key go; one per key, made by ``Buffer.route``
    and placed on a queue by ``Buffer.place`` (under the lock) when its first record is
    queued and when the shard map changes."""

    key: str
    key_bytes: int
    """Length of the key in UTF-8, as Kinesis counts it."""
    hash_key: int
    """The MD5 of the key, which picks its shard."""
    shard: Shard
    """Its queue (on its shard)."""


@dataclass(slots=True, eq=False)
class Entry:
    """A queued record."""

    envelope: Envelope
    data: bytes
    """The envelope's JSON: the Kinesis record data."""
    route: Route
    """Its partition key and where it goes."""
    size: int
    """Bytes of data and partition key, as Kinesis counts them (and ``max_buffered_bytes``)."""
    enqueued: float
    """Monotonic time ``write`` queued it (for ``linger_ms``)."""


@dataclass(slots=True, eq=False)
class Aggregate:
    """One Kinesis record built from the leading queued records of one key: a KPL
    aggregate, or the record itself when it is alone (``aggregation: kpl``)."""

    members: list[Entry]
    data: bytes
    route: Route
    size: int
    """Bytes of data and partition key of the Kinesis record."""


Unit = TypeVar("Unit", Entry, Aggregate)
"""What one PutRecords entry carries: a record, or an aggregate of records."""


class Refused(NamedTuple):
    """An entry a shard refused for throttling: its shard and size."""

    shard: Shard
    size: int


class Rejected(NamedTuple, Generic[Unit]):
    """A unit Kinesis can never accept, and why."""

    unit: Unit
    reason: str


@dataclass(slots=True, eq=False)
class Outcome(Generic[Unit]):
    """What became of the units of one request."""

    delivered: list[Unit] = field(default_factory=list)
    dead: list[Rejected[Unit]] = field(default_factory=list)
    requeue: list[Unit] = field(default_factory=list)
    slow: bool = False
    """The failure needs an operator (credentials, permissions, missing stream)."""
    split: bool = False
    """The request was invalid as a whole: resend in halves, without backoff."""
    throttled: list[Refused] = field(default_factory=list)
    """Each entry refused with ProvisionedThroughputExceededException."""
    throttled_only: bool = False
    """Every failure was a shard's throttling: the shards' meters pace the retry."""


class Shard:
    """A queue of one shard in its lane: the records of the keys placed on it, in the
    order written, and the shard's meter (None without rate limiting; shared by the
    shard's queues). Without a shard map, a lane has one such queue."""

    __slots__ = ("bytes", "keys", "lane", "meter", "queue", "shard_id", "version")

    def __init__(
        self, shard_id: str | None, lane: Lane, meter: ShardMeter | None, version: int = 0
    ) -> None:
        self.shard_id = shard_id
        self.version = version
        """The shard map it belongs to (``Buffer.version``)."""
        self.lane = lane
        self.meter = meter
        self.queue: deque[Entry] = deque()
        self.bytes = 0
        self.keys = 0
        """Routes placed on this queue (``Buffer.place``)."""

    def add(self, entry: Entry) -> None:
        """Queue ``entry`` last, counting it in the shard and its lane."""
        self.queue.append(entry)
        self.bytes += entry.size
        self.lane.bytes += entry.size
        self.lane.count += 1


class Lane:
    """One sender thread, the shards it writes, and its backoff."""

    __slots__ = (
        "attempt",
        "busy",
        "bytes",
        "cond",
        "count",
        "index",
        "next",
        "retry_at",
        "shards",
        "split",
        "thread",
        "tickets",
    )

    def __init__(self, index: int, lock: threading.Lock) -> None:
        self.index = index
        self.shards: list[Shard] = [Shard(None, self, None)]
        self.next = 0
        """The shard served first in the next request (they take turns)."""
        self.count = 0
        """Records queued in the lane's shards."""
        self.bytes = 0
        self.busy = False
        """A request of this lane is out, or its outcome not yet settled."""
        self.tickets: dict[Shard, Sent] = {}
        """What the request out carries to each metered shard, as its meter logged it."""
        self.cond = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.attempt = 0
        """Consecutive failed requests; drives the backoff."""
        self.retry_at = 0.0
        """Monotonic time before which this lane sends nothing (backoff)."""
        self.split: int | None = None
        """Batch size limit while isolating a record that makes whole requests invalid."""

    def requeue(self, entries: list[Entry]) -> None:
        """Put failed records back at the front of their shards' queues, in order."""
        by_shard: dict[Shard, list[Entry]] = {}
        for e in entries:
            by_shard.setdefault(e.route.shard, []).append(e)
        for shard, mine in by_shard.items():
            shard.queue.extendleft(reversed(mine))
            size = sum([e.size for e in mine])
            shard.bytes += size
            self.bytes += size
            self.count += len(mine)


class Buffer:
    """The lanes and their queues, what they hold, and the shard map they follow."""

    def __init__(
        self, lanes: int, limit: int, stopping: threading.Event, per_shard: int = 1
    ) -> None:
        self.limit = limit
        """``max_buffered_bytes``."""
        self.per_shard = per_shard
        """Queues of each shard, each in another lane where there are lanes enough: as
        many requests may be out to one shard at once (``max_in_flight_per_shard``)."""
        self.lock = threading.Lock()
        self.not_full = threading.Condition(self.lock)
        """Notified when records are settled and free space."""
        self.idle = threading.Condition(self.lock)
        """Notified when a request is settled (flush and resharding wait on it)."""
        self.lanes = [Lane(i, self.lock) for i in range(lanes)]
        self.pending = 0
        """Records held: queued, or in a request whose answer has not been handled yet."""
        self.bytes = 0
        """Bytes (data + partition keys) of the records held."""
        self.flushing = 0
        """Flushes waiting: lanes send what they hold at once."""
        self.abort = False
        self.pausing = False
        """A new shard map is being applied: lanes take nothing new meanwhile."""
        self.routes: dict[tuple[str, str | None], Route] = {}
        """Added to by ``route`` (the write thread) without the lock; its routes'
        shards are changed under the lock."""
        self.version = 0
        """Bumped with every new shard map."""
        self.map: ShardMap | None = None
        """The open shards the lanes follow; None when ListShards is not allowed."""
        self.queues: list[list[Shard]] = [lane.shards for lane in self.lanes]
        """Each shard's queues, by its index in the map (without a map: each lane's
        one queue)."""
        self._unplaced = Shard(None, self.lanes[0], None, version=-1)
        """Where a new route points until ``add`` places it (its version never matches)."""
        self._stopping = stopping

    def halted(self) -> bool:
        return self.abort or self._stopping.is_set()

    def route(self, host: str, machine: str | None) -> Route:
        """The route of a machine's records, made on first use (write thread)."""
        route = self.routes.get((host, machine))
        if route is None:
            key = partition_key(host, machine)
            key_hash = hash_key(key)
            route = Route(key, len(key.encode("utf-8")), key_hash, self._unplaced)
            self.routes[(host, machine)] = route
        return route

    def place(self, route: Route) -> Shard:
        """(Holding the lock.) Put a key on a queue, where it stays until the shard map
        changes. Kinesis maps the MD5 of the key onto the shards' hash ranges (without a
        map, the key picks a lane); of the shard's queues, the key goes to the one with
        the fewest keys, so that the requests out to one shard share its keys evenly."""
        key_hash = route.hash_key
        lanes = self.lanes
        index = (key_hash >> 96) % len(lanes) if self.map is None else self.map.index(key_hash)
        queue = min(self.queues[index], key=lambda q: q.keys)
        queue.keys += 1
        route.shard = queue
        return queue

    def add(self, entry: Entry) -> Lane:
        """(Holding the lock.) Queue ``entry`` on its key's shard; returns its lane."""
        shard = entry.route.shard
        if shard.version != self.version:  # a new key, or routed while the map changed
            shard = self.place(entry.route)
        shard.add(entry)
        self.bytes += entry.size
        self.pending += 1
        return shard.lane

    def wait_for_room(self, size: int, touched: set[Lane], stop: Callable[[], bool]) -> None:
        """(Holding the lock.) Backpressure: wait until ``size`` more bytes fit. Nothing
        is dropped; once ``stop`` says the run is ending, the last batch goes over the
        bound (by one batch at most), so that the flush deadline, not an endless wait,
        bounds the shutdown."""
        if not self.bytes or self.bytes + size <= self.limit:
            return
        for lane in touched:
            lane.cond.notify()
        while self.bytes + size > self.limit and self.bytes and not stop():
            self.not_full.wait(0.2)

    def rebuild(self, new: ShardMap, meter: Callable[[str, float], ShardMeter | None]) -> None:
        """(Holding the lock, no request out.) New queues following ``new``, ``per_shard``
        of each shard, spread over the lanes; every queued record moves, in order, to its
        key's new queue. ``meter`` gives a shard's meter, shared by its queues (a shard
        that stays keeps its own)."""
        now = time.monotonic()
        self.version += 1
        lanes = self.lanes
        per = self.per_shard
        old = [sh for lane in lanes for sh in lane.shards]
        self.queues = []
        for i, rng in enumerate(new.shards):
            shared = meter(rng.shard_id, now)
            self.queues.append(
                [
                    Shard(rng.shard_id, lanes[(i * per + j) % len(lanes)], shared, self.version)
                    for j in range(per)
                ]
            )
        for lane in lanes:
            lane.shards = [sh for queues in self.queues for sh in queues if sh.lane is lane]
            lane.next = lane.bytes = lane.count = 0
        self.map = new
        for route in list(self.routes.values()):  # write may add one meanwhile
            self.place(route)
        for sh in old:
            for e in sh.queue:
                e.route.shard.add(e)

    def meters(self) -> dict[str | None, ShardMeter]:
        """(Holding the lock.) The meter of each current shard that has one."""
        return {sh.shard_id: sh.meter for lane in self.lanes for sh in lane.shards if sh.meter}
