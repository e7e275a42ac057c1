"""Attach to a running obpipe instance and print one symbol's best bid and offer a few times.

    obpipe run &                                   # an instance named "main" (configs/default.toml)
    python examples/watch_instance.py              # main's first symbol, 5 times, every 0.5 s
    python examples/watch_instance.py main --symbol BBB --count 10 --every 0.2
"""
from __future__ import annotations

import argparse

import obpipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instance", nargs="?", default=None, help="instance name (default: the config's, main)")
    ap.add_argument("--symbol", default=None, help="symbol name or index (default: the first)")
    ap.add_argument("--count", type=int, default=5, help="snapshots to print")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between snapshots")
    ap.add_argument("--config", default=None, help="config naming the symbols (default: configs/default.toml)")
    a = ap.parse_args(argv)

    with obpipe.attach(a.instance, config=a.config) as inst:
        sym = a.symbol if a.symbol is not None else inst.symbols()[0]
        for n, snap in enumerate(inst.watch(sym, every=a.every), 1):
            b = snap.bbo
            bid = f"{b.bid_qty} @ {b.bid_px_tick} ({b.bid_px})" if b.bid_px_tick is not None else "-"
            ask = f"{b.ask_qty} @ {b.ask_px_tick} ({b.ask_px})" if b.ask_px_tick is not None else "-"
            print(f"{b.symbol}  bid {bid}  ask {ask}  seq {b.seq}  msgs {snap.msgs_applied}", flush=True)
            if n >= a.count:
                break
        else:
            print(f"instance {inst.instance} ended")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
