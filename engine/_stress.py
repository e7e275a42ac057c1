"""Book writer under snapshot readers: the writer's rate with and without readers.

The writer applies a synthetic stream (prefixed with a CLEAR per symbol, so it can be
applied again and again and stay a valid, never-crossed book) in ``max_batch``
batches, publishing one snapshot per touched symbol per batch - the book writer's
real work.  Readers in other processes copy every symbol's snapshot in a tight loop
and check each copy: check word, bid < ask, price levels strictly ordered, versions
never going backwards.  Used by tests/engine/test_snapshot_load.py and bench/.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.atomics import monotonic_ns, sleep_ns
from obpipe.ring.kernels import payload_check, snap_read_changed
from obpipe.ring.stress import collect, pin_cores, stop_all

from obpipe.engine import _book_kernels as BK


@njit(nogil=True, cache=True)
def writer_load(msgs, max_batch, duration_ns, lad, S, C, ev, ev_ctrl, n_levels, dirty, snap_words, snap_base0,
                slot_words, pay, lv_px, lv_qty):
    """Apply ``msgs`` cyclically for ``duration_ns``; returns messages applied."""
    n = msgs.shape[0]
    t_end = monotonic_ns() + duration_ns
    done = 0
    j = 0
    while True:
        k = min(max_batch, n - j)
        ts = monotonic_ns()
        BK.apply_batch(msgs, j, k, -1, lad, S, C, ev, ev_ctrl, dirty)
        BK.publish_snapshots(lad, S, C, dirty, n_levels, snap_words, snap_base0, slot_words, pay, lv_px, lv_qty, ts)
        done += k
        j += k
        if j >= n:
            j = 0
        if ts >= t_end:
            return done


@njit(nogil=True, cache=True)
def reader_load(words, base0, slot_words, n_slots, n_levels, dst, duration_ns, interval_ns):
    """Every ``interval_ns`` sample every slot, copying versions it has not seen and
    checking each copy, for ``duration_ns``; returns (copies, retries, bad, polls)."""
    nw = dst.shape[0]
    h = schema.SNAP_HEADER_WORDS
    last_version = np.zeros(n_slots, np.int64)
    last_seq = np.full(n_slots, -2, np.int64)
    t_end = monotonic_ns() + duration_ns
    reads = 0
    polls = 0
    retries = 0
    bad = 0
    t_next = monotonic_ns()
    while True:
        now = monotonic_ns()
        if now >= t_end:
            break
        if now < t_next:
            sleep_ns(t_next - now)  # a sampling reader gives its core away between samples
            continue
        t_next += interval_ns
        for s in range(n_slots):
            polls += 1
            seq, r = snap_read_changed(words, base0 + s * slot_words, dst, nw, last_seq[s], 1 << 30)
            retries += r
            if seq == last_seq[s]:
                continue
            last_seq[s] = seq
            reads += 1
            ok = payload_check(dst, nw) == dst[nw - 1]
            bpx = dst[schema.SW_BID_PX]
            apx = dst[schema.SW_ASK_PX]
            if bpx != schema.NO_PX and apx != schema.NO_PX and bpx >= apx:
                ok = False
            for k in range(1, n_levels):
                p0 = dst[h + k - 1]
                p1 = dst[h + k]
                if p1 != schema.NO_PX and not p1 < p0:
                    ok = False
                a0 = dst[h + 2 * n_levels + k - 1]
                a1 = dst[h + 2 * n_levels + k]
                if a1 != schema.NO_PX and not a1 > a0:
                    ok = False
            v = dst[schema.SW_VERSION]
            if v < last_version[s]:
                ok = False
            last_version[s] = v
            if not ok:
                bad += 1
    return reads, retries, bad, polls


def _stream(n_symbols: int, n_msgs: int, seed: int) -> np.ndarray:
    from obpipe.feed_sim.synth import SynthParams, generate

    body = generate(n_msgs, SynthParams(n_symbols=n_symbols, seed=seed))
    head = np.zeros(n_symbols, schema.MD_DTYPE)
    head["kind"] = schema.K_CLEAR
    head["symbol"] = np.arange(n_symbols)
    return np.concatenate([head, body])


def writer_main(instance, n_symbols, n_levels, width, max_batch, n_msgs, duration_s, cores, q, go):
    from obpipe.ring.snapshot import SnapshotRegion

    from obpipe.engine.book import Book

    pin_cores(cores)
    snaps = SnapshotRegion.attach(instance, "snap", n_levels)
    msgs = _stream(n_symbols, n_msgs, 5)
    book = Book([width] * n_symbols, n_levels, snapshots=snaps)
    args = (book.lad, book.S, book.C, book.ev, book.ev_ctrl, n_levels, book.dirty, snaps.words, snaps.base(0),
            snaps.slot_words, book.pay, book._lv_px, book._lv_qty)
    writer_load(msgs, max_batch, 0, *args)  # compile / load
    q.put(("ready", "writer"))
    go.wait(60)
    t = time.perf_counter()
    n = writer_load(msgs, max_batch, int(duration_s * 1e9), *args)
    q.put(("writer", (int(n), time.perf_counter() - t)))


def reader_main(instance, n_levels, duration_s, interval_ns, cores, q, go, private=False):
    """A sampling reader; ``private`` makes it a control: the same code and schedule on
    a private copy of the region, so it loads the CPU but shares no memory with the
    writer."""
    from obpipe.ring.snapshot import SnapshotRegion

    pin_cores(cores)
    snaps = SnapshotRegion.attach(instance, "snap", n_levels)
    words = np.array(snaps.words) if private else snaps.words
    dst = np.zeros(snaps.payload_words, np.int64)
    reader_load(words, snaps.base(0), snaps.slot_words, snaps.n_slots, n_levels, dst, 0, 1)
    q.put(("ready", "reader"))
    go.wait(60)
    res = reader_load(words, snaps.base(0), snaps.slot_words, snaps.n_slots, n_levels, dst,
                      int(duration_s * 1e9), interval_ns)
    q.put(("reader", tuple(int(x) for x in res)))


def run_writer_with_readers(instance: str, n_readers: int, duration_s: float = 1.0, interval_ns: int = 10_000,
                            n_symbols: int = 4,
                            n_levels: int = 10, width: int = 4096, max_batch: int = 1024, n_msgs: int = 1_000_000,
                            writer_cores=(), reader_cores=(), timeout_s: float = 180, private: bool = False) -> dict:
    """One run: {msgs_per_s, readers: [(copies, retries, bad, polls), ...]}.  With
    ``private`` the readers are controls that read a private copy of the region."""
    import multiprocessing as mp

    from obpipe.ring.snapshot import SnapshotRegion

    ctx = mp.get_context("spawn")
    region = SnapshotRegion.create(instance, "snap", n_symbols, n_levels)
    q = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=reader_main, name=f"reader{i}",
                         args=(instance, n_levels, duration_s, interval_ns, tuple(reader_cores), q, go, private))
             for i in range(n_readers)]
    procs.append(ctx.Process(target=writer_main, name="writer",
                             args=(instance, n_symbols, n_levels, width, max_batch, n_msgs, duration_s,
                                   tuple(writer_cores), q, go)))
    try:
        for p in procs:
            p.start()
        res = collect(q, procs, len(procs), timeout_s, go=go, n_ready=len(procs))
        n, secs = res["writer"][0]
        return dict(msgs_per_s=n / secs, readers=res.get("reader", []))
    finally:
        stop_all(procs)
        q.close()
        region.close()
        region.unlink()
