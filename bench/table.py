"""The tables of docs/BENCHMARKS.md, written from bench/results/*.json (``make bench-table``).

Each table sits between two markers, ``<!-- generated: NAME -->`` and ``<!-- end -->``;
this script rewrites what is between them from the JSON file the section reads and
leaves every other line of the page alone, so the prose stays hand-written and the
numbers cannot be hand-edited (tests/test_bench_table.py regenerates the page from the
committed JSON and compares).

    python bench/table.py                  rewrite docs/BENCHMARKS.md
    python bench/table.py --check          exit 1 (and print a diff) if it is not up to date
    python bench/table.py results/X.json   print the tables that read X.json (bench/core.py
                                           prints its own table this way after a run)

Targets and labels are the page's words and live here; every measured figure comes from
the JSON.  Sections without a JSON file (the LOBSTER check) are hand-written.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PAGE = REPO / "docs" / "BENCHMARKS.md"

BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end -->)", re.S)


def _int(v: float) -> str:
    """Rounded half up to an integer, thousands separated (350.5 -> 351, not 350)."""
    return f"{int(Decimal(repr(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def _dec(v: float, places: int = 1) -> str:
    """Rounded half up to ``places`` decimals (82.55 -> 82.6; binary floats would give 82.5)."""
    return f"{Decimal(repr(v)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):,}"


def _m(v: float, places: int = 1) -> str:
    return f"{_dec(v / 1e6, places)}M"


def _us(ns: float) -> str:
    """A histogram bucket's upper bound in us: one decimal below 10 us, whole us above."""
    return _dec(ns / 1e3) if ns < 10_000 else _int(ns / 1e3)


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


# --- core.json (make bench-core) -------------------------------------------------------

CORE_ROWS = [  # key, what, unit, target
    ("ring_msgs_per_s", "SPSC ring, 2 processes, 40-byte records, batches of 1,024", "msgs/s", ">= 50M"),
    ("book_apply_only_msgs_per_s", "book apply kernel, 10M synthetic msgs, 4 symbols", "msgs/s", ">= 30M"),
    ("book_msgs_per_s", "book writer's whole job (apply + every event + snapshots)", "msgs/s", ""),
    ("book_msgs_per_s_batch64", "  same, batches of 64 (a snapshot per symbol per 64 msgs)", "msgs/s", ""),
    ("book_lobster_msgs_per_s", "book apply, AMZN LOBSTER day (57,515 msgs, x20)", "msgs/s", ""),
    ("snapshot_reads_per_s", "snapshot reads (seqlock copy + check), uncontended", "reads/s", ""),
    ("writer_msgs_per_s_no_readers", "book writer alone (apply + snapshots)", "msgs/s", ""),
    ("writer_msgs_per_s_2_readers", "  same, 2 reader processes sampling every 10 us", "msgs/s", ""),
    ("writer_rate_ratio_2_readers", "  ratio", "", ">= 0.90"),
    ("writer_msgs_per_s_2_control_readers", "  same, 2 control readers (same load, private memory)", "msgs/s", ""),
    ("writer_rate_ratio_2_readers_vs_control", "  ratio sharing / control readers", "", ">= 0.90"),
    ("book_apply_only_msgs_per_s_peer_stream", "obpipe apply kernel, 1M msgs, 1 symbol", "msgs/s", ""),
    ("book_msgs_per_s_peer_stream", "obpipe whole job (events + snapshots), same stream", "msgs/s", ""),
    ("peer_order_book_msgs_per_s", "order-book (C ext.), Python loop, same stream", "msgs/s", ""),
    ("peer_order_book_top_each_msg_msgs_per_s", "order-book, top of book read after every update", "msgs/s", ""),
    ("peer_hftbacktest_msgs_per_s", "hftbacktest depth (Rust), one numba call", "msgs/s", ""),
    ("book_apply_only_vs_order_book", "obpipe apply / order-book", "x", ">= 10x"),
    ("book_vs_order_book", "obpipe whole job / order-book", "x", ""),
    ("book_vs_order_book_top_each_msg", "obpipe whole job / order-book with top of book", "x", ""),
    ("book_apply_only_vs_hftbacktest", "obpipe apply / hftbacktest", "x", ""),
    ("book_vs_hftbacktest", "obpipe whole job / hftbacktest", "x", ""),
]


