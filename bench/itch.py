"""ITCH 5.0 benchmarks -> bench/results/itch.json (``make bench-itch``).

- ``itch_decode_msgs_per_s``: a generated day-like order-by-order stream
  (``feed_sim.l3_synth``, encoded as ITCH 5.0) in memory, decoded into preallocated
  MD_L3 records by the compiled decoder; medians of ``--repeats``.
- ``itch_l3_apply_msgs_per_s``: the same stream decoded and applied by the book writer's
  own loop (``_l3_kernels.drain_l3`` over a local md ring: per-order book, ladders,
  events, a snapshot per touched symbol per batch of 1,024), for 8 and 500 symbols, and
  the per-order book alone (``apply_batch_l3`` on whole chunks, no snapshots).
- ``pipeline_itch_max_zero_loss_msgs_per_s``: ``obpipe run --replay FILE.itch50`` (the
  feed sends MoldUDP64 over UDP on 127.0.0.1 through rx into the per-order book) at
  rising rates; the highest with nothing lost (no gap lost, no message lost).
- ``recovery``: the same at 1M msgs/s with every 1,000th packet dropped: gaps seen,
  healed, lost, messages recovered, request round trips.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import _result  # noqa: E402

from obpipe.engine import _book_kernels as BK  # noqa: E402
from obpipe.engine import _l3_kernels as LK  # noqa: E402
from obpipe.feed_sim import itch  # noqa: E402
from obpipe.feed_sim.l3_synth import L3SynthParams, generate_l3, message_mix  # noqa: E402
from obpipe.ring import schema  # noqa: E402

DAY = itch.session_midnight_ns(2019, 1, 30)
CHUNK = 1 << 16


def med(xs):
    return float(np.median(list(xs)))


def names(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def stream(n_msgs: int, n_sym: int, seed: int = 11):
    md = generate_l3(n_msgs, L3SynthParams(n_symbols=n_sym, seed=seed, start_ts_ns=DAY + 34_200 * 10**9))
    data, _ = itch.encode(md, names(n_sym), day_ns=DAY)
    return md, data


def bench_decode(data: np.ndarray, n_sym: int, repeats: int) -> dict:
    out = np.zeros(CHUNK, schema.MD_L3_DTYPE)
    rates = []
    for r in range(repeats + 1):
        dec = itch.Decoder(names(n_sym), day_ns=DAY, capacity=1)
        t0 = time.perf_counter()
        start, n_msgs = 0, 0
        while True:
            st, k = dec.run(data, len(data), out, start)
            start = int(dec.D[itch.D_POS])
            if st != itch.FULL:
                break
        dt = time.perf_counter() - t0
        n_msgs = dec.counters()["messages"]
        if r:  # (the first run compiles)
            rates.append(n_msgs / dt)
    return {"msgs_per_s": round(med(rates)), "runs": [round(x) for x in rates], "messages": n_msgs}


def _writer(n_sym: int, capacity: int, n_levels: int = 10):
    """The book writer's state over local arrays: md ring, events ring (emptied after each
    call, as an analysis that keeps up), snapshot words."""
    lad, S, C = BK.new_state([4096] * n_sym, n_levels)
    table = LK.new_table(capacity)
    ring_cap = 1 << 17
    md_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    md = np.zeros(ring_cap, schema.MD_L3_DTYPE)
    ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    ev = np.zeros(1 << 18, schema.EVENT_DTYPE)
    slot_words = schema.snapshot_slot_words(n_levels)
    snap_words = np.zeros(n_sym * slot_words + 64, np.int64)
    pay = np.zeros(schema.snapshot_dtype(n_levels).itemsize // 8, np.int64)
    hist = np.zeros(256 * 8, np.int64)
    args = (lad, S, C, ev, ev_ctrl, n_levels, np.zeros(n_sym + 1, np.int64), snap_words, 0, slot_words, pay,
            np.zeros(n_levels, np.int64), np.zeros(n_levels, np.int64), np.zeros(schema.STATS_WORDS, np.int64),
            hist, np.zeros(len(hist), np.int64))
    return md_ctrl, md, ev_ctrl, args, table, C


def bench_apply(data: np.ndarray, n_sym: int, repeats: int, capacity: int) -> dict:
    """Decode + drain_l3 (the writer's loop), chunk by chunk through a local md ring: the
    decoder writes into the ring's free slots, as rx does (no copy)."""
    rates, alone = [], []
    for r in range(repeats + 1):
        dec = itch.Decoder(names(n_sym), day_ns=DAY, capacity=1)
        md_ctrl, md, ev_ctrl, args, table, C = _writer(n_sym, capacity)
        mask = len(md) - 1
        head = 0
        start = 0
        t0 = time.perf_counter()
        while True:
            i0 = head & mask  # (CHUNK divides the ring: a chunk never wraps)
            st, k = dec.run(data, len(data), md[i0:i0 + CHUNK], start)
            start = int(dec.D[itch.D_POS])
            head += k
            md_ctrl[schema.RING_W_HEAD] = head
            LK.drain_l3(md_ctrl, md, 1024, k, *args, 0, 0, *table)
            ev_ctrl[schema.RING_W_TAIL] = ev_ctrl[schema.RING_W_HEAD]
            if st != itch.FULL:
                break
        dt = time.perf_counter() - t0
        applied = int(C[schema.ST_BOOK_MSGS])
        if r:
            rates.append(applied / dt)
    recs, _, _ = itch.decode(data, names(n_sym), day_ns=DAY)
    for r in range(repeats + 1):  # the per-order book alone: whole chunks, no snapshots
        lad, S, C2 = BK.new_state([4096] * n_sym, 10)
        O, Hd, Hx, E = LK.new_table(capacity)
        ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
        ev = np.zeros(1 << 18, schema.EVENT_DTYPE)
        dirty = np.zeros(n_sym + 1, np.int64)
        t0 = time.perf_counter()
        for j in range(0, len(recs), CHUNK):
            LK.apply_batch_l3(recs, j, min(CHUNK, len(recs) - j), -1, lad, S, C2, ev, ev_ctrl, dirty, O, Hd, Hx, E)
            ev_ctrl[schema.RING_W_TAIL] = ev_ctrl[schema.RING_W_HEAD]
            S[:, BK.B_DIRTY] = 0
            dirty[0] = 0
        dt = time.perf_counter() - t0
        if r:
            alone.append(len(recs) / dt)
    return {"msgs_per_s": round(med(rates)), "runs": [round(x) for x in rates], "applied": applied,
            "book_alone_msgs_per_s": round(med(alone)), "peak_live_orders": int(C[schema.ST_BOOK_L3_PEAK]),
            "unknown_refs": int(C[schema.ST_BOOK_L3_UNKNOWN])}


def _run(path: Path, n_sym: int, rate: int, *extra: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="obpipe-bench-itch") as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f'[instance]\nname = "bitch{os.getpid()}"\n[kafka]\nenabled = false\n[redis]\nenabled = false\n'
                       "[ticks]\nenabled = false\n[rings]\nmd_capacity = 65536\n")
        p = subprocess.run([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--json", "--quiet",
                            "--replay", str(path), "--symbol", ",".join(names(n_sym)), "--rate", str(rate), *extra],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    j = json.loads(p.stdout)
    m = j["rx"]["mold"]
    return {"rate": rate or "max", "applied": j["applied"], "feed_msgs_per_s": j["feed_msgs_per_s"],
            "gaps_seen": m["gaps_seen"], "gaps_healed": m["gaps_healed"], "gaps_lost": m["gaps_lost"],
            "messages_lost": m["messages_lost"], "recovered": m["recovered"], "requests": m["requests"],
            "round_trip_mean_us": round(m["round_trip_mean_ns"] / 1000, 1),
            "round_trip_max_us": round(m["round_trip_max_ns"] / 1000, 1), "kernel_drops": j["rx"]["kernel_drops"],
            "events_dropped": j["book"]["events_dropped"], "latency_ns": j["latency_ns"],
            "cpu_percent": j["cpu_percent"]}


def bench_pipeline(tmp: str, n_msgs: int, n_sym: int, rates: list[int], recovery_rate: int, repeats: int) -> dict:
    md, data = stream(n_msgs, n_sym, seed=5)
    path = Path(tmp) / "01302019.bench.itch50"
    path.write_bytes(data.tobytes())
    runs, best = [], 0
    for rate in rates:
        rs = [_run(path, n_sym, rate) for _ in range(repeats)]
        ok = all(r["messages_lost"] == 0 and r["gaps_lost"] == 0 and r["applied"] == n_msgs for r in rs)
        print(f"  rate {rate or 'max'}: {[r['feed_msgs_per_s'] for r in rs]} msgs/s sent, lost "
              f"{[r['messages_lost'] for r in rs]}, gaps {[r['gaps_seen'] for r in rs]}", file=sys.stderr, flush=True)
        runs.append({"rate": rate or "max", "zero_loss": ok, "runs": rs})
        if ok:
            best = max(best, int(med(r["feed_msgs_per_s"] for r in rs)))
        else:
            break
    rec = [_run(path, n_sym, recovery_rate, "--drop-every", "1000") for _ in range(repeats)]
    print(f"  recovery at {recovery_rate}: healed {[r['gaps_healed'] for r in rec]} of "
          f"{[r['gaps_seen'] for r in rec]}, lost {[r['gaps_lost'] for r in rec]}", file=sys.stderr, flush=True)
    return {"pipeline_itch_max_zero_loss_msgs_per_s": best, "pipeline_runs": runs,
            "recovery": {"rate": recovery_rate, "drop_every": 1000,
                         "gaps_seen": [r["gaps_seen"] for r in rec], "gaps_healed": [r["gaps_healed"] for r in rec],
                         "gaps_lost": [r["gaps_lost"] for r in rec], "messages_lost": [r["messages_lost"] for r in rec],
                         "recovered": [r["recovered"] for r in rec],
                         "round_trip_mean_us": [r["round_trip_mean_us"] for r in rec],
                         "round_trip_max_us": [r["round_trip_max_us"] for r in rec], "runs": rec},
            "pipeline_workload": {"messages": n_msgs, "symbols": n_sym, "bytes": int(len(data))}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--msgs", type=int, default=5_000_000, help="messages of the in-memory streams")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--symbols", default="8,500", help="symbol counts of the in-memory streams")
    ap.add_argument("--capacity", type=int, default=1 << 22, help="order table capacity")
    ap.add_argument("--pipeline-msgs", type=int, default=4_000_000)
    ap.add_argument("--pipeline-symbols", type=int, default=8)
    ap.add_argument("--rates", default="1000000,2000000,3000000,4000000,0", help="pipeline rates (0: max)")
    ap.add_argument("--recovery-rate", type=int, default=1_000_000)
    ap.add_argument("--pipeline-repeats", type=int, default=2)
    ap.add_argument("--parts", default="memory,pipeline")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "itch.json"))
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    res = _result.header(a.repeats)
    t_all = time.perf_counter()
    if "memory" in parts:
        res["memory"] = {}
        for n_sym in [int(x) for x in a.symbols.split(",")]:
            md, data = stream(a.msgs, n_sym)
            d = bench_decode(data, n_sym, a.repeats)
            ap_ = bench_apply(data, n_sym, a.repeats, a.capacity)
            mix = {k: round(v, 4) for k, v in message_mix(md).items()}
            res["memory"][str(n_sym)] = {"messages": a.msgs, "bytes": int(len(data)), "mix": mix, "decode": d,
                                         "decode_apply": ap_}
            print(f"{n_sym} symbols: decode {d['msgs_per_s']:,} msgs/s; decode + writer loop "
                  f"{ap_['msgs_per_s']:,}; per-order book alone {ap_['book_alone_msgs_per_s']:,}", file=sys.stderr,
                  flush=True)
        first = str(int(a.symbols.split(",")[0]))
        res["itch_decode_msgs_per_s"] = res["memory"][first]["decode"]["msgs_per_s"]
        res["itch_l3_apply_msgs_per_s"] = res["memory"][first]["decode_apply"]["msgs_per_s"]
    if "pipeline" in parts:
        with tempfile.TemporaryDirectory(prefix="obpipe-bench-itch") as tmp:
            res.update(bench_pipeline(tmp, a.pipeline_msgs, a.pipeline_symbols,
                                      [int(x) for x in a.rates.split(",")], a.recovery_rate, a.pipeline_repeats))
    res["seconds"] = round(time.perf_counter() - t_all)
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("memory", "pipeline_runs", "recovery")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
