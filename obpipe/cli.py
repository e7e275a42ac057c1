"""The ``obpipe`` command line (also ``python -m obpipe``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from obpipe import config as cfgmod
from obpipe.ring.settings import ago_ns


def _load(path):
    try:
        return cfgmod.load(path)
    except cfgmod.ConfigError as e:
        print(f"obpipe: config error: {e}", file=sys.stderr)
        raise SystemExit(2)


def _symbol_arg(v: str) -> int | str:
    import re

    if v.isdigit():
        return int(v)
    if not all(re.fullmatch(r"[A-Za-z0-9._-]{1,16}", x) for x in v.split(",")):
        raise argparse.ArgumentTypeError(f"--symbol must be an index or 1-16 letters, digits, '.', '_' or '-' "
                                         f"(an ITCH replay: several, comma-separated), got {v!r}")
    return v


def _u32(v: str, flag: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = -1
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{flag} must be 0..4294967295, got {v!r}")
    return n


def _with_overrides(cfg, a):
    """Command-line overrides, validated exactly like the config file's values."""
    run = {k: v for k, v in (("rate", getattr(a, "rate", None)), ("duration_s", getattr(a, "duration", None)),
                             ("seed", getattr(a, "seed", None)), ("start_ns", getattr(a, "start_ns", None)))
           if v is not None}
    sections = {"run": run} if run else {}
    if getattr(a, "instance", None):
        sections["instance"] = {"name": a.instance}
    if getattr(a, "kafka", None):
        sections["kafka"] = {"bootstrap_servers": a.kafka}
    if getattr(a, "no_redis", False):
        sections["redis"] = {"enabled": False}
    if getattr(a, "no_ticks", False):
        sections["ticks"] = {"enabled": False}
    try:
        return cfgmod.replace(cfg, **sections) if sections else cfg
    except cfgmod.ConfigError as e:
        print(f"obpipe: bad option: {e}", file=sys.stderr)
        raise SystemExit(2)


def _faults(a, seed: int):
    """The fault-injection flags as ``Faults``; SystemExit(2) with a message if bad."""
    from obpipe.feed_sim.wire import Faults

    vals = [a.drop_every, a.dup_every, a.reorder_every, a.truncate_every, a.corrupt_every, a.bad_magic_every,
            a.bad_version_every]
    if min(vals) < 0 or not 0 <= a.drop_prob < 1:
        print("obpipe: bad option: fault intervals must be >= 0 and --drop-prob in [0, 1)", file=sys.stderr)
        raise SystemExit(2)
    return Faults(drop_every=a.drop_every, drop_prob=a.drop_prob, duplicate_every=a.dup_every,
                  reorder_every=a.reorder_every, truncate_every=a.truncate_every, corrupt_every=a.corrupt_every,
                  bad_magic_every=a.bad_magic_every, bad_version_every=a.bad_version_every, seed=seed)


def _check_feed_args(a, faults) -> None:
    """Checks a feed's options before anything starts (SystemExit(2) with a message)."""
    from obpipe.feed_sim.capture import is_capture

    def bad(msg):
        print(f"obpipe: bad option: {msg}", file=sys.stderr)
        raise SystemExit(2)

    if getattr(a, "count", None) is not None and a.count < 0:
        bad("--count must be >= 0")
    if getattr(a, "speed", None) is not None and not a.speed > 0:
        bad("--speed must be > 0")
    if getattr(a, "speed", None) is not None and a.rate is not None:
        bad("give --speed (recorded pace) or --rate (fixed), not both")
    replay = getattr(a, "replay", None)
    if replay is not None:
        import os

        if not os.path.isfile(replay):
            bad(f"{replay}: no such file")
        if is_capture(replay) and faults.any():
            bad("fault injection applies to synthetic and LOBSTER feeds; a capture replays its datagrams exactly")
    elif getattr(a, "speed", None) is not None:
        bad("--speed needs a replay file")
    start = getattr(a, "start_ns", None)
    if start and not cfgmod._PLAUSIBLE_NS[0] <= start <= cfgmod._PLAUSIBLE_NS[1]:
        bad(f"--start-ns must be UTC epoch ns in 1990..2200 (0: now), got {start}")
    if getattr(a, "source", "synthetic") == "exchange" and (replay is not None or faults.any()
                                                            or getattr(a, "capture", None)):
        bad("--source exchange takes no replay file, fault injection or capture (the exchange is the source)")


def cmd_run(a) -> int:
    from obpipe.supervisor import RunOptions, run

    cfg = _with_overrides(_load(a.config), a)
    faults = _faults(a, cfg.run.seed)
    _check_feed_args(a, faults)
    return run(cfg, RunOptions(count=a.count, as_json=a.json, quiet=a.quiet, faults=faults, replay=a.replay,
                               speed=a.speed, symbol=a.symbol, capture=a.capture, no_feed=a.no_feed,
                               rate=a.rate, no_kafka=a.no_kafka, source=a.source,
                               retransmit_window=a.retransmit_window))


def _instance_word(inst: str, row: int, word: int) -> int:
    from obpipe.ring.instance import instance_word  # (imported late: `obpipe tail` imports no numpy first)

    return instance_word(inst, row, word)