def _core_value(v: float, unit: str) -> str:
    if unit == "x":
        return f"{_dec(v)}x"
    if unit == "":
        return _dec(v, 2)
    return _m(v)


def core(r: dict) -> list[str]:
    rows = [[f"{what} (`{key}`)", _core_value(r[key], unit), target]
            for key, what, unit, target in CORE_ROWS if key in r]
    return [*_table(["figure (`core.json` key)", "measured", "target"], ["---", "---:", "---:"], rows), "",
            f"Measured {r['when']}, median of {r['repeats']} runs, numba {r['machine']['numba']}, "
            f"{r['machine']['cores']} cores."]


# --- pipeline.json (make bench-pipeline) -----------------------------------------------

PIPELINE_CPU = ["feed", "rx", "book", "analysis", "publisher", "redis", "ticks"]


def _pass(s: dict) -> str:
    """The step's verdict, and why it failed (the rule: nothing lost, >= 95% of the rate)."""
    if s["ok"]:
        return "yes"
    why = [w for w, bad in (("lost", s["lost"] > 0), ("sender", s["achieved_msgs_per_s"] < 0.95 * s["rate"])) if bad]
    return "no: " + ", ".join(why or ["see the JSON"])


def pipeline(r: dict) -> list[str]:
    rows = [[f"{s['rate']:,}", f"{s['achieved_msgs_per_s']:,}", f"{s['lost']:,}",
             " / ".join(_us(s["latency_ns"][p]) for p in ("p50", "p99", "p999")) + " us",
             " / ".join(_int(s['cpu_percent'].get(c, 0)) for c in PIPELINE_CPU), _pass(s)]
            for s in r["steps"]]
    out = [f"Run {r['when']}, {r['seconds_per_step']:g} s per step; "
           f"`max_zero_drop_msgs_per_s` = **{r['max_zero_drop_msgs_per_s']:,}**.", "",
           *_table(["asked msgs/s", "achieved", "lost", "receive->apply p50 / p99 / p999 (bucket upper bounds)",
                    "CPU% " + " / ".join(PIPELINE_CPU), "pass"], ["---:", "---:", "---:", "---", "---", "---"], rows)]
    lat = r.get("latency_median_ns") or {}
    if lat:
        lrows = [[f"{int(rate):,}", " / ".join(f"**{_us(v[q])}**" for q in ("p50", "p99", "p999")) + " us",
                  "; ".join(" / ".join(_us(x[q]) for q in ("p50", "p99", "p999")) for x in v["runs"]),
                  f"{v['lost']:,}"] for rate, v in lat.items()]
        out += ["", "receive->apply, median of whole runs (`latency_median_ns`):", "",
                *_table(["msgs/s", "p50 / p99 / p999", "each run (us)", "lost"], ["---:", "---", "---", "---:"],
                        lrows)]
    return out


# --- kafka.json (make bench-kafka) -----------------------------------------------------

