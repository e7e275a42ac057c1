"""Same-run A/B of the feed kernels whose record words are packed by ``obpipe.ring.records``:
``feed_sim/_synth_kernels.py`` and ``feed_sim/wire_kernels.py`` at a git revision
(``--base``, default main) against the working tree's.  Not a test.

Three timings per kernel version: the synthetic generator (``generate_words``), packet
encoding (``encode_packets``) and the receiver (``rx_packet`` over every packet, from a
compiled loop).  The versions run in turn (base, new, new, base, ...), pinned to the last
core, into buffers allocated and touched once; a run's time is the thread's CPU time.  Outputs of base and new are asserted
byte-identical.  Prints, per timing, the median messages/s of each and the median of
the per-pair ratios base_time/new_time (> 1: new faster).
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

from numba import njit  # noqa: E402

from obpipe.feed_sim import synth  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402

SESSION = 7




def _rx_loop(WK):
    rx = WK.rx_packet

    @njit(nogil=True, _nrt=False)
    def loop(pk, nbytes, T, miss, C, allow, ctrl, rec):
        n = 0
        for p in range(pk.shape[0]):
            n += rx(pk[p], nbytes[p], 0, T, miss, C, allow, ctrl, rec, 1)
        return n

    return loop


def run_synth(SK, n: int, params, out: np.ndarray) -> tuple[float, np.ndarray]:
    """The first ``n`` messages of a fresh stream into ``out`` (preallocated and touched)."""
    words = out[:n].view(np.int64).reshape(n, -1)
    st = synth.new_state(params)
    t = time.thread_time()
    SK.generate_words(words, n, st.pi, st.pf, st.qty_tab, st.sym_cum, st.G, st.rng, st.ss, st.lv, st.od,
                      st.perm, st.pend)
    return time.thread_time() - t, out[:n].copy()


def run_encode(WK, md: np.ndarray, pk: np.ndarray, inner: int) -> tuple[float, np.ndarray]:
    """``inner`` encodings of all of ``md`` into ``pk`` (preallocated and touched: no page
    faults in the timing)."""
    n = len(md)
    t = time.thread_time()
    for _ in range(inner):
        n_pk = WK.encode_packets(md, 0, n, SESSION, 1, sc.WIRE_MAX_MSGS, pk)
    return time.thread_time() - t, pk[:n_pk].copy()


def run_rx(WK, loop, pk: np.ndarray, nbytes: np.ndarray, n_msgs: int, rec: np.ndarray,
           inner: int) -> tuple[float, np.ndarray]:
    """``inner`` fresh receivers taking every packet of ``pk`` into ``rec`` (a ring of
    at least ``n_msgs`` slots, preallocated and touched)."""
    dt = 0.0
    for _ in range(inner):
        ctrl = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
        T = np.zeros(WK.NT, np.int64)
        miss = np.zeros((WK.MAX_MISSING, 2), np.int64)
        C = WK.receiver_config()
        t = time.thread_time()
        got = loop(pk, nbytes, T, miss, C, WK.NO_ALLOW, ctrl, rec)
        dt += time.thread_time() - t
        assert got == n_msgs, (got, n_msgs)
    return dt, rec[:n_msgs].copy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main")
    ap.add_argument("--msgs", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--inner", type=int, default=10, help="encode / rx passes per timing (they are short)")
    a = ap.parse_args()
    import psutil

    me = psutil.Process()
    me.cpu_affinity([me.cpu_affinity()[-1]])
    mods = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, rel in (("sk", "feed_sim/_synth_kernels.py"), ("wk", "feed_sim/wire_kernels.py")):
            src = _ab.source_at(a.base, rel)
            old = Path(tmp) / f"{key}_base.py"
            old.write_text(src)
            mods[key] = {"base": _ab.load(f"{key}_base", old), "new": _ab.load(f"{key}_new", REPO / rel)}
    loops = {v: _rx_loop(mods["wk"][v]) for v in ("base", "new")}
    params = synth.SynthParams()
    n = a.msgs
    md = synth.generate(n, params)
    pk_buf = np.ones((n // sc.WIRE_MAX_MSGS + 1, sc.WIRE_PACKET_WORDS), np.int64)
    rec = np.ones(1 << max(1, (n - 1).bit_length()), sc.MD_DTYPE)
    out = np.ones(n, sc.MD_DTYPE)
    pk_ref = None
    for v in ("base", "new"):  # compile or load, and the inputs of the rx timing
        run_synth(mods["sk"][v], 1000, params, out)
        _, pk = run_encode(mods["wk"][v], md, pk_buf, 1)
        pk_ref = pk if pk_ref is None else pk_ref
    counts = pk_ref[:, 2] & 0xFFFF
    nbytes = sc.WIRE_HEADER_BYTES + counts * sc.WIRE_MSG_BYTES
    for v in ("base", "new"):
        run_rx(mods["wk"][v], loops[v], pk_ref[:2], nbytes[:2], int(counts[:2].sum()), rec, 1)
    times: dict[str, dict[str, list[float]]] = {k: {"base": [], "new": []} for k in ("synth", "encode", "rx")}
    for r in range(a.repeats):
        outs = {}
        for v in (("base", "new") if r % 2 == 0 else ("new", "base")):
            dt, out_s = run_synth(mods["sk"][v], n, params, out)
            times["synth"][v].append(dt)
            dt, out_e = run_encode(mods["wk"][v], md, pk_buf, a.inner)
            times["encode"][v].append(dt)
            dt, out_r = run_rx(mods["wk"][v], loops[v], pk_ref, nbytes, n, rec, a.inner)
            times["rx"][v].append(dt)
            outs[v] = (out_s, out_e, out_r)
        for x, y in zip(outs["base"], outs["new"]):
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8))
    for name, tv in times.items():
        per = n * (1 if name == "synth" else a.inner)
        res = {k: round(per / statistics.median(v)) for k, v in tv.items()}
        res["pair_ratio_base_time_over_new"] = round(statistics.median(
            b / x for b, x in zip(tv["base"], tv["new"])), 3)
        res["pair_ratios"] = sorted(round(b / x, 3) for b, x in zip(tv["base"], tv["new"]))
        print(name, json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