def _instance_bootstrap(inst: str) -> str | None:
    from obpipe.ring.instance import instance_bootstrap

    return instance_bootstrap(inst)


def cmd_tail(argv: list[str]) -> int:
    """``obpipe tail``: publisher.tail with the broker found from --kafka, the running
    instance's embedded broker, the config's bootstrap_servers, or $OBPIPE_KAFKA."""
    import os

    from obpipe.ring.interrupt import Interrupt

    # first, so Ctrl-C while tail is still importing ends it cleanly too; tail holds nothing
    # to finish (no commits, line-flushed output): the first signal exits at once
    stop = Interrupt(grace_s=0)
    from obpipe.publisher import tail

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--instance")
    known, rest = pre.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        return tail.main(rest, stop)
    cfg = _load(known.config)
    inst = known.instance or cfg.instance.name
    if not any(x == "--kafka" or x.startswith("--kafka=") for x in rest):
        bs = _instance_bootstrap(inst) or cfg.kafka.bootstrap_servers or os.environ.get("OBPIPE_KAFKA")
        if not bs:
            print(f"obpipe tail: no broker: instance {inst!r} is not running with an embedded broker, the config "
                  f"names none and $OBPIPE_KAFKA is unset; give --kafka HOST:PORT", file=sys.stderr)
            return 2
        rest = rest + ["--kafka", bs]
    if not any(x == "--prefix" or x.startswith("--prefix=") for x in rest):
        rest = rest + ["--prefix", cfg.kafka.topic_prefix]
    return tail.main(rest, stop)


def _feed_port(a) -> int:
    if a.port:
        return a.port
    from obpipe.ring.errors import RingError
    from obpipe.ring.stats import ROW_RX
    from obpipe.ring import schema

    inst = a.instance or "main"
    try:
        port = _instance_word(inst, ROW_RX, schema.ST_RX_PORT)
    except RingError as e:
        print(f"obpipe: no --port, and no running instance {inst!r} to send to: {e}", file=sys.stderr)
        raise SystemExit(2)
    if port <= 0:
        print(f"obpipe: instance {inst!r} has no rx port yet", file=sys.stderr)
        raise SystemExit(2)
    return port


def cmd_feed(a) -> int:
    """``obpipe feed`` (synthetic) and ``obpipe replay FILE``."""
    import orjson

    from obpipe.engine import lobster
    from obpipe.feed_sim import feed as feedmod

    faults = _faults(a, a.seed)
    _check_feed_args(a, faults)
    port = _feed_port(a)
    rate = a.rate if a.rate is not None else (0 if a.replay else 200_000)
    spec = feedmod.FeedSpec(host=a.host, port=port, replay=a.replay, rate=rate, speed=a.speed, count=a.count,
                            duration_s=a.duration or 0.0, seed=a.seed, n_symbols=a.symbols, symbol=a.symbol,
                            faults=faults, capture=a.capture, session=a.session, start_ns=a.start_ns or 0,
                            progress=(not a.no_progress and not a.json and sys.stderr.isatty()) or a.progress,
                            lobster_loader=lobster.load_lobster, request_port=a.request_port,
                            retransmit_window=a.retransmit_window)
    from obpipe.ring.interrupt import Interrupt
    from obpipe.ring.net import set_timer_slack

    set_timer_slack()
    # Ctrl-C is a flag the send loop reads between chunks (an ITCH feed's linger too), and
    # a bound: still running 1.5 s later (e.g. in a kernel's first compile), it exits
    intr = Interrupt(grace_s=1.5)

    class _Stop:
        @staticmethod
        def is_set() -> bool:
            return bool(intr)

    try:
        res = feedmod.run(spec, _Stop())
    except feedmod.FeedError as e:
        print(f"obpipe: {e}", file=sys.stderr)
        return 2
    finally:
        intr.restore()
    res["interrupted"] = res.get("interrupted") or bool(intr)
    if a.json:
        print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"sent {res['messages']:,} messages in {res['datagrams']:,} datagrams to {a.host}:{port} in "
              f"{res['seconds']} s ({res['msgs_per_s']:,} msgs/s)"
              + (f"; captured {res['captured']:,} datagrams to {res['capture_file']}" if res["capture_file"] else "")
              + ("; faults injected: " + ", ".join(f"{k} {v}" for k, v in res["injected"].items() if v)
                 if any(res["injected"].values()) else ""))
    return 0