def kafka(r: dict) -> list[str]:
    mx, lat = r["pipeline"]["max"]["msgs_per_s"], r["latency_p99_ns_at_1M"]
    rows = [
        ["analysis, 5 detectors + summaries (`analysis_ns_per_event`)",
         f"{r['analysis_ns_per_event']} ns ({_m(r['analysis_events_per_s'])} events/s)", ""],
        ["publisher into the embedded broker (`publisher_msgs_per_s`)", f"{r['publisher_msgs_per_s']:,} msgs/s", ""],
        ["pipeline fed as fast as possible, applied msgs/s with / without (`book_rate_ratio_with_publishing`)",
         f"{r['book_rate_ratio_with_publishing']} ({_m(mx['on'], 2)} / {_m(mx['off'], 2)})", ">= 0.9"],
        ["  same, analysis + publisher on rx's core at normal priority (`book_rate_ratio_with_publishing_on_rx_core`)",
         f"{r['book_rate_ratio_with_publishing_on_rx_core']} ({_m(mx['on_rx_core'], 2)})", ""],
        ["paced at 1M msgs/s (`book_rate_ratio_at_1M`)", f"{r['book_rate_ratio_at_1M']}", ""],
        ["receive->apply p99 at 1M msgs/s, with / without / on rx's core (`latency_p99_ns_at_1M`)",
         " / ".join(_dec(lat[k] / 1e6, 2) for k in ("on", "off", "on_rx_core")) + " ms", ""],
    ]
    per_m = sorted(r["signals_per_million_events"].items(), key=lambda kv: -kv[1])
    return [f"Run {r['when']}: {r['messages']:,} synthetic messages ({r['events']:,} events) for the analysis, "
            f"{r['publisher_messages']:,} messages for the publisher.", "",
            *_table(["figure (`kafka.json` key)", "measured", "target"], ["---", "---:", "---:"], rows), "",
            "Signals per million events with the default thresholds (`signals_per_million_events`): "
            + ", ".join(f"{k} {_int(v)}" for k, v in per_m) + "."]


# --- matching.json (make bench-matching) -----------------------------------------------

MATCHING_WORKLOADS = [("mixed", "mixed: 5% cancel, 10% market"), ("limit", "pure limit"),
                      ("cancel_heavy", "high cancel, 30%")]


def matching(r: dict) -> list[str]:
    rows = []
    for key, what in MATCHING_WORKLOADS:
        runs, lat = r[f"{key}_runs_orders_per_s"], r[f"{key}_latency_ns"]
        rate = _m(r[f"{key}_orders_per_s"], 2)
        rows.append([f"{what} (`{key}`)", f"**{rate}**" if key == "mixed" else rate,
                     f"{_dec(min(runs) / 1e6, 2)}-{_m(max(runs), 2)}",
                     *(_int(lat[p]) for p in ("p50", "p95", "p99", "p99_9")), f"{r[f'{key}_trades']:,}"])
    return [f"Run {r['generated_at']}: {r['orders']:,} orders per workload, median of {r['repeats']} runs, "
            f"pinned to core {r['pinned_core']}; `mixed_vs_cpp_reference` **{_dec(r['mixed_vs_cpp_reference'], 2)}** "
            f"(the C++ README's {_m(r['cpp_reference_mixed_orders_per_s'], 2)} orders/s).", "",
            *_table(["workload", "orders/s (`*_orders_per_s`)", "runs", "p50", "p95", "p99",
                     "p99.9 ns (`*_latency_ns`)", "trades"], ["---", "---:", "---", "---:", "---:", "---:", "---:", "---:"],
                    rows)]


FSYNC = {"batch": "`batch` (default: each batch fsynced before its acks)",
         "none": "`none` (kill -9 safe, not power-loss safe)"}


def matching_tcp(r: dict) -> list[str]:
    rows = []
    for policy, label in FSYNC.items():
        for i, (who, q) in enumerate(r["tcp_rtt_us"][f"fsync_{policy}"].items()):
            clients = who.split("_")[0] + (" compiled" if "compiled" in who else "")
            rows.append([label if i == 0 else f"`{policy}`", clients,
                         *(_int(q[p]) for p in ("p50", "p99", "p99_9")), f"{q['requests_per_s']:,}"])
    return _table(["fsync", "clients", "p50", "p99", "p99.9 us", "requests/s"],
                  ["---", "---:", "---:", "---:", "---:", "---:"], rows)


# --- story.json (make bench-story) -----------------------------------------------------

