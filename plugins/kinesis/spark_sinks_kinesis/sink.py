"""The ``kinesis`` sink: batched PutRecords that lose nothing the stream can accept.

Data flow::

    write() --(partition key -> lane)--> lane queue --sender thread--> PutRecords
       ^  blocks while max_buffered_bytes are held           |
       +------------------- space freed <---- delivered / dead-lettered

* Each partition key (host/machine) always maps to the same *lane*; a lane has one
  sender thread and at most one PutRecords request in flight, so the records of one
  machine leave in the order they were written. ``max_in_flight`` lanes run at once,
  assigned by shard (ListShards at start) so that no two write to the same shard.
* A lane sends a batch when it holds ``max_batch_records`` records or
  ``max_batch_bytes`` bytes, when its oldest record has waited ``linger_ms``, or at
  once during a flush.
* Only failed entries are retried: they go back to the *front* of their lane and lead
  the next request, after a backoff with full jitter. Only records accepted in a
  request where a record failed can overtake it (those behind it in that request).
* Records Kinesis can never accept go to the dead letter, with the reason.
* With ``aggregation: kpl`` a request carries KPL aggregates instead: each holds the
  leading queued records of one partition key, and a request holds at most one aggregate
  per key. An aggregate is delivered or retried as a unit, so a failed aggregate is sent
  again before anything later of its key: one machine's records keep their order even
  under throttling (see ``aggregation.py`` and the README).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any

from spark_sinks import CONNECTION_TEST, Envelope, Sink, SinkError, timefmt

from . import aggregation, compression, wire
from .config import KinesisConfig
from .keys import partition_key

log = logging.getLogger(__name__)

ACTIVE_STATES = ("ACTIVE", "UPDATING")

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
_AGG_SCAN_SKIPS = 5_000
"""While building aggregates, stop scanning a lane's queue after passing over this many
records of keys whose aggregate is already full (bounds the time the lock is held)."""

Entry = tuple[Envelope, bytes, str, int, float]
"""A queued record: ``(envelope, data, partition key, size, t_enqueued)``; ``size`` is
the bytes of data and key."""
_XML_CODE = re.compile(r"<Code>([^<]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


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


class _Lane:
    """One sender thread and its queue of entries ``(envelope, data, key, size, t_enqueued)``."""

    __slots__ = ("attempt", "bytes", "cond", "index", "queue", "retry_at", "split", "thread")

    def __init__(self, index: int, lock: threading.Lock) -> None:
        self.index = index
        self.queue: deque[tuple[Envelope, bytes, str, int, float]] = deque()
        self.bytes = 0
        self.cond = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.attempt = 0
        """Consecutive failed requests; drives the backoff."""
        self.retry_at = 0.0
        """Monotonic time before which this lane sends nothing (backoff)."""
        self.split: int | None = None
        """Batch size limit while isolating a record that makes whole requests invalid."""


class _Outcome:
    __slots__ = ("dead", "delivered", "freed", "requeue", "slow", "split")

    def __init__(self) -> None:
        self.delivered: list[Envelope] = []
        self.dead: list[tuple[Envelope, str]] = []
        self.requeue: list[tuple[Envelope, bytes, str, int, float]] = []
        self.freed = 0
        """Bytes of the delivered and dead-lettered records."""
        self.slow = False
        """The failure needs an operator (credentials, permissions, missing stream)."""
        self.split = False
        """The request was invalid as a whole: resend in halves, without backoff."""


class KinesisSink(Sink):
    type_name = "kinesis"
    Config = KinesisConfig
    buffered = True

    config: KinesisConfig

    def __init__(self, config: KinesisConfig, context: Any) -> None:  # type: ignore[override]
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
        self._keys: dict[tuple[str, str | None], tuple[str, int, _Lane]] = {}
        self._shard_starts: list[int] | None = None
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
        if len(self._lanes) > 1:
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
        keys = self._keys
        now = time.monotonic()
        entries = []
        for env in envelopes:
            data = env.to_json()
            k = keys.get((env.host, env.machine))
            if k is None:
                k = self._key(env.host, env.machine)
            if self._compress_each:
                packed = self._packed(env, data, k[1])
                if packed is None:
                    continue
                data = packed
            size = len(data) + k[1]
            if size > max_record and not self._fits_compressed(env, data, k[1]):
                continue
            entries.append((env, data, k[0], size, k[2]))
        if not entries:
            return
        stopping = self.context.stopping
        shutdown = self.context.shutdown
        touched: set[_Lane] = set()
        with self._lock:
            for env, data, key, size, lane in entries:
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
                lane.queue.append((env, data, key, size, now))
                lane.bytes += size
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
        with self._lock:
            self._abort = True
            left = self._pending
            for lane in self._lanes:
                lane.cond.notify_all()
            self._not_full.notify_all()
        deadline = time.monotonic() + 2.0
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
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
        """Learn the open shards' hash ranges so that each shard is written by one lane
        only (concurrent requests then never touch the same shard)."""
        starts: list[int] = []
        try:
            kwargs: dict[str, Any] = dict(self._stream)
            while True:
                resp = self._client.list_shards(**kwargs)
                for shard in resp.get("Shards", []):
                    if "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {}):
                        starts.append(int(shard["HashKeyRange"]["StartingHashKey"]))
                token = resp.get("NextToken")
                if not token:
                    break
                kwargs = {"NextToken": token}
        except Exception as exc:
            self.log.warning(
                "cannot list the shards (%s); lanes are chosen by partition key instead",
                self._explain(exc, "ListShards"),
            )
            return
        self._shard_starts = sorted(starts) or None

    def _key(self, host: str, machine: str | None) -> tuple[str, int, _Lane]:
        key = partition_key(host, machine)
        raw = key.encode("utf-8")
        starts = self._shard_starts
        if starts:
            # Kinesis maps the MD5 of the key onto the shards' hash ranges
            shard = (
                bisect.bisect_right(
                    starts, int.from_bytes(hashlib.md5(raw, usedforsecurity=False).digest(), "big")
                )
                - 1
            )
            lane = self._lanes[max(shard, 0) % len(self._lanes)]
        else:
            lane = self._lanes[zlib.crc32(raw) % len(self._lanes)]
        k = (key, len(raw), lane)
        self._keys[(host, machine)] = k
        return k

    def _halted(self) -> bool:
        return self._abort or self.context.stopping.is_set()

    def _next_batch(self, lane: _Lane) -> list[Any] | None:
        """Wait (holding the lock) until the lane should send; None means exit."""
        cfg = self.config
        max_records = cfg.max_batch_records
        max_bytes = cfg.max_batch_bytes
        linger = cfg.linger_ms / 1000.0
        q = lane.queue
        while True:
            if self._halted():
                return None
            if not q:
                lane.cond.wait(0.5)
                continue
            now = time.monotonic()
            if lane.retry_at > now:
                lane.cond.wait(min(lane.retry_at - now, 0.2))
                continue
            if (
                (len(q) >= max_records and not self._aggregate)
                or lane.bytes >= self._send_bytes
                or self._flushing
                or now - q[0][4] >= linger
            ):
                break
            lane.cond.wait(min(linger - (now - q[0][4]), 0.2))
        limit = max_records if lane.split is None else lane.split
        if self._aggregate:
            return self._take_aggregates(lane, limit)
        batch = [q.popleft()]
        total = batch[0][3]
        while q and len(batch) < limit and total + q[0][3] <= max_bytes:
            e = q.popleft()
            total += e[3]
            batch.append(e)
        lane.bytes -= total
        return batch

    def _take_aggregates(self, lane: _Lane, limit: int) -> list[list[Entry]]:
        """Aggregation mode (holding the lock): for each key, in order of first appearance
        in the queue, take its leading records that fit in one aggregate of at most
        ``max_record_bytes``; at most ``limit`` keys and ``max_batch_bytes`` per request.
        What is not taken stays queued in its order, so each key's taken records are the
        oldest of that key."""
        cfg = self.config
        max_record = cfg.max_record_bytes
        budget = cfg.max_batch_bytes
        entry_bytes = aggregation.entry_bytes
        q = lane.queue
        groups: dict[str, list[Entry]] = {}
        sizes: dict[str, int] = {}
        """Size of each key's aggregate (data plus key); absent once the key is full."""
        skipped: list[Entry] = []
        taken = 0  # bytes of the records taken, as counted in lane.bytes
        request = 0  # bytes of the request, counting every group as an aggregate
        while q:
            e = q[0]
            key = e[2]
            size = sizes.get(key)
            if size is None:
                if key in groups or len(groups) >= limit:
                    # this key's aggregate is full, or the request has no room for another
                    skipped.append(q.popleft())
                    if len(skipped) > _AGG_SCAN_SKIPS or (len(groups) >= limit and not sizes):
                        break
                    continue
                klen = e[3] - len(e[1])
                size = aggregation.overhead_bytes(klen) + klen + entry_bytes(len(e[1]))
                if groups and request + size > budget:
                    break
                q.popleft()
                groups[key] = [e]
                taken += e[3]
                request += size
                if size < max_record:
                    sizes[key] = size
                # else: alone it is sent as a plain record (e[3] <= max_record_bytes)
                continue
            inc = entry_bytes(len(e[1]))
            if size + inc > max_record:
                del sizes[key]
                skipped.append(q.popleft())
                if len(groups) >= limit and not sizes:
                    break  # every aggregate of this request is full
                continue
            if request + inc > budget:
                break
            q.popleft()
            groups[key].append(e)
            sizes[key] = size + inc
            taken += e[3]
            request += inc
        if skipped:
            q.extendleft(reversed(skipped))
        lane.bytes -= taken
        return list(groups.values())

    def _encode(self, groups: list[list[Entry]]) -> list[Any]:
        """One Kinesis record per group, shaped like an entry whose first item is the group:
        a KPL aggregate, or the plain record when the group has one record; compressed
        with ``compression``."""
        units: list[Any] = []
        for members in groups:
            first = members[0]
            key = first[2]
            if len(members) == 1:
                klen = first[3] - len(first[1])
                data = self._pack_unit(first[1], klen)
                units.append((members, data, key, len(data) + klen, first[4]))
                continue
            raw = key.encode("utf-8")
            data = self._pack_unit(aggregation.encode(raw, [m[1] for m in members]), len(raw))
            units.append((members, data, key, len(data) + len(raw), first[4]))
        return units

    @staticmethod
    def _expand(out: _Outcome) -> None:
        """Turn an outcome over aggregates into one over their records."""
        delivered: list[Envelope] = []
        freed = 0
        for members in out.delivered:
            delivered.extend([m[0] for m in members])  # type: ignore[union-attr]
            freed += sum([m[3] for m in members])  # type: ignore[union-attr]
        dead: list[tuple[Envelope, str]] = []
        for members, reason in out.dead:
            for m in members:  # type: ignore[union-attr]
                dead.append((m[0], reason))
                freed += m[3]
        out.delivered = delivered
        out.dead = dead
        out.requeue = [m for unit in out.requeue for m in unit[0]]  # type: ignore[union-attr]
        out.freed = freed

    def _run_lane(self, lane: _Lane) -> None:
        while True:
            with self._lock:
                batch = self._next_batch(lane)
            if batch is None:
                return
            units: Any = batch
            try:
                if self._aggregate:
                    units = self._encode(batch)  # type: ignore[arg-type]
                outcome = self._send(lane, units)
            except Exception as exc:  # a bug must not lose records: keep them, retry slowly
                log.exception("unexpected error in the Kinesis sender")
                self.stats.error(f"unexpected error in the sender: {type(exc).__name__}: {exc}")
                outcome = _Outcome()
                outcome.requeue = units
                outcome.slow = True
            if self._aggregate:
                if units is batch:  # encoding failed: requeue the records as they were
                    outcome.requeue = [m for g in batch for m in g]  # type: ignore[union-attr]
                else:
                    self._expand(outcome)
            self._settle(lane, outcome)

    def _send(self, lane: _Lane, batch: list[tuple[Envelope, bytes, str, int, float]]) -> _Outcome:
        from botocore.exceptions import ClientError

        out = _Outcome()
        try:
            resp = self._client.put_records(
                **self._stream,
                Records=[{"Data": e[1], "PartitionKey": e[2]} for e in batch],
            )
        except ClientError as exc:
            code, msg, status = error_code(exc)
            if code in INVALID_CODES and not (status and status >= 500):
                if len(batch) == 1:
                    reason = f"rejected by Kinesis: {code}: {msg}".rstrip(": ")
                    out.dead.append((batch[0][0], reason))
                    out.freed = batch[0][3]
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
        if not resp.get("FailedRecordCount") and len(results) == len(batch):
            out.delivered = [e[0] for e in batch]
            out.freed = sum([e[3] for e in batch])
            return out
        if len(results) != len(batch):  # a malformed answer: assume nothing was stored
            out.requeue = batch
            self._note("malformed", "PutRecords answered with a wrong number of entries")
            return out
        codes: dict[str, int] = {}
        for e, r in zip(batch, results, strict=True):
            code = r.get("ErrorCode")
            if not code:
                out.delivered.append(e[0])
                out.freed += e[3]
            elif code in INVALID_CODES:
                out.dead.append((e[0], f"rejected by Kinesis: {code}: {r.get('ErrorMessage')}"))
                out.freed += e[3]
            else:
                out.requeue.append(e)
                codes[code] = codes.get(code, 0) + 1
                if code not in RETRYABLE_ENTRY_CODES:
                    out.slow = True
        if codes:
            detail = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
            self._note(
                "partial", f"PutRecords: {len(out.requeue)} of {len(batch)} failed ({detail})"
            )
        return out

    def _settle(self, lane: _Lane, out: _Outcome) -> None:
        """Report outcomes, then release the space (so a flush never returns early)."""
        try:
            if out.delivered:
                self.context.delivered(out.delivered)
            for env, reason in out.dead:
                self.context.dead_letter(env, reason)
        except Exception:  # a failing hook (e.g. the spool) must not stop this lane
            log.exception("reporting delivered or dead-lettered records failed")
        if out.requeue:
            self.stats.add("retried", len(out.requeue))
        done = len(out.delivered) + len(out.dead)
        cfg = self.config
        with self._lock:
            if out.requeue:
                lane.queue.extendleft(reversed(out.requeue))
                lane.bytes += sum([e[3] for e in out.requeue])
            self._buffered -= out.freed
            self._pending -= done
            if out.slow or (out.requeue and not out.split):
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
            if out.freed:
                self._not_full.notify_all()
            if done:
                self._idle.notify_all()

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