def cmd_stats(a) -> int:
    """``obpipe stats``: on a terminal a styled view (``--watch``: redrawn in place, with
    sparklines of each rate's recent history); into a pipe or a file, or with
    ``--plain``, the plain text report (no escape codes; ``--watch`` appends one report
    per interval, a blank line between); ``--json``: the ``Status.collect()`` dict."""
    import orjson

    from obpipe.status import RateHistory, Status, render, render_view
    from obpipe.ring.errors import RingError

    cfg = _with_overrides(_load(a.config), a)
    inst = cfg.instance.name
    try:
        st = Status(inst, list(cfg.book.symbols))
    except RingError as e:
        print(f"obpipe stats: no running instance {inst!r}: {e}", file=sys.stderr)
        return 1
    from obpipe.ring.interrupt import Interrupt

    # a heartbeat older than half the supervisor's kill timeout is shown stale
    stale_s = (cfg.supervisor.heartbeat_timeout_s or 5.0) / 2
    view = not a.json and not a.plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    console = live = None
    if view:
        from rich.console import Console
        from rich.live import Live

        console = Console(force_terminal=True)  # (the decision is ours: FORCE_COLOR in a pipe changes nothing)
        if a.watch:  # redrawn in place; no refresh thread: the loop below redraws
            live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False,
                        vertical_overflow="ellipsis")
    history = RateHistory()
    stop = Interrupt()
    try:
        if live is not None:
            live.start()
        while not stop:
            try:
                d = st.collect()
            except TimeoutError as e:
                if live is not None:  # (its last frame first, then the message under it)
                    live.stop()
                    live = None
                print(f"obpipe stats: {e} (book writer stuck or killed mid-write?)", file=sys.stderr)
                return 1
            history.add(d.get("rates", {}))
            if a.json:
                print(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
            elif live is not None:
                live.update(render_view(d, history, stale_s, console.width), refresh=True)
            elif console is not None:
                console.print(render_view(d, None, stale_s, console.width))
            else:
                print(render(d), flush=True)
            if not a.watch:
                return 0
            t_next = time.monotonic() + a.interval
            while not stop and time.monotonic() < t_next:
                time.sleep(min(0.1, a.interval))
            if live is None:
                print()
        return 0
    finally:
        if live is not None:
            live.stop()
        st.close()
        stop.restore()


def cmd_clean(a) -> int:
    from obpipe.ring.shm import clean_stale

    foreign: list[tuple[str, str]] = []
    removed = clean_stale(a.instance, dry_run=a.dry_run, foreign=foreign)
    for name, why in removed:
        print(f"{'would remove' if a.dry_run else 'removed'} {name}: {why}")
    for _name, why in foreign:
        print(f"obpipe clean: left {why}", file=sys.stderr)
    if not removed and not foreign:
        print("no stale obpipe segments")
    return 1 if foreign else 0


def cmd_lobster_check(a) -> int:
    from obpipe.engine import lobster

    argv = [a.message_csv, a.orderbook_csv] + (["--json"] if a.json else []) + (
        ["--width", str(a.width)] if a.width else [])
    return lobster.main(argv)


def cmd_trace(a) -> int:
    from obpipe.engine import trace as tr
    from obpipe.feed_sim.capture import CaptureError, is_capture

    try:
        from obpipe.feed_sim.feed import is_itch

        if is_itch(a.file):
            cfg = _load(a.config)
            if a.symbol is None:
                raise tr.TraceError("--symbol is required for an ITCH file (a stock, e.g. AAPL)")
            src = tr.from_itch(a.file, a.symbol, cfg.book.ladder_width, cfg.analysis.tick_size,
                               min(cfg.book.l3_orders, 1 << 22))
        elif is_capture(a.file):
            cfg = _load(a.config)
            if a.symbol is None:
                raise tr.TraceError("--symbol is required for a capture (one of the config's [book] symbols)")
            src = tr.from_capture(a.file, a.symbol, tuple(cfg.book.symbols), cfg.book.widths(), cfg.analysis.tick_size)
        else:
            src = tr.from_lobster(a.file, a.symbol, a.levels)
        tr.trace(src, a.levels, csv=a.csv)
    except (tr.TraceError, CaptureError, ValueError, OSError) as e:
        print(f"obpipe trace: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (piped into head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_queue(a) -> int:
    """Live orders of a running per-order book: price, shares left, queue position."""
    import orjson

    from obpipe.engine.l3 import query_order
    from obpipe.ring import schema
    from obpipe.ring.errors import RingError

    cfg = _with_overrides(_load(a.config), a)
    inst = cfg.instance.name
    names = list(cfg.book.symbols)
    rc = 0
    for ref in a.ref:
        try:
            ans = query_order(inst, ref, timeout_s=a.timeout)
        except RingError as e:
            print(f"obpipe queue: no running instance {inst!r}: {e}", file=sys.stderr)
            return 1
        except (RuntimeError, TimeoutError, ValueError) as e:
            print(f"obpipe queue: {e}", file=sys.stderr)
            return 1
        if ans is None:
            rc = 2
            print(orjson.dumps({"ref": ref, "live": False}).decode() if a.json else f"order {ref}: not live")
            continue
        d = {"ref": ans.ref, "live": True, **ans._asdict()}
        d["symbol_name"] = names[ans.symbol] if ans.symbol < len(names) else None
        d["side"] = "bid" if ans.side == schema.SIDE_BID else "ask"
        if a.json:
            print(orjson.dumps(d).decode())
        else:
            name = d["symbol_name"] or f"symbol {ans.symbol}"
            print(f"order {ans.ref}: {name} {d['side']} {ans.qty:,} @ {ans.px_tick} ticks; ahead of it "
                  f"{ans.orders_ahead:,} orders, {ans.shares_ahead:,} shares (as of message {ans.seq:,})")
    return rc


def cmd_metrics(a) -> int:
    """``obpipe metrics``: /metrics for an instance started elsewhere, until Ctrl-C."""
    from obpipe.metrics.exporter import serve
    from obpipe.ring.interrupt import Interrupt

    cfg = _with_overrides(_load(a.config), a)
    port = cfg.metrics.port if a.port is None else a.port
    if not 0 < port < 65536:
        print(f"obpipe metrics: --port must be 1..65535, got {port}", file=sys.stderr)
        return 2
    stop = Interrupt()
    try:
        return serve(cfg.instance.name, list(cfg.book.symbols), cfg.analysis.tick_size, port,
                     a.host or cfg.metrics.host, stop)
    except OSError as e:
        print(f"obpipe metrics: cannot serve on {a.host or cfg.metrics.host}:{port}: {e}", file=sys.stderr)
        return 1
    finally:
        stop.restore()


def cmd_itch(argv: list[str]) -> int:
    """``obpipe itch dump FILE [--json] [--count N]``: decoded ITCH 5.0 messages."""
    from obpipe.feed_sim import itch

    try:
        return itch.main(argv, prog="obpipe itch")
    except (OSError, ValueError) as e:
        print(f"obpipe itch: {e}", file=sys.stderr)
        return 2


def _add_feed_args(p, run: bool) -> None:
    p.add_argument("--start-ns", type=int, metavar="NS",
                   help="synthetic clock start, UTC epoch ns (default: now; same seed + start: same stream)")
    if not run:
        p.add_argument("--session", type=lambda v: _u32(v, "--session"), default=0,
                       help="the feed's session id (default: random per run; rx follows one session)")
    f = p.add_argument_group("fault injection (sender side, exact and seeded)")
    f.add_argument("--drop-every", type=int, default=0, metavar="K", help="drop every K-th packet")
    f.add_argument("--drop-prob", type=float, default=0.0, metavar="P", help="drop each packet with probability P")
    f.add_argument("--dup-every", type=int, default=0, metavar="K", help="send every K-th packet twice")
    f.add_argument("--reorder-every", type=int, default=0, metavar="K", help="send every K-th packet after the next")
    f.add_argument("--truncate-every", type=int, default=0, metavar="K", help="cut every K-th packet short")
    f.add_argument("--corrupt-every", type=int, default=0, metavar="K", help="flip a byte in every K-th packet")
    f.add_argument("--bad-magic-every", type=int, default=0, metavar="K", help="wrong magic in every K-th packet")
    f.add_argument("--bad-version-every", type=int, default=0, metavar="K", help="wrong version in every K-th packet")
    p.add_argument("--capture", metavar="FILE", help="also record every datagram sent to FILE (.obcap)")
    p.add_argument("--retransmit-window", type=int, default=1 << 20, metavar="N",
                   help="an ITCH feed keeps its last N messages for MoldUDP64 retransmission requests (0: none)")
    if not run:
        p.add_argument("--request-port", type=int, default=0, metavar="P",
                       help="an ITCH feed answers retransmission requests on 127.0.0.1:P (default: a free port; "
                            "give the [rx] request_port of the instance it sends to)")
    if run:
        p.add_argument("--replay", metavar="FILE", help="feed a capture (.obcap) or LOBSTER message CSV instead")
        p.add_argument("--speed", type=float, help="replay at the recorded pace x SPEED")
        p.add_argument("--symbol", type=_symbol_arg, metavar="INDEX|NAME",
                       help="a LOBSTER replay's symbol: an index of [book] symbols or a name (default: the ticker "
                            "in the file name, e.g. AMZN)")
    else:
        p.add_argument("--json", action="store_true", help="final counters as JSON on stdout")
        p.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_target_args(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="receiver address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="receiver UDP port")
    p.add_argument("--instance", help="send to this running instance's rx port (default: main) when no --port")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obpipe", description="market-data and order-book engine")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the pipeline (synthetic feed -> book writer) until Ctrl-C or a limit")
    r.add_argument("--config", help="TOML config (default: configs/default.toml)")
    r.add_argument("--instance", help="instance name (segments /obpipe.<name>.*)")
    r.add_argument("--rate", type=int, help="feed messages/s (0 = as fast as possible)")
    r.add_argument("--duration", type=float, help="seconds to run (0 = until Ctrl-C)")
    r.add_argument("--count", "--messages", dest="count", type=int, help="stop after this many messages")
    _add_feed_args(r, run=True)
    r.add_argument("--seed", type=int, help="synthetic flow seed")
    r.add_argument("--json", action="store_true", help="final stats as JSON on stdout")
    r.add_argument("--quiet", action="store_true", help="no live status lines")
    r.add_argument("--no-feed", action="store_true", help="start no feed: an external one sends to rx's port")
    r.add_argument("--kafka", metavar="HOST:PORT", help="publish to this Kafka (default: [kafka] bootstrap_servers; "
                                                       "none named: start the embedded broker)")
    r.add_argument("--no-kafka", action="store_true", help="no publisher and no broker (signals are counted only)")
    r.add_argument("--no-redis", action="store_true", help="no Redis server and no Redis writer ([redis] enabled = false)")
    r.add_argument("--no-ticks", action="store_true", help="no tick recording ([ticks] enabled = false)")
    r.add_argument("--source", choices=("synthetic", "exchange"), default="synthetic",
                   help="exchange: the matching engine's market data, driven by simulated traders over TCP "
                        "([exchange], [traders]; --rate = their orders/s)")
    r.set_defaults(fn=cmd_run)

    fd = sub.add_parser("feed", help="send the synthetic feed over UDP (to --port or a running --instance)")
    _add_target_args(fd)
    fd.add_argument("--rate", type=int, help="messages/s (default 200,000; 0 = as fast as possible)")
    fd.add_argument("--duration", type=float, help="seconds to send")
    fd.add_argument("--count", "--messages", dest="count", type=int, help="messages to send")
    fd.add_argument("--seed", type=int, default=1)
    fd.add_argument("--symbols", type=int, default=4, help="number of symbols")
    _add_feed_args(fd, run=False)
    fd.set_defaults(fn=cmd_feed, replay=None, speed=None, symbol=0)

    rp = sub.add_parser("replay", help="replay a capture (.obcap) or a LOBSTER message CSV over UDP")
    rp.add_argument("replay", metavar="FILE")
    _add_target_args(rp)
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="recorded pace x SPEED (e.g. 1 = real time, 10 = ten times)")
    pace.add_argument("--rate", type=int, help="fixed messages/s (0 = as fast as possible, the default)")
    rp.add_argument("--duration", type=float, help="stop after this many seconds")
    rp.add_argument("--count", "--messages", dest="count", type=int, help="stop after this many messages")
    rp.add_argument("--symbol", type=int, default=0, help="symbol index for a LOBSTER file's messages")
    rp.add_argument("--seed", type=int, default=1, help="fault seed")
    _add_feed_args(rp, run=False)
    rp.set_defaults(fn=cmd_feed, symbols=1)

    s = sub.add_parser("stats", help="counters, rings and books of a running instance")
    s.add_argument("--config")
    s.add_argument("--instance")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="repeat every --interval seconds (on a terminal: redrawn "
                                                        "in place, with each rate's recent history)")
    s.add_argument("--interval", type=float, default=1.0)
    s.add_argument("--plain", action="store_true", help="the plain text report even on a terminal (no colour; what "
                                                        "a pipe or a file gets)")
    s.set_defaults(fn=cmd_stats)

    qu = sub.add_parser("queue", help="a live order of a running per-order book: price, shares left, queue "
                                      "position (ITCH input)")
    qu.add_argument("ref", nargs="+", type=int, help="order reference numbers")
    qu.add_argument("--config")
    qu.add_argument("--instance")
    qu.add_argument("--json", action="store_true", help="one JSON object per order")
    qu.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the book writer (default 2)")
    qu.set_defaults(fn=cmd_queue)

    me = sub.add_parser("metrics", help="serve /metrics (Prometheus text format) for a running instance")
    me.add_argument("--config")
    me.add_argument("--instance")
    me.add_argument("--port", type=int, help="TCP port (default: [metrics] port, 9464)")
    me.add_argument("--host", help="address to listen on (default: [metrics] host, 127.0.0.1)")
    me.set_defaults(fn=cmd_metrics)

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

    trc = sub.add_parser("trace", help="a symbol's top levels after every message of a file (LOBSTER, capture, ITCH)")
    trc.add_argument("file", help="a LOBSTER message CSV, a capture (.obcap) or an ITCH 5.0 file (.itch50[.gz])")
    trc.add_argument("--symbol", help="the symbol to trace (a LOBSTER file's own ticker by default)")
    trc.add_argument("--levels", type=int, default=5, help="levels per side (default 5)")
    trc.add_argument("--csv", action="store_true", help="CSV (seq,ts_ns, then bid_px_k,bid_qty_k,ask_px_k,ask_qty_k); "
                                                        "default: aligned columns")
    trc.add_argument("--config", help="TOML config (a capture's symbols, ladder widths and tick size)")
    trc.set_defaults(fn=cmd_trace)

    tk = sub.add_parser("ticks", help="a symbol's recorded quotes, trades, depth or bars from the tick store")
    tk.add_argument("symbol")
    tk.add_argument("--from", dest="from_", default="0", help="start: epoch ns, ISO 8601 (UTC unless it says), or "
                                                            "an age (30s, 10m, 2h, 1d ago); default: the beginning")
    tk.add_argument("--to", default="now", help="end (exclusive), same forms (default now)")
    tk.add_argument("--what", choices=("quotes", "trades", "depth", "bars", "bars1s"), default="quotes",
                    help="bars: 1-minute OHLCV; bars1s: 1-second")
    fmt = tk.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header")
    tk.add_argument("--store", help="the tick store: a directory or a ClickHouse URL (default: [ticks] where)")
    tk.add_argument("--config")
    tk.add_argument("--instance")
    tk.set_defaults(fn=cmd_ticks)
    ex = sub.add_parser("export", help="write a symbol's recorded quotes, trades, depth or bars to a Parquet file")
    ex.add_argument("--what", choices=("quotes", "trades", "depth", "bars", "bars1s"), default="quotes")
    ex.add_argument("--symbol", required=True)
    ex.add_argument("--from", dest="from_", default="0", help="start (as obpipe ticks; default: the beginning)")
    ex.add_argument("--to", default="now")
    ex.add_argument("--out", required=True, help="the Parquet file (pandas, polars, DuckDB read it)")
    ex.add_argument("--store")
    ex.add_argument("--config")
    ex.add_argument("--instance")
    ex.set_defaults(fn=cmd_export)
    sq = sub.add_parser("sql", help="a read-only SQL query against the tick store (quotes, trades, depth, bars_1s, "
                                    "bars_1m)")
    sq.add_argument("query")
    sq.add_argument("--json", action="store_true", help="a JSON array (default: CSV with a header)")
    sq.add_argument("--store")
    sq.add_argument("--config")
    sq.add_argument("--instance")
    sq.set_defaults(fn=cmd_sql)

    # these two hand their arguments on (see publisher.tail / publisher.broker for options)
    sub.add_parser("tail", help="follow the signal/summary topics live (--json, --from-beginning, --kind; "
                                "obpipe tail -h)", add_help=False)
    sub.add_parser("kafka", help="run the embedded Kafka-compatible broker (tansu) on 127.0.0.1 until Ctrl-C",
                   add_help=False)
    sub.add_parser("book", help="matching engine on CSV commands from stdin or a file (obpipe book -h)",
                   add_help=False)
    sub.add_parser("exchange", help="the order-entry exchange: TCP in, UDP market data out, journal "
                                    "(obpipe exchange -h)", add_help=False)
    sub.add_parser("exchange-account", help="add or list the exchange's accounts (obpipe exchange-account -h)",
                   add_help=False)
    sub.add_parser("exchange-client", help="simulated traders over TCP: round-trip latency "
                                           "(obpipe exchange-client -h)", add_help=False)
    for name, what in (("orders", "the exchange's orders"), ("fills", "the exchange's fills"),
                       ("positions", "positions and P&L per account"),
                       ("store", "apply the exchange's journal to its store (once, or --follow)")):
        sub.add_parser(name, help=f"{what}, from the store (obpipe {name} -h)", add_help=False)
    sub.add_parser("backup", help="back up the tick store and the SQLite stores (obpipe backup -h)", add_help=False)
    sub.add_parser("restore", help="restore and verify an obpipe backup (obpipe restore -h)", add_help=False)
    return p


