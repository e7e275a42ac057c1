"""Store and Redis benchmark.  Writes ``bench/results/store.json``.  Not a test.

- ``store_fills_per_s`` (and ``store_orders_per_s``, ``store_requests_per_s``): the
  store writer's sustained catch-up rate.  A journal is written with
  ``exchange.journal.Journal`` from generated requests (bench/matching.py's ``mixed``
  workload: limit prices around a mid, about half cross, 5% cancels, 10% market;
  ``--accounts`` accounts, ``--batch`` requests per journal batch as a busy exchange
  writes them), then ``exchange.store.catch_up(journal, db)`` is timed into a fresh
  store, replay, row building, positions and commits included; median of
  ``--repeats`` runs, into SQLite (a file) and into PostgreSQL (a throwaway Debian
  server from ``tests.helpers.postgres_server``, fsync off, a fresh database per run).
  Without a PostgreSQL server (or store support for it) the JSON says why.
- ``exchange_rtt_us_p50_p99_with_store`` / ``..._without_store``: real ``obpipe
  exchange`` with a journal, once with its store writer (the default) and once with
  ``[exchange] store = "off"``, alternated, a fresh exchange per round; the round trips
  are bench/matching.py's ``1_compiled_client`` (``exchange.client.probe``: one
  connection, one request in flight, compiled loop) while ``obpipe exchange-client``
  traders trade in the background (so the journal grows with fills the store writer
  must apply).  Per round p50/p99; medians over rounds; per fsync policy.  The writer's
  lag when the probe ends (journal bytes not yet in the store) and how long it then
  takes to catch up are recorded.
- ``redis_updates_per_s``: ``obpipe run`` at a paced rate with Redis on; the Redis
  writer's ``redis_writes`` counter (its stats row, what ``obpipe stats --json`` shows
  under ``redis``) sampled twice during the run; per ``[redis] interval_ms``.
- ``book_rate_ratio_with_redis``: bench/kafka.py's ``_pipeline`` (a real ``obpipe run``
  fed as fast as possible, analysis and Kafka off) with the Redis writer (and its
  ``redis-server``) on ÷ ``[redis] enabled = false``, alternated, medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
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
import kafka as K  # noqa: E402  (bench/kafka.py: the pipeline runs)
import matching as B  # noqa: E402  (bench/matching.py: the workload, the exchange's port, the probe)
from obpipe.exchange import store  # noqa: E402
from obpipe.exchange.journal import Journal  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(REPO))
TS0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z: the journal's stamps (deterministic)
REDIS_ON, REDIS_OFF = "[redis]\nenabled = true\n", "[redis]\nenabled = false\n"


def med(xs):
    return statistics.median(xs)


# --- store catch-up ------------------------------------------------------------------

def build_journal(path: str, n: int, batch: int, accounts: int, seed: int) -> None:
    """``n`` requests of the ``mixed`` workload from ``accounts`` accounts, ``batch`` per
    journal batch, one symbol."""
    reqs = B.generate(n, *B.WORKLOADS["mixed"], seed=seed)
    reqs["account"] = np.random.default_rng(seed + 1).integers(1, accounts + 1, n)
    j, _, _ = Journal.open(path, 1, 1 << 16, 1 << 20, fsync="none")
    try:
        for k, i in enumerate(range(0, n, batch)):
            j.append(reqs[i:i + batch], TS0 + k * 10_000)
    finally:
        os.close(j.fd)


def _timed_catch_up(journal: str, db: str) -> tuple[float, dict]:
    t = time.perf_counter()
    got = store.catch_up(journal, db)
    return time.perf_counter() - t, got


def _rates(label: str, runs: list[tuple[float, dict]]) -> dict:
    got = runs[0][1]
    times = [t for t, _ in runs]
    t = med(times)
    out = {"fills_per_s": round(got["fills"] / t), "orders_per_s": round(got["orders"] / t),
           "requests_per_s": round(got["requests"] / t), "seconds": round(t, 3),
           "runs_fills_per_s": [round(got["fills"] / x) for x in times]}
    print(f"  {label}: {out['fills_per_s']:,} fills/s, {out['orders_per_s']:,} orders/s "
          f"({got['fills']:,} fills in {t:.2f} s; runs {out['runs_fills_per_s']})", file=sys.stderr, flush=True)
    return out


def _pg_runs(journal: str, repeats: int, expect: dict) -> dict:
    """catch_up into a fresh database of a throwaway PostgreSQL server per run; a dict
    with ``skipped`` (the reason) when there is no server or no store support for it."""
    import pytest

    from tests.helpers import postgres_server

    try:
        with postgres_server() as url:
            import psycopg

            base = url.rsplit("/", 1)[0]
            with psycopg.connect(url, autocommit=True) as c:
                version = c.execute("SHOW server_version").fetchone()[0]
            runs = []
            for r in range(repeats):
                with psycopg.connect(url, autocommit=True) as c:
                    c.execute(f"CREATE DATABASE bench{r}")
                runs.append(_timed_catch_up(journal, f"{base}/bench{r}"))
                assert runs[-1][1] == expect, (runs[-1][1], expect)
                with psycopg.connect(f"{base}/bench{r}") as c:
                    n = c.execute("SELECT count(*) FROM fills").fetchone()[0]
                assert n == expect["fills"], (n, expect["fills"])
            return {**_rates("postgresql", runs), "server": f"PostgreSQL {version} (fsync off, 127.0.0.1 TCP)"}
    except pytest.skip.Exception as e:
        return {"skipped": str(e.msg if hasattr(e, "msg") else e)}
    except store.StoreError as e:
        return {"skipped": f"exchange/store.py: {e}"}


def bench_store(n: int, batch: int, accounts: int, repeats: int, pg: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        warm = f"{d}/warm.journal"
        build_journal(warm, 2_000, batch, accounts, seed=1)
        store.catch_up(warm, f"{d}/warm.db")  # loads the matching kernels
        jp = f"{d}/bench.journal"
        build_journal(jp, n, batch, accounts, seed=42)
        runs = []
        for r in range(repeats):
            runs.append(_timed_catch_up(jp, f"{d}/r{r}.db"))
            assert runs[-1][1] == runs[0][1], (runs[-1][1], runs[0][1])
        expect = runs[0][1]
        con = sqlite3.connect(f"{d}/r0.db")
        assert con.execute("SELECT count(*) FROM fills").fetchone()[0] == expect["fills"]
        con.close()
        out = {"store_workload": {"requests": n, "requests_per_batch": batch, "accounts": accounts,
                                  "journal_bytes": os.path.getsize(jp), "mix": "mixed (bench/matching.py)",
                                  **{k: v for k, v in expect.items() if k != "requests"}},
               "sqlite": {**_rates("sqlite", runs),
                          "server": f"SQLite {sqlite3.sqlite_version} (WAL, synchronous NORMAL)"}}
        out["postgresql"] = _pg_runs(jp, repeats, expect) if pg else {"skipped": "--no-postgres"}
    return out


# --- exchange round trips with and without the store writer ----------------------------

def _exchange(tmp: str, tag: str, fsync: str, with_store: bool):
    """``obpipe exchange`` with a journal (and its store writer unless ``with_store`` is
    false); returns (process, port, journal, store)."""
    j = f"{tmp}/{tag}.journal"
    cfg = Path(tmp) / f"{tag}.toml"
    cfg.write_text(f'[book]\nsymbols = ["A"]\n[exchange]\nport = 0\njournal = "{j}"\nfsync = "{fsync}"\n'
                   f'allow_anonymous = true\n' + ('' if with_store else 'store = "off"\n'))
    err = open(Path(tmp) / f"{tag}.err", "w+")
    p = subprocess.Popen([sys.executable, "-m", "obpipe", "exchange", "--config", str(cfg)], cwd=REPO, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        err.seek(0)
        text = err.read()
        port = B.banner_port(text)
        if port is not None:
            return p, port, j, store.default_store(j)
        if p.poll() is not None:
            raise RuntimeError(f"exchange exited: {text}")
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("exchange did not start")


def _stop(p: subprocess.Popen, sig=signal.SIGINT, timeout: float = 60) -> None:
    if p.poll() is None:
        p.send_signal(sig)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


def _store_offset(db: str) -> int:
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT value FROM store_meta WHERE key = 'offset'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        con.close()


def _rtt_round(tmp: str, tag: str, fsync: str, with_store: bool, orders: int, bg_rate: int) -> dict:
    import psutil

    p, port, journal, db = _exchange(tmp, tag, fsync, with_store)
    kids = []
    bg = None
    try:
        kids = psutil.Process(p.pid).children(recursive=True)  # the store writer (when on)
        bg = subprocess.Popen([sys.executable, "-m", "obpipe", "exchange-client", "--port", str(port), "--clients", "4",
                               "--orders", "0", "--duration", "600", "--window", "16", "--rate", str(bg_rate),
                               "--mix", "mixed", "--seed", "5"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # the traders are trading (their start-up is not in the probe's round trips)
        res = B.probe("127.0.0.1", port, orders=orders, seed=3)
        size = os.path.getsize(journal)
        out = {"p50": res["rtt_us"]["p50"], "p99": res["rtt_us"]["p99"], "p99_9": res["rtt_us"]["p99_9"],
               "requests_per_s": res["requests_per_s"], "journal_bytes": size}
        if with_store:
            off = _store_offset(db)
            out["store_lag_bytes"] = size - off  # journal written, not yet in the store, when the probe ended
        _stop(bg, signal.SIGTERM)
        if with_store:  # the traders have stopped: how long until the store has it all
            size = os.path.getsize(journal)
            t = time.monotonic()
            while _store_offset(db) < size and time.monotonic() - t < 60:
                time.sleep(0.02)
            out["store_caught_up_s"] = round(time.monotonic() - t, 2)
            out["store_caught_up"] = _store_offset(db) >= size
        return out
    finally:
        if bg is not None:
            _stop(bg, signal.SIGTERM)
        _stop(p)
        for k in kids:  # the store writer dies with the exchange; by pid, should it not
            try:
                k.wait(timeout=10)
            except psutil.TimeoutExpired:
                k.terminate()
                k.wait(timeout=10)
            except psutil.NoSuchProcess:
                pass


def bench_rtt(policies: list[str], repeats: int, orders: int, bg_rate: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        with tempfile.TemporaryDirectory() as w:  # load the probe's compiled loop once, outside the rounds
            p, port, _, _ = _exchange(w, "warm", "none", False)
            try:
                B.probe("127.0.0.1", port, orders=200, seed=1)
            finally:
                _stop(p)
        for fsync in policies:
            acc = {"with_store": [], "without_store": []}
            for r in range(repeats):
                order = (True, False) if r % 2 == 0 else (False, True)
                for on in order:
                    name = "with_store" if on else "without_store"
                    s = _rtt_round(tmp, f"{fsync}{r}{name}", fsync, on, orders, bg_rate)
                    print(f"  fsync {fsync} round {r} {name}: p50 {s['p50']} p99 {s['p99']} us"
                          + (f", store lag {s['store_lag_bytes']:,} B, caught up in {s['store_caught_up_s']} s"
                             if on else ""), file=sys.stderr, flush=True)
                    acc[name].append(s)
            m = {k: {q: med(s[q] for s in v) for q in ("p50", "p99", "p99_9")} for k, v in acc.items()}
            out[f"fsync_{fsync}"] = {
                **{f"{k}_us": v for k, v in m.items()},
                "ratio_p50": round(m["with_store"]["p50"] / m["without_store"]["p50"], 3),
                "ratio_p99": round(m["with_store"]["p99"] / m["without_store"]["p99"], 3),
                "store_lag_bytes_median": med(s["store_lag_bytes"] for s in acc["with_store"]),
                "store_caught_up_s_max": max(s["store_caught_up_s"] for s in acc["with_store"]),
                "store_caught_up_every_round": all(s["store_caught_up"] for s in acc["with_store"]),
                "rounds": acc}
    return out


# --- Redis -------------------------------------------------------------------------------

def _redis_writes_run(interval_ms: float, rate: int, seconds: float, tag: str) -> dict:
    """One paced ``obpipe run`` with Redis on; the writer's counters sampled from its
    stats row ``seconds`` apart while the feed runs."""
    from obpipe.ring.errors import RingError
    from obpipe.ring.stats import ROW_BOOK, ROW_REDIS, StatsBlock

    inst = f"benchs{os.getpid()}{tag}"
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.toml"
        cfg.write_text(f'[instance]\nname = "{inst}"\n[rings]\nmd_capacity = 65536\n[analysis]\nenabled = false\n'
                       f'[kafka]\nenabled = false\n[redis]\nenabled = true\ninterval_ms = {interval_ms}\n')
        p = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--rate", str(rate),
                              "--duration", str(seconds + 6), "--json", "--quiet"], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            st = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    st = st or StatsBlock.attach(inst)
                    rows = st.snapshot()
                    if rows[ROW_BOOK][sc.ST_BOOK_MSGS] > 0 and rows[ROW_REDIS][sc.ST_REDIS_ROUNDS] > 0:
                        break
                except (RingError, FileNotFoundError):
                    pass
                time.sleep(0.05)
            if st is None:
                raise RuntimeError(f"obpipe run {inst} did not start (exit code {p.poll()})")
            time.sleep(1.0)
            r0, t0 = st.snapshot()[ROW_REDIS].copy(), time.monotonic()
            time.sleep(seconds)
            rows, t1 = st.snapshot(), time.monotonic()
            r1, applied = rows[ROW_REDIS].copy(), int(rows[ROW_BOOK][sc.ST_BOOK_MSGS])
            st.close()
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                _stop(p)
    if p.returncode != 0:
        raise RuntimeError(err[-2000:])
    final = json.loads(out)
    dt = t1 - t0
    d = {k: int(r1[i] - r0[i]) for i, k in ((sc.ST_REDIS_WRITES, "writes"), (sc.ST_REDIS_ROUNDS, "rounds"),
                                           (sc.ST_REDIS_PUBLISHES, "publishes"), (sc.ST_REDIS_ERRORS, "errors"))}
    return {"writes_per_s": round(d["writes"] / dt), "rounds_per_s": round(d["rounds"] / dt),
            "publishes_per_s": round(d["publishes"] / dt), "errors": d["errors"], "window_s": round(dt, 2),
            "applied_at_end_of_window": applied, "run_redis": final["redis"],
            "lost": final["feed"]["sent"] - final["applied"]}


def bench_redis_updates(intervals: list[float], rate: int, seconds: float, repeats: int) -> dict:
    out = {}
    for ms in intervals:
        runs = []
        for r in range(repeats):
            s = _redis_writes_run(ms, rate, seconds, f"u{str(ms).replace('.', 'p')}r{r}")
            print(f"  redis interval {ms} ms: {s['writes_per_s']:,} writes/s, {s['rounds_per_s']:,} rounds/s, "
                  f"{s['publishes_per_s']:,} publishes/s, errors {s['errors']}", file=sys.stderr, flush=True)
            runs.append(s)
        out[f"interval_{ms:g}_ms"] = {"interval_ms": ms,
                                      "writes_per_s": med(s["writes_per_s"] for s in runs),
                                      "rounds_per_s": med(s["rounds_per_s"] for s in runs),
                                      "publishes_per_s": med(s["publishes_per_s"] for s in runs), "runs": runs}
    return out


def bench_redis_ratio(count: int, repeats: int, fast_ms: float) -> dict:
    """Alternating ``obpipe run``s as fast as possible: Redis off, on (default interval),
    on at ``fast_ms`` (the writer as busy as it gets)."""
    fast = REDIS_ON + f"interval_ms = {fast_ms}\n"
    acc = {"on": [], "off": [], "on_fastest": []}
    for r in range(repeats):
        cases = [("on", REDIS_ON), ("off", REDIS_OFF), ("on_fastest", fast)]
        if r % 2:
            cases = cases[::-1]
        for name, extra in cases:
            s = K._pipeline(False, 0, count, f"rr{r}{name.replace('_', '')}", extra)
            print(f"  redis {name}: {s['applied_msgs_per_s']:,} msgs/s applied, lost {s['lost']:,}, "
                  f"p99 {s['latency_ns']['p99']:,} ns, cpu {s['cpu_percent']}", file=sys.stderr, flush=True)
            acc[name].append(s)
    m = {k: med(s["applied_msgs_per_s"] for s in v) for k, v in acc.items()}
    return {"book_rate_ratio_with_redis": round(m["on"] / m["off"], 3),
            "book_rate_ratio_with_redis_fastest": round(m["on_fastest"] / m["off"], 3),
            "redis_pipeline": {"messages": count, "fastest_interval_ms": fast_ms,
                               "msgs_per_s": {k: round(v) for k, v in m.items()},
                               "latency_p99_ns": {k: med(s["latency_ns"]["p99"] for s in v) for k, v in acc.items()},
                               "runs": acc}}


# --- main ----------------------------------------------------------------------------------

def versions() -> dict:
    """The stores' and servers' versions this bench ran against."""
    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return None

    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return {"sqlite": sqlite3.sqlite_version, "postgres": version([str(pg[-1]), "--version"]) if pg else None,
            "redis_server": version(["redis-server", "--version"]) if shutil.which("redis-server") else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200_000, help="requests in the catch-up journal")
    ap.add_argument("--batch", type=int, default=8, help="requests per journal batch")
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--rtt-orders", type=int, default=20_000, help="probe round trips per round")
    ap.add_argument("--rtt-fsync", default="none,batch", help="fsync policies to run the round trips with")
    ap.add_argument("--background-rate", type=int, default=10_000, help="requests/s of the background traders")
    ap.add_argument("--redis-rate", type=int, default=1_000_000, help="feed msgs/s of the Redis writes runs")
    ap.add_argument("--redis-seconds", type=float, default=4.0, help="sampling window of a Redis writes run")
    ap.add_argument("--redis-intervals", default="0.1,10",
                    help="[redis] interval_ms values (first: the headline figure)")
    ap.add_argument("--pipeline-msgs", type=int, default=10_000_000)
    ap.add_argument("--pipeline-repeats", type=int, default=5, help="alternations of the book-rate runs")
    ap.add_argument("--only", default="store,rtt,redis,ratio", help="parts to run (a quick look; the JSON then "
                                                                     "lacks the others)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "store.json"))
    a = ap.parse_args(argv)
    parts = set(a.only.split(","))
    res = _result.header(a.repeats, **versions())
    no_redis = None if shutil.which("redis-server") else {"skipped": "no redis-server (make redis installs it)"}
    t_all = time.perf_counter()
    if "store" in parts:
        t = time.perf_counter()
        s = bench_store(a.orders, a.batch, a.accounts, a.repeats, not a.no_postgres)
        res["store_fills_per_s"] = {"sqlite": s["sqlite"]["fills_per_s"],
                                    "postgresql": s["postgresql"].get("fills_per_s")}
        res["store_orders_per_s"] = {"sqlite": s["sqlite"]["orders_per_s"],
                                     "postgresql": s["postgresql"].get("orders_per_s")}
        res["store_catch_up"] = s
        print(f"store: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if "rtt" in parts:
        t = time.perf_counter()
        r = bench_rtt(a.rtt_fsync.split(","), a.repeats, a.rtt_orders, a.background_rate)
        head = r[f"fsync_{a.rtt_fsync.split(',')[0]}"]
        res["exchange_rtt_us_p50_p99_with_store"] = [head["with_store_us"]["p50"], head["with_store_us"]["p99"]]
        res["exchange_rtt_us_p50_p99_without_store"] = [head["without_store_us"]["p50"],
                                                        head["without_store_us"]["p99"]]
        res["exchange_rtt_ratio_with_store"] = {"p50": head["ratio_p50"], "p99": head["ratio_p99"]}
        res["exchange_rtt"] = {"fsync_headline": a.rtt_fsync.split(",")[0], "probe_orders": a.rtt_orders,
                               "background_traders": {"clients": 4, "window": 16, "rate": a.background_rate,
                                                      "mix": "mixed"}, **r}
        print(f"rtt: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if "redis" in parts:
        t = time.perf_counter()
        if no_redis:
            res["redis_updates_per_s"], res["redis_updates"] = None, no_redis
        else:
            ms = [float(x) for x in a.redis_intervals.split(",")]
            u = bench_redis_updates(ms, a.redis_rate, a.redis_seconds, a.repeats)
            res["redis_updates_per_s"] = u[f"interval_{ms[0]:g}_ms"]["writes_per_s"]
            res["redis_updates_interval_ms"] = ms[0]
            res["redis_updates"] = {"feed_msgs_per_s": a.redis_rate, "symbols": 4, **u}
        print(f"redis: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if "ratio" in parts:
        t = time.perf_counter()
        if no_redis:
            res["book_rate_ratio_with_redis"], res["redis_pipeline"] = None, no_redis
        else:
            res.update(bench_redis_ratio(a.pipeline_msgs, a.pipeline_repeats, 0.1))
        print(f"ratio: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    res["bench_seconds"] = round(time.perf_counter() - t_all)
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k in (
        "store_fills_per_s", "store_orders_per_s", "exchange_rtt_us_p50_p99_with_store",
        "exchange_rtt_us_p50_p99_without_store", "exchange_rtt_ratio_with_store", "redis_updates_per_s",
        "redis_updates_interval_ms", "book_rate_ratio_with_redis", "book_rate_ratio_with_redis_fastest")}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
