"""Signals and Kafka benchmark.  Writes ``bench/results/kafka.json``.  Not a test.

- ``analysis_ns_per_event``: the analysis kernel alone (five detectors + summaries)
  over the events a Book emits for a synthetic flow, in-process, median of repeats.
- ``publisher_msgs_per_s``: the publisher (ring -> orjson -> confluent-kafka) into the
  embedded Tansu broker, from the first record taken to the last delivery report.
- ``book_rate_ratio_with_publishing``: real ``obpipe run`` pipelines fed as fast as
  possible, applied msgs/s with the analysis and publisher (and the embedded broker)
  running / the same with both off ([analysis] and [kafka] enabled = false).  Runs
  alternate on/off; medians.  Also at a paced 1M msgs/s, where the ratio shows what
  the extra processes cost when the feed is not the limit.
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

from obpipe.analysis.process import Analyzer, params  # noqa: E402
from obpipe.engine.book import Book  # noqa: E402
from obpipe.feed_sim.synth import SynthParams, generate  # noqa: E402
from obpipe import config  # noqa: E402
from obpipe.ring import schema as sc  # noqa: E402


def book_events(n_msgs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The analysis workload: (ctrl, records, count) of an events ring holding every
    event a Book emits for ``n_msgs`` synthetic messages over 4 symbols (seed 3)."""
    md = generate(n_msgs, SynthParams(n_symbols=4, seed=3))
    cap = 1 << int(np.ceil(np.log2(n_msgs + 1)))
    evc = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
    ev = np.zeros(cap, sc.EVENT_DTYPE)
    book = Book([4096] * 4, events=(evc, ev))
    for i in range(0, n_msgs, 1024):
        book.apply(md, i, min(1024, n_msgs - i))
    return evc, ev, int(evc[sc.RING_W_HEAD])


def bench_analysis(n_msgs: int, repeats: int) -> dict:
    evc, ev, n_ev = book_events(n_msgs)
    times, counts = [], None
    for r in range(repeats + 1):
        outc = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
        out = np.zeros(1 << 16, sc.SIGNAL_DTYPE)
        an = Analyzer(4, params(config.load().analysis), (evc, ev), (outc, out))
        evc[sc.RING_W_TAIL] = 0
        evc[sc.RING_W_HEAD_CACHE] = 0
        outc[sc.RING_W_TAIL] = 1 << 40  # a consumer that never lags: nothing is dropped for room
        t = time.perf_counter()
        k = an.drain()
        dt = time.perf_counter() - t
        assert k == n_ev
        if r:  # the first pass loads the kernels
            times.append(dt / k * 1e9)
        counts = an.C
    return {"analysis_ns_per_event": round(statistics.median(times), 1),
            "analysis_events_per_s": round(1e9 / statistics.median(times)),
            "events": n_ev, "messages": n_msgs, "runs_ns_per_event": [round(x, 1) for x in times],
            "signals_per_million_events": {
                n: round(int(counts[sc.ST_AN_BY_KIND + k - 1]) * 1e6 / n_ev, 1)
                for k, n in sc.SIGNAL_KIND_NAMES.items()},
            "summaries": int(counts[sc.ST_AN_SUMMARIES])}


def bench_publisher(n: int, repeats: int) -> dict:
    from obpipe.publisher.broker import EmbeddedBroker, ensure_topics
    from obpipe.publisher.process import Publisher, PublisherSpec
    from obpipe.ring.spsc import Ring

    recs = np.zeros(n, sc.SIGNAL_DTYPE)
    recs["rtype"] = np.where(np.arange(n) % 10 == 0, sc.OUT_SUMMARY, sc.OUT_SIGNAL)  # 1 summary : 9 signals
    recs["kind"] = np.where(recs["rtype"] == sc.OUT_SIGNAL, 1 + np.arange(n) % 5, 0)
    recs["side"] = sc.SIDE_BID
    recs["symbol"] = np.arange(n) % 4
    recs["seq"] = np.arange(1, n + 1)
    recs["ts_exch_ns"] = 34_200_000_000_000 + np.arange(n) * 1000
    recs["ts_detect_ns"] = time.time_ns()
    recs["bid_px_tick"], recs["ask_px_tick"], recs["bid_qty"], recs["ask_qty"] = 10_000, 10_002, 300, 200
    recs["iv"][:, 0] = recs["ts_exch_ns"] + 100_000_000
    recs["iv"][:, 1:] = 5
    recs["fv"][:] = 0.5
    rates = []
    with EmbeddedBroker.start() as broker:
        for r in range(repeats):
            inst = f"benchk{os.getpid()}x{r}"
            ring = Ring.create(inst, "signals", sc.SIGNAL_DTYPE, 1 << int(np.ceil(np.log2(n))))
            try:
                row = np.zeros(sc.STATS_WORDS, np.int64)
                spec = PublisherSpec(instance=inst, symbols=("AAA", "BBB", "CCC", "DDD"), bootstrap=broker.bootstrap,
                                     prefix=f"bench{r}", pending_max=n, producer_queue_max=100_000)
                pub = Publisher(spec, ring, row)
                ensure_topics(broker.bootstrap, [pub.sig_topic, pub.sum_topic])
                assert ring.push(recs) == n
                t = time.perf_counter()
                while row[sc.ST_PUB_DELIVERED] + row[sc.ST_PUB_FAILED] < n and time.perf_counter() - t < 120:
                    pub.step(0.001)
                dt = time.perf_counter() - t
                assert row[sc.ST_PUB_DELIVERED] == n, (row[sc.ST_PUB_DELIVERED], row[sc.ST_PUB_FAILED])
                rates.append(n / dt)
                pub.close(1)
            finally:
                ring.unlink()
                ring.close()
    return {"publisher_msgs_per_s": round(statistics.median(rates)), "publisher_runs_msgs_per_s": [round(x) for x in rates],
            "publisher_messages": n}


