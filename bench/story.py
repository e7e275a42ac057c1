"""Story service benchmark.  Writes ``bench/results/story.json``.  Not a test.

- ``ingest_signals_per_s``: signals produced to the embedded broker beforehand, then
  consumed by the story service's own loop (``StoryService.run``: consume, check,
  insert, narrate, commit offsets) into a fresh SQLite file; from the service's start
  to the last signal stored (the consumer-group join, ~3 s, is reported separately and
  not counted).  Median of ``--repeats``.  SQLite's ``synchronous=FULL`` (the service's
  setting) and ``NORMAL`` alternate in each repeat (same run, same machine):
  ``ingest_normal_signals_per_s`` is what FULL costs.
- ``query_p99_ms``: one million signals (8 symbols x 5 kinds; each (symbol, kind) in
  bursts of 3 signals 200 ms apart every 2.4 s of feed time: ~5.6 hours, ~333k
  stories) stored and narrated in SQLite; then a stories query and a signals query for
  one symbol over a random 10-minute window, 200 times each; p50/p99 of each (the
  larger p99 is ``query_p99_ms``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from obpipe.publisher.broker import EmbeddedBroker  # noqa: E402
from obpipe.publisher.schema import SIGNAL_KINDS, signal_id  # noqa: E402
from obpipe.story import api  # noqa: E402
from obpipe.story.config import load  # noqa: E402
from obpipe.story.service import StoryService  # noqa: E402
from obpipe.story.store import Store, signal_row  # noqa: E402
from tests.publisher.conftest import SIDES, VALUES, produce  # noqa: E402

T0 = 1_340_271_000 * 10**9  # 2012-06-21 09:30 UTC, epoch ns (a plausible feed time)
SYMBOLS = [f"S{i}" for i in range(8)]


def _signal(i: int) -> dict:
    sym = SYMBOLS[i % len(SYMBOLS)]
    kind = SIGNAL_KINDS[(i // len(SYMBOLS)) % len(SIGNAL_KINDS)]
    k = i // 40  # the k-th signal of its (symbol, kind): bursts of 3, 200 ms apart, every 2.4 s
    ts = T0 + (k // 3) * 2_400_000_000 + (k % 3) * 200_000_000 + i % 40
    return {"type": "signal", "v": 1, "id": signal_id(sym, i, kind, SIDES[kind]), "symbol": sym, "kind": kind,
            "side": SIDES[kind], "seq": i, "ts_exch_ns": ts, "ts_detect_ns": 1_767_000_000_000_000_000 + i,
            "tick_size": 0.01, "bbo": {"bid_tick": 22381, "ask_tick": 22387, "bid_qty": 300, "ask_qty": 100},
            "values": dict(VALUES[kind])}


def _ingest_once(n: int, tag: str, sync: str) -> tuple[float, float]:
    """(signals/s, consumer join s) of one run of the service's loop over ``n`` signals."""
    b = EmbeddedBroker.start()
    try:
        prefix = f"bench{tag}"
        produce(b.bootstrap, f"{prefix}.signals", [(m["symbol"], m) for m in map(_signal, range(n))])
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load(None, kafka={"topic_prefix": prefix, "group_id": f"bench-{tag}", "batch_max": 1000},
                       retention={"keep_hours": 0.0})
            store = Store.open(f"{tmp}/s.db")
            store.sqlite_synchronous = sync  # (read when the consumer thread opens its connection)
            svc = StoryService(cfg, store, b.bootstrap, log=lambda m: None)
            stop = [False]
            th = threading.Thread(target=svc.run, args=(stop,))
            t0 = time.perf_counter()
            th.start()
            while svc.counters["records"] == 0:
                time.sleep(0.01)
            t_first = time.perf_counter()
            while svc.counters["signals_new"] < n:
                time.sleep(0.01)
            t1 = time.perf_counter()
            stop[0] = True
            th.join(30)
            store.close()
        return n / (t1 - t_first), t_first - t0
    finally:
        b.stop(timeout_s=2)


def bench_ingest(n: int, repeats: int) -> dict:
    rates: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    joins = []
    for r in range(repeats):
        for sync in (("FULL", "NORMAL") if r % 2 == 0 else ("NORMAL", "FULL")):  # alternate the order
            rate, join = _ingest_once(n, f"{r}{sync}", sync)
            rates[sync].append(rate)
            joins.append(join)
    return {"ingest_signals_per_s": round(statistics.median(rates["FULL"])),
            "ingest_runs_signals_per_s": [round(x) for x in rates["FULL"]],
            "ingest_normal_signals_per_s": round(statistics.median(rates["NORMAL"])),
            "ingest_normal_runs_signals_per_s": [round(x) for x in rates["NORMAL"]],
            "ingest_signals": n, "consumer_join_s": round(statistics.median(joins), 2)}


def bench_query(n: int, queries: int, seed: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"{tmp}/q.db")
        cfg = load(None)
        svc = StoryService(cfg, store, "unused:1", log=lambda m: None)
        t = time.perf_counter()
        chunk = 50_000
        for a in range(0, n, chunk):
            msgs = [_signal(i) for i in range(a, min(n, a + chunk))]
            store.insert([signal_row(m) for m in msgs], [])
            svc.narrate(msgs)
        load_s = time.perf_counter() - t
        n_stories = store.query("SELECT COUNT(*) FROM stories")[0][0]
        t_last = store.query("SELECT MAX(ts_exch_ns) FROM signals")[0][0]
        rng = np.random.default_rng(seed)
        out = {"query_rows": n, "query_stories": n_stories, "query_load_s": round(load_s, 1)}
        for name, fn in (("stories", api.stories_query), ("signals", api.signals_query)):
            ms = []
            for _ in range(queries):
                sym = SYMBOLS[int(rng.integers(len(SYMBOLS)))]
                lo = int(rng.integers(T0, t_last - 600_000_000_000))
                q0 = time.perf_counter()
                rows = fn(store, sym, None, str(lo), str(lo + 600_000_000_000), api.MAX_LIMIT, 0)
                ms.append((time.perf_counter() - q0) * 1e3)
            out[f"query_{name}_p50_ms"] = round(float(np.percentile(ms, 50)), 2)
            out[f"query_{name}_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
            out[f"query_{name}_rows_last"] = len(rows)
        out["query_p99_ms"] = max(out["query_stories_p99_ms"], out["query_signals_p99_ms"])
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "story.json"))
    a = ap.parse_args()
    res = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "database": "sqlite (WAL, synchronous=FULL)",
           "machine": "shared (other jobs running): compare figures of one run only"}
    res.update(bench_ingest(a.ingest, a.repeats))
    print(json.dumps(res), flush=True)
    res.update(bench_query(a.rows, a.queries))
    print(json.dumps(res), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
