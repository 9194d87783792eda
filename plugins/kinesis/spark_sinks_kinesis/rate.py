"""The producer-side meter of one shard: Kinesis's write limits, kept before sending.

Kinesis meters each shard's writes per second: 1,000 records and 1 MiB (data plus
partition key), in provisioned and on-demand streams alike. A KPL aggregate is one
record of its full size. Entries over a shard's budget come back as
``ProvisionedThroughputExceededException`` and must be sent again; a producer that
sends blindly spends most requests on refusals and backs off far below capacity.

``ShardMeter`` keeps two rules, each for records and for bytes:

* a token bucket refilled at the limit (times ``factor``) and holding at most
  ``BURST_SECONDS`` of it: it paces a backlogged shard evenly, request after request,
  rather than in bursts of a whole second that a server's one-second windows could
  split badly;
* a log of the last second's sends, which never exceeds the limit (times ``factor``):
  whatever the bucket held after an idle spell, no second carries more than the limit.
  A single record larger than what is left may go when the second is empty (a record
  of up to ``max_record_bytes`` must go some time).

``factor`` adapts to what the shard answers (AIMD): refused entries cut it by their share
of all the shard took and refused in the last second, at most to ``CUT`` of what it was
when this second of cuts began (one burst is refused entry by entry, over several
answers); every second without throttling raises it a step, back up to the configured
limits. So a shard shared with another producer, or limits set too high, settle where
the stream stops refusing, while the few entries a server's one-second windows refuse
when requests arrive late (network or scheduling delays) cost only their own share of
the rate.

Only the thread that holds ``Buffer.lock`` uses a meter (see ``queues.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

BURST_SECONDS = 0.5
"""The most a bucket holds, in seconds of its rate: more than a request's round trip, so
that a lane waiting for its answer loses no rate."""
CHUNK_SECONDS = 0.05
"""A backlogged shard waits until this much rate is available, so that requests are
not spent on one or two records each."""
WINDOW_SECONDS = 1.0
_EPSILON = 1e-6
CUT = 0.9
"""The deepest cut of the rate when a shard throttles (a tenth at most once a second)."""
STEP = 0.05
"""Added to the factor per second without throttling."""
FLOOR = 0.1
"""The least factor: a shard that throttles all the time still gets a tenth of its limit
tried, so that it finds out when capacity returns."""


@dataclass(frozen=True, slots=True)
class ShardLimits:
    """A shard's write limits, per second."""

    records_per_second: float
    bytes_per_second: float


@dataclass(slots=True, eq=False)
class Sent:
    """What one request carried to the shard, in the last second's log."""

    at: float
    records: int
    nbytes: int


