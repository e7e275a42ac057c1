"""The log-linear latency histogram: bucket bounds and percentiles."""
from __future__ import annotations

import numpy as np

from obpipe.ring.latency import N_BUCKETS, bucket, bucket_upper, percentiles


def test_buckets_are_ordered_and_at_most_a_quarter_wide():
    prev = -1
    for v in list(range(0, 200)) + [10**k for k in range(3, 18)] + [2**62, 2**63 - 1]:
        b = bucket(v)
        assert 0 <= b < N_BUCKETS and b >= prev and bucket_upper(b) >= v
        if b >= 4:
            lo = bucket_upper(b - 1) + 1
            assert lo <= v and bucket_upper(b) - lo + 1 <= lo // 4 + 1
        prev = b
    assert bucket(-5) == 0


def test_percentiles_never_understate():
    rng = np.random.default_rng(1)
    vals = rng.lognormal(10, 1.5, 100_000).astype(np.int64)
    hist = np.zeros(N_BUCKETS, np.int64)
    for v in vals:
        hist[bucket(int(v))] += 1
    p = percentiles(hist)
    assert p["count"] == 100_000
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        true = float(np.quantile(vals, q))
        assert true <= p[name] <= true * 1.26, (name, true, p[name])
    assert percentiles(np.zeros(N_BUCKETS, np.int64))["p99"] is None


def test_cumulative_counts_at_powers_of_two_are_exact():
    """An exporter's "<= le" buckets from the log-linear ones: at each power of two of ns,
    the count of recorded values below it, exactly."""
    from obpipe.ring.latency import cumulative_le

    vals = np.random.default_rng(1).integers(0, 10**9, 20_000)
    vals[:50] = [2**k for k in range(10, 35) for _ in range(2)]  # values on the boundaries themselves
    hist = np.zeros(N_BUCKETS, np.int64)
    for v in vals:
        hist[bucket(int(v))] += 1
    les, total = cumulative_le(hist)
    assert total == len(vals)
    assert [round(le * 1e9) for le, _ in les] == [2**k for k in range(10, 35)]
    for le, count in les:
        assert count == int((vals < round(le * 1e9)).sum()), le
