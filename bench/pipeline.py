"""Pipeline benchmark: the highest sustained UDP feed rate with zero loss, latency and
CPU at 1M msgs/s, and receive->apply latency at 1M and 2M msgs/s as medians of 3 runs.  Writes ``bench/results/pipeline.json``.  Not a test.

Each step is a real ``obpipe run`` (supervisor, feed, rx and book writer processes, UDP
on 127.0.0.1) of ``--seconds`` at a fixed rate; a step passes when nothing was lost
anywhere (no gap, ring drop or kernel drop, everything applied) and the sender really
achieved >= 95% of the asked rate.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(rate: int, seconds: float, instance: str) -> dict:
    cmd = [sys.executable, "-m", "obpipe", "run", "--instance", instance, "--rate", str(rate),
           "--messages", str(int(rate * seconds)), "--json", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=seconds * 10 + 300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        return {"rate": rate, "error": out.stderr[-500:]}
    d = json.loads(out.stdout)
    lost = d["gap_messages"] + d["ring_drops"] + (d["kernel_drops"] or 0) + (d["feed"]["sent"] - d["applied"])
    return {"rate": rate, "achieved_msgs_per_s": d["feed_msgs_per_s"], "lost": lost,
            "gap_messages": d["gap_messages"], "ring_drops": d["ring_drops"], "kernel_drops": d["kernel_drops"],
            "applied": d["applied"], "latency_ns": d["latency_ns"], "cpu_percent": d["cpu_percent"],
            "ok": lost == 0 and d["feed_msgs_per_s"] >= 0.95 * rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="1000000,2000000,3000000,4000000,5000000,6000000")
    ap.add_argument("--latency-rates", default="1000000,2000000")
    ap.add_argument("--latency-runs", type=int, default=3, help="runs per latency rate (the ramp's step is the first)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline.json"))
    a = ap.parse_args(argv)
    steps = []
    for i, rate in enumerate(int(r) for r in a.rates.split(",")):
        t = time.perf_counter()
        s = run(rate, a.seconds, f"benchp{os.getpid()}x{i}")
        print(f"{rate:>10,} msgs/s: {time.perf_counter() - t:5.1f}s {s}", file=sys.stderr, flush=True)
        steps.append(s)
    ok = [s for s in steps if s.get("ok")]
    latency = {}
    for rate in (int(r) for r in a.latency_rates.split(",") if r):
        runs = [s for s in steps if s["rate"] == rate and "error" not in s][:1]
        while len(runs) < a.latency_runs:
            s = run(rate, a.seconds, f"benchp{os.getpid()}l{rate}x{len(runs)}")
            print(f"{rate:>10,} msgs/s (latency run {len(runs) + 1}): {s}", file=sys.stderr, flush=True)
            if "error" in s:
                break
            runs.append(s)
        if runs:
            latency[str(rate)] = {
                **{q: int(statistics.median(r["latency_ns"][q] for r in runs)) for q in ("p50", "p99", "p999")},
                "runs": [{q: r["latency_ns"][q] for q in ("p50", "p99", "p999")} for r in runs],
                "lost": sum(r["lost"] for r in runs)}
    at_1m = next((s for s in steps if s["rate"] == 1_000_000 and "error" not in s), None)
    res = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds_per_step": a.seconds,
        "max_zero_drop_msgs_per_s": max((s["achieved_msgs_per_s"] for s in ok), default=0),
        "latency_ns": at_1m["latency_ns"] if at_1m else None,
        "cpu_percent_at_1M": at_1m["cpu_percent"] if at_1m else None,
        # receive->apply ns, median of --latency-runs whole runs per rate (issue 19's figure)
        "latency_median_ns": latency,
        "steps": steps,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