class ShardMeter:
    """Token buckets and the last second's log (records, bytes) of one shard; see the
    module docstring."""

    __slots__ = (
        "_answer_bytes",
        "_answer_records",
        "_calm_since",
        "_cut_at",
        "_cut_from",
        "_last",
        "_log",
        "_logged_bytes",
        "_logged_records",
        "_refused_bytes",
        "_refused_records",
        "bytes",
        "factor",
        "limits",
        "records",
    )

    def __init__(self, limits: ShardLimits, now: float) -> None:
        self.limits = limits
        self.factor = 1.0
        self.records = limits.records_per_second * BURST_SECONDS
        """Records in the bucket (negative: a debt)."""
        self.bytes = limits.bytes_per_second * BURST_SECONDS
        """Bytes in the bucket (negative: a debt)."""
        self._log: deque[Sent] = deque()
        self._logged_records = 0
        self._logged_bytes = 0
        self._answer_records = 0
        """Refunded since the last ``throttled`` (the refusals of one answer)."""
        self._answer_bytes = 0
        self._refused_records = 0
        """Refused since the second of cuts began (``_cut_at``)."""
        self._refused_bytes = 0
        self._last = now
        self._cut_at = -1e9
        self._cut_from = 1.0
        """``factor`` when the second of cuts began."""
        self._calm_since = now

    @property
    def burst_bytes(self) -> float:
        return self.limits.bytes_per_second * BURST_SECONDS

    def refill(self, now: float) -> None:
        log = self._log
        while log and log[0].at + WINDOW_SECONDS <= now:  # as `until` in wait_for
            old = log.popleft()
            self._logged_records -= old.records
            self._logged_bytes -= old.nbytes
        elapsed = now - self._last
        if elapsed <= 0:
            return
        self._last = now
        if now - self._calm_since >= 1.0 and self.factor < 1.0:
            self.factor = min(1.0, self.factor + STEP * (now - self._calm_since))
            self._calm_since = now
        lim = self.limits
        f = self.factor
        self.records = min(
            lim.records_per_second * BURST_SECONDS,
            self.records + elapsed * lim.records_per_second * f,
        )
        self.bytes = min(self.burst_bytes, self.bytes + elapsed * lim.bytes_per_second * f)

    def _room(self) -> tuple[float, float]:
        """What the last second's log leaves of the limits (records, bytes)."""
        f = self.factor
        return (
            self.limits.records_per_second * f - self._logged_records,
            self.limits.bytes_per_second * f - self._logged_bytes,
        )

    def wait_for(self, now: float, records: int, nbytes: int, head: int) -> float:
        """Seconds until a request for a queue of ``records`` records and ``nbytes`` bytes,
        the first of ``head`` bytes, is worth sending to this shard (0: now). A chunk of
        records, or all there are, must fit; and at least the first record."""
        self.refill(now)
        lim = self.limits
        f = self.factor
        need_r = min(float(records), max(1.0, lim.records_per_second * CHUNK_SECONDS))
        need_b = min(float(nbytes), max(lim.bytes_per_second * CHUNK_SECONDS, head))
        if head > self.burst_bytes:  # it goes alone, with a full bucket and an empty second
            need_b = self.burst_bytes
        wait = max(
            (need_r - self.records) / (lim.records_per_second * f),
            (need_b - self.bytes) / (lim.bytes_per_second * f),
            0.0,
        )
        if wait < _EPSILON:  # float residue of a refill that was just enough
            wait = 0.0
        room_r, room_b = self._room()
        if head > self.burst_bytes:
            need_b = room_b + self._logged_bytes  # the whole second
        if room_r >= need_r and room_b >= need_b:
            return wait
        # until enough of the last second's sends are a second old
        until = now
        for sent in self._log:
            room_r += sent.records
            room_b += sent.nbytes
            until = sent.at + WINDOW_SECONDS
            if room_r >= need_r and room_b >= need_b:
                break
        return max(wait, until - now)

    def admits(self, records: int, nbytes: int) -> bool:
        """May one request carry ``records`` records of ``nbytes`` bytes in all to this
        shard now? A single record may exceed the bytes left when the bucket is full and
        the last second empty (a record larger than the burst)."""
        room_r, room_b = self._room()
        if records > self.records + _EPSILON or records > room_r:
            return False
        if nbytes <= self.bytes + _EPSILON and nbytes <= room_b:
            return True
        full = self.bytes + _EPSILON >= self.burst_bytes
        return records == 1 and full and not self._logged_bytes

    def spend(self, records: int, nbytes: int) -> Sent | None:
        """A request carries this much to the shard (at the time of the last refill)."""
        if not records:
            return None
        self.records -= records
        self.bytes -= nbytes
        sent = Sent(self._last, records, nbytes)
        self._log.append(sent)
        self._logged_records += records
        self._logged_bytes += nbytes
        return sent

    def refund(self, sent: Sent, records: int, nbytes: int) -> None:
        """Of what ``sent`` carried, the shard refused this much: it does not count
        against the shard's second (Kinesis counts only what it stores). Call
        ``throttled`` after the refunds of one answer."""
        self._answer_records += records
        self._answer_bytes += nbytes
        if sent.at + WINDOW_SECONDS <= self._last:
            return  # no longer in the log
        sent.records -= records
        sent.nbytes -= nbytes
        self._logged_records -= records
        self._logged_bytes -= nbytes

    def throttled(self, now: float) -> None:
        """The shard refused the entries just refunded: cut the rate by the share of what
        it refused since this second of cuts began, at most to ``CUT`` of the rate then;
        and empty the buckets, so that it rests for a refill before the entries go
        again."""
        if now - self._cut_at >= 1.0:  # a new second of cuts
            self._cut_at = now
            self._cut_from = self.factor
            self._refused_records = self._refused_bytes = 0
        self._refused_records += self._answer_records
        self._refused_bytes += self._answer_bytes
        self._answer_records = self._answer_bytes = 0
        self.factor = max(FLOOR, self._cut_from * max(CUT, 1.0 - self._refused_share()))
        self._calm_since = now
        self.records = min(self.records, 0.0)
        self.bytes = min(self.bytes, 0.0)

    def _refused_share(self) -> float:
        """What the shard refused since the second of cuts began, as a share of that and
        all it took in the last second, by records or by bytes, whichever is larger (1
        when the refusals are unknown)."""
        r, b = self._refused_records, self._refused_bytes
        if r <= 0:
            return 1.0
        share = r / (r + max(self._logged_records, 0))
        if b > 0:
            share = max(share, b / (b + max(self._logged_bytes, 0)))
        return share
