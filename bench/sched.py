"""Where the receive->apply tail comes from (issue 19, first measurements) ->
bench/results/sched.json.  Not a test.

- ``wake``: the wake-up latency of a blocked process on this VM, the floor any blocking
  design meets: two processes ping-pong one 8-byte token over a pair of eventfds
  (blocking reads), pinned to the same core or to different cores; a one-way hop is
  half a round trip (Python on both sides: an upper bound of the kernel's own).
- ``pipeline``: a real ``obpipe run`` (defaults: Redis and tick recording on) at each
  of ``--rates``, once with the settings issue 19 started from (``VARIANTS["before"]``)
  and once with today's:
  per part, from ``/proc/<pid>/schedstat`` and ``/proc/<pid>/status`` over a steady
  window, CPU used, time spent runnable but waiting for a CPU (run delay), timeslices,
  voluntary (blocked or slept) and involuntary (preempted) context switches; and the
  run's receive->apply percentiles.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import _result  # noqa: E402


def _pingpong(n: int, same_core: bool) -> list[float]:
    a2b, b2a = os.eventfd(0), os.eventfd(0)
    pid = os.fork()
    if pid == 0:  # the echo side
        try:
            os.sched_setaffinity(0, {0})
            for _ in range(n):
                os.eventfd_read(a2b)
                os.eventfd_write(b2a, 1)
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {0} if same_core else {1})
    rtt = []
    for _ in range(n):
        t = time.perf_counter_ns()
        os.eventfd_write(a2b, 1)
        os.eventfd_read(b2a)
        rtt.append((time.perf_counter_ns() - t) / 2)
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    return rtt


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_wake(n: int) -> dict:
    out = {}
    for name, same in (("same_core", True), ("other_core", False)):
        hop = _pingpong(n, same)[100:]  # (the first hops warm up)
        out[name] = {"hop_ns_p50": round(_pct(hop, 0.5)), "hop_ns_p99": round(_pct(hop, 0.99)),
                     "hop_ns_p999": round(_pct(hop, 0.999)), "hop_ns_max": round(max(hop)), "hops": len(hop)}
    return out


def _proc(pid: int) -> dict | None:
    try:
        cpu_ns, delay_ns, slices = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split())
        st = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return {"cpu_ns": cpu_ns, "run_delay_ns": delay_ns, "timeslices": slices,
                "voluntary": int(st["voluntary_ctxt_switches"]), "involuntary": int(st["nonvoluntary_ctxt_switches"])}
    except OSError:
        return None


#: The settings issue 19 started from (sleeping waits, normal scheduling, the old
#: placement), against today's defaults, in the same invocation.
VARIANTS = {"before": '[backoff]\nwake = "sleep"\n[pinning]\nrealtime = false\n', "now": ""}


def bench_pipeline(rate: int, seconds: float, window: float, extra: str = "") -> dict:
    with tempfile.TemporaryDirectory(prefix="obpipe-bench-sched") as tmp:
        inst = f"benchs{os.getpid()}"
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(f'[instance]\nname = "{inst}"\n[metrics]\nport = 0\n{extra}')
        p = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--rate", str(rate),
                              "--messages", str(int(rate * seconds)), "--json", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        from obpipe.status import Status

        pids = None
        t_end = time.monotonic() + 300
        while time.monotonic() < t_end and pids is None:
            time.sleep(0.5)
            try:
                st = Status(inst)
                d = st.collect(rates=False, cpu_percent=False)
                st.close()
            except Exception:  # noqa: BLE001  (not up yet)
                continue
            if d["feed"]["sent"] > rate:  # (a second in: compiled, steady)
                pids = {k: v["pid"] for k, v in d["processes"].items() if v}
        a = {k: _proc(v) for k, v in pids.items()}
        time.sleep(window)
        b = {k: _proc(v) for k, v in pids.items()}
        out, err = p.communicate(timeout=600)
        final = json.loads(out)
    parts = {}
    for k in pids:
        if a[k] and b[k]:
            d = {f: b[k][f] - a[k][f] for f in a[k]}
            parts[k] = {"cpu_share": round(d["cpu_ns"] / (window * 1e9), 3),
                        "run_delay_share": round(d["run_delay_ns"] / (window * 1e9), 3),
                        "run_delay_us_per_slice": round(d["run_delay_ns"] / max(d["timeslices"], 1) / 1e3, 1),
                        "timeslices_per_s": round(d["timeslices"] / window),
                        "voluntary_per_s": round(d["voluntary"] / window),
                        "involuntary_per_s": round(d["involuntary"] / window)}
    return {"rate": rate, "seconds": seconds, "window_s": window, "parts": parts,
            "latency_ns": final["latency_ns"], "applied": final["applied"], "ring_drops": final["ring_drops"],
            "kernel_drops": final["kernel_drops"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=20_000)
    ap.add_argument("--rates", default="1000000,2000000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sched.json"))
    a = ap.parse_args(argv)
    res = _result.header(repeats=1)
    res["wake"] = bench_wake(a.hops)
    print(json.dumps(res["wake"]), file=sys.stderr, flush=True)
    res["pipeline"] = []
    for r in a.rates.split(","):
        for name, extra in VARIANTS.items():
            res["pipeline"].append({"variant": name, **bench_pipeline(int(r), a.seconds, a.window, extra)})
            print(json.dumps(res["pipeline"][-1]), file=sys.stderr, flush=True)
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
