"""The ``kinesis`` sink: batched PutRecords that lose nothing the stream can accept.

Data flow::

    write() --(partition key -> shard -> lane)--> shard queue --lane thread--> PutRecords
       ^  blocks while max_buffered_bytes are held                  |
       +------------------- space freed <---- delivered / dead-lettered

* Each partition key (host/machine) maps to a shard, as Kinesis maps it (the MD5 of the
  key on the hash key ranges from ListShards, ``shards.py``), and each shard to one
  *lane*: a lane has one sender thread and at most one PutRecords request in flight, so
  the records of one machine leave in the order they were written. ``max_in_flight``
  lanes run at once; no two write to the same shard.
* Each shard has its queue in its lane and, with ``rate_limit``, a meter (``rate.py``):
  a request takes from each shard only what the shard's per-second limits allow.
* When the stream's shards change (listed every ``shard_refresh_seconds``, or at once
  when a record lands on a shard the map does not know), the lanes pause until no
  request is out, and every queued record moves, in order, to its key's new shard.
* A lane sends a batch when it holds ``max_batch_records`` records or
  ``max_batch_bytes`` bytes, when a shard's oldest record has waited ``linger_ms``, or
  at once during a flush.
* Only failed entries are retried: they go back to the *front* of their shard's queue
  and lead the next request, after a backoff with full jitter (for throttled entries of
  a metered shard: after the shard's meter lets it send again). Only records accepted
  in a request where a record failed can overtake it (those behind it in that request).
* Records Kinesis can never accept go to the dead letter, with the reason.
* With ``aggregation: kpl`` a request carries KPL aggregates instead: each holds the
  leading queued records of one partition key, and a request holds at most one aggregate
  per key. An aggregate is delivered or retried as a unit, so a failed aggregate is sent
  again before anything later of its key: one machine's records keep their order even
  under throttling (see ``aggregation.py`` and the README).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from spark_sinks import CONNECTION_TEST, Envelope, Sink, SinkError, timefmt

from . import aggregation, compression, wire
from .config import KinesisConfig
from .keys import partition_key
from .rate import Sent, ShardLimits, ShardMeter
from .shards import ShardMap, hash_key, list_open_shards

log = logging.getLogger(__name__)

ACTIVE_STATES = ("ACTIVE", "UPDATING")

THROTTLED = "ProvisionedThroughputExceededException"
RETRYABLE_ENTRY_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
)
"""Per-entry codes that mean "busy, try again": retried with the usual backoff."""
INVALID_CODES = frozenset({"ValidationException", "InvalidArgumentException"})
"""Codes that mean the record itself is unacceptable: dead-lettered, never retried.
Any other per-entry code (e.g. KMS access problems) is retried slowly, since an
operator can fix it."""
THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "InvalidAccessKeyId",
    }
)
ACCESS_CODES = frozenset({"AccessDeniedException", "AccessDenied", "KMSAccessDeniedException"})
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
_LOG_EVERY = 10.0
_MIN_REFRESH_SECONDS = 1.0
_AGG_SCAN_SKIPS = 5_000
"""While building aggregates, stop scanning a lane's queue after passing over this many
records of keys whose aggregate is already full (bounds the time the lock is held)."""
_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


@dataclass(slots=True, eq=False)
class Route:
    """Where the records of one partition key go; one per key, made by ``_route`` and
    moved to the new shard by ``_apply_shard_map`` (under the sink's lock)."""

    key: str
    key_bytes: int
    """Length of the key in UTF-8, as Kinesis counts it."""
    hash_key: int
    """The MD5 of the key, which picks its shard."""
    shard: _Shard


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

    shard: _Shard
    size: int


class Rejected(NamedTuple, Generic[Unit]):
    """A unit Kinesis can never accept, and why."""

    unit: Unit
    reason: str


def error_code(exc: Any) -> tuple[str, str, int | None]:
    """``(code, message, http status)`` of a botocore ``ClientError``.

    Some emulators answer a JSON API with an XML error body (moto does for bad
    credentials); botocore then reports the HTTP status as the code. Recover the real one.
    """
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    msg = str(err.get("Message", "")).strip()
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if msg.startswith("<"):
        m = _XML_CODE.search(msg)
        if m:
            code = m.group(1)
        m = _XML_MESSAGE.search(msg)
        msg = m.group(1).strip() if m else ""
    return code, msg, status if isinstance(status, int) else None


class _Shard:
    """One shard's records in its lane, in the order written, and the shard's meter
    (None without rate limiting). Without a shard map, a lane has one such queue."""

    __slots__ = ("bytes", "lane", "meter", "queue", "shard_id", "version")

    def __init__(
        self, shard_id: str | None, lane: _Lane, meter: ShardMeter | None, version: int = 0
    ) -> None:
        self.shard_id = shard_id
        self.version = version
        """The shard map it belongs to (``KinesisSink._version``)."""
        self.lane = lane
        self.meter = meter
        self.queue: deque[Entry] = deque()
        self.bytes = 0


class _Lane:
    """One sender thread, the shards it writes, and its backoff. Everything here belongs
    to the sink's lock."""

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
        self.shards: list[_Shard] = [_Shard(None, self, None)]
        self.next = 0
        """The shard served first in the next request (they take turns)."""
        self.count = 0
        """Records queued in the lane's shards."""
        self.bytes = 0
        self.busy = False
        """A request of this lane is out, or its outcome not yet settled."""
        self.tickets: dict[_Shard, Sent] = {}
        """What the request out carries to each metered shard, as its meter logged it."""
        self.cond = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.attempt = 0
        """Consecutive failed requests; drives the backoff."""
        self.retry_at = 0.0
        """Monotonic time before which this lane sends nothing (backoff)."""
        self.split: int | None = None
        """Batch size limit while isolating a record that makes whole requests invalid."""


@dataclass(slots=True, eq=False)
class _Outcome(Generic[Unit]):
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


class _AggregatePicker:
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

    def take(self, shard: _Shard, cap: int) -> Sent | None:
        """Take from ``shard`` aggregates of at most ``cap`` bytes, as far as the request
        and the shard's meter allow; what is passed over stays queued in order. Returns
        what the meter logged."""
        q = shard.queue
        meter = shard.meter
        entry_bytes = aggregation.entry_bytes
        groups = self.groups
        sizes: dict[str, int] = {}
        """Size of each key's aggregate (data plus key); absent once the key is full."""
        skipped: list[Entry] = []
        units = 0  # this shard's aggregates in the request
        spent = 0  # and their bytes
        taken = 0
        count = 0
        while q:
            e = q[0]
            key = e.route.key
            size = sizes.get(key)
            if size is None:
                if key in groups or len(groups) >= self.limit:
                    # this key's aggregate is full, or the request has no room for another
                    skipped.append(q.popleft())
                    if len(skipped) > _AGG_SCAN_SKIPS or (len(groups) >= self.limit and not sizes):
                        break
                    continue
                klen = e.route.key_bytes
                size = aggregation.overhead_bytes(klen) + klen + entry_bytes(len(e.data))
                if groups and self.request + size > self.budget:
                    self.full = True
                    break
                if meter is not None and not meter.admits(units + 1, spent + size):
                    break
                q.popleft()
                groups[key] = [e]
                units += 1
                spent += size
                taken += e.size
                count += 1
                self.request += size
                if size < cap:
                    sizes[key] = size
                # else: alone it is sent as a plain record (e.size <= max_record_bytes)
                continue
            inc = entry_bytes(len(e.data))
            if size + inc > cap:
                del sizes[key]
                skipped.append(q.popleft())
                if len(groups) >= self.limit and not sizes:
                    break  # every aggregate of this request is full
                continue
            if self.request + inc > self.budget:
                self.full = True
                break
            if meter is not None and not meter.admits(units, spent + inc):
                break
            q.popleft()
            groups[key].append(e)
            sizes[key] = size + inc
            spent += inc
            taken += e.size
            count += 1
            self.request += inc
        if skipped:
            q.extendleft(reversed(skipped))
        shard.bytes -= taken
        self.taken_bytes += taken
        self.taken_records += count
        if len(groups) >= self.limit:
            self.full = True
        return None if meter is None else meter.spend(units, spent)


class KinesisSink(Sink):
    type_name = "kinesis"
    Config = KinesisConfig
    buffered = True

    config: KinesisConfig

    def __init__(self, config: KinesisConfig, context: Any) -> None:
        super().__init__(config, context)
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._lanes = [_Lane(i, self._lock) for i in range(config.max_in_flight)]
        self._pending = 0
        """Records held: queued, or in a request whose answer has not been handled yet."""
        self._buffered = 0
        """Bytes (data + partition keys) of the records held."""
        self._flushing = 0
        self._abort = False
        self._routes: dict[tuple[str, str | None], Route] = {}
        """Added to by ``write`` (one caller at a time) without the lock; its routes'
        shards are changed under the lock."""
        self._version = 0
        """Bumped with every new shard map (under the lock)."""
        self._map: ShardMap | None = None
        """The open shards the lanes follow; None when ListShards is not allowed."""
        self._pausing = False
        """A new shard map is being applied: lanes take nothing new meanwhile."""
        self._refresh = threading.Event()
        """Set to have the shard watcher list the shards now."""
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._client: Any = None
        self._endpoint = config.endpoint_url
        self._stream = config.stream
        """``StreamName`` or ``StreamARN``: how every call names the stream."""
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._aggregate = config.aggregation == "kpl"
        self._compress = compression.compressor(config.compression)
        self._compress_each = self._compress is not None and not self._aggregate
        """Compress each record as it is queued; with aggregation, aggregates are
        compressed as they are sent instead."""
        self._send_bytes = config.max_batch_bytes
        """Queued bytes at which a lane sends at once."""
        if self._aggregate:
            # Aggregates make the record count irrelevant; send on bytes, but early enough
            # that all lanes together never wait for a buffer that cannot fill.
            self._send_bytes = min(
                config.max_batch_bytes,
                max(64 * 1024, config.max_buffered_bytes // (2 * len(self._lanes))),
            )

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        from . import access  # loads botocore: only when a Kinesis sink really starts

        cfg = self.config
        self._client = access.kinesis_client(
            cfg,
            # The sender owns retrying ("until shutdown"): botocore makes one attempt.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=cfg.max_in_flight + 2,
            parameter_validation=False,  # entries are built here, always well-formed
        )
        wire.install(self._client)
        self._endpoint = self._client.meta.endpoint_url
        for lane in self._lanes:
            lane.thread = threading.Thread(
                target=self._run_lane, args=(lane,), name=f"kinesis-{self.name}-{lane.index}"
            )
            lane.thread.daemon = True
            lane.thread.start()

    def check(self) -> str:
        cfg = self.config
        try:
            summary = self._client.describe_stream_summary(**self._stream)[
                "StreamDescriptionSummary"
            ]
        except Exception as exc:
            raise SinkError(self._explain(exc, "DescribeStreamSummary")) from None
        status = summary.get("StreamStatus")
        if status not in ACTIVE_STATES:
            raise SinkError(
                f"Kinesis stream {cfg.stream_name!r} in {cfg.region} is {status}, "
                "not ACTIVE or UPDATING"
            )
        shards = summary.get("OpenShardCount")
        text = f"stream {cfg.stream_name!r} in {cfg.region} is {status} ({shards} open shards)"
        self._load_shard_map()
        if not cfg.connection_test:
            self.log.info("%s; %d lanes", text, len(self._lanes))
            return text
        host = self.context.host
        test = Envelope(
            CONNECTION_TEST,
            host,
            {
                "time": timefmt.now(),
                "sink": self.name,
                "stream": cfg.stream_name,
                "message": "spark-sinks connection test",
            },
        )
        shard = self._put_connection_test(test)
        text = f"{text}; connection test record written to {shard}"
        self.log.info("%s; %d lanes", text, len(self._lanes))
        return text

    def _put_connection_test(self, test: Envelope) -> str:
        """PutRecords of the one test record: the call, and the permission, used to send.
        Throttling and transient failures are retried a few times; anything else fails."""
        from botocore.exceptions import ClientError

        key = partition_key(test.host, None)
        data = self._pack_unit(test.to_json(), len(key.encode("utf-8")))
        delay = 0.1
        for attempt in range(5):
            try:
                resp = self._client.put_records(
                    **self._stream,
                    Records=[{"Data": data, "PartitionKey": key}],
                )
            except ClientError as exc:
                code, _, status = error_code(exc)
                transient = code in THROTTLE_CODES or code == "InternalFailure"
                if attempt == 4 or not (transient or (status is not None and status >= 500)):
                    raise SinkError(self._explain(exc, "PutRecords (connection test)")) from None
            except Exception as exc:
                if attempt == 4:
                    raise SinkError(self._explain(exc, "PutRecords (connection test)")) from None
            else:
                entry = (resp.get("Records") or [{}])[0]
                code = entry.get("ErrorCode")
                if not code:
                    return str(entry.get("ShardId"))
                if code not in RETRYABLE_ENTRY_CODES or attempt == 4:
                    raise SinkError(
                        f"the connection test record was refused by Kinesis stream "
                        f"{self.config.stream_name!r}: {code}: {entry.get('ErrorMessage')}"
                    )
            if self.context.stopping.wait(random.uniform(0, delay)):
                break
            delay *= 2
        raise SinkError("stopped during the connection test")

    def write(self, envelopes: Sequence[Envelope]) -> None:
        cfg = self.config
        max_record = cfg.max_record_bytes
        bound = cfg.max_buffered_bytes
        routes = self._routes
        now = time.monotonic()
        entries: list[Entry] = []
        for env in envelopes:
            data = env.to_json()
            route = routes.get((env.host, env.machine))
            if route is None:
                route = self._route(env.host, env.machine)
            if self._compress_each:
                packed = self._packed(env, data, route.key_bytes)
                if packed is None:
                    continue
                data = packed
            size = len(data) + route.key_bytes
            if size > max_record and not self._fits_compressed(env, data, route.key_bytes):
                continue
            entries.append(Entry(env, data, route, size, now))
        if not entries:
            return
        stopping = self.context.stopping
        shutdown = self.context.shutdown
        touched: set[_Lane] = set()
        with self._lock:
            for e in entries:
                size = e.size
                shard = e.route.shard
                if shard.version != self._version:  # routed while the map changed
                    shard = e.route.shard = self._shard_at(self._map_index(e.route.hash_key))
                lane = shard.lane
                if self._buffered + size > bound and self._buffered:
                    for t in touched:
                        t.cond.notify()
                    # Backpressure: wait for the senders. Nothing is dropped; once the run is
                    # ending the last batch goes over the bound (by one batch at most), so
                    # that the flush deadline, not an endless wait, bounds the shutdown.
                    while self._buffered + size > bound and self._buffered:
                        if stopping.is_set() or shutdown.is_set():
                            break
                        self._not_full.wait(0.2)
                shard.queue.append(e)
                shard.bytes += size
                lane.bytes += size
                lane.count += 1
                self._buffered += size
                self._pending += 1
                touched.add(lane)
            for t in touched:
                t.cond.notify()

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        stopping = self.context.stopping
        with self._lock:
            self._flushing += 1
            try:
                for lane in self._lanes:
                    lane.cond.notify()
                while self._pending and not self._abort and not stopping.is_set():
                    wait = 0.2
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        wait = min(wait, remaining)
                    self._idle.wait(wait)
            finally:
                self._flushing -= 1
            left, held = self._pending, self._buffered
        if left:
            why = "the operator insisted on stopping" if stopping.is_set() else "flush deadline"
            self.log.warning(
                "%s: %d records (%d bytes) not yet accepted by stream %r",
                why,
                left,
                held,
                self.config.stream_name,
            )

    def close(self) -> None:
        self._closing.set()
        self._refresh.set()
        with self._lock:
            self._abort = True
            left = self._pending
            for lane in self._lanes:
                lane.cond.notify_all()
            self._not_full.notify_all()
        deadline = time.monotonic() + 2.0
        threads = [lane.thread for lane in self._lanes] + [self._watcher]
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if left:
            self.log.error(
                "closed with %d records not delivered to stream %r", left, self.config.stream_name
            )

    # -- compression --------------------------------------------------------------------

    def _packed(self, env: Envelope, data: bytes, key_bytes: int) -> bytes | None:
        """Without aggregation: the record's data as sent (compressed), or None after
        dead-lettering a record that cannot fit."""
        assert self._compress is not None
        packed = compression.pack(self._compress, data, self.config.max_record_bytes - key_bytes)
        if packed is None:
            self._too_large(env, data, key_bytes)
        return packed

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
        self.context.dead_letter(env, reason)

    def _pack_unit(self, data: bytes, key_bytes: int) -> bytes:
        """The data as sent of a record compressed when it is sent: an aggregate, a lone
        record with aggregation, the connection test. Only what fits is queued, so
        ``pack`` returns bytes here."""
        if self._compress is None:
            return data
        packed = compression.pack(self._compress, data, self.config.max_record_bytes - key_bytes)
        return data if packed is None else packed

    # -- sending ------------------------------------------------------------------------

    def _load_shard_map(self) -> None:
        """Learn the open shards' hash ranges: each shard is then written by one lane
        only (concurrent requests never touch the same shard) and metered. Then watch
        for changes."""
        try:
            shards = list_open_shards(self._client, self._stream)
        except Exception as exc:
            self.log.warning(
                "cannot list the shards (%s); lanes are chosen by partition key instead, "
                "and no shard rate limits are applied",
                self._explain(exc, "ListShards"),
            )
            return
        if shards:
            self._apply_shard_map(ShardMap(shards))
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch_shards, name=f"kinesis-{self.name}-shards", daemon=True
            )
            self._watcher.start()

    def _watch_shards(self) -> None:
        """List the shards every ``shard_refresh_seconds``, or at once when a write landed
        on a shard the map does not know; apply a changed map."""
        period = self.config.shard_refresh_seconds
        failed = False
        while not self._halted():
            self._refresh.wait(period)
            # at most one listing a second, however many writes hit unknown shards
            if self._closing.wait(_MIN_REFRESH_SECONDS) or self._halted():
                return
            self._refresh.clear()
            try:
                shards = list_open_shards(self._client, self._stream)
            except Exception as exc:
                if not failed:  # keep the current map; say so once per failure spell
                    self.log.warning(
                        "cannot list the shards to follow a resharding (%s); "
                        "keeping the current shard map",
                        self._explain(exc, "ListShards"),
                    )
                failed = True
                continue
            failed = False
            current = self._map
            if shards and (current is None or current.ids != {s.shard_id for s in shards}):
                new = ShardMap(shards)
                self.log.info(
                    "the stream's shards changed: %d open shards now (%d before)",
                    len(new),
                    0 if current is None else len(current),
                )
                self._apply_shard_map(new)

    def _apply_shard_map(self, new: ShardMap) -> None:
        """Make lanes, queues and meters follow ``new``. The lanes pause until no request
        is out, then every queued record moves, in order, to its key's new shard: one
        key's records keep their order, and none is sent twice or lost."""
        cfg = self.config
        limits = ShardLimits(cfg.shard_limits.records_per_second, cfg.shard_limits.bytes_per_second)
        with self._lock:
            self._pausing = True
            try:
                while any(lane.busy for lane in self._lanes):
                    if self._halted():
                        return
                    self._idle.wait(0.2)
                self._rebuild_shards(new, limits)
            finally:
                self._pausing = False
                for lane in self._lanes:
                    lane.cond.notify()

    def _rebuild_shards(self, new: ShardMap, limits: ShardLimits) -> None:
        """(Holding the lock, no request out.) New per-shard queues; a shard that stays
        keeps its meter."""
        now = time.monotonic()
        self._version += 1
        meters = {sh.shard_id: sh.meter for lane in self._lanes for sh in lane.shards if sh.meter}
        lanes = self._lanes
        old = [sh for lane in lanes for sh in lane.shards]
        shards: list[_Shard] = []
        for i, rng in enumerate(new.shards):
            lane = lanes[i % len(lanes)]
            meter = None
            if self.config.rate_limit:
                meter = meters.get(rng.shard_id) or ShardMeter(limits, now)
            shards.append(_Shard(rng.shard_id, lane, meter, self._version))
        for lane in lanes:
            lane.shards = [sh for sh in shards if sh.lane is lane]
            lane.next = 0
            lane.bytes = 0
            lane.count = 0
        self._map = new
        for route in list(self._routes.values()):  # write may add one meanwhile
            route.shard = shards[new.index(route.hash_key)]
        for sh in old:
            for e in sh.queue:
                target = e.route.shard
                target.queue.append(e)
                target.bytes += e.size
                target.lane.bytes += e.size
                target.lane.count += 1

    def _route(self, host: str, machine: str | None) -> Route:
        key = partition_key(host, machine)
        raw = key.encode("utf-8")
        key_hash = hash_key(key)
        route = Route(key, len(raw), key_hash, self._shard_at(self._map_index(key_hash)))
        self._routes[(host, machine)] = route
        return route

    def _map_index(self, key_hash: int) -> int:
        """Kinesis maps the MD5 of the key onto the shards' hash ranges; without a map,
        the key picks a lane."""
        if self._map is None:
            return (key_hash >> 96) % len(self._lanes)
        return self._map.index(key_hash)

    def _shard_at(self, index: int) -> _Shard:
        lane = self._lanes[index % len(self._lanes)]
        return lane.shards[index // len(self._lanes)]

    def _halted(self) -> bool:
        return self._abort or self.context.stopping.is_set()

    def _wait_to_send(self, lane: _Lane) -> list[_Shard] | None:
        """Wait (holding the lock) until the lane should send; the shards to take records
        from, the first one first; None means exit.

        A lane sends once it holds ``max_batch_records`` or its send bytes, when a shard's
        oldest record has waited ``linger_ms``, or during a flush; then every shard whose
        meter lets it send joins the request."""
        linger = self.config.linger_ms / 1000.0
        max_records = self.config.max_batch_records
        while True:
            if self._halted():
                return None
            now = time.monotonic()
            if self._pausing or not lane.count:
                lane.cond.wait(0.5)
                continue
            if lane.retry_at > now:
                lane.cond.wait(min(lane.retry_at - now, 0.2))
                continue
            due = (
                (lane.count >= max_records and not self._aggregate)
                or lane.bytes >= self._send_bytes
                or self._flushing > 0
            )
            wait = 0.5
            if not due:
                oldest = min(sh.queue[0].enqueued for sh in lane.shards if sh.queue)
                due = now - oldest >= linger
                wait = linger - (now - oldest)
            if due:
                ready = self._ready_shards(lane, now)
                if ready:
                    return ready
                wait = min(
                    sh.meter.wait_for(now, len(sh.queue), sh.bytes, sh.queue[0].size)
                    for sh in lane.shards
                    if sh.queue and sh.meter is not None
                )
            lane.cond.wait(min(max(wait, 0.001), 0.5))

    @staticmethod
    def _ready_shards(lane: _Lane, now: float) -> list[_Shard]:
        """The lane's shards with records that their meters let go now, starting with
        the one whose turn it is."""
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

    def _take_records(self, lane: _Lane, shards: list[_Shard], limit: int) -> list[Entry]:
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
                self._ticket(lane, sh, meter.spend(count, taken))
            if len(batch) >= limit or (q and total + q[0].size > max_bytes):
                break
        lane.bytes -= total
        lane.count -= len(batch)
        return batch

    def _take_aggregates(self, lane: _Lane, shards: list[_Shard], limit: int) -> list[list[Entry]]:
        """Aggregation mode (holding the lock): for each key, in order of first appearance
        in its shard's queue, take its leading records that fit in one aggregate of at
        most ``max_record_bytes``; at most ``limit`` keys and ``max_batch_bytes`` per
        request, and what each shard's meter admits. What is not taken stays queued in
        its order, so each key's taken records are the oldest of that key."""
        picker = _AggregatePicker(self.config.max_batch_bytes, limit)
        for sh in shards:
            cap = self.config.max_record_bytes
            if sh.meter is not None:
                # small aggregates keep the shard's pace even (one is one record, of its size)
                cap = min(cap, max(int(sh.meter.burst_bytes), 1024))
            self._ticket(lane, sh, picker.take(sh, cap))
            if picker.full:
                break
        lane.bytes -= picker.taken_bytes
        lane.count -= picker.taken_records
        return list(picker.groups.values())

    @staticmethod
    def _ticket(lane: _Lane, shard: _Shard, sent: Sent | None) -> None:
        if sent is not None:
            lane.tickets[shard] = sent

    def _encode(self, groups: list[list[Entry]]) -> list[Aggregate]:
        """One Kinesis record per group: a KPL aggregate, or the plain record when the
        group has one record; compressed with ``compression``."""
        units: list[Aggregate] = []
        for members in groups:
            route = members[0].route
            if len(members) == 1:
                raw = members[0].data
            else:
                raw = aggregation.encode(route.key.encode("utf-8"), [m.data for m in members])
            data = self._pack_unit(raw, route.key_bytes)
            units.append(Aggregate(members, data, route, len(data) + route.key_bytes))
        return units

    @staticmethod
    def _expand(out: _Outcome[Aggregate]) -> _Outcome[Entry]:
        """The outcome over aggregates as one over their records."""
        return _Outcome(
            delivered=[m for unit in out.delivered for m in unit.members],
            dead=[Rejected(m, r.reason) for r in out.dead for m in r.unit.members],
            requeue=[m for unit in out.requeue for m in unit.members],
            slow=out.slow,
            split=out.split,
            throttled=out.throttled,
            throttled_only=out.throttled_only,
        )

    def _run_lane(self, lane: _Lane) -> None:
        max_records = self.config.max_batch_records
        while True:
            with self._lock:
                shards = self._wait_to_send(lane)
                if shards is None:
                    return
                limit = max_records if lane.split is None else lane.split
                if self._aggregate:
                    groups = self._take_aggregates(lane, shards, limit)
                else:
                    batch = self._take_records(lane, shards, limit)
                lane.busy = True
            if self._aggregate:
                outcome = self._send_aggregates(lane, groups)
            else:
                outcome = self._send_guarded(lane, batch)
            self._settle(lane, outcome)

    def _send_aggregates(self, lane: _Lane, groups: list[list[Entry]]) -> _Outcome[Entry]:
        try:
            units = self._encode(groups)
        except Exception as exc:  # a bug must not lose records: keep them, retry slowly
            self._unexpected(exc)
            return _Outcome(requeue=[m for g in groups for m in g], slow=True)
        return self._expand(self._send_guarded(lane, units))

    def _send_guarded(self, lane: _Lane, units: list[Unit]) -> _Outcome[Unit]:
        try:
            return self._send(lane, units)
        except Exception as exc:  # a bug must not lose records: keep them, retry slowly
            self._unexpected(exc)
            return _Outcome(requeue=units, slow=True)

    def _unexpected(self, exc: Exception) -> None:
        log.exception("unexpected error in the Kinesis sender")
        self.stats.error(f"unexpected error in the sender: {type(exc).__name__}: {exc}")

    def _send(self, lane: _Lane, batch: list[Unit]) -> _Outcome[Unit]:
        from botocore.exceptions import ClientError

        out: _Outcome[Unit] = _Outcome()
        try:
            resp = self._client.put_records(
                **self._stream,
                Records=[{"Data": u.data, "PartitionKey": u.route.key} for u in batch],
            )
        except ClientError as exc:
            code, msg, status = error_code(exc)
            if code in INVALID_CODES and not (status and status >= 500):
                if len(batch) == 1:
                    reason = f"rejected by Kinesis: {code}: {msg}".rstrip(": ")
                    out.dead.append(Rejected(batch[0], reason))
                    return out
                # Some record makes the whole request invalid: halve until it stands alone.
                lane.split = max(1, len(batch) // 2)
                out.split = True
                out.requeue = batch
                self._note("split", f"PutRecords rejected a batch ({code}); isolating the record")
                return out
            out.requeue = batch
            out.slow = not (
                code in THROTTLE_CODES
                or code in ("InternalFailure", "ServiceUnavailable", "InternalServerError")
                or (status is not None and status >= 500)
            )
            self._note(code or "error", self._explain(exc, "PutRecords"), slow=out.slow)
            return out
        except Exception as exc:  # connection errors, timeouts, resets
            out.requeue = batch
            self._note(type(exc).__name__, self._explain(exc, "PutRecords"))
            return out

        results = resp.get("Records") or []
        if len(results) != len(batch):  # a malformed answer: assume nothing was stored
            out.requeue = batch
            self._note("malformed", "PutRecords answered with a wrong number of entries")
            return out
        self._notice_new_shards(results)
        if not resp.get("FailedRecordCount"):
            out.delivered = batch
            return out
        self._sort_answers(batch, results, out)
        return out

    def _notice_new_shards(self, results: list[dict[str, Any]]) -> None:
        """A record stored on a shard the map does not know means the stream was
        resharded: have the watcher list the shards."""
        known = self._map
        if known is None:
            return
        ids = known.ids
        for r in results:
            shard_id = r.get("ShardId")
            if shard_id is not None and shard_id not in ids:
                self._refresh.set()
                return

    def _sort_answers(
        self, batch: list[Unit], results: list[dict[str, Any]], out: _Outcome[Unit]
    ) -> None:
        """The outcome of each entry of a partly failed request."""
        codes: dict[str, int] = {}
        for u, r in zip(batch, results, strict=True):
            code = r.get("ErrorCode")
            if not code:
                out.delivered.append(u)
            elif code in INVALID_CODES:
                out.dead.append(
                    Rejected(u, f"rejected by Kinesis: {code}: {r.get('ErrorMessage')}")
                )
            else:
                out.requeue.append(u)
                codes[code] = codes.get(code, 0) + 1
                if code == THROTTLED:
                    out.throttled.append(Refused(u.route.shard, u.size))
                elif code not in RETRYABLE_ENTRY_CODES:
                    out.slow = True
        out.throttled_only = len(out.throttled) == len(out.requeue)
        if codes:
            detail = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
            self._note(
                "partial", f"PutRecords: {len(out.requeue)} of {len(batch)} failed ({detail})"
            )

    def _settle(self, lane: _Lane, out: _Outcome[Entry]) -> None:
        """Report outcomes, then release the space (so a flush never returns early)."""
        try:
            if out.delivered:
                self.context.delivered([e.envelope for e in out.delivered])
            for dead in out.dead:
                self.context.dead_letter(dead.unit.envelope, dead.reason)
        except Exception:  # a failing hook (e.g. the spool) must not stop this lane
            log.exception("reporting delivered or dead-lettered records failed")
        if out.requeue:
            self.stats.add("retried", len(out.requeue))
        if out.throttled:
            self.stats.add("throttled", len(out.throttled))
        done = len(out.delivered) + len(out.dead)
        freed = sum([e.size for e in out.delivered]) + sum([d.unit.size for d in out.dead])
        cfg = self.config
        with self._lock:
            lane.busy = False
            if out.requeue:
                self._requeue(lane, out.requeue)
            self._buffered -= freed
            self._pending -= done
            # a metered shard that throttles rests and slows down; its lane goes on
            paced = out.throttled_only and self._slow_down(lane, out.throttled)
            lane.tickets.clear()
            if out.slow or (out.requeue and not out.split and not paced):
                # Escalate while nothing gets through; a partly accepted request shows the
                # stream is taking records, so the next try waits only the first step.
                lane.attempt = 1 if out.delivered and not out.slow else lane.attempt + 1
                cap = min(cfg.retry_max_ms, cfg.retry_base_ms * (2 ** min(lane.attempt, 30)))
                delay = random.uniform(0, cap) / 1000.0
                if out.slow:  # an operator must act; do not hammer the endpoint
                    delay = max(delay, cfg.retry_max_ms / 2000.0)
                lane.retry_at = time.monotonic() + delay
            elif not out.requeue:
                lane.attempt = 0
                if lane.split is not None:
                    grown = lane.split * 2
                    lane.split = None if grown >= cfg.max_batch_records else grown
            if freed:
                self._not_full.notify_all()
            self._idle.notify_all()  # flush waits for done records; resharding for busy

    @staticmethod
    def _requeue(lane: _Lane, entries: list[Entry]) -> None:
        """(Holding the lock.) Put failed records back at the front of their shards'
        queues, in their order."""
        by_shard: dict[_Shard, list[Entry]] = {}
        for e in entries:
            by_shard.setdefault(e.route.shard, []).append(e)
        for shard, mine in by_shard.items():
            shard.queue.extendleft(reversed(mine))
            size = sum([e.size for e in mine])
            shard.bytes += size
            lane.bytes += size
            lane.count += len(mine)

    @staticmethod
    def _slow_down(lane: _Lane, refused: list[Refused]) -> bool:
        """(Holding the lock.) Tell the meters of throttled shards what they refused;
        False if a shard has no meter (rate limiting is off): the lane backs off instead."""
        now = time.monotonic()
        for r in refused:
            meter = r.shard.meter
            if meter is None:
                return False
            sent = lane.tickets.get(r.shard)
            if sent is not None:
                meter.refund(sent, 1, r.size)
        for shard in {r.shard for r in refused}:
            if shard.meter is not None:
                shard.meter.throttled(now)
        return True

    # -- messages -----------------------------------------------------------------------

    def _note(self, kind: str, message: str, slow: bool = False) -> None:
        """Record the last error; log it at most every few seconds per kind."""
        self.stats.error(message)
        now = time.monotonic()
        last = self._last_log.get(kind, 0.0)
        if now - last < _LOG_EVERY:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        n = self._suppressed.pop(kind, 0)
        self._last_log[kind] = now
        more = f" ({n} more like it since the last report)" if n else ""
        with self._lock:
            held = self._pending
        action = (
            "retrying slowly until it is fixed or the sink stops"
            if slow
            else "retrying the failed records"
        )
        self.log.log(
            logging.ERROR if slow else logging.WARNING,
            "%s%s; %s, %d records held",
            message,
            more,
            action,
            held,
        )

    def _explain(self, exc: BaseException, what: str) -> str:
        """An operator's sentence for a boto3 failure; never contains secrets."""
        from botocore import exceptions as bx

        from .access import AssumeRoleError, masked_proxy

        cfg = self.config
        stream = f"Kinesis stream {cfg.stream_name!r} in {cfg.region}"
        if cfg.stream_arn is not None:  # name the account too: it may not be ours
            stream = f"Kinesis stream {cfg.stream_arn}"
        where = f" at {self._endpoint}" if cfg.endpoint_url or self._endpoint else ""
        if isinstance(exc, bx.ClientError):
            code, msg, status = error_code(exc)
            if status == 407 and cfg.proxy is not None:
                return (
                    f"the proxy {masked_proxy(cfg.proxy.get_secret_value())} refused the "
                    f"credentials given in proxy ({what}: HTTP 407 Proxy Authentication "
                    "Required)"
                )
            if code in NOT_FOUND_CODES:
                return f"{stream} not found{where} ({what}: {code})"
            if code in ACCESS_CODES:
                return (
                    f"access denied to {stream} ({what}: {code}); the credentials need "
                    "kinesis:DescribeStreamSummary, kinesis:ListShards and kinesis:PutRecords"
                    + (f": {msg}" if msg else "")
                )
            if code in CREDENTIAL_CODES:
                return (
                    f"AWS rejected the credentials for {stream} ({what}: {code}); check "
                    "access_key_id/secret_access_key, the profile, or the AWS_* environment"
                )
            return f"{what} on {stream} failed: {code or 'HTTP ' + str(status)}" + (
                f": {msg}" if msg else ""
            )
        if isinstance(exc, AssumeRoleError):
            return f"{exc} ({what} on {stream})"
        if isinstance(exc, bx.NoCredentialsError):
            return (
                f"no AWS credentials found for {stream}: set access_key_id and "
                "secret_access_key, or profile, or provide them through the environment, "
                "the shared credentials file or an instance role"
            )
        if isinstance(exc, bx.ProxyConnectionError) and cfg.proxy is not None:
            return (
                f"cannot reach {stream} through the proxy "
                f"{masked_proxy(cfg.proxy.get_secret_value())} ({what}): {exc}"
            )
        if isinstance(exc, bx.SSLError):
            return (
                f"the TLS certificate of {self._endpoint} is not trusted ({what}): {exc}; "
                "set ca_bundle to the PEM file of the authority that signed it"
            )
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            return f"cannot reach the Kinesis endpoint {self._endpoint} ({what}): {exc}"
        if isinstance(exc, bx.ReadTimeoutError):
            return (
                f"the Kinesis endpoint {self._endpoint} did not answer within "
                f"{cfg.read_timeout:g} s ({what})"
            )
        if isinstance(exc, bx.ConnectionClosedError):
            return f"the Kinesis endpoint {self._endpoint} closed the connection ({what})"
        if isinstance(exc, bx.BotoCoreError):
            return f"{what} on {stream} failed: {exc}"
        return f"{what} on {stream} failed: {type(exc).__name__}: {exc}"
