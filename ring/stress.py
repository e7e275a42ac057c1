"""Producer/consumer and snapshot writer/reader kernels for stress tests and benchmarks.

The records carry a pattern derived from a running sequence (word j of record k is
``k * 7 + j``), so a consumer can prove no loss, duplication, reordering or torn copy.
Process entry points take an instance name, attach by name, and report through a
multiprocessing queue; they are started from a spawn context by tests and bench/.
"""
from __future__ import annotations

from obpipe.ring import _jitcache  # noqa: F401  (first: numba's cache directory, before any kernel is decorated)

import time

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.atomics import cpu_relax, monotonic_ns, sched_yield
from obpipe.ring.kernels import (
    payload_check,
    ring_available,
    ring_claim,
    ring_publish,
    ring_release,
    snap_read,
    snap_write,
)


@njit(nogil=True, cache=True, inline="always")
def _idle(idle):
    """Spin for the first 200 idle polls, then yield the core."""
    if idle < 200:
        cpu_relax()
    else:
        sched_yield()


@njit(nogil=True, cache=True)
def produce_pattern(ctrl, slots, total, batch):
    """Push records 0..total-1 in batches; returns the number of full-ring stalls."""
    cap = slots.shape[0]
    mask = cap - 1
    w = slots.shape[1]
    sent = 0
    stalls = 0
    idle = 0
    while sent < total:
        head, k = ring_claim(ctrl, cap, min(batch, total - sent))
        if k == 0:
            stalls += 1
            idle += 1
            _idle(idle)
            continue
        idle = 0
        for i in range(k):
            s = (head + i) & mask
            base = (sent + i) * 7
            for j in range(w):
                slots[s, j] = base + j
        ring_publish(ctrl, head + k)
        sent += k
    return stalls


@njit(nogil=True, cache=True)
def consume_check(ctrl, slots, total, batch, dst):
    """Pop ``total`` records (copying each batch into ``dst``) and check the pattern.

    Returns (received, bad_records, first_bad_index, t_first_ns, t_last_ns)."""
    cap = slots.shape[0]
    mask = cap - 1
    w = slots.shape[1]
    got = 0
    bad = 0
    first_bad = -1
    t0 = 0
    idle = 0
    while got < total:
        tail, n = ring_available(ctrl, batch)
        if n == 0:
            idle += 1
            _idle(idle)
            continue
        idle = 0
        if t0 == 0:
            t0 = monotonic_ns()
        n = min(n, batch)
        for i in range(n):
            s = (tail + i) & mask
            for j in range(w):
                dst[i, j] = slots[s, j]
        ring_release(ctrl, tail + n)
        for i in range(n):
            base = (got + i) * 7
            for j in range(w):
                if dst[i, j] != base + j:
                    bad += 1
                    if first_bad < 0:
                        first_bad = got + i
                    break
        got += n
    return got, bad, first_bad, t0, monotonic_ns()


@njit(nogil=True, cache=True)
def snapshot_pattern_writer(words, base, pay, duration_ns):
    """Publish pattern payloads (word j = v * 1_000_003 + j, then the check word) as
    fast as possible for ``duration_ns``; returns the number of publications."""
    n = pay.shape[0]
    t_end = monotonic_ns() + duration_ns
    v = 0
    while True:
        v += 1
        for j in range(n - 1):
            pay[j] = v * 1_000_003 + j
        pay[n - 1] = payload_check(pay, n)
        snap_write(words, base, pay, n)
        if (v & 255) == 0 and monotonic_ns() >= t_end:
            return v


@njit(nogil=True, cache=True)
def snapshot_pattern_reader(words, base, dst, duration_ns, pause_iters):
    """Read pattern snapshots for ``duration_ns``; returns (reads, retries, torn,
    went_backwards, distinct_versions_seen).  ``torn`` counts copies that passed the
    seqlock but fail the check word or the pattern."""
    n = dst.shape[0]
    t_end = monotonic_ns() + duration_ns
    reads = 0
    retries = 0
    torn = 0
    backwards = 0
    last_v = -1
    versions = 0
    while monotonic_ns() < t_end:
        for _ in range(64):
            r = snap_read(words, base, dst, n, 1 << 30)
            retries += r
            reads += 1
            ok = payload_check(dst, n) == dst[n - 1]
            v0 = dst[0]
            for j in range(1, n - 1):
                if dst[j] != v0 + j:
                    ok = False
            if not ok:
                torn += 1
            v = v0 // 1_000_003
            if v < last_v:
                backwards += 1
            elif v > last_v:
                versions += 1
            last_v = v
            for _ in range(pause_iters):
                cpu_relax()
    return reads, retries, torn, backwards, versions


# --- process entry points (spawn) ------------------------------------------------------


def pin_cores(cores):
    if cores:
        import psutil

        try:
            psutil.Process().cpu_affinity(list(cores))
        except (AttributeError, OSError, psutil.Error):
            pass


def ring_producer_main(instance, part, total, batch, cores, q):
    from obpipe.ring.spsc import Ring

    pin_cores(cores)
    ring = Ring.attach(instance, part, schema.MD_DTYPE)
    q.put(("ready", "producer"))
    stalls = produce_pattern(ring.ctrl, ring.slots, total, batch)
    q.put(("producer", int(stalls)))


def ring_consumer_main(instance, part, total, batch, cores, q):
    from obpipe.ring.spsc import Ring

    pin_cores(cores)
    ring = Ring.attach(instance, part, schema.MD_DTYPE)
    dst = np.zeros((batch, ring.words), np.int64)
    q.put(("ready", "consumer"))
    got, bad, first_bad, t0, t1 = consume_check(ring.ctrl, ring.slots, total, batch, dst)
    q.put(("consumer", (int(got), int(bad), int(first_bad), int(t0), int(t1))))