def story(r: dict) -> list[str]:
    runs = r["ingest_runs_signals_per_s"]
    rows = [
        [f"ingest from the embedded broker: consume, check, insert, narrate, commit offsets (`ingest_signals_per_s`, "
         f"{r['ingest_signals'] // 1000}k signals, median of {len(runs)})",
         f"{r['ingest_signals_per_s']:,} signals/s (runs {' / '.join(f'{v:,}' for v in runs)})"],
        ["consumer-group join before the first record (`consumer_join_s`)", f"{_dec(r['consumer_join_s'], 2)} s"],
        [f"10-minute window for one symbol over {r['query_rows'] / 1e6:g}M stored signals and "
         f"{r['query_stories']:,} stories (`query_p99_ms`, the worse of the two)", f"{_dec(r['query_p99_ms'])} ms"],
        [f"  stories query p50 / p99 (`query_stories_*`, {r['query_stories_rows_last']:,} stories returned)",
         f"{_dec(r['query_stories_p50_ms'])} / {_dec(r['query_stories_p99_ms'])} ms"],
        [f"  signals query p50 / p99 (`query_signals_*`, {r['query_signals_rows_last']:,} signals returned)",
         f"{_dec(r['query_signals_p50_ms'])} / {_dec(r['query_signals_p99_ms'])} ms"],
    ]
    return [f"Run {r['generated_at']}, {r['database']}; loading the {r['query_rows']:,} signals with their stories "
            f"took {_int(r['query_load_s'])} s.", "",
            *_table(["figure (`story.json` key)", "measured"], ["---", "---:"], rows)]


# --- store.json (make bench-store) -----------------------------------------------------

def _catch_up(c: dict) -> str:
    if "skipped" in c:
        return f"not run: {c['skipped']}"
    runs = " / ".join(f"{v:,}" for v in c["runs_fills_per_s"])
    return f"{c['fills_per_s']:,} fills/s, {c['orders_per_s']:,} orders/s (runs {runs} fills/s)"


def _rtt(q: dict) -> str:
    return f"{_int(q['p50'])} / {_int(q['p99'])} us"


def store(r: dict) -> list[str]:
    rows = []
    c = r.get("store_catch_up")
    if c:
        w = c["store_workload"]
        rows += [[f"store writer catch-up into SQLite, {w['requests']:,} requests ({w['fills']:,} fills, "
                  f"{w['accounts']} accounts, {w['requests_per_batch']} per journal batch) (`store_fills_per_s`)",
                  _catch_up(c["sqlite"]), ""],
                 ["  same into PostgreSQL (`store_fills_per_s`)", _catch_up(c["postgresql"]), ""]]
    x = r.get("exchange_rtt")
    if x:
        for key in (k for k in x if k.startswith("fsync_") and k != "fsync_headline"):
            f = x[key]
            name = ("`exchange_rtt_us_p50_p99_with_store` / `_without_store`" if key[6:] == x["fsync_headline"]
                    else "same keys under `exchange_rtt`")
            rows.append([f"exchange round trip p50 / p99, compiled client, fsync `{key[6:]}`, with the store writer / "
                         f"without ({name})", f"with {_rtt(f['with_store_us'])}, without {_rtt(f['without_store_us'])} "
                         f"(ratio {_dec(f['ratio_p50'], 2)} / {_dec(f['ratio_p99'], 2)})", "no slower"])
            lag = f["store_lag_bytes_median"]
            rows.append([f"  store writer's lag when the probe ended (median) / time to catch up after, fsync "
                         f"`{key[6:]}`", f"{_int(lag / 1024)} KiB (~{_int(lag / 32)} requests) / at most "
                         f"{_dec(f['store_caught_up_s_max'], 2)} s", ""])
    u = r.get("redis_updates")
    if u and "skipped" in u:
        rows.append(["Redis writer (`redis_updates_per_s`)", f"not run: {u['skipped']}", ""])
    elif u:
        for key, v in ((k, v) for k, v in u.items() if k.startswith("interval_")):
            head = v["interval_ms"] == r["redis_updates_interval_ms"]
            rows.append([f"{'Redis writer' if head else '  same'}, `[redis] interval_ms` = {v['interval_ms']:g}, "
                         f"{u['symbols']} symbols, feed at {_m(u['feed_msgs_per_s'], 0)} msgs/s"
                         + (" (`redis_updates_per_s`)" if head else ""),
                         f"{v['writes_per_s']:,} writes/s ({v['rounds_per_s']:,} rounds/s)", ""])
    p = r.get("redis_pipeline")
    if p and "skipped" in p:
        rows.append(["book rate with / without Redis (`book_rate_ratio_with_redis`)", f"not run: {p['skipped']}",
                     ">= 0.95"])
    elif p:
        m = p["msgs_per_s"]
        rows += [["pipeline fed as fast as possible, applied msgs/s with the Redis writer / without "
                  "(`book_rate_ratio_with_redis`)",
                  f"{_dec(r['book_rate_ratio_with_redis'], 3)} ({_m(m['on'], 2)} / {_m(m['off'], 2)})", ">= 0.95"],
                 [f"  same, writer at `interval_ms` = {p['fastest_interval_ms']:g} "
                  "(`book_rate_ratio_with_redis_fastest`)",
                  f"{_dec(r['book_rate_ratio_with_redis_fastest'], 3)} ({_m(m['on_fastest'], 2)})", ""]]
    runs = len(p["runs"]["on"]) if p and "runs" in p else None
    load = r.get("loadavg_1m_at_start")
    return [f"Run {r['when']}, {r['machine']['cores']} cores"
            + (f", load average {load} at the start" if load is not None else "")
            + f"; median of {r['repeats']} runs" + (f" ({runs} alternations for the book rate)" if runs else "") + ".",
            "", *_table(["figure (`store.json` key)", "measured", "target"], ["---", "---:", "---:"], rows)]


