"""A log-linear latency histogram in shared memory (like HdrHistogram, coarser).

Bucket of a value v >= 0 ns: with e = floor(log2(v)) (0 for v < 4), the top bit and the
next ``SUB_BITS`` bits pick one of 4 sub-buckets per power of two, so a bucket is at
most 25% wide and a reported percentile (the bucket's upper bound) is within 25% of the
true value, never below it.  256 buckets cover 0 ns .. 2^63 ns.  The book writer adds
to it after every batch (``record_batch``); any process reads percentiles from it.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring.atomics import clz64, store_relaxed
from obpipe.ring.jit import HOT

SUB_BITS = 2
N_BUCKETS = 256


@njit(**HOT, inline="always")
def bucket(v):
    """Histogram bucket of ``v`` ns (v < 0 counts as 0)."""
    if v < 4:
        return max(v, 0)
    e = 63 - clz64(v)  # floor(log2 v) >= 2
    return (e - 1) * 4 + ((v >> (e - SUB_BITS)) & 3)


def bucket_upper(b: int) -> int:
    """The largest value (ns) in bucket ``b``."""
    if b < 4:
        return b
    e = b // 4 + 1
    sub = b % 4
    return ((4 + sub + 1) << (e - SUB_BITS)) - 1


@njit(**HOT)
def record_batch(md, start, n, mask, ts_apply, hist, local):
    """Add ``ts_apply - ts_recv_ns`` of each stamped message of the batch to ``local``
    (the writer's private counts) and publish the touched buckets to ``hist``."""
    for i in range(n):
        r = md[(start + i) & mask]
        t = r.ts_recv_ns
        if t > 0:
            b = bucket(ts_apply - t)
            local[b] += 1
            store_relaxed(hist, b, local[b])


def percentiles(hist: np.ndarray, qs=(0.5, 0.99, 0.999)) -> dict[str, int | None]:
    """{"p50": ns, ...} from bucket counts (bucket upper bounds); None when empty."""
    counts = np.asarray(hist, dtype=np.int64)
    total = int(counts.sum())
    names = {0.5: "p50", 0.99: "p99", 0.999: "p999"}
    out = {}
    cum = np.cumsum(counts)
    for q in qs:
        name = names.get(q, f"p{q * 100:g}")
        if total == 0:
            out[name] = None
            continue
        b = int(np.searchsorted(cum, q * total, side="left"))
        out[name] = bucket_upper(b)
    out["count"] = total
    return out


def cumulative_le(hist: np.ndarray, lo_exp: int = 10, hi_exp: int = 34) -> tuple[list[tuple[float, int]], int]:
    """The histogram as cumulative counts at the powers of two ``2**lo_exp`` ..
    ``2**hi_exp`` ns (1 us .. 17 s by default), for exporters whose buckets say
    "<= le seconds" (Prometheus): ``([(le_s, count of values < le), ...], total)``.
    Exact, because a power of two is a bucket boundary here (the bucket below it ends at
    ``2**k - 1`` ns)."""
    counts = np.asarray(hist, dtype=np.int64)
    cum = np.cumsum(counts)
    total = int(cum[-1]) if len(cum) else 0
    out = []
    for k in range(lo_exp, hi_exp + 1):
        b = (k - 2) * 4 + 3  # the last bucket of values < 2**k (floor(log2 v) = k - 1, sub-bucket 3)
        out.append((2.0**k / 1e9, int(cum[b]) if 0 <= b < len(cum) else total))
    return out, total


def le_buckets(hist: np.ndarray) -> list[tuple[str, int]]:
    """``cumulative_le`` as a Prometheus histogram's buckets: ``(le, count)`` pairs with
    ``le`` as Prometheus clients print it (the float's shortest repr), ending with
    ``("+Inf", total)``."""
    les, total = cumulative_le(hist)
    return [(repr(float(le)), n) for le, n in les] + [("+Inf", total)]