def _warm_words(region):
    """A private copy of the region's words: compile kernels without touching the slot."""
    return np.zeros_like(region.words)


def snap_writer_main(instance, duration_s, cores, q, go):
    from obpipe.ring.snapshot import SnapshotRegion

    pin_cores(cores)
    region = SnapshotRegion.attach(instance, "snap")
    pay = np.zeros(region.payload_words, np.int64)
    snapshot_pattern_writer(_warm_words(region), region.base(0), pay, 1000)  # compile/load first
    q.put(("ready", "writer"))
    go.wait(60)
    t = time.perf_counter()
    n = snapshot_pattern_writer(region.words, region.base(0), pay, int(duration_s * 1e9))
    q.put(("writer", (int(n), time.perf_counter() - t)))


def snap_reader_main(instance, duration_s, pause_iters, cores, q, go):
    from obpipe.ring.snapshot import SnapshotRegion

    pin_cores(cores)
    region = SnapshotRegion.attach(instance, "snap")
    dst = np.zeros(region.payload_words, np.int64)
    snapshot_pattern_reader(region.words, region.base(0), dst, 1000, 0)
    q.put(("ready", "reader"))
    go.wait(60)
    res = snapshot_pattern_reader(region.words, region.base(0), dst, int(duration_s * 1e9), pause_iters)
    q.put(("reader", tuple(int(x) for x in res)))


def collect(q, procs, want: int, timeout_s: float, go=None, n_ready: int = 0) -> dict:
    """Gather ``want`` non-"ready" results from the queue, failing if a child dies."""
    import queue as _queue

    out: dict = {}
    deadline = time.monotonic() + timeout_s
    n = 0
    while n < want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"stress children did not finish in {timeout_s}s: got {out}")
        try:
            tag, val = q.get(timeout=min(left, 0.5))
        except _queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"stress child {dead[0].name} died with exit code {dead[0].exitcode}")
            continue
        if tag == "ready":
            n_ready -= 1
            if n_ready == 0 and go is not None:
                go.set()
            continue
        out.setdefault(tag, []).append(val)
        n += 1
    return out


def stop_all(procs, timeout_s=10):
    for p in procs:
        p.join(timeout_s)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout_s)
        if p.is_alive():
            p.kill()
            p.join(timeout_s)


def run_ring_stress(instance: str, total: int, capacity: int = 1 << 16, batch: int = 1024,
                    producer_cores=(), consumer_cores=(), timeout_s: float = 300) -> dict:
    """Move ``total`` pattern records producer -> consumer through a new shm ring in two
    spawned processes.  Returns {received, bad, first_bad, seconds, msgs_per_s, stalls}."""
    import multiprocessing as mp

    from obpipe.ring.spsc import Ring

    ctx = mp.get_context("spawn")
    ring = Ring.create(instance, "stress", schema.MD_DTYPE, capacity)
    q = ctx.Queue()
    procs = [ctx.Process(target=ring_consumer_main, name="consumer",
                         args=(instance, "stress", total, batch, tuple(consumer_cores), q)),
             ctx.Process(target=ring_producer_main, name="producer",
                         args=(instance, "stress", total, batch, tuple(producer_cores), q))]
    try:
        for p in procs:
            p.start()
        res = collect(q, procs, 2, timeout_s)
        got, bad, first_bad, t0, t1 = res["consumer"][0]
        secs = max(t1 - t0, 1) / 1e9
        return dict(received=got, bad=bad, first_bad=first_bad, seconds=secs, msgs_per_s=got / secs,
                    stalls=res["producer"][0], head=ring.head, tail=ring.tail)
    finally:
        stop_all(procs)
        q.close()
        ring.close()
        ring.unlink()


def run_snapshot_stress(instance: str, duration_s: float, n_readers: int, pause_iters: int = 0,
                        writer_cores=(), reader_cores=(), n_levels: int = 10, timeout_s: float = 120) -> dict:
    """One writer publishing pattern snapshots for ``duration_s`` and ``n_readers``
    readers checking every copy.  Returns {writes, writes_per_s, readers: [(reads,
    retries, torn, backwards, versions), ...]}."""
    import multiprocessing as mp

    from obpipe.ring.snapshot import SnapshotRegion

    ctx = mp.get_context("spawn")
    region = SnapshotRegion.create(instance, "snap", 1, n_levels)
    pay = np.zeros(region.payload_words, np.int64)
    for j in range(len(pay) - 1):
        pay[j] = j  # pattern version 0, so readers starting first see a valid pattern
    pay[-1] = payload_check(pay, len(pay))
    snap_write(region.words, region.base(0), pay, len(pay))
    q = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=snap_reader_main, name=f"reader{i}",
                         args=(instance, duration_s, pause_iters, tuple(reader_cores), q, go))
             for i in range(n_readers)]
    procs.append(ctx.Process(target=snap_writer_main, name="writer",
                             args=(instance, duration_s, tuple(writer_cores), q, go)))
    try:
        for p in procs:
            p.start()
        res = collect(q, procs, n_readers + 1, timeout_s, go=go, n_ready=len(procs))
        n, secs = res["writer"][0]
        return dict(writes=n, writes_per_s=n / secs, readers=res.get("reader", []))
    finally:
        stop_all(procs)
        q.close()
        region.close()
        region.unlink()