def _pipeline(on: bool, rate: int, count: int, tag: str, extra: str = "") -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.toml"
        cfg.write_text(f'[instance]\nname = "benchk{os.getpid()}{tag}"\n[rings]\nmd_capacity = 65536\n'
                       f'[analysis]\nenabled = {str(on).lower()}\n[kafka]\nenabled = {str(on).lower()}\n{extra}')
        out = subprocess.run([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--rate", str(rate),
                              "--messages", str(count), "--json", "--quiet"], capture_output=True, text=True,
                             cwd=REPO, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    j = json.loads(out.stdout)
    return {"applied_msgs_per_s": round(j["applied"] / max(j["feed_seconds"], 1e-9)), "applied": j["applied"],
            "lost": j["feed"]["sent"] - j["applied"], "events_dropped": j["book"]["events_dropped"],
            "signals": j["signals"], "published": j["published"], "publish_dropped": j["publish_dropped"],
            "cpu_percent": j["cpu_percent"], "latency_ns": j["latency_ns"]}


RX_CORE = "[pinning]\nanalysis = [0]\npublisher = [0]\nbackground_idle = false\n"  # the 2-core alternative: with rx and the feed, normal priority (as SCHED_IDLE there they starve: rx busy-polls)


def bench_ratio(count: int, repeats: int) -> dict:
    """Alternating runs: on (default placement; on 2 cores analysis + publisher share
    the book writer's core), off, and on with analysis + publisher on rx's core."""
    res = {}
    for label, rate in (("max", 0), ("paced_1M", 1_000_000)):
        acc = {"on": [], "off": [], "on_rx_core": []}
        for r in range(repeats):
            for name, flag, extra in (("on", True, ""), ("off", False, ""), ("on_rx_core", True, RX_CORE)):
                s = _pipeline(flag, rate, count, f"{label}{r}{name[:2]}{len(name)}", extra)
                print(f"  {label} {name}: {s['applied_msgs_per_s']:,} msgs/s applied, lost {s['lost']:,}, "
                      f"signals {s['signals']:,}, published {s['published']:,}, p99 {s['latency_ns']['p99']:,} ns, "
                      f"cpu {s['cpu_percent']}", file=sys.stderr, flush=True)
                acc[name].append(s)
        med = {k: statistics.median(s["applied_msgs_per_s"] for s in v) for k, v in acc.items()}
        p99 = {k: statistics.median(s["latency_ns"]["p99"] for s in v) for k, v in acc.items()}
        res[label] = {"ratio": round(med["on"] / med["off"], 3),
                      "ratio_rx_core": round(med["on_rx_core"] / med["off"], 3),
                      "msgs_per_s": {k: round(v) for k, v in med.items()}, "latency_p99_ns": p99, "runs": acc}
    return {"book_rate_ratio_with_publishing": res["max"]["ratio"],
            "book_rate_ratio_with_publishing_on_rx_core": res["max"]["ratio_rx_core"],
            "book_rate_ratio_at_1M": res["paced_1M"]["ratio"],
            "latency_p99_ns_at_1M": res["paced_1M"]["latency_p99_ns"], "pipeline": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--events-msgs", type=int, default=2_000_000, help="synthetic messages for the analysis bench")
    ap.add_argument("--publish", type=int, default=100_000, help="messages for the publisher bench")
    ap.add_argument("--pipeline-msgs", type=int, default=5_000_000)
    ap.add_argument("--pipeline-repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "kafka.json"))
    a = ap.parse_args(argv)
    res = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res.update(bench_analysis(a.events_msgs, a.repeats))
    print(f"analysis: {res['analysis_ns_per_event']} ns/event", file=sys.stderr, flush=True)
    res.update(bench_publisher(a.publish, max(1, a.repeats // 2)))
    print(f"publisher: {res['publisher_msgs_per_s']:,} msgs/s", file=sys.stderr, flush=True)
    res.update(bench_ratio(a.pipeline_msgs, a.pipeline_repeats))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "pipeline"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
