"""The shard meter (rate.py) on simulated time: it never lets a shard's writes exceed
its limits (plus one burst) in any second, keeps a backlogged shard near its limits, and
adapts to throttling."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from spark_sinks_kinesis.rate import BURST_SECONDS, CUT, STEP, Sent, ShardLimits, ShardMeter


@dataclass
class Send:
    at: float
    records: int
    nbytes: int


def _backlog(
    meter: ShardMeter, sizes: list[int], latencies: list[float], seconds: float
) -> list[Send]:
    """A lane with an endless backlog of records of ``sizes`` (cycled): wait as the meter
    says, take what it admits (at most 500 a request), wait a request's latency."""
    t = 0.0
    sends: list[Send] = []
    i = 0
    n = 0
    while t < seconds:
        head = sizes[i % len(sizes)]
        while (wait := meter.wait_for(t, 10_000, 10_000 * max(sizes), head)) > 0:
            t += wait
        count = nbytes = 0
        while count < 500:
            size = sizes[(i + count) % len(sizes)]
            if not meter.admits(count + 1, nbytes + size):
                break
            count += 1
            nbytes += size
        assert count, "the meter said wait no longer, then admitted nothing"
        i += count
        meter.spend(count, nbytes)
        sends.append(Send(t, count, nbytes))
        t += latencies[n % len(latencies)]
        n += 1
    return sends


def _most_in_a_second(sends: list[Send], field: str) -> int:
    """The most records (or bytes) sent within any interval of one second."""
    best = 0
    j = 0
    total = 0
    for s in sends:
        total += getattr(s, field)
        while sends[j].at + 1.0 <= s.at:
            total -= getattr(sends[j], field)
            j += 1
        best = max(best, total)
    return best


@settings(max_examples=60, deadline=None)
@given(
    rps=st.integers(50, 2_000),
    bps=st.integers(16 * 1024, 2 * 1024 * 1024),
    # records up to 5% of the byte limit: whole records then lose at most 5% of it
    shares=st.lists(st.floats(0.0001, 0.05), min_size=1, max_size=20),
    # round trips up to 100 ms (at 200 ms and tiny limits it fell to 0.85)
    latencies=st.lists(st.floats(0.001, 0.1), min_size=1, max_size=20),
)
def test_a_backlogged_shard_stays_within_its_limits_in_every_second_and_near_them(
    rps, bps, shares, latencies
):
    sizes = [max(1, int(bps * share)) for share in shares]
    limits = ShardLimits(rps, bps)
    sends = _backlog(ShardMeter(limits, 0.0), sizes, latencies, 12.0)
    # any one second: never more than the limits
    assert _most_in_a_second(sends, "records") <= rps
    assert _most_in_a_second(sends, "nbytes") <= bps
    # and over the run, near the binding limit (latency costs at most one request's wait)
    late = [s for s in sends if s.at >= 2.0]
    span = sends[-1].at - 2.0
    rate_records = sum(s.records for s in late) / span
    rate_bytes = sum(s.nbytes for s in late) / span
    use = max(rate_records / rps, rate_bytes / bps)
    assert use >= 0.9, (use, rate_records, rate_bytes)


def test_a_record_larger_than_the_burst_goes_alone_when_the_bucket_is_full_then_is_paid():
    meter = ShardMeter(ShardLimits(1000, 100_000), 0.0)
    burst = int(100_000 * BURST_SECONDS)
    big = burst + 10_000  # more than the bucket holds, less than a second's limit
    assert meter.admits(1, big)
    assert not meter.admits(2, big + 100)  # only alone
    meter.spend(1, big)
    assert not meter.admits(1, 100)
    # the debt is paid at the byte rate: 10,000 bytes owed, then a chunk of 5,000 bytes
    assert abs(meter.wait_for(0.0, 1, 5_000, 5_000) - 0.15) < 1e-9
    # and a second record as large waits for the first to leave the last second
    assert abs(meter.wait_for(0.0, 1, big, big) - 1.0) < 1e-9
    meter.refill(0.99)
    assert meter.admits(1, 5_000) and not meter.admits(1, big)
    assert meter.wait_for(1.0, 1, big, big) == 0
    assert meter.admits(1, big)