def parse_time_ns(text: str, now_ns: int | None = None) -> int:
    """UTC epoch ns from epoch ns digits, ISO 8601 (naive = UTC) or an age ago (30s,
    10m, 2h, 1d); ``now``."""
    import datetime as dt

    now_ns = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t == "now":
        return now_ns
    if t.isdigit():
        return int(t)
    ago = ago_ns(t, now_ns)
    if ago is not None:
        return ago
    try:
        d = dt.datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"{text!r}: not epoch ns, ISO 8601 or an age like 10m") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp()) * 10**9 + d.microsecond * 1000


def _tick_store(a):
    """The tick store named by --store, else the config's [ticks] where (else the
    instance's state directory), opened for reading."""
    from obpipe.ticks.spool import store_leftovers
    from obpipe.ticks.store import TickStore

    cfg = _with_overrides(_load(a.config), a)
    where = a.store or cfgmod.ticks_where(cfg)
    if "://" not in where and not os.path.isdir(where):
        raise ValueError(f"{where}: no tick store (obpipe run with [ticks] enabled records one)")
    store = TickStore.open(where)
    try:
        n = store_leftovers(where, store)
    except BaseException:
        store.close()
        raise
    if n:
        print(f"obpipe: stored {n:,} rows a stopped recorder had left in its spool", file=sys.stderr)
    return store