# --- ticks.json (make bench-ticks) -----------------------------------------------------

def _ticks_ratio(p: dict, key: str, label: str, target: str) -> list[list[str]]:
    m, runs = p["msgs_per_s"], p["runs"]
    rate = "as fast as possible" if p["rate"] == "max" else f"paced at {_m(p['rate'], 0)} msgs/s"

    def med(arm, k):
        return _int(statistics.median(x[k] for x in runs[arm]))

    return [[f"pipeline {rate} ({_int(p['messages'] / 1e6)}M msgs, {len(runs['on'])} alternations), applied "
             f"msgs/s with the recorder / without (`{key}`)",
             f"{_dec(p['ratio'], 3)} ({_m(m['on'], 2)} / {_m(m['off'], 2)})", target],
            [f"  {label}: events relayed to the recorder / dropped by its full ring (median per run); all relayed "
             f"stored", f"{_int(p['ticks_relayed_median'])} / {_int(p['ticks_dropped_median'])} "
             f"({_dec(100 * p['ticks_dropped_share_median'])}% of the analysed events); "
             f"{'yes' if p['relayed_all_stored'] else 'no'}", ""],
            ["  same runs: book events the analysis missed (`events_dropped`) / messages lost before the book "
             "(`lost`), median per run with / without", f"{med('on', 'events_dropped')} / {med('on', 'lost')}; "
             f"{med('off', 'events_dropped')} / {med('off', 'lost')}", ""]]


