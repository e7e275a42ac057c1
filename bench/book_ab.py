"""Same-run A/B of the book kernels: ``engine/_book_kernels.py`` (and the LOBSTER
checker/replay of ``engine/lobster.py`` on top of it) at a git revision (``--base``,
default main) against the working tree's.  Not a test.

Workloads, those of bench/core.py's book figures:

* ``apply_only``: ``apply_batch`` on the synthetic stream (4 symbols, seed 11, ladders
  of 4,096 ticks) in batches of 1,024, events counted as dropped, no snapshots
  (``book_apply_only_msgs_per_s``);
* ``whole_job``: the same with every event written to a ring a consumer keeps empty and
  a snapshot per touched symbol per batch (``book_msgs_per_s``);
* ``drain``: the book writer's loop (``drain``) over a local md ring on the same
  stream: batches of 1,024, events, snapshots, latency, counters;
* ``lobster_day``: ``apply_batch`` on the AMZN LOBSTER day, 20 passes on fresh books
  (``book_lobster_msgs_per_s``); ``lobster_day_uncross``: the same with ``[book]
  uncross`` on, as a LOBSTER replay runs;
* ``lobster_check`` / ``lobster_replay``: ``lobster.check_kernel`` (``lobster-check``)
  and ``lobster.replay_kernel`` (the replay feed's corrections) on the AMZN pair.

The two versions run in turn (base, new, base, new, ...) on fresh state, pinned to
the last core; a run's time is the thread's CPU time (the machine is often shared).
Prints, per workload, the median msgs/s of each and the median of the per-pair ratios
base time / new time (> 1: the working tree is faster), and checks that both versions
end in the same state.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ab  # noqa: E402,F401  (first: a fresh numba cache for this run)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from obpipe.feed_sim.synth import SynthParams, generate  # noqa: E402
from obpipe.ring import schema  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "lobster"
AMZN_MSG = DATA / "AMZN_2012-06-21_34200000_57600000_message_1.csv"
AMZN_OB = DATA / "AMZN_2012-06-21_34200000_57600000_orderbook_1.csv"
_BK_IMPORT = "from obpipe.engine import _book_kernels as BK"




def _source(rev: str | None, path: str) -> str:
    return _ab.source_at(rev, path)


def load_pair(rev: str | None, tag: str, tmp: Path):
    """(book kernels, lobster module) of ``rev`` (None: the working tree), under names of their own."""
    bk_src = _source(rev, "engine/_book_kernels.py")
    lob_src = _source(rev, "engine/lobster.py")
    if _BK_IMPORT not in lob_src:
        raise SystemExit(f"engine/lobster.py of {rev or 'the working tree'} does not import {_BK_IMPORT!r}")
    (tmp / f"bk_{tag}.py").write_text(bk_src)
    (tmp / f"lob_{tag}.py").write_text(lob_src.replace(_BK_IMPORT, f"import bk_{tag} as BK"))
    bk = _ab.load(f"bk_{tag}", tmp / f"bk_{tag}.py")
    return bk, _ab.load(f"lob_{tag}", tmp / f"lob_{tag}.py")


def run_apply(BK, msgs, widths, batch, events: bool, snapshots: bool, passes: int = 1, uncross: bool = False):
    """(thread CPU seconds, final lad, S, C) of ``apply_batch`` over ``msgs``, ``passes``
    times on fresh books (the last one's state is returned)."""
    n_levels = 10
    dt = 0.0
    for _ in range(passes):
        lad, S, C = BK.new_state(widths, n_levels, 10, uncross)
        ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
        ev = np.zeros(1 << 12 if events else 2, schema.EVENT_DTYPE)
        dirty = np.zeros(len(widths) + 1, np.int64)
        pay = np.zeros(schema.snapshot_dtype(n_levels).itemsize // 8, np.int64)
        slot_words = schema.snapshot_slot_words(n_levels)  # a private region: no readers
        snap_words = np.zeros(slot_words * len(widths), np.int64)
        lv_px, lv_qty = np.zeros(n_levels, np.int64), np.zeros(n_levels, np.int64)
        n = len(msgs)
        t = time.thread_time()
        for j in range(0, n, batch):
            BK.apply_batch(msgs, j, min(batch, n - j), -1, lad, S, C, ev, ev_ctrl, dirty)
            if events:
                ev_ctrl[schema.RING_W_TAIL] = ev_ctrl[schema.RING_W_HEAD]  # a consumer that keeps up
            if snapshots:
                BK.publish_snapshots(lad, S, C, dirty, n_levels, snap_words, 0, slot_words, pay, lv_px, lv_qty, 1)
            else:
                S[:, BK.B_DIRTY] = 0
                dirty[0] = 0
        dt += time.thread_time() - t
    return dt, (lad, S, C)


def run_drain(BK, msgs, widths, batch):
    """(thread CPU seconds in ``drain``, final lad, S, C): the book writer's loop over a
    local md ring (chunks of 2**16 copied in, untimed), events to a ring a consumer keeps
    empty, a snapshot per touched symbol per batch, latency and counters to a local row."""
    n_levels = 10
    lad, S, C = BK.new_state(widths, n_levels)
    md_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    ring = np.zeros(1 << 17, schema.MD_DTYPE)
    ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    ev = np.zeros(1 << 18, schema.EVENT_DTYPE)
    slot_words = schema.snapshot_slot_words(n_levels)
    args = (lad, S, C, ev, ev_ctrl, n_levels, np.zeros(len(widths) + 1, np.int64),
            np.zeros(slot_words * len(widths), np.int64), 0, slot_words,
            np.zeros(schema.snapshot_dtype(n_levels).itemsize // 8, np.int64), np.zeros(n_levels, np.int64),
            np.zeros(n_levels, np.int64), np.zeros(schema.STATS_WORDS, np.int64), np.zeros(256, np.int64),
            np.zeros(256, np.int64))
    chunk, head, dt = 1 << 16, 0, 0.0
    for j in range(0, len(msgs), chunk):
        k = min(chunk, len(msgs) - j)
        ring[head & (len(ring) - 1):][:k] = msgs[j:j + k]
        head += k
        md_ctrl[schema.RING_W_HEAD] = head
        t = time.thread_time()
        BK.drain(md_ctrl, ring, batch, k, *args, 0, 0)
        dt += time.thread_time() - t
        ev_ctrl[schema.RING_W_TAIL] = ev_ctrl[schema.RING_W_HEAD]
    S[:, BK.B_TS_APPLY] = 0  # (a clock reading)
    return dt, (lad, S, C)


def run_check(BK, LOB, md, top, width):
    lad, S, C = BK.new_state([width], 1)
    ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    ev = np.zeros(2, schema.EVENT_DTYPE)
    dirty = np.zeros(2, np.int64)
    status = np.zeros(len(md), np.uint8)
    t = time.thread_time()
    res = LOB.check_kernel(md, top, 0, lad, S, C, False, ev, ev_ctrl, dirty, status)
    return time.thread_time() - t, (lad, S, C, status, np.array(res))


def run_replay(BK, LOB, md, ob, width):
    lad, S, C = BK.new_state([width], 1)
    out = np.zeros(2 * len(md) + ob.shape[1] + 64, schema.MD_DTYPE)
    ends = np.zeros(len(md) - 1, np.int64)
    t = time.thread_time()
    j = LOB.replay_kernel(md, ob, 0, lad, S, C, out, ends)
    return time.thread_time() - t, (lad, S, C, out[:j], ends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main")
    ap.add_argument("--msgs", type=int, default=2_000_000, help="synthetic stream length")
    ap.add_argument("--repeats", type=int, default=15, help="pairs per workload")
    ap.add_argument("--only", default="", help="comma-separated workloads to run")
    a = ap.parse_args()
    import psutil

    me = psutil.Process()
    me.cpu_affinity([me.cpu_affinity()[-1]])
    with tempfile.TemporaryDirectory() as tmp:
        mods = {"base": load_pair(a.base, "base", Path(tmp)), "new": load_pair(None, "new", Path(tmp))}
        LOB = mods["new"][1]
        synth = generate(a.msgs, SynthParams(n_symbols=4, seed=11))
        md, d = LOB.load_messages(AMZN_MSG, return_tick=True)
        ob = LOB.load_orderbook(AMZN_OB, tick_divisor=d)
        top = np.ascontiguousarray(ob[:, :4])
        width = LOB.auto_width(md["px_tick"][md["kind"] != schema.K_HEARTBEAT], ob[:, 0::2])
        w4 = [4096] * 4
        workloads = {
            "apply_only": (len(synth), lambda BK, L: run_apply(BK, synth, w4, 1024, False, False)),
            "whole_job": (len(synth), lambda BK, L: run_apply(BK, synth, w4, 1024, True, True)),
            "drain": (len(synth), lambda BK, L: run_drain(BK, synth, w4, 1024)),
            "lobster_day": (20 * len(md), lambda BK, L: run_apply(BK, md, [4096], 1024, False, False, passes=20)),
            "lobster_day_uncross": (20 * len(md), lambda BK, L: run_apply(BK, md, [4096], 1024, False, False,
                                                                          passes=20, uncross=True)),
            "lobster_check": (len(md) - 1, lambda BK, L: run_check(BK, L, md, top, width)),
            "lobster_replay": (len(md), lambda BK, L: run_replay(BK, L, md, ob, width)),
        }
        only = set(filter(None, a.only.split(",")))
        print(json.dumps({"base": a.base, "repeats": a.repeats, "synthetic_msgs": len(synth), "amzn_msgs": len(md)}),
              flush=True)
        for name, (n, fn) in workloads.items():
            if only and name not in only:
                continue
            for BK, L in mods.values():
                fn(BK, L)  # compile
            times: dict[str, list[float]] = {"base": [], "new": []}
            final = {}
            for _ in range(a.repeats):
                for k, (BK, L) in mods.items():
                    dt, final[k] = fn(BK, L)
                    times[k].append(dt)
            for x, y in zip(final["base"], final["new"]):
                assert np.array_equal(x, y), f"{name}: the two versions end in different states"
            res = {k: round(n / statistics.median(v)) for k, v in times.items()}
            res["pair_ratio_base_over_new"] = round(statistics.median(
                b / w for b, w in zip(times["base"], times["new"])), 3)
            print(name, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
