"""The shard meter (rate.py) on simulated time: it never lets a shard's writes exceed
its limits (plus one burst) in any second, keeps a backlogged shard near its limits, and
adapts to throttling."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from spark_sinks_kinesis.rate import BURST_SECONDS, CUT, ShardLimits, ShardMeter


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