def _print_table(table, as_json: bool) -> None:
    import json

    rows = table.to_pylist()
    if as_json:
        print(json.dumps(rows))
        return
    import csv

    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(table.column_names)
    for r in rows:
        w.writerow(["" if v is None else v for v in r.values()])


def _ticks_request(a, name: str):
    """(store, what, width, from_ns, to_ns) of ``obpipe ticks`` / ``export``; None
    after saying why (bad times, no store, a store in use)."""
    try:
        frm, to = parse_time_ns(a.from_), parse_time_ns(a.to)
        st = _tick_store(a)
    except (ValueError, ImportError, RuntimeError) as e:  # (RuntimeError: the store's StoreError)
        print(f"obpipe {name}: {e}", file=sys.stderr)
        return None
    what, width = ("bars", "1s") if a.what == "bars1s" else (a.what, "1m")
    return st, what, width, frm, to


def cmd_ticks(a) -> int:
    req = _ticks_request(a, "ticks")
    if req is None:
        return 2
    st, what, width, frm, to = req
    try:
        t = st.bars(a.symbol, frm, to, width) if what == "bars" else getattr(st, what)(a.symbol, frm, to)
    finally:
        st.close()
    if a.json or a.csv:
        _print_table(t, a.json)
    elif t.num_rows:
        print(t.to_pandas().to_string(index=False) if hasattr(t, "to_pandas") else t)
    else:
        print(f"no {a.what} for {a.symbol} in that time", file=sys.stderr)
    return 0


