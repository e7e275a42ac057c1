"""Run tests N times in a row while every core is kept busy: the flakiness check.

    python -m tests.under_load -n 20 tests/test_kafka.py::test_x tests/publisher/test_tail.py::test_y

One busy-looping process per core (normal priority, unpinned) runs for the whole
campaign, the way another user's job would; each run is a fresh pytest process. Prints
one line per run and a JSON summary; exits 1 if any run failed. ``make flaky-check``.
Not collected by pytest (the file name does not start with ``test_``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time


def _burn(stop) -> None:
    while not stop.value:
        for _ in range(100_000):
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.under_load", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20, help="runs of each test (default 20)")
    p.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)")
    p.add_argument("tests", nargs="+", help="pytest node ids")
    a = p.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.RawValue("b", 0)
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(a.burners)]
    for b in burners:
        b.start()
    results = {t: [] for t in a.tests}
    try:
        for i in range(a.n):
            for t in a.tests:
                t0 = time.monotonic()
                r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", t],
                                   capture_output=True, text=True)
                dt = time.monotonic() - t0
                results[t].append({"ok": r.returncode == 0, "s": round(dt, 1)})
                last = (r.stdout.strip().splitlines() or ["?"])[-1]
                print(f"run {i + 1}/{a.n} {'PASS' if r.returncode == 0 else 'FAIL'} {dt:6.1f} s  {t}  {last}",
                      flush=True)
                if r.returncode:
                    print(r.stdout[-4000:], r.stderr[-2000:], sep="\n", flush=True)
    finally:
        stop.value = 1
        for b in burners:
            b.join(5)
            if b.is_alive():
                b.kill()
    summary = {t: {"runs": len(v), "passed": sum(x["ok"] for x in v),
                   "median_s": sorted(x["s"] for x in v)[len(v) // 2] if v else None} for t, v in results.items()}
    print(json.dumps({"burners": a.burners, "tests": summary}, indent=2))
    return 0 if all(s["passed"] == s["runs"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
