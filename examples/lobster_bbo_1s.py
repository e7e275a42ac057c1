"""Replay a LOBSTER day through obpipe's book into a DataFrame of the best bid and offer
at every whole second (needs pandas: pip install obpipe[pandas]).

    python examples/lobster_bbo_1s.py                       # the AMZN sample day
    python examples/lobster_bbo_1s.py MESSAGE.csv --out bbo.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import obpipe

AMZN = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lobster"
        / "AMZN_2012-06-21_34200000_57600000_message_1.csv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(AMZN), help="LOBSTER message file (default: the AMZN sample)")
    ap.add_argument("--out", default=None, help="also write the frame as CSV here")
    a = ap.parse_args(argv)

    r = obpipe.replay(a.path)  # with the order-book file beside it: best levels as the vendor's rows
    ev = r.to_pandas()[["bid_px", "bid_qty", "ask_px", "ask_qty"]]  # one row per top-of-book change or trade
    ev = ev[~ev.index.duplicated(keep="last")]  # the book after the last message of each instant
    seconds = pd.date_range(ev.index[0].ceil("1s"), ev.index[-1].floor("1s"), freq="1s", name="ts")
    bbo = ev.reindex(seconds, method="ffill")  # as of each second: the last state at or before it
    bbo["spread"] = bbo["ask_px"] - bbo["bid_px"]

    print(f"{r.symbol}: {len(bbo):,} seconds of BBO from {len(r.events):,} book events "
          f"({r.messages:,} messages, tick {r.tick_size} currency units)")
    print(bbo.head().to_string())
    print(bbo.tail(3).to_string())
    if a.out:
        bbo.to_csv(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