def cmd_export(a) -> int:
    req = _ticks_request(a, "export")
    if req is None:
        return 2
    st, what, width, frm, to = req
    try:
        n = st.export(what, a.symbol, frm, to, a.out, width)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"obpipe export: {e}", file=sys.stderr)
        return 2
    finally:
        st.close()
    print(f"{n} {a.what} rows of {a.symbol} -> {a.out}", file=sys.stderr)
    return 0


def cmd_sql(a) -> int:
    try:
        st = _tick_store(a)
    except (ValueError, ImportError, RuntimeError) as e:  # (RuntimeError: the store's StoreError)
        print(f"obpipe sql: {e}", file=sys.stderr)
        return 2
    try:
        t = st.sql(a.query)
    except Exception as e:  # (the store's message: refused, or ClickHouse's error)
        print(f"obpipe sql: {e}", file=sys.stderr)
        return 2
    finally:
        st.close()
    _print_table(t, a.json)
    return 0


def cmd_book(argv: list[str]) -> int:
    from obpipe.exchange import csv_cli

    return csv_cli.main(argv)


def cmd_exchange(argv: list[str]) -> int:
    """``obpipe exchange``: its options over the config's [exchange] and [book] sections."""
    from obpipe.exchange import server

    a = server.build_parser().parse_args(argv)
    try:
        cfg = cfgmod.load(a.config)
        x, n_symbols = server.sections_with_options(cfg.exchange, len(cfg.book.symbols), a)
        cfg = cfgmod.replace(cfg, exchange=dataclasses.asdict(x))  # (the options, validated as the config is)
    except cfgmod.ConfigError as e:
        print(f"obpipe exchange: {e}", file=sys.stderr)
        return 2
    writer = _store_writer(cfg)
    try:
        return server.serve_cli(cfg.exchange, n_symbols, a)
    finally:
        if writer is not None:  # (it applies what is left, then exits)
            from obpipe.exchange.store import stop_writer

            stop_writer(writer)


