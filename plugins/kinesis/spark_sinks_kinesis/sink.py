"""The ``kinesis`` sink: batched PutRecords that lose nothing the stream can accept.
This module wires the parts together: the sink's lifecycle, ``write``, the lane
threads' loop and the settling of each request's outcome.

Data flow::

    write() --(partition key -> shard -> lane)--> shard queue --lane thread--> PutRecords
       ^  blocks while max_buffered_bytes are held                  |
       +------------------- space freed <---- delivered / dead-lettered

* Each partition key (host/machine) maps to a shard, as Kinesis maps it (the MD5 of the
  key on the hash key ranges from ListShards, ``shards.py``), and to one of the shard's
  queues, each in one *lane*: a lane has one sender thread and at most one PutRecords
  request in flight, so the records of one machine leave in the order they were
  written. ``max_in_flight`` lanes run at once. Without ``rate_limit`` a shard has one
  queue, so no two lanes write to the same shard; with it, a shard has up to
  ``max_in_flight_per_shard`` queues in as many lanes (its keys spread evenly over
  them, ``Buffer.place``), so that requests to it overlap and its budget is not idle
  while one waits for its answer. (Until the shards are known, after a failed check,
  lanes are picked by key, and so several may write one shard.)
* With ``rate_limit`` each shard has a meter (``rate.py``), shared by its queues: a
  request takes from each queue only what its shard's per-second limits allow.
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

The parts, each in its module: ``queues.py`` (routes, shard queues, lanes, and the
``Buffer`` that holds them), ``batching.py`` (when a lane sends, what a request takes,
KPL aggregates), ``sender.py`` (one PutRecords and its answer), ``reshard.py`` (following
the stream's shards), ``packing.py`` (compression and size limits), ``errors.py``
(error codes, operator sentences, rate-limited logging).

Shared state: the queues and counters belong to ``Buffer.lock`` (see ``queues.py``);
``write`` is called by one thread at a time; each lane's ``attempt``, ``retry_at``,
``split`` and ``tickets`` are changed only by its own sender thread, under the lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from spark_sinks import CONNECTION_TEST, Envelope, Sink, SinkError, timefmt

from . import wire
from .batching import Batching, encode
from .config import KinesisConfig
from .errors import Explainer, Notes
from .keys import partition_key
from .packing import Packer
from .queues import Buffer, Entry, Lane, Outcome, Refused, Rejected, Unit
from .reshard import ShardWatcher
from .sender import Sender

log = logging.getLogger(__name__)

ACTIVE_STATES = ("ACTIVE", "UPDATING")
PROVISIONED = "PROVISIONED"
ON_DEMAND = "ON_DEMAND"
ON_DEMAND_REFRESH_SECONDS = 10.0
"""How often the shards of an on-demand stream are listed when ``shard_refresh_seconds``
is not set: Kinesis adds and removes them by itself, as the traffic changes."""


def refresh_seconds(config: KinesisConfig, mode: str) -> float:
    """Seconds between two listings of the shards, for a stream of ``mode``."""
    if mode == ON_DEMAND and "shard_refresh_seconds" not in config.model_fields_set:
        return min(config.shard_refresh_seconds, ON_DEMAND_REFRESH_SECONDS)
    return config.shard_refresh_seconds


class KinesisSink(Sink):
    type_name = "kinesis"
    Config = KinesisConfig
    buffered = True

    config: KinesisConfig

    def __init__(self, config: KinesisConfig, context: Any) -> None:
        super().__init__(config, context)
        # with rate limits, a shard's budget is spent by several lanes (see Buffer.per_shard)
        per_shard = min(config.max_in_flight_per_shard, config.max_in_flight)
        self._buf = Buffer(
            config.max_in_flight,
            config.max_buffered_bytes,
            context.stopping,
            per_shard if config.rate_limit else 1,
        )
        self._batching = Batching(config, config.max_in_flight)
        self._packer = Packer(config, context.dead_letter)
        self._explain = Explainer(config)
        self._note = Notes(self.stats, self.log, self._held)
        self._sender: Sender | None = None
        self._watcher: ShardWatcher | None = None
        """Both made by ``open``, with the client."""

    def _held(self) -> int:
        with self._buf.lock:
            return self._buf.pending

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        from . import access  # loads botocore: only when a Kinesis sink really starts

        cfg = self.config
        client = access.kinesis_client(
            cfg,
            # The sender owns retrying ("until shutdown"): botocore makes one attempt.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=cfg.max_in_flight + 2,
            parameter_validation=False,  # entries are built here, always well-formed
        )
        wire.install(client)
        self._explain.endpoint = client.meta.endpoint_url
        self._watcher = ShardWatcher(
            self._buf, client, cfg.stream, cfg, self._explain, self.log, self.name
        )
        watcher = self._watcher
        self._sender = Sender(
            client, cfg.stream, self._explain, self._note, watcher.notice, watcher.stale
        )
        for lane in self._buf.lanes:
            lane.thread = threading.Thread(
                target=self._run_lane, args=(lane,), name=f"kinesis-{self.name}-{lane.index}"
            )
            lane.thread.daemon = True
            lane.thread.start()

    @property
    def _client(self) -> Any:
        assert self._sender is not None, "open() makes the client"
        return self._sender.client

    def check(self) -> str:
        cfg = self.config
        assert self._watcher is not None
        try:
            summary = self._client.describe_stream_summary(**cfg.stream)["StreamDescriptionSummary"]
        except Exception as exc:
            self._watcher.load_later()  # a spooled sink runs on
            raise SinkError(self._explain(exc, "DescribeStreamSummary")) from None
        status = summary.get("StreamStatus")
        if status not in ACTIVE_STATES:
            self._watcher.load_later()
            raise SinkError(
                f"Kinesis stream {cfg.stream_name!r} in {cfg.region} is {status}, "
                "not ACTIVE or UPDATING"
            )
        shards = summary.get("OpenShardCount")
        mode = str((summary.get("StreamModeDetails") or {}).get("StreamMode") or PROVISIONED)
        text = (
            f"stream {cfg.stream_name!r} in {cfg.region} is {status} ({mode}, {shards} open shards)"
        )
        self._compare_record_size(summary.get("MaxRecordSizeInKiB"))
        self._watcher.period = refresh_seconds(cfg, mode)
        self._watcher.load()
        if cfg.connection_test:
            text = f"{text}; connection test record written to {self._connection_test()}"
        self.log.info("%s; %d lanes", text, len(self._buf.lanes))
        return text

    def _compare_record_size(self, kib: Any) -> None:
        """The stream's own maximum record size (``MaxRecordSizeInKiB``: 1 MiB unless
        ``UpdateMaxRecordSize`` raised it, up to 10 MiB; not every endpoint says) against
        ``max_record_bytes``: a warning when records ours would send are refused, a note when
        the stream would take larger ones."""
        if not isinstance(kib, int) or isinstance(kib, bool) or kib <= 0:
            return
        stream_bytes, ours = kib * 1024, self.config.max_record_bytes
        if ours > stream_bytes:
            self.log.warning(
                "max_record_bytes (%d) exceeds the stream's maximum record size (%d KiB): "
                "Kinesis refuses the records in between, and they are dead-lettered after "
                "the round trip; lower max_record_bytes or raise the stream's",
                ours,
                kib,
            )
        elif ours < stream_bytes:
            self.log.info(
                "the stream takes records up to %d KiB, max_record_bytes only %d: larger "
                "records are dead-lettered (raise max_record_bytes to use the stream's size; "
                "with rate_limit, shard_limits.bytes_per_second bounds it)",
                kib,
                ours,
            )

    def _connection_test(self) -> str:
        """Write one test record; the shard it landed on."""
        test = Envelope(
            CONNECTION_TEST,
            self.context.host,
            {
                "time": timefmt.now(),
                "sink": self.name,
                "stream": self.config.stream_name,
                "message": "spark-sinks connection test",
            },
        )
        key = partition_key(test.host, None)
        data = self._packer.unit(test.to_json(), len(key.encode("utf-8")))
        assert self._sender is not None
        return self._sender.put_test(data, key, self.context.stopping)

    def write(self, envelopes: Sequence[Envelope]) -> None:
        entries = self._entries(envelopes)
        if not entries:
            return
        stopping = self.context.stopping
        shutdown = self.context.shutdown

        def ending() -> bool:
            return stopping.is_set() or shutdown.is_set()

        buf = self._buf
        touched: set[Lane] = set()
        with buf.lock:
            for e in entries:
                buf.wait_for_room(e.size, touched, ending)
                touched.add(buf.add(e))
            for lane in touched:
                lane.cond.notify()

    def _entries(self, envelopes: Sequence[Envelope]) -> list[Entry]:
        """The records to queue; one that can never fit is dead-lettered instead."""
        route_of = self._buf.route
        pack = self._packer.record
        now = time.monotonic()
        entries: list[Entry] = []
        for env in envelopes:
            route = route_of(env.host, env.machine)
            data = pack(env, env.to_json(), route.key_bytes)
            if data is not None:
                entries.append(Entry(env, data, route, len(data) + route.key_bytes, now))
        return entries

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        stopping = self.context.stopping
        buf = self._buf
        with buf.lock:
            buf.flushing += 1
            try:
                for lane in buf.lanes:
                    lane.cond.notify()
                while buf.pending and not buf.abort and not stopping.is_set():
                    wait = 0.2
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        wait = min(wait, remaining)
                    buf.idle.wait(wait)
            finally:
                buf.flushing -= 1
            left, held = buf.pending, buf.bytes
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
        if self._watcher is not None:
            self._watcher.stop()
        buf = self._buf
        with buf.lock:
            buf.abort = True
            left = buf.pending
            for lane in buf.lanes:
                lane.cond.notify_all()
            buf.not_full.notify_all()
        deadline = time.monotonic() + 2.0
        threads = [lane.thread for lane in buf.lanes]
        threads.append(None if self._watcher is None else self._watcher.thread)
        for thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if left:
            self.log.error(
                "closed with %d records not delivered to stream %r", left, self.config.stream_name
            )

    # -- sending ------------------------------------------------------------------------

    def _run_lane(self, lane: Lane) -> None:
        max_records = self.config.max_batch_records
        batching = self._batching
        buf = self._buf
        while True:
            with buf.lock:
                shards = batching.wait_to_send(buf, lane)
                if shards is None:
                    return
                limit = max_records if lane.split is None else lane.split
                if batching.aggregate:
                    groups = batching.take_aggregates(lane, shards, limit)
                else:
                    batch = batching.take_records(lane, shards, limit)
                lane.busy = True
            if batching.aggregate:
                outcome = self._send_aggregates(lane, groups)
            else:
                outcome = self._send_guarded(lane, batch)
            self._settle(lane, outcome)

    def _send_aggregates(self, lane: Lane, groups: list[list[Entry]]) -> Outcome[Entry]:
        try:
            units = encode(groups, self._packer.unit)
        except Exception as exc:  # a bug must not lose records: keep them, retry slowly
            self._unexpected(exc)
            return Outcome(requeue=[m for g in groups for m in g], slow=True)
        out = self._send_guarded(lane, units)
        return Outcome(  # the outcome over aggregates as one over their records
            delivered=[m for unit in out.delivered for m in unit.members],
            dead=[Rejected(m, r.reason) for r in out.dead for m in r.unit.members],
            requeue=[m for unit in out.requeue for m in unit.members],
            slow=out.slow,
            split=out.split,
            throttled=out.throttled,
            throttled_only=out.throttled_only,
        )

    def _send_guarded(self, lane: Lane, units: list[Unit]) -> Outcome[Unit]:
        assert self._sender is not None
        try:
            return self._sender.send(lane, units)
        except Exception as exc:  # a bug must not lose records: keep them, retry slowly
            self._unexpected(exc)
            return Outcome(requeue=units, slow=True)

    def _unexpected(self, exc: Exception) -> None:
        log.exception("unexpected error in the Kinesis sender")
        self.stats.error(f"unexpected error in the sender: {type(exc).__name__}: {exc}")

    # -- settling -----------------------------------------------------------------------

    def _settle(self, lane: Lane, out: Outcome[Entry]) -> None:
        """Report outcomes, then release the space (so a flush never returns early)."""
        self._report(out)
        done = len(out.delivered) + len(out.dead)
        freed = sum([e.size for e in out.delivered]) + sum([d.unit.size for d in out.dead])
        buf = self._buf
        with buf.lock:
            lane.busy = False
            if out.requeue:
                lane.requeue(out.requeue)
            buf.bytes -= freed
            buf.pending -= done
            # a metered shard that throttles rests and slows down; its lane goes on
            paced = out.throttled_only and self._slow_down(lane, out.throttled)
            lane.tickets.clear()
            if out.slow or (out.requeue and not out.split and not paced):
                self._back_off(lane, out)
            elif not out.requeue:
                lane.attempt = 0
                if lane.split is not None:
                    grown = lane.split * 2
                    lane.split = None if grown >= self.config.max_batch_records else grown
            if freed:
                buf.not_full.notify_all()
            buf.idle.notify_all()  # flush waits for done records; resharding for busy

    def _report(self, out: Outcome[Entry]) -> None:
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

    def _back_off(self, lane: Lane, out: Outcome[Entry]) -> None:
        """(Holding the lock.) Escalate while nothing gets through; a partly accepted
        request shows the stream is taking records, so the next try waits only the
        first step."""
        cfg = self.config
        lane.attempt = 1 if out.delivered and not out.slow else lane.attempt + 1
        cap = min(cfg.retry_max_ms, cfg.retry_base_ms * (2 ** min(lane.attempt, 30)))
        delay = random.uniform(0, cap) / 1000.0
        if out.slow:  # an operator must act; do not hammer the endpoint
            delay = max(delay, cfg.retry_max_ms / 2000.0)
        lane.retry_at = time.monotonic() + delay

    @staticmethod
    def _slow_down(lane: Lane, refused: list[Refused]) -> bool:
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
        # a shard's queues share its meter: it hears of the request's refusals once
        for meter in {id(r.shard.meter): r.shard.meter for r in refused}.values():
            if meter is not None:
                meter.throttled(now)
        return True