def test_throttling_cuts_the_rate_once_a_second_and_calm_brings_it_back():
    meter = ShardMeter(ShardLimits(1000, 1_000_000), 0.0)
    meter.throttled(0.0)
    assert meter.factor == CUT
    assert meter.records <= 0  # the shard rests before its entries go again
    meter.throttled(0.3)  # the same burst refused entry by entry: no second cut
    assert meter.factor == CUT
    meter.throttled(1.5)
    assert meter.factor == CUT * CUT
    meter.refill(2.0)
    assert meter.factor == CUT * CUT  # not calm for a second yet
    for t in range(3, 40):
        meter.refill(float(t))
    assert meter.factor == 1.0
    # it paces at its factor meanwhile
    slow = ShardMeter(ShardLimits(1000, 1_000_000), 0.0)
    slow.throttled(0.0)
    slow.refill(0.05)
    assert abs(slow.records - 0.05 * 1000 * CUT) < 1e-6


@dataclass
class Answer:
    at: float
    ticket: Sent | None
    refused: int


@dataclass
class WindowedShard:
    """A shard metered as the throttle proxy meters it: a budget per wall-clock second
    (seconds start at ``phase``), of which another producer may take ``taken`` first;
    what goes over is refused, entry by entry."""

    rps: int
    bps: int
    phase: float
    taken: float = 0.0
    used: dict[int, list[int]] = field(default_factory=dict)

    def put(self, at: float, count: int, size: int) -> int:
        w = self.used.setdefault(int(at + self.phase), [0, 0])
        share = 1.0 - self.taken
        fit = min(count, int(share * self.rps) - w[0], (int(share * self.bps) - w[1]) // size)
        fit = max(0, fit)
        w[0] += fit
        w[1] += fit * size
        return count - fit


@dataclass
class Run:
    accepted: int = 0
    refused: int = 0
    sent: int = 0


def _pipelined(
    meter: ShardMeter,
    shard: WindowedShard,
    in_flight: int,
    rtts: list[float],
    delays: list[float],
    size: int,
    seconds: float,
) -> Run:
    """A backlogged shard with up to ``in_flight`` requests out, each one round trip of
    ``rtts`` (cycled) long and metered by the server ``delays`` after it was sent; the
    answers are settled as the sink settles them (refund, then ``throttled``). Counts
    from the 2nd second on."""
    t = 0.0
    free = [0.0] * in_flight
    out: list[Answer] = []
    run = Run()
    n = 0
    while t < seconds:
        t = max(t, heapq.heappop(free))
        out.sort(key=lambda a: a.at)
        while out and out[0].at <= t:
            a = out.pop(0)
            if a.refused and a.ticket is not None:
                meter.refill(a.at)
                meter.refund(a.ticket, a.refused, a.refused * size)
                meter.throttled(a.at)
        while (wait := meter.wait_for(t, 10_000, 10_000 * size, size)) > 0:
            t += wait
        count = 0
        while count < 500 and meter.admits(count + 1, (count + 1) * size):
            count += 1
        ticket = meter.spend(count, count * size)
        rtt = rtts[n % len(rtts)]
        refused = shard.put(t + min(delays[n % len(delays)], rtt), count, size)
        n += 1
        if t >= 2.0:
            run.sent += count
            run.refused += refused
            run.accepted += count - refused
        out.append(Answer(t + rtt, ticket, refused))
        heapq.heappush(free, t + rtt)
    return run


@settings(max_examples=40, deadline=None)
@given(
    rtts=st.lists(st.floats(0.02, 0.5), min_size=1, max_size=10),
    # the server meters a request up to 30 ms after it left (network, scheduling)
    delays=st.lists(st.floats(0.0, 0.03), min_size=1, max_size=10),
    phase=st.floats(0.0, 1.0),
    size=st.integers(100, 1_000),
)
def test_requests_in_flight_keep_a_shard_at_its_limits_whatever_the_round_trip(
    rtts, delays, phase, size
):
    limits = ShardLimits(200, 128 * 1024)
    shard = WindowedShard(200, 128 * 1024, phase)
    run = _pipelined(ShardMeter(limits, 0.0), shard, 4, rtts, delays, size, 20.0)
    capacity = 18.0 * min(200, 128 * 1024 / size)  # seconds 2 to 20
    assert run.accepted >= 0.95 * capacity, (run, capacity)
    assert run.refused <= 0.05 * run.sent, run


def test_one_request_in_flight_idles_a_shard_for_part_of_a_long_round_trip():
    """Why several requests go out to one shard: with one at a time and a round trip of
    0.4 s, each second holds three requests, and the last second's log lets each carry a
    third of the limit: 200/3 records every 0.4 s is 83% of it (87% here, where the
    count starts and ends with whole requests)."""
    limits = ShardLimits(200, 128 * 1024)
    shard = WindowedShard(200, 128 * 1024, 0.5)
    one = _pipelined(ShardMeter(limits, 0.0), shard, 1, [0.4], [0.0], 500, 20.0)
    assert one.accepted <= 0.9 * 18.0 * 200
    four = _pipelined(
        ShardMeter(limits, 0.0), WindowedShard(200, 128 * 1024, 0.5), 4, [0.4], [0.0], 500, 20.0
    )
    assert four.accepted >= 0.97 * 18.0 * 200


@settings(max_examples=20, deadline=None)
@given(taken=st.floats(0.1, 0.5), phase=st.floats(0.0, 1.0))
def test_a_shard_shared_with_another_producer_settles_near_what_is_left(taken, phase):
    """Another producer takes up to half of every second first: the meter comes down to
    what is left, by 10% a second at most, and probes back up 5% a second; over 40 s,
    the refusals of coming down and of probing stay under 15% of the entries sent."""
    limits = ShardLimits(200, 128 * 1024)
    shard = WindowedShard(200, 128 * 1024, phase, taken)
    run = _pipelined(ShardMeter(limits, 0.0), shard, 4, [0.05, 0.08], [0.01], 500, 40.0)
    left = 38.0 * 200 * (1.0 - taken)
    assert run.accepted >= 0.9 * left, (run, left)
    assert run.refused <= 0.15 * run.sent, run


def test_a_few_entries_refused_cost_their_share_of_the_rate_not_a_tenth():
    meter = ShardMeter(ShardLimits(200, 1_000_000), 0.0)
    meter.refill(5.0)
    sent = meter.spend(100, 10_000)
    assert sent is not None
    meter.refill(5.5)
    late = meter.spend(100, 10_000)
    assert late is not None
    meter.refund(late, 4, 400)  # a late request: 4 of its entries fell into a full second
    meter.throttled(5.6)
    assert abs(meter.factor - (1 - 4 / 200)) < 1e-9
    # more refused answers within the same second: the cut deepens with their share ...
    meter.refund(late, 10, 1_000)
    meter.throttled(5.7)
    assert abs(meter.factor - (1 - 14 / 200)) < 1e-9
    meter.refund(late, 40, 4_000)
    meter.throttled(5.8)
    assert meter.factor == CUT  # ... to a tenth at most
    meter.refill(6.8)  # a calm second: a step back up
    assert abs(meter.factor - (CUT + STEP)) < 1e-9
    meter.refund(meter.spend(1, 100) or sent, 1, 100)
    meter.throttled(6.8)  # a new second of cuts: all it sent refused, cut by a tenth
    assert abs(meter.factor - (CUT + STEP) * CUT) < 1e-9