def _store_writer(cfg):
    """The store writer beside ``obpipe exchange`` (a child process that tails the
    journal into ``[exchange] store``; none without a journal or with store = "off")."""
    import os

    x = cfg.exchange
    if not x.journal or x.store == "off":
        return None
    from obpipe.exchange.store import default_store, spawn_writer

    return spawn_writer(x.journal, x.store or default_store(x.journal), os.getpid(), cfgmod.store_writer_args(cfg))


def cmd_exchange_client(argv: list[str]) -> int:
    from obpipe.exchange import client

    return client.main(argv)


def cmd_exchange_account(argv: list[str]) -> int:
    from obpipe.exchange import accounts

    return accounts.main(argv, accounts_file_of=lambda path: cfgmod.load(path).exchange.accounts_file)


def _store_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"obpipe {name}")
    p.add_argument("--config", help="TOML config ([exchange] store / journal, [book] symbols)")
    p.add_argument("--store", help="the store: a SQLite file or a postgresql:// URL (default: [exchange] store, "
                                    "else <journal>.db, else the instance's last obpipe run --source exchange)")
    p.add_argument("--instance", help="the instance (default: [instance] name): the store of its last "
                                      "obpipe run --source exchange; the Redis keys' name")
    if name == "store":
        p.add_argument("--journal", help="the exchange's journal (default: [exchange] journal)")
        p.add_argument("--follow", action="store_true", help="keep applying new batches until SIGINT/SIGTERM")
        p.add_argument("--batch", type=int, default=50_000, help="requests per transaction")
        p.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)  # (obpipe exchange's pid)
        p.add_argument("--redis", metavar="URL", help="with --follow: write each account's open orders and positions "
                                                      "to this Redis (docs/REDIS.md)")
        p.add_argument("--redis-prefix", help=argparse.SUPPRESS)  # ([redis] key_prefix of the caller's config)
        p.add_argument("--redis-ttl", type=float, help=argparse.SUPPRESS)  # ([redis] ttl_s)
        p.add_argument("--symbols", help="symbol names, comma-separated (default: [book] symbols)")
        return p
    if name != "positions":
        p.add_argument("--symbol", type=_symbol_arg, help="a symbol name or index")
    p.add_argument("--account", type=int)
    if name == "orders":
        p.add_argument("--status", choices=("open", "filled", "cancelled"))
    if name == "fills":
        p.add_argument("--since", help="only fills of the last 30s / 10m / 2h / 1d")
    p.add_argument("--json", action="store_true", help="a JSON array on stdout")
    return p


def _account_step(accounts):
    """The store writer's hook: the accounts its commits changed (every account every
    ttl/3) to Redis, unless Redis is in backoff."""
    import time

    def step(w) -> None:
        now = time.monotonic()
        may, full = accounts.due(now)
        if not may:
            return
        touched = w.take_touched()
        if full or touched:
            accounts.write(w.account_state(None if full else touched), full, now)

    return step


