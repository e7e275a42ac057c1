"""The ``obpipe`` command line (also ``python -m obpipe``)."""
from __future__ import annotations

import argparse
import sys
import time

from obpipe import config as cfgmod


def _load(path):
    try:
        return cfgmod.load(path)
    except cfgmod.ConfigError as e:
        print(f"obpipe: config error: {e}", file=sys.stderr)
        raise SystemExit(2)


def _with_overrides(cfg, a):
    """Command-line overrides, validated exactly like the config file's values."""
    run = {k: v for k, v in (("rate", getattr(a, "rate", None)), ("duration_s", getattr(a, "duration", None)),
                             ("seed", getattr(a, "seed", None))) if v is not None}
    sections = {"run": run} if run else {}
    if getattr(a, "instance", None):
        sections["instance"] = {"name": a.instance}
    try:
        return cfgmod.replace(cfg, **sections) if sections else cfg
    except cfgmod.ConfigError as e:
        print(f"obpipe: bad option: {e}", file=sys.stderr)
        raise SystemExit(2)


def cmd_run(a) -> int:
    from engine.supervisor import RunOptions, run

    cfg = _with_overrides(_load(a.config), a)
    if a.count is not None and a.count < 0:
        print("obpipe: bad option: --count must be >= 0", file=sys.stderr)
        return 2
    from feed_sim.wire import Faults

    try:
        faults = Faults(drop_every=a.drop_every, drop_prob=a.drop_prob, duplicate_every=a.dup_every,
                        reorder_every=a.reorder_every, truncate_every=a.truncate_every,
                        corrupt_every=a.corrupt_every, bad_magic_every=a.bad_magic_every,
                        bad_version_every=a.bad_version_every, seed=cfg.run.seed)
        if min(a.drop_every, a.dup_every, a.reorder_every, a.truncate_every, a.corrupt_every, a.bad_magic_every,
               a.bad_version_every) < 0 or not (
                0 <= a.drop_prob < 1):
            raise ValueError("fault intervals must be >= 0 and --drop-prob in [0, 1)")
    except ValueError as e:
        print(f"obpipe: bad option: {e}", file=sys.stderr)
        return 2
    return run(cfg, RunOptions(count=a.count, as_json=a.json, quiet=a.quiet, faults=faults))


def cmd_stats(a) -> int:
    import orjson

    from engine.status import Status, render
    from ring.errors import RingError

    cfg = _with_overrides(_load(a.config), a)
    inst = cfg.instance.name
    try:
        st = Status(inst, list(cfg.book.symbols))
    except RingError as e:
        print(f"obpipe stats: no running instance {inst!r}: {e}", file=sys.stderr)
        return 1
    try:
        while True:
            try:
                d = st.collect()
            except TimeoutError as e:
                print(f"obpipe stats: {e} (book writer stuck or killed mid-write?)", file=sys.stderr)
                return 1
            if a.json:
                print(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
            else:
                print(render(d), flush=True)
            if not a.watch:
                return 0
            time.sleep(a.interval)
            print()
    except KeyboardInterrupt:
        return 0
    finally:
        st.close()


def cmd_clean(a) -> int:
    from ring._shm import clean_stale

    removed = clean_stale(a.instance, dry_run=a.dry_run)
    for name, why in removed:
        print(f"{'would remove' if a.dry_run else 'removed'} {name}: {why}")
    if not removed:
        print("no stale obpipe segments")
    return 0


def cmd_lobster_check(a) -> int:
    from engine import lobster

    argv = [a.message_csv, a.orderbook_csv] + (["--json"] if a.json else []) + (
        ["--width", str(a.width)] if a.width else [])
    return lobster.main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obpipe", description="market-data and order-book engine")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the pipeline (synthetic feed -> book writer) until Ctrl-C or a limit")
    r.add_argument("--config", help="TOML config (default: configs/default.toml)")
    r.add_argument("--instance", help="instance name (segments /obpipe.<name>.*)")
    r.add_argument("--rate", type=int, help="feed messages/s (0 = as fast as possible)")
    r.add_argument("--duration", type=float, help="seconds to run (0 = until Ctrl-C)")
    r.add_argument("--count", "--messages", dest="count", type=int, help="stop after this many messages")
    f = r.add_argument_group("fault injection (sender side, exact and seeded)")
    f.add_argument("--drop-every", type=int, default=0, metavar="K", help="drop every K-th packet")
    f.add_argument("--drop-prob", type=float, default=0.0, metavar="P", help="drop each packet with probability P")
    f.add_argument("--dup-every", type=int, default=0, metavar="K", help="send every K-th packet twice")
    f.add_argument("--reorder-every", type=int, default=0, metavar="K", help="send every K-th packet after the next")
    f.add_argument("--truncate-every", type=int, default=0, metavar="K", help="cut every K-th packet short")
    f.add_argument("--corrupt-every", type=int, default=0, metavar="K", help="flip a byte in every K-th packet")
    f.add_argument("--bad-magic-every", type=int, default=0, metavar="K", help="wrong magic in every K-th packet")
    f.add_argument("--bad-version-every", type=int, default=0, metavar="K", help="wrong version in every K-th packet")
    r.add_argument("--seed", type=int, help="synthetic flow seed")
    r.add_argument("--json", action="store_true", help="final stats as JSON on stdout")
    r.add_argument("--quiet", action="store_true", help="no live status lines")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("stats", help="counters, rings and books of a running instance")
    s.add_argument("--config")
    s.add_argument("--instance")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="repeat every --interval seconds")
    s.add_argument("--interval", type=float, default=1.0)
    s.set_defaults(fn=cmd_stats)

    c = sub.add_parser("clean", help="remove shared-memory segments whose owner process is gone")
    c.add_argument("--instance", help="only this instance")
    c.add_argument("--dry-run", action="store_true")
    c.set_defaults(fn=cmd_clean)

    lc = sub.add_parser("lobster-check", help="replay a LOBSTER message file and compare with its order book")
    lc.add_argument("message_csv")
    lc.add_argument("orderbook_csv")
    lc.add_argument("--json", action="store_true")
    lc.add_argument("--width", type=int)
    lc.set_defaults(fn=cmd_lobster_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
