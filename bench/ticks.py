"""Tick store benchmark (issue 16).  Writes ``bench/results/ticks.json``.  Not a test.

- ``recorder_rows_per_s``: the sustained insert rate into embedded ClickHouse through
  the recorder's path, ``TickStore.insert_events`` on ``EVENT_DTYPE`` batches of
  ``[ticks] flush_rows`` (65,536) events, the events a Book emits for a synthetic flow
  (bench/kafka.py ``book_events``), into a fresh store per run; the clock includes the
  merges the engine runs meanwhile.  Also batches of 10 k and 100 k; the sizes
  alternate within each repeat; medians.
- ``book_rate_ratio_with_recorder``: bench/kafka.py's ``_pipeline`` (a real ``obpipe
  run`` fed as fast as possible, analysis and Kafka on, Redis off) with ``[ticks]
  enabled = true`` (a temporary store) / ``enabled = false``, alternated, medians.  From
  each recording run's final JSON: ``ticks.events`` against ``analysis.ticks_relayed``,
  ``ticks_dropped``, and the rows found in the store afterwards.  Also at a paced rate.
- ``query_ms_p*``: a store of ``--store-quotes`` synthetic quotes (and a tenth as many
  trades) over one trading day, generated with numpy straight into ``EVENT_DTYPE`` and
  inserted with ``insert_events`` in ~1 M batches; then ``--queries`` random (a) one
  symbol's 5-minute quotes, (b) one symbol's day of 1-minute bars, timed through
  ``TickStore.quotes`` / ``bars`` (Arrow result included); once as inserted, once after
  ``optimize()``.
- ``bytes_per_quote``: ``bytes_on_disk()["quotes"] / counts()["quotes"]`` after
  ``optimize()``, for the book's events (the headline) and for the big synthetic store.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import _result  # noqa: E402  (the result's header)
import kafka as K  # noqa: E402  (bench/kafka.py: book_events, the pipeline runs)
from obpipe import config  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402
from obpipe.ticks.store import TickStore  # noqa: E402

FLUSH_ROWS = config.TicksConfig().flush_rows  # the recorder's default batch
DAY0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z: the synthetic store's day
OPEN, CLOSE = DAY0 + 34_200 * 10**9, DAY0 + 57_600 * 10**9  # 09:30-16:00 UTC
MIN5 = 300 * 10**9
VERSIONS: dict[str, str] = {}  # chdb's and ClickHouse's, from the first store opened


def med(xs):
    return statistics.median(xs)


def pct(xs, p):
    return float(np.percentile(np.asarray(xs), p))


@contextlib.contextmanager
def fresh_store(tmp: str, name: str):
    """A new store in ``tmp/name``, closed and deleted afterwards (chdb: one directory
    per process at a time, so each is closed before the next opens)."""
    path = os.path.join(tmp, name)
    st = TickStore.open(path)
    VERSIONS.update(st.versions)
    try:
        yield st
    finally:
        st.close()
        shutil.rmtree(path, ignore_errors=True)


def per_row(st: TickStore) -> dict:
    """Bytes on disk per stored quote and per trade, after merging every table."""
    st.optimize(timeout_s=120)
    b, n = st.bytes_on_disk(), st.counts()
    return {"bytes_per_quote": round(b["quotes"] / n["quotes"], 2),
            "bytes_per_trade": round(b["trades"] / n["trades"], 2) if n["trades"] else None,
            "quotes": n["quotes"], "trades": n["trades"], "bytes": b}


# --- 1. insert rate ------------------------------------------------------------------

def bench_insert(tmp: str, n_msgs: int, sizes: list[int], repeats: int, symbols: tuple[str, ...]) -> dict:
    _, ring, n_ev = K.book_events(n_msgs)
    ev = ring[:n_ev].copy()
    del ring
    nq = int(np.count_nonzero(ev["kind"] == sc.EV_BBO))
    print(f"insert: {n_ev:,} book events ({nq:,} quotes) from {n_msgs:,} messages", file=sys.stderr, flush=True)
    with fresh_store(tmp, "warm") as st:  # the engine's first start and the Arrow path's first use
        st.insert_events(ev[:FLUSH_ROWS], symbols)
    runs = {b: [] for b in sizes}
    cpu = {b: [] for b in sizes}
    sizes_on_disk = None
    for r in range(repeats):
        for b in sizes:
            with fresh_store(tmp, f"ins{r}_{b}") as st:
                c0, t0 = time.process_time(), time.perf_counter()
                got = [0, 0]
                for i in range(0, n_ev, b):
                    q, t = st.insert_events(ev[i:i + b], symbols)
                    got[0] += q
                    got[1] += t
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                assert sum(got) == n_ev and st.skipped == {"bad_symbol": 0, "bad_kind": 0, "bad_side": 0}, \
                    (got, n_ev, st.skipped)
                runs[b].append(n_ev / dt)
                cpu[b].append(dc / dt)
                print(f"  batch {b:,}: {n_ev / dt:,.0f} rows/s (cpu {dc / dt:.2f} cores)", file=sys.stderr, flush=True)
                if r == repeats - 1 and b == FLUSH_ROWS:
                    n = st.counts()
                    assert (n["quotes"], n["trades"]) == tuple(got), (n, got)
                    sizes_on_disk = per_row(st)
    by = {str(b): {"rows_per_s": round(med(runs[b])), "runs_rows_per_s": [round(x) for x in runs[b]],
                   "cpu_cores": round(med(cpu[b]), 2)} for b in sizes}
    out = {"recorder_rows_per_s": by[str(FLUSH_ROWS)]["rows_per_s"] if FLUSH_ROWS in sizes else None,
           "recorder_batch_rows": FLUSH_ROWS, "insert_rows_per_s_by_batch": by,
           "insert_workload": {"messages": n_msgs, "events": n_ev, "quotes": nq, "trades": n_ev - nq,
                               "symbols": len(symbols), "source": "bench/kafka.py book_events"}}
    if sizes_on_disk:
        out["bytes_per_quote"] = sizes_on_disk["bytes_per_quote"]
        out["bytes_per_trade"] = sizes_on_disk["bytes_per_trade"]
        out["book_events_store"] = sizes_on_disk
    return out


# --- 2. book rate with / without the recorder -------------------------------------------

class _Capture:
    """Stands in for bench/kafka.py's ``subprocess`` so the run's whole final JSON is
    kept (``_pipeline`` returns a digest without the ticks section)."""

    last = None

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def run(self, *a, **kw):
        self.last = subprocess.run(*a, **kw)
        return self.last


def _run(on: bool, rate: int, count: int, tag: str, tmp: str) -> dict:
    where = os.path.join(tmp, f"rec{tag}")
    extra = f'[redis]\nenabled = false\n[ticks]\nenabled = {str(on).lower()}\nwhere = "{where}"\n'
    saved = K.subprocess
    K.subprocess = cap = _Capture()
    try:
        s = K._pipeline(True, rate, count, tag, extra)
        j = json.loads(cap.last.stdout)
    finally:
        K.subprocess = saved
    an = j["analysis"]
    s.update(ticks_relayed=an.get("ticks_relayed", 0), ticks_dropped=an.get("ticks_dropped", 0),
             analysis_events=an["events"], book_events=j["book"]["events"], feed_seconds=j["feed_seconds"])
    if on:
        tk = j["ticks"]
        s["ticks"] = {k: tk[k] for k in ("events", "quotes", "trades", "depth", "flushes", "errors", "pending",
                                         "state")}
        with contextlib.closing(TickStore.open(where)) as st:
            n = st.counts()
        s["stored"] = {"quotes": n["quotes"], "trades": n["trades"], "depth": n["depth"]}
        s["relayed_all_stored"] = (tk["events"] == an["ticks_relayed"] == n["quotes"] + n["trades"]
                                   and tk["errors"] == 0 and tk["pending"] == 0)
    shutil.rmtree(where, ignore_errors=True)
    return s


def bench_ratio(tmp: str, count: int, repeats: int, paced: int, paced_count: int, paced_repeats: int) -> dict:
    res = {}
    arms = [("max", 0, count, repeats)] + ([("paced", paced, paced_count, paced_repeats)] if paced_repeats else [])
    for label, rate, n, reps in arms:
        acc = {"on": [], "off": []}
        for r in range(reps):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                s = _run(name == "on", rate, n, f"t{label[0]}{r}{name}", tmp)
                acc[name].append(s)
                extra = (f", ticks: relayed {s['ticks_relayed']:,} stored {s['ticks']['events']:,} dropped "
                         f"{s['ticks_dropped']:,}" if name == "on" else "")
                print(f"  {label} {name}: {s['applied_msgs_per_s']:,} msgs/s applied, lost {s['lost']:,}, events "
                      f"dropped {s['events_dropped']:,}{extra}, cpu {s['cpu_percent']}", file=sys.stderr, flush=True)
        m = {k: med(x["applied_msgs_per_s"] for x in v) for k, v in acc.items()}
        on = acc["on"]
        res[label] = {"rate": rate or "max", "messages": n, "ratio": round(m["on"] / m["off"], 3),
                      "msgs_per_s": {k: round(v) for k, v in m.items()},
                      "ticks_relayed_median": round(med(x["ticks_relayed"] for x in on)),
                      "ticks_dropped_median": round(med(x["ticks_dropped"] for x in on)),
                      "ticks_dropped_share_median": round(med(x["ticks_dropped"] / max(1, x["analysis_events"])
                                                              for x in on), 3),
                      "relayed_all_stored": all(x["relayed_all_stored"] for x in on), "runs": acc}
    out = {"book_rate_ratio_with_recorder": res["max"]["ratio"],
           "ticks_events_equal_relayed": res["max"]["relayed_all_stored"],
           "ticks_dropped": res["max"]["ticks_dropped_median"], "pipeline": res}
    if "paced" in res:
        out["book_rate_ratio_with_recorder_paced"] = res["paced"]["ratio"]
        out["ticks_dropped_paced"] = res["paced"]["ticks_dropped_median"]
    return out


# --- 3. queries over a big store ----------------------------------------------------------

def synth_chunk(i0: int, n: int, total: int, n_sym: int, trade_share: float, rng, mid: np.ndarray) -> np.ndarray:
    """Events ``i0 .. i0+n`` of ``total`` spread evenly over the session: random symbol,
    a trade with probability ``trade_share`` (else a quote), each symbol's mid a random
    walk continued from ``mid`` (updated), spread 1-3 ticks, sizes 1-2,000 lots."""
    ev = np.zeros(n, sc.EVENT_DTYPE)
    idx = np.arange(i0, i0 + n, dtype=np.int64)
    ev["seq"] = idx + 1
    ev["ts_exch_ns"] = OPEN + idx * ((CLOSE - OPEN) // total)  # (idx * span would overflow int64)
    sym = rng.integers(0, n_sym, n, dtype=np.uint16)
    ev["symbol"] = sym
    trade = rng.random(n) < trade_share
    ev["kind"] = np.where(trade, sc.EV_TRADE, sc.EV_BBO)
    step = rng.choice(np.array([-1, 0, 0, 0, 0, 0, 0, 1], np.int64), n)
    m = np.empty(n, np.int64)
    for s in range(n_sym):
        w = sym == s
        c = np.cumsum(step[w]) + mid[s]
        m[w] = c
        if len(c):
            mid[s] = c[-1]
    spread = rng.integers(1, 4, n)
    bid, ask = m - spread // 2, m - spread // 2 + spread
    ev["bid_px_tick"], ev["ask_px_tick"] = bid, ask
    ev["bid_qty"], ev["ask_qty"] = rng.integers(1, 2001, n), rng.integers(1, 2001, n)
    side = rng.integers(0, 2, n).astype(np.uint8)  # SIDE_BID (0): buyer-initiated, at the ask
    ev["side"] = np.where(trade, side, 0)
    ev["trade_px_tick"] = np.where(trade, np.where(side == sc.SIDE_BID, ask, bid), sc.NO_PX)
    ev["trade_qty"] = np.where(trade, rng.integers(1, 501, n), 0)
    return ev


def _time_queries(st: TickStore, n: int, symbols: tuple[str, ...], seed: int, warm: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    jobs = {"quotes_5min": lambda s, t: st.quotes(s, t, t + MIN5),
            "bars_1m_day": lambda s, t: st.bars(s, DAY0, DAY0 + 86_400 * 10**9, "1m")}
    for name, q in jobs.items():
        ms, rows = [], []
        for k in range(warm + n):
            s = symbols[int(rng.integers(len(symbols)))]
            t = int(rng.integers(OPEN, CLOSE - MIN5))
            t0 = time.perf_counter()
            tab = q(s, t)
            dt = (time.perf_counter() - t0) * 1e3
            if k >= warm:
                ms.append(dt)
                rows.append(tab.num_rows)
        out[name] = {"p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2),
                     "rows_median": round(med(rows))}
    return out


def bench_query(tmp: str, quotes: int, batch: int, n_sym: int, trade_share: float, queries: int) -> dict:
    symbols = tuple(f"S{i:02d}" for i in range(n_sym))
    total = int(round(quotes / (1 - trade_share)))
    rng = np.random.default_rng(7)
    mid = np.full(n_sym, 100_000, np.int64)
    gen = ins = 0.0
    got = [0, 0]
    with fresh_store(tmp, "big") as st:
        c0 = time.process_time()
        for i in range(0, total, batch):
            t0 = time.perf_counter()
            ev = synth_chunk(i, min(batch, total - i), total, n_sym, trade_share, rng, mid)
            t1 = time.perf_counter()
            q, t = st.insert_events(ev, symbols)
            gen, ins = gen + t1 - t0, ins + time.perf_counter() - t1
            got[0] += q
            got[1] += t
        cpu = time.process_time() - c0
        print(f"query store: {got[0]:,} quotes + {got[1]:,} trades generated in {gen:.1f} s, inserted in {ins:.1f} s "
              f"({sum(got) / ins:,.0f} rows/s)", file=sys.stderr, flush=True)
        parts = int(st._backend().command(
            "SELECT count() FROM system.parts WHERE database = 'ticks' AND table = 'quotes' AND active").strip())
        as_inserted = _time_queries(st, queries, symbols, seed=11)
        print(f"  as inserted ({parts} quotes parts): {as_inserted}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        size = per_row(st)
        opt_s = time.perf_counter() - t0
        parts_after = int(st._backend().command(
            "SELECT count() FROM system.parts WHERE database = 'ticks' AND table = 'quotes' AND active").strip())
        merged = _time_queries(st, queries, symbols, seed=12)
        print(f"  after optimize ({opt_s:.1f} s, {parts_after} parts): {merged}; {size['bytes_per_quote']} B/quote",
              file=sys.stderr, flush=True)
        n = st.counts()
        assert (n["quotes"], n["trades"]) == tuple(got), (n, got)
    return {"query_ms_p99": {k: v["p99_ms"] for k, v in as_inserted.items()},
            "query_ms_p50": {k: v["p50_ms"] for k, v in as_inserted.items()},
            "query_store": {"quotes": got[0], "trades": got[1], "symbols": n_sym, "day": "2026-01-01 09:30-16:00 UTC",
                            "insert_batch": batch, "generate_s": round(gen, 1), "insert_s": round(ins, 1),
                            "insert_rows_per_s": round(sum(got) / ins), "insert_cpu_cores": round(cpu / (gen + ins), 2),
                            "queries": queries, "quotes_parts_as_inserted": parts, "optimize_s": round(opt_s, 1),
                            "as_inserted": as_inserted, "after_optimize": merged, "bars_1m": n["bars_1m"],
                            "bytes_per_quote": size["bytes_per_quote"], "bytes_per_trade": size["bytes_per_trade"],
                            "bytes": size["bytes"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--insert-msgs", type=int, default=4_000_000, help="messages whose book events are inserted")
    ap.add_argument("--batches", default=f"10000,{FLUSH_ROWS},100000", help="insert batch sizes (events)")
    ap.add_argument("--repeats", type=int, default=3, help="insert runs per batch size")
    ap.add_argument("--pipeline-msgs", type=int, default=10_000_000, help="messages per as-fast-as-possible run")
    ap.add_argument("--pipeline-repeats", type=int, default=5, help="on/off alternations")
    ap.add_argument("--paced-rate", type=int, default=1_000_000)
    ap.add_argument("--paced-msgs", type=int, default=5_000_000)
    ap.add_argument("--paced-repeats", type=int, default=3, help="0: no paced runs")
    ap.add_argument("--store-quotes", type=int, default=50_000_000, help="quotes in the query store")
    ap.add_argument("--store-batch", type=int, default=1_000_000)
    ap.add_argument("--store-symbols", type=int, default=8)
    ap.add_argument("--trade-share", type=float, default=0.1, help="share of trades among the query store's events")
    ap.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    ap.add_argument("--parts", default="insert,pipeline,query", help="which of insert,pipeline,query to run")
    ap.add_argument("--tmp", default=None, help="where the temporary stores go (default: the system's temp dir)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ticks.json"))
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    res = _result.header(a.repeats)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="obpipe-bench-ticks", dir=a.tmp) as tmp:
        if "insert" in parts:
            symbols = tuple(config.load().book.symbols)
            res.update(bench_insert(tmp, a.insert_msgs, [int(x) for x in a.batches.split(",")], a.repeats, symbols))
        if "pipeline" in parts:
            res.update(bench_ratio(tmp, a.pipeline_msgs, a.pipeline_repeats, a.paced_rate, a.paced_msgs,
                                   a.paced_repeats))
            print(f"book rate ratio with the recorder: {res['book_rate_ratio_with_recorder']}", file=sys.stderr,
                  flush=True)
        if "query" in parts:
            res.update(bench_query(tmp, a.store_quotes, a.store_batch, a.store_symbols, a.trade_share, a.queries))
    res["machine"].update(VERSIONS)
    res["seconds"] = round(time.perf_counter() - t_all)
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("pipeline", "query_store", "book_events_store")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