def cmd_store(name: str, argv: list[str]) -> int:
    """``obpipe orders|fills|positions`` (queries) and ``obpipe store`` (the writer)."""
    import json
    import os
    import signal

    from obpipe.exchange import store

    a = _store_parser(name).parse_args(argv)
    cfg = _load(a.config)
    journal = getattr(a, "journal", None) or cfg.exchange.journal
    configured = cfg.exchange.store if cfg.exchange.store != "off" else ""
    db = a.store or configured or (store.default_store(journal) if journal else "")
    if not db and name != "store":
        last = cfgmod.run_exchange_store(a.instance or cfg.instance.name)
        db = str(last) if last.exists() else ""
    if not db:
        print(f"obpipe {name}: no store: give --store, or a config with [exchange] store or journal (or run "
              f"obpipe run --source exchange first)", file=sys.stderr)
        return 2
    try:
        if name == "store":
            if not journal:
                print("obpipe store: no journal: give --journal or [exchange] journal", file=sys.stderr)
                return 2
            if not a.follow:
                print(json.dumps(store.catch_up(journal, db, a.batch)), flush=True)
                return 0
            if a.parent:  # started by obpipe exchange: die with it, yield the CPU to it
                from obpipe.ring.runtime import die_with_parent

                die_with_parent(a.parent)
                os.nice(19)
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            stop = [False]

            def on_signal(*_):
                stop[0] = True
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
            log = lambda m: print(f"obpipe store: {m}", file=sys.stderr, flush=True)  # noqa: E731
            accounts = None
            if a.redis:
                from obpipe.publisher.redis_writer import AccountWriter

                rd = cfg.redis
                accounts = AccountWriter(a.redis, a.redis_prefix or rd.key_prefix, a.instance or cfg.instance.name,
                                         tuple(a.symbols.split(",")) if a.symbols else tuple(cfg.book.symbols),
                                         a.redis_ttl or rd.ttl_s, rd.timeout_s, log)
            try:
                got = store.tail(journal, db, lambda: stop[0], batch_requests=a.batch, log=log,
                                 on_step=None if accounts is None else _account_step(accounts))
            finally:
                if accounts is not None:
                    accounts.close()
            if accounts is not None:
                got.update(redis_account_writes=accounts.writes, redis_errors=accounts.errors)
            print(json.dumps(got), flush=True)
            return 0
        if not db.startswith(("postgresql://", "postgres://")) and not os.path.exists(db.removeprefix("sqlite:///")):
            print(f"obpipe {name}: {db}: no such store (obpipe store writes it)", file=sys.stderr)
            return 2
        names = list(cfg.book.symbols)
        sym = getattr(a, "symbol", None)
        if isinstance(sym, str):
            if sym not in names:
                print(f"obpipe {name}: unknown symbol {sym!r} (the config has {', '.join(names)})", file=sys.stderr)
                return 2
            sym = names.index(sym)
        if name == "orders":
            rows = store.query_orders(db, a.account, sym, a.status)
        elif name == "fills":
            rows = store.query_fills(db, a.account, sym, store.since_ns(a.since) if a.since else None)
        else:
            rows = store.query_positions(db, a.account)
    except (store.StoreError, ValueError, OSError) as e:
        print(f"obpipe {name}: {e}", file=sys.stderr)
        return 2
    for r in rows:
        if r["symbol"] < len(names):
            r["symbol_name"] = names[r["symbol"]]
    if a.json:
        print(json.dumps(rows))
    elif rows:
        cols = list(rows[0])
        table = [cols] + [["" if r[c] is None else str(r[c]) for c in cols] for r in rows]
        widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
        for t in table:
            print("  ".join(v.rjust(w) for v, w in zip(t, widths)))
    else:
        print(f"no {name}", file=sys.stderr)
    return 0


def cmd_backup(argv: list[str]) -> int:
    """``obpipe backup`` / ``obpipe restore`` (obpipe/backup.py; argv[0] says which)."""
    from obpipe import backup

    return backup.main(argv)


_PASS_THROUGH = {"book": cmd_book, "exchange": cmd_exchange, "exchange-client": cmd_exchange_client,
                 "exchange-account": cmd_exchange_account, "itch": cmd_itch,
                 "backup": lambda argv: cmd_backup(["backup", *argv]),
                 "restore": lambda argv: cmd_backup(["restore", *argv]),
                 **{n: (lambda argv, n=n: cmd_store(n, argv)) for n in ("orders", "fills", "positions", "store")}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "tail":
        return cmd_tail(argv[1:])
    if argv and argv[0] == "kafka":
        from obpipe.publisher import broker

        return broker.main(argv[1:])
    if argv and argv[0] in ("orders", "fills", "positions", "itch"):
        try:
            return _PASS_THROUGH[argv[0]](argv[1:])
        except BrokenPipeError:  # (piped into head: the reader has what it wanted)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if argv and argv[0] in _PASS_THROUGH:
        return _PASS_THROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