def ticks(r: dict) -> list[str]:
    rows = []
    if "insert_rows_per_s_by_batch" in r:
        w = r["insert_workload"]
        by = r["insert_rows_per_s_by_batch"]
        for b, v in sorted(by.items(), key=lambda kv: (int(kv[0]) != r["recorder_batch_rows"], int(kv[0]))):
            head = int(b) == r["recorder_batch_rows"]
            rows.append([(f"insert_events, batches of {int(b):,} events (the recorder's `flush_rows`), "
                          f"{w['events'] / 1e6:.2f}M book events (`recorder_rows_per_s`)") if head
                         else f"  same, batches of {int(b):,} (`insert_rows_per_s_by_batch`)",
                         f"{'**' if head else ''}{v['rows_per_s']:,} rows/s{'**' if head else ''} (runs "
                         + " / ".join(f"{x:,}" for x in v["runs_rows_per_s"]) + f"), {_dec(v['cpu_cores'], 2)} cores",
                         ""])
        rows.append(["on disk after merges, the book's events (`bytes_per_quote`, `bytes_per_trade`)",
                     f"{_dec(r['bytes_per_quote'])} B/quote, {_dec(r['bytes_per_trade'])} B/trade", ""])
    p = r.get("pipeline")
    if p:
        rows += _ticks_ratio(p["max"], "book_rate_ratio_with_recorder", "same runs (`ticks_dropped`)", ">= 0.9")
        if "paced" in p:
            rows += _ticks_ratio(p["paced"], "book_rate_ratio_with_recorder_paced",
                                 "same runs (`ticks_dropped_paced`)", "")
    q = r.get("query_store")
    if q:
        a, o = q["as_inserted"], q["after_optimize"]
        rows.append([f"query store: {q['quotes'] / 1e6:.1f}M synthetic quotes + {q['trades'] / 1e6:.1f}M trades, "
                     f"{q['symbols']} symbols, one day, inserted in batches of {q['insert_batch']:,} "
                     f"(`query_store.insert_rows_per_s`)", f"{q['insert_rows_per_s']:,} rows/s", ""])
        for k, what in (("quotes_5min", "one symbol's 5-minute quotes"),
                        ("bars_1m_day", "one symbol's day of 1-minute bars")):
            rows.append([f"{what}, p50 / p99 over {q['queries']} random, as inserted "
                         f"({q['quotes_parts_as_inserted']} parts) (`query_ms_p50` / `query_ms_p99`)",
                         f"{_dec(a[k]['p50_ms'])} / **{_dec(a[k]['p99_ms'])}** ms "
                         f"({_int(a[k]['rows_median'])} rows)", ""])
            rows.append([f"  same after `optimize()` (`query_store.after_optimize`)",
                         f"{_dec(o[k]['p50_ms'])} / {_dec(o[k]['p99_ms'])} ms", ""])
        rows.append(["  on disk after merges (`query_store.bytes_per_quote`, `bytes_per_trade`)",
                     f"{_dec(q['bytes_per_quote'])} B/quote, {_dec(q['bytes_per_trade'])} B/trade", ""])
    mc, load = r["machine"], r.get("loadavg_1m_at_start")
    return [f"Run {r['when']}, {mc['cores']} cores, chdb {mc.get('chdb')} (ClickHouse {mc.get('clickhouse')})"
            + (f", load average {load} at the start" if load is not None else "")
            + f"; median of {r['repeats']} runs for the inserts; {r['seconds']} s in all.", "",
            *_table(["figure (`ticks.json` key)", "measured", "target"], ["---", "---:", "---:"], rows)]


