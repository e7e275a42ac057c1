"""Matching-engine benchmark.  Writes ``bench/results/matching.json``.  Not a test.

The background C++ engine's three workloads (../shared/seeds/003_*.txt "Run
Benchmarks"), 1M generated orders each, one symbol:

- ``mixed``: 5% cancels, 10% market orders, 85% limit orders;
- ``limit``: limit orders only;
- ``cancel_heavy``: 30% cancels, 10% market orders, 60% limit orders.

Limit prices are normal around a mid of 10,000 ticks (sd 6 ticks, buyers and sellers
alike), so about half of them cross and trade; quantities 1-100; a cancel targets one
of the last 1,000 orders sent (live or not: a dead one is rejected, as it would be).

The kernel runs pinned to the last core (as the book writer is; core 0 takes the VM's
interrupts).  ``*_orders_per_s``: requests / wall time of the compiled loop (``_match_kernels.process``
over 64k-request chunks, outputs drained between chunks), median of ``--repeats`` runs
on a fresh engine each.  ``*_latency_ns``: each request's own cost read from the CPU's
cycle counter inside the compiled loop (a separate run: the two reads cost ~15 ns,
which are in these figures), converted with a calibrated cycles/ns; percentiles over
all requests of the median run.

``tcp_rtt_us``: ``obpipe exchange`` (journal on, fsync ``batch`` and ``none``) and
``obpipe exchange-client`` with 1 and 50 clients, one request in flight per client: the
time from a request's send to its response's read, both ends in Python; and
``1_compiled_client``: the same from the compiled client loop
(``exchange-client --compiled``, new orders only), which leaves out the client's Python.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from obpipe.exchange import _match_kernels as MK  # noqa: E402
from obpipe.exchange.server import banner_port  # noqa: E402
from obpipe.exchange.client import Traders, probe  # noqa: E402
from obpipe.exchange.matching import MatchingEngine  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402

MID = 10_000
CHUNK = 4096
WORKLOADS = {"mixed": (0.05, 0.10), "limit": (0.0, 0.0), "cancel_heavy": (0.30, 0.10)}


def generate(n: int, cancel: float, market: float, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    c = np.zeros(n, sc.ORDER_IN_DTYPE)
    u = r.random(n)
    is_cancel = u < cancel
    is_market = (u >= cancel) & (u < cancel + market)
    is_new = ~is_cancel
    c["type"] = np.where(is_cancel, sc.OE_CANCEL, sc.OE_NEW)
    c["side"] = r.integers(0, 2, n)
    c["qty"] = np.where(is_new, r.integers(1, 101, n), 0)
    c["ord_type"] = np.where(is_market, sc.OT_MARKET, sc.OT_LIMIT)
    px = MID + np.rint(r.normal(0, 6, n)).astype(np.int64)
    c["px_tick"] = np.where(is_new & ~is_market, px, 0)
    ids_before = np.cumsum(is_new) - is_new  # new orders sent before each request
    target = ids_before - r.integers(0, 1000, n)
    c["order_id"] = np.where(is_cancel, np.maximum(target, 1), 0)
    return c


def _engine() -> MatchingEngine:
    return MatchingEngine(1, band_ticks=1 << 16, capacity=1 << 20, bases=[MID - (1 << 15)], max_batch=CHUNK)


def run_once(cmds: np.ndarray, lat: np.ndarray) -> tuple[float, MatchingEngine]:
    e = _engine()
    n = len(cmds)
    t = time.perf_counter()
    i = 0
    while i < n:
        e.N[:] = 0
        i += MK.process(cmds, i, min(CHUNK, n - i), 0, e.E, e.S, e.L, e.O, e.H, e.repw, e.racct, e.mdw, e.N,
                        lat)
    return time.perf_counter() - t, e


def bench_workload(name: str, n: int, repeats: int, cpn: float) -> dict:
    cancel, market = WORKLOADS[name]
    cmds = generate(n, cancel, market, seed=42)
    run_once(cmds[:1000], np.zeros(0, np.int64))  # load the kernel
    no_lat = np.zeros(0, np.int64)
    times, trades = [], 0
    for _ in range(repeats):
        dt, e = run_once(cmds, no_lat)
        times.append(dt)
        trades = int(e.E[MK.E_TRADES])
    lats = []
    for _ in range(repeats):
        lat = np.zeros(n, np.int64)
        run_once(cmds, lat)
        lats.append(lat)
    lat_ns = sorted(lats, key=lambda a: float(np.median(a)))[len(lats) // 2] / cpn
    pct = {k: round(float(np.percentile(lat_ns, q)), 1) for k, q in
           (("p50", 50), ("p95", 95), ("p99", 99), ("p99_9", 99.9))}
    pct["mean"] = round(float(lat_ns.mean()), 1)
    e_counts = {k: int(e.E[i]) for i, k in MK.E_NAMES.items()}
    return {f"{name}_orders_per_s": round(n / statistics.median(times)),
            f"{name}_latency_ns": pct,
            f"{name}_runs_orders_per_s": [round(n / t) for t in times],
            f"{name}_trades": trades,
            f"{name}_engine": e_counts}


def _exchange(tmp: str, fsync: str):
    cfg = Path(tmp) / f"x-{fsync}.toml"
    cfg.write_text(f'[book]\nsymbols = ["A"]\n[exchange]\nport = 0\njournal = "{tmp}/j-{fsync}"\nfsync = "{fsync}"\n'
                   'allow_anonymous = true\n')
    err = open(Path(tmp) / f"x-{fsync}.err", "w+")
    p = subprocess.Popen([sys.executable, "-m", "obpipe", "exchange", "--config", str(cfg)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        err.seek(0)
        text = err.read()
        port = banner_port(text)
        if port is not None:
            return p, port
        if p.poll() is not None:
            raise RuntimeError(f"exchange exited: {text}")
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("exchange did not start")


def bench_tcp(orders_1: int, orders_50: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fsync in ("batch", "none"):
            p, port = _exchange(tmp, fsync)
            try:
                compiled = probe("127.0.0.1", port, orders=orders_1, seed=3)
                one = Traders("127.0.0.1", port, clients=1, orders=orders_1, window=1, seed=1, mix="mixed").run()
                fifty = Traders("127.0.0.1", port, clients=50, orders=orders_50, window=1, seed=2,
                                mix="mixed").run()
            finally:
                p.send_signal(2)
                p.wait(timeout=60)
            out[f"fsync_{fsync}"] = {"1_compiled_client": {**compiled["rtt_us"],
                                                           "requests_per_s": compiled["requests_per_s"]},
                                     "1_client": {**one["rtt_us"], "requests_per_s": one["requests_per_s"]},
                                     "50_clients": {**fifty["rtt_us"], "requests_per_s": fifty["requests_per_s"]}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tcp-orders", type=int, default=10_000, help="requests of the 1-client TCP run")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "matching.json"))
    a = ap.parse_args()
    import psutil

    me = psutil.Process()
    all_cores = me.cpu_affinity()
    me.cpu_affinity([all_cores[-1]])  # the kernel runs on the last core, as the book writer does (core 0 takes the interrupts)
    cpn = float(MK.cycles_per_ns(200_000_000))
    res = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "orders": a.orders,
           "repeats": a.repeats, "cpu_cycles_per_ns": round(cpn, 3), "cpu_count": os.cpu_count()}
    for name in WORKLOADS:
        r = bench_workload(name, a.orders, a.repeats, cpn)
        res.update(r)
        print(f"{name}: {r[f'{name}_orders_per_s']:,} orders/s, latency ns {r[f'{name}_latency_ns']}", flush=True)
    res["cpp_reference_mixed_orders_per_s"] = 8_518_668
    res["mixed_vs_cpp_reference"] = round(res["mixed_orders_per_s"] / 8_518_668, 3)
    me.cpu_affinity(all_cores)  # exchange and clients: every core
    res["pinned_core"] = all_cores[-1]
    res["tcp_rtt_us"] = bench_tcp(a.tcp_orders, max(200, a.tcp_orders // 10))
    print(json.dumps(res["tcp_rtt_us"]), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
