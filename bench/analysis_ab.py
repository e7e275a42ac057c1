"""Same-run A/B of the analysis kernel: ``analysis/_kernels.py`` at a git revision
(``--base``, default main) against the working tree's, on bench/kafka.py's analysis
workload (every event a Book emits for 2M synthetic messages, 4 symbols).  Not a test.

The two kernels run in turn on fresh detector state each, pinned to the last core,
base first in even pairs and new first in odd ones; a run's time is the thread's CPU
time over the whole events ring (the machine is often shared).  Both kernels must give
the same counters and the same records (but the wall-clock ``ts_detect_ns``).  Prints
the median ns/event of each and the median, min and max of the per-pair ratios
new/base (below 1: the new kernel is faster).
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
sys.path.insert(0, str(REPO / "bench"))

import kafka as W  # noqa: E402  (bench/kafka.py: the workload)
from obpipe import config  # noqa: E402
from obpipe.analysis.process import params  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402

N_SYMBOLS = 4
OUT_CAP = 1 << 18




def run_once(K, evc, ev, P) -> tuple[float, np.ndarray, np.ndarray]:
    """(thread CPU seconds, counters, output records) of one pass over the events ring."""
    A, F, G, QT, QV, QX = K.new_state(N_SYMBOLS)
    C = np.zeros(sc.STATS_WORDS, np.int64)
    outc = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
    out = np.zeros(OUT_CAP, sc.SIGNAL_DTYPE)
    outc[sc.RING_W_TAIL] = 1 << 40  # a consumer that never lags: nothing is dropped for room
    evc[sc.RING_W_TAIL] = 0
    evc[sc.RING_W_HEAD_CACHE] = 0
    t = time.thread_time()
    while K.process(evc, ev, outc, out, A, F, G, P, QT, QV, QX, C, 4096):
        pass
    dt = time.thread_time() - t
    return dt, C, out[:min(int(outc[sc.RING_W_HEAD]), OUT_CAP)]


def _same(a: tuple, b: tuple) -> None:
    (_, ca, oa), (_, cb, ob) = a, b
    assert (ca == cb).all(), (ca, cb)
    assert len(oa) == len(ob)
    for f in sc.SIGNAL_DTYPE.names:
        if f != "ts_detect_ns":
            assert np.array_equal(oa[f], ob[f], equal_nan=f == "fv"), f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main")
    ap.add_argument("--msgs", type=int, default=2_000_000, help="synthetic messages (bench/kafka.py --events-msgs)")
    ap.add_argument("--pairs", type=int, default=41)
    a = ap.parse_args()
    import psutil

    me = psutil.Process()
    me.cpu_affinity([me.cpu_affinity()[-1]])
    src = _ab.source_at(a.base, "analysis/_kernels.py")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "ak_base.py"
        old.write_text(src)
        mods = {"base": _ab.load("ak_base", old), "new": _ab.load("ak_new", REPO / "analysis" / "_kernels.py")}
        for name in dir(mods["base"]):  # one parameter vector serves both
            if name.startswith("P_") or name == "N_PARAMS":
                assert getattr(mods["base"], name) == getattr(mods["new"], name), name
        P = np.array(params(config.load().analysis), np.float64)
        evc, ev, n_ev = W.book_events(a.msgs)
        first = {k: run_once(K, evc, ev, P) for k, K in mods.items()}  # compile; and the outputs agree
        _same(first["base"], first["new"])
        times: dict[str, list[float]] = {"base": [], "new": []}
        for i in range(a.pairs):
            for k in (("base", "new") if i % 2 == 0 else ("new", "base")):
                dt, C, _ = run_once(mods[k], evc, ev, P)
                assert (C == first[k][1]).all()
                times[k].append(dt)
    ratios = [n / b for b, n in zip(times["base"], times["new"])]
    res = {"base": a.base, "events": n_ev, "pairs": a.pairs,
           "signals": int(first["new"][1][sc.ST_AN_SIGNALS]), "summaries": int(first["new"][1][sc.ST_AN_SUMMARIES]),
           "base_ns_per_event": round(statistics.median(times["base"]) / n_ev * 1e9, 2),
           "new_ns_per_event": round(statistics.median(times["new"]) / n_ev * 1e9, 2),
           "pair_ratio_new_over_base": round(statistics.median(ratios), 4),
           "pair_ratio_min": round(min(ratios), 4), "pair_ratio_max": round(max(ratios), 4)}
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