def itch(r: dict) -> list[str]:
    rows = []
    mem = r.get("memory", {})
    if mem:
        first, *rest = list(mem)
        f = mem[first]
        others = "; ".join(f"{n} symbols: {_m(mem[n]['decode']['msgs_per_s'])}" for n in rest)
        rows.append([f"decode, {first} symbols, {f['messages'] / 1e6:g}M generated messages (`itch_decode_msgs_per_s`)",
                     f"**{_m(f['decode']['msgs_per_s'])} msgs/s**" + (f" ({others})" if others else ""), ""])
        others = "; ".join(f"{n} symbols: {_m(mem[n]['decode_apply']['msgs_per_s'])}" for n in rest)
        ok = r["itch_l3_apply_msgs_per_s"] >= 20e6
        rows.append([f"decode + the book writer's loop (per-order book, ladders, events, snapshots), {first} symbols "
                     "(`itch_l3_apply_msgs_per_s`)", f"**{_m(f['decode_apply']['msgs_per_s'])} msgs/s**"
                     + (f" ({others})" if others else ""), ">= 20M" + ("" if ok else " (not met)")])
        rows.append(["  the per-order book alone, no snapshots (`memory.*.decode_apply.book_alone_msgs_per_s`), "
                     "peak live orders",
                     "; ".join(f"{n} symbols: {_m(m['decode_apply']['book_alone_msgs_per_s'])} msgs/s, "
                               f"{_int(m['decode_apply']['peak_live_orders'])} orders" for n, m in mem.items()), ""])
    if "pipeline_itch_max_zero_loss_msgs_per_s" in r:
        w = r["pipeline_workload"]
        rates = ", ".join("max" if x["rate"] == "max" else _m(x["rate"], 0) for x in r["pipeline_runs"]
                          if x["zero_loss"])
        rows.append([f"pipeline over UDP, {w['messages'] / 1e6:g}M messages of {w['symbols']} symbols, highest sending "
                     "rate with nothing lost (`pipeline_itch_max_zero_loss_msgs_per_s`)",
                     f"**{_m(r['pipeline_itch_max_zero_loss_msgs_per_s'])} msgs/s** (no loss at: {rates})", ""])
        c = r["recovery"]
        rows.append([f"1 packet in {c['drop_every']:,} dropped at {_m(c['rate'], 0)} msgs/s (`recovery`): gaps seen / "
                     "healed / lost, messages recovered, per run",
                     " ; ".join(f"{s} / {h} / {lo}, {_int(rc)}" for s, h, lo, rc in
                                zip(c["gaps_seen"], c["gaps_healed"], c["gaps_lost"], c["recovered"])), "no loss"])
        rows.append(["  request round trip mean / max, per run (`recovery.round_trip_mean_us` / `max_us`)",
                     " ; ".join(f"{_dec(a / 1000, 1)} / {_dec(b / 1000, 1)} ms" for a, b in
                                zip(c["round_trip_mean_us"], c["round_trip_max_us"])), ""])
    mc, load = r["machine"], r.get("loadavg_1m_at_start")
    return [f"Run {r['when']}, {mc['cores']} cores" + (f", load average {load} at the start" if load is not None else "")
            + f"; medians of {r['repeats']} runs in memory; {r['seconds']} s in all.", "",
            *_table(["figure (`itch.json` key)", "measured", "target"], ["---", "---:", "---:"], rows)]


def metrics(r: dict) -> list[str]:
    rows = []
    for n, sc in r["scrape"].items():
        rows.append([f"scrape of /metrics, {n} symbols ({_int(sc['series'])} series, {_int(sc['bytes'])} bytes): HTTP "
                     f"round trip / the collector alone, median (max) of {sc['scrapes']} (`scrape_ms_{n}_symbols`)",
                     f"**{_dec(sc['http_ms_median'], 2)} ms** ({_dec(sc['http_ms_max'], 2)}) / "
                     f"{_dec(sc['collect_ms_median'], 2)} ms ({_dec(sc['collect_ms_max'], 2)})", ""])
    rt = r["rate"]
    rows.append([f"pipeline as fast as possible, {rt['messages'] / 1e6:g}M messages: applied msgs/s without / with a "
                 "scrape every second, medians", f"{_m(rt['applied_msgs_per_s_without'])} / "
                 f"{_m(rt['applied_msgs_per_s_with_scrapes'])}", ""])
    rows.append([f"  same-run ratio with / without, median of {rt['pairs']} pairs (`book_rate_ratio_with_scrapes`)",
                 f"**{_dec(rt['ratio_with_over_without'], 3)}** ({', '.join(_dec(x, 3) for x in rt['ratios'])})",
                 "unchanged"])
    mc, load = r["machine"], r.get("loadavg_1m_at_start")
    return [f"Run {r['when']}, {mc['cores']} cores" + (f", load average {load} at the start" if load is not None else "")
            + f"; {r['seconds']} s in all.", "",
            *_table(["figure (`metrics.json` key)", "measured", "target"], ["---", "---:", "---:"], rows)]


