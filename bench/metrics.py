"""/metrics benchmarks -> bench/results/metrics.json (``make bench-metrics``).  Not a test.

- ``scrape``: a real ``obpipe run`` (synthetic feed at 200,000 msgs/s) with 4 and with
  64 symbols; ``--scrapes`` GETs of its /metrics, one every 0.1 s: the HTTP round trip
  (client side, wall time) and the collector's own time (``obpipe_scrape_duration_seconds``),
  medians and maxima, and the response's size and series count.
- ``rate``: the pipeline as fast as possible (``--rate 0``, ``--messages``), 4 symbols,
  with /metrics scraped every second by a client thread vs no endpoint at all, in turn
  (off, on, off, on, ...): messages the book writer applied per second of the feed's
  sending time, and the same-run ratio with / without (medians of the pairs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import _result  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: str, name: str, n_sym: int, port: int) -> str:
    syms = ", ".join(f'"S{i:03d}"' for i in range(n_sym))
    p = Path(tmp) / f"{name}.toml"
    p.write_text(f'[instance]\nname = "{name}"\n[book]\nsymbols = [{syms}]\n[kafka]\nenabled = false\n'
                 f'[redis]\nenabled = false\n[ticks]\nenabled = false\n[metrics]\nport = {port}\n'
                 f'[rings]\nmd_capacity = 65536\n')
    return str(p)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _start(cfg: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", cfg, "--json", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def _wait_applying(url: str, timeout_s: float = 300) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            m = re.search(r"^obpipe_book_messages_total (\S+)$", _get(url), re.M)
            if m and float(m.group(1)) > 0:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the pipeline never applied a message ({url})")


def bench_scrape(tmp: str, n_sym: int, scrapes: int) -> dict:
    port = _free_port()
    cfg = _config(tmp, f"benchm{os.getpid()}s{n_sym}", n_sym, port)
    p = _start(cfg, "--rate", "200000")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        _wait_applying(url)
        wall, own, size, series = [], [], 0, 0
        for _ in range(scrapes):
            t = time.perf_counter()
            text = _get(url)
            wall.append(time.perf_counter() - t)
            own.append(float(re.search(r"^obpipe_scrape_duration_seconds (\S+)$", text, re.M).group(1)))
            size = len(text)
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            time.sleep(0.1)
    finally:
        p.send_signal(2)
        p.communicate(timeout=120)
    ms = lambda xs, f: round(f(xs) * 1e3, 3)  # noqa: E731
    return {"symbols": n_sym, "scrapes": scrapes, "http_ms_median": ms(wall, statistics.median),
            "http_ms_max": ms(wall, max), "collect_ms_median": ms(own, statistics.median),
            "collect_ms_max": ms(own, max), "bytes": size, "series": series}


def _scraper(url: str, stop: threading.Event, out: list) -> None:
    while not stop.wait(1.0):
        try:
            _get(url)
            out.append(1)
        except OSError:
            pass


def bench_rate(tmp: str, messages: int, pairs: int) -> dict:
    runs: dict[str, list] = {"off": [], "on": []}
    for i in range(pairs):
        for mode in ("off", "on"):
            port = _free_port() if mode == "on" else 0
            cfg = _config(tmp, f"benchm{os.getpid()}r{i}{mode}", 4, port)
            p = _start(cfg, "--rate", "0", "--messages", str(messages))
            stop, got = threading.Event(), []
            th = None
            if mode == "on":
                th = threading.Thread(target=_scraper, args=(f"http://127.0.0.1:{port}/metrics", stop, got),
                                      daemon=True)
                th.start()
            out, err = p.communicate(timeout=600)
            stop.set()
            if th:
                th.join(5)
            if p.returncode != 0:
                raise SystemExit(f"obpipe run failed: {err[-2000:]}")
            d = json.loads(out)
            rate = d["applied"] / max(d["feed_seconds"], 1e-9)
            runs[mode].append({"applied": d["applied"], "feed_seconds": d["feed_seconds"],
                               "applied_msgs_per_s": round(rate), "scrapes": len(got),
                               "cpu_percent_book": d["cpu_percent"].get("book")})
            print(f"  {mode}: {rate / 1e6:.2f}M applied msgs/s, {len(got)} scrapes", file=sys.stderr, flush=True)
    ratios = [a["applied_msgs_per_s"] / b["applied_msgs_per_s"] for a, b in zip(runs["on"], runs["off"])]
    return {"messages": messages, "pairs": pairs,
            "applied_msgs_per_s_without": round(statistics.median(r["applied_msgs_per_s"] for r in runs["off"])),
            "applied_msgs_per_s_with_scrapes": round(statistics.median(r["applied_msgs_per_s"] for r in runs["on"])),
            "ratio_with_over_without": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios],
            "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--messages", type=int, default=60_000_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "metrics.json"))
    a = ap.parse_args(argv)
    res = _result.header(repeats=a.pairs)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="obpipe-bench-metrics") as tmp:
        res["scrape"] = {}
        for n in (4, 64):
            res["scrape"][str(n)] = s = bench_scrape(tmp, n, a.scrapes)
            print(f"{n} symbols: scrape {s['http_ms_median']} ms (collect {s['collect_ms_median']} ms), "
                  f"{s['series']} series", file=sys.stderr, flush=True)
        res["rate"] = r = bench_rate(tmp, a.messages, a.pairs)
    res["scrape_ms_4_symbols"] = res["scrape"]["4"]["http_ms_median"]
    res["scrape_ms_64_symbols"] = res["scrape"]["64"]["http_ms_median"]
    res["book_rate_ratio_with_scrapes"] = r["ratio_with_over_without"]
    res["seconds"] = round(time.monotonic() - t0)
    res["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
