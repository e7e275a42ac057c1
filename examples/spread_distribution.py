"""The spread distribution of a replay: how much of the time, and of the book events, the
spread was each number of ticks (both sides quoted only).

    python examples/spread_distribution.py                  # the AMZN LOBSTER sample day
    python examples/spread_distribution.py FILE [--symbol S] [--top 10]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import obpipe

AMZN = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lobster"
        / "AMZN_2012-06-21_34200000_57600000_message_1.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(AMZN), help="LOBSTER, capture or ITCH file (default: AMZN)")
    ap.add_argument("--symbol", default=None, help="symbol to follow (a capture's or ITCH file's)")
    ap.add_argument("--top", type=int, default=10, help="spreads to list, most time first")
    a = ap.parse_args(argv)

    r = obpipe.replay(a.path, a.symbol)
    e = r.events
    end = r.depth["ts_exch_ns"][-1]  # the file's last message (depth: the book after each batch)
    held = np.diff(e["ts_exch_ns"], append=end)  # ns each top of book lasted
    quoted = (e["bid_px_tick"] != obpipe.NO_PX) & (e["ask_px_tick"] != obpipe.NO_PX)
    spread, held = (e["ask_px_tick"] - e["bid_px_tick"])[quoted], held[quoted]
    ticks, first, count = np.unique(spread, return_index=True, return_counts=True)
    time_ns = np.bincount(np.searchsorted(ticks, spread), weights=held, minlength=len(ticks))

    print(f"{r.symbol}: {len(spread):,} quoted book events over {held.sum() / 1e9:,.1f} s; "
          f"time-weighted mean spread {np.average(spread, weights=held):.3f} ticks "
          f"(tick {r.tick_size} currency units)")
    print(f"{'ticks':>7} {'currency':>9} {'of time':>9} {'of events':>10}")
    for k in np.argsort(-time_ns)[: a.top]:
        print(f"{ticks[k]:>7} {ticks[k] * r.tick_size:>9.4f} {time_ns[k] / held.sum():>9.2%} "
              f"{count[k] / len(spread):>10.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