# --- sched.json (bench/sched.py) -------------------------------------------------------

def sched(r: dict) -> list[str]:
    w = r["wake"]
    rows = [[f"{name.replace('_', ' ')}", f"{_us(v['hop_ns_p50'])} / {_us(v['hop_ns_p99'])} / "
             f"{_us(v['hop_ns_p999'])} us"] for name, v in w.items()]
    out = [f"Run {r.get('when', '?')}. Waking a blocked process (eventfd ping-pong, one hop):", "",
           *_table(["where", "p50 / p99 / p999"], ["---", "---"], rows), ""]
    prow = []
    for p in r["pipeline"]:
        lat = " / ".join(_us(p["latency_ns"][q]) for q in ("p50", "p99", "p999")) + " us"
        for part in ("rx", "book", "feed"):
            v = p["parts"].get(part)
            if v:
                prow.append([p.get("variant", ""), f"{p['rate']:,}", part, f"{_int(v['cpu_share'] * 100)}%",
                             f"{_dec(v['run_delay_share'] * 100)}%", f"{_dec(v['run_delay_us_per_slice'])} us",
                             f"{v['voluntary_per_s']:,} / {v['involuntary_per_s']:,}", lat if part == "rx" else ""])
    out += ["Each part over a steady window (`/proc/<pid>/schedstat`); \"before\" = `[backoff] wake = "
            "\"sleep\"`, `[pinning] realtime = false`:", "",
            *_table(["settings", "msgs/s", "part", "CPU", "run delay", "per slice", "voluntary / involuntary per s",
                     "run's receive->apply p50 / p99 / p999"], ["---", "---:", "---", "---:", "---:", "---:", "---:",
                                                                 "---"], prow)]
    return out


SECTIONS = {  # marker name -> (results file, renderer)
    "sched": ("sched.json", sched),
    "core": ("core.json", core),
    "pipeline": ("pipeline.json", pipeline),
    "kafka": ("kafka.json", kafka),
    "matching": ("matching.json", matching),
    "matching-tcp": ("matching.json", matching_tcp),
    "story": ("story.json", story),
    "store": ("store.json", store),
    "ticks": ("ticks.json", ticks),
    "itch": ("itch.json", itch),
    "metrics": ("metrics.json", metrics),
}


def section(name: str, results: Path = RESULTS) -> str:
    file, render = SECTIONS[name]
    return "\n".join(render(json.loads((results / file).read_text()))) + "\n"


def render_page(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated section rewritten from ``results``.  Raises
    ValueError naming a marker of no known section, or a section with no marker or two."""
    found = [m.group(2) for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(SECTIONS))
    if unknown:
        raise ValueError(f"generated section(s) {unknown} unknown to bench/table.py (known: {sorted(SECTIONS)})")
    wrong = sorted(n for n in SECTIONS if found.count(n) != 1)
    if wrong:
        raise ValueError(f"each section must appear once between its markers; not so for {wrong}")
    return BLOCK.sub(lambda m: f"{m.group(1)}\n{section(m.group(2), results)}\n{m.group(4)}", text)


def main(*argv: str) -> int:
    ap = argparse.ArgumentParser(prog="bench/table.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="print the tables of these results files instead of writing the page")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/BENCHMARKS.md is not what the JSON gives")
    a = ap.parse_args(argv)
    if a.files:
        for f in a.files:
            p = Path(f)
            for name, (file, _) in SECTIONS.items():
                if file == p.name:
                    print(section(name, p.parent))
        return 0
    old = PAGE.read_text()
    new = render_page(old)
    if a.check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       "docs/BENCHMARKS.md", "generated"))
            return 1
        return 0
    if new != old:
        PAGE.write_text(new)
    print(f"docs/BENCHMARKS.md: {len(SECTIONS)} tables from bench/results/ ({'rewritten' if new != old else 'unchanged'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
