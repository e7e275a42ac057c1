"""Same-run A/B of the matching kernel: ``exchange/_match_kernels.py`` at a git revision
(``--base``, default main) against the working tree's, on bench/matching.py's three
workloads (1M requests each).  Not a test.

The two kernels run in turn (base, new, base, new, ...) on a fresh engine each, pinned
to the last core; a run's time is the thread's CPU time (the machine is often shared:
wall time swung 1M-25M orders/s between runs there).  Prints, per workload, the median
orders/s of each and the median of the per-pair ratios new/base.  ``--accounts``: every
request from accounts 1-8 (self-trade prevention live; bench/matching.py uses account 0).
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

import matching as B  # noqa: E402  (bench/matching.py)
from obpipe.ring import schema as sc  # noqa: E402




def run_once(MK, cmds: np.ndarray, cap: int = 1 << 20, width: int = 1 << 16) -> tuple[float, int]:
    E, S, L, O, H = MK.new_state(1, width, cap, [B.MID - width // 2])
    per = 6 * B.CHUNK
    rep = np.zeros(2 * cap + per, sc.ORDER_OUT_DTYPE)
    racct = np.zeros(len(rep), np.int64)
    md = np.zeros(cap + per, sc.WIRE_MSG_DTYPE)
    repw, mdw = rep.view(np.int64).reshape(-1, 4), md.view(np.int64).reshape(-1, 4)
    N, lat = np.zeros(3, np.int64), np.zeros(0, np.int64)
    n, i = len(cmds), 0
    t = time.thread_time()
    while i < n:
        N[:] = 0
        i += MK.process(cmds, i, min(B.CHUNK, n - i), 0, E, S, L, O, H, repw, racct, mdw, N, lat)
    return time.thread_time() - t, int(E[MK.E_TRADES])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main")
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--accounts", action="store_true")
    a = ap.parse_args()
    import psutil

    me = psutil.Process()
    me.cpu_affinity([me.cpu_affinity()[-1]])
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "mk_base.py"
        src = _ab.source_at(a.base, "exchange/_match_kernels.py", "engine/_match_kernels.py")  # (engine/: before issue 14)
        old.write_text(src)
        mods = {"base": _ab.load("mk_base", old), "new": _ab.load("mk_new", REPO / "exchange" / "_match_kernels.py")}
        for name, (cancel, market) in B.WORKLOADS.items():
            cmds = B.generate(a.orders, cancel, market, seed=42)
            if a.accounts:
                cmds["account"] = np.random.default_rng(1).integers(1, 9, a.orders)
            for MK in mods.values():
                run_once(MK, cmds[:1000])  # compile or load
            times: dict[str, list[float]] = {"base": [], "new": []}
            trades = {}
            for _ in range(a.repeats):
                for k, MK in mods.items():
                    dt, trades[k] = run_once(MK, cmds)
                    times[k].append(dt)
            assert trades["base"] == trades["new"], trades
            res = {k: round(a.orders / statistics.median(v)) for k, v in times.items()}
            res["pair_ratio_new_over_base"] = round(statistics.median(
                b / n for b, n in zip(times["base"], times["new"])), 3)
            print(name, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
