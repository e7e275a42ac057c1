"""``obpipe-story``: the story service (a separate system: it reads Kafka, never the engine).

    obpipe-story run      consume signals and summaries into the database, write the
                          stories, serve the HTTP API and page (Ctrl-C stops)
    obpipe-story query    stories as a table (or --json) from the database
    obpipe-story tail     follow new stories as they are written
    obpipe-story serve    the HTTP API and page only (no consumer)
    obpipe-story rejects  the records the service rejected (reason, offset, raw bytes)
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from obpipe.ring.settings import ConfigError

from obpipe.story import api
from obpipe.story.config import load
from obpipe.story.store import Store, StoreError


def _cfg(a):
    over = {}
    if getattr(a, "db", None):
        over["db"] = {"url": a.db}
    if getattr(a, "port", None) is not None:
        over["http"] = {"port": a.port}
    if getattr(a, "no_http", False):
        over.setdefault("http", {})["enabled"] = False
    if getattr(a, "group", None):
        over["kafka"] = {"group_id": a.group}
    return load(a.config, **over)


def _stop_flag() -> list:
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def cmd_run(a) -> int:
    from obpipe.story.service import StoryService, resolve_bootstrap

    cfg = _cfg(a)
    store = Store.open(cfg.db.url)
    boot = resolve_bootstrap(cfg, a.kafka)
    svc = StoryService(cfg, store, boot)
    stop = _stop_flag()
    srv = None
    if cfg.http.enabled:
        from obpipe.story.http import serve

        srv, _ = serve(store, cfg.http.host, cfg.http.port,
                       stats=lambda: {**svc.counters, "skipped": svc.skipped, "broker_up": svc.broker_up,
                                      "bootstrap": boot}, cfg=cfg.http)
        print(f"obpipe-story: http://{cfg.http.host}:{srv.server_address[1]}/", file=sys.stderr, flush=True)
    print(f"obpipe-story: consuming {', '.join(svc.topics)} from {boot} (group {cfg.kafka.group_id}) into "
          f"{store.kind} {store.path or store.url}", file=sys.stderr, flush=True)
    try:
        svc.run(stop)
    finally:
        if srv is not None:
            srv.shutdown(timeout_s=2)
        print("obpipe-story stopped: " + ", ".join(f"{k} {v}" for k, v in svc.counters.items()),
              file=sys.stderr, flush=True)
    return 0


def cmd_serve(a) -> int:
    from obpipe.story.http import serve

    cfg = _cfg(a)
    store = Store.open(cfg.db.url)
    srv, _ = serve(store, cfg.http.host, cfg.http.port, cfg=cfg.http)
    print(f"obpipe-story: http://{cfg.http.host}:{srv.server_address[1]}/", file=sys.stderr, flush=True)
    stop = _stop_flag()
    while not stop[0]:
        time.sleep(0.2)
    srv.shutdown()
    return 0


def _ns(ns: int) -> str:
    if ns > 10**17:  # epoch feed time
        return time.strftime("%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"
    s = ns / 1e9
    return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{s % 60:06.3f}"


def _table(rows: list[dict]) -> str:
    out = [f"{'start':>12}  {'end':>12}  {'symbol':<8} {'kind':<21} {'sev':>4}  story"]
    for s in rows:
        out.append(f"{_ns(s['start_ns']):>12}  {_ns(s['end_ns']):>12}  {s['symbol']:<8} {s['kind']:<21} "
                   f"{s['severity']:4.2f}  {s['text']}")
    return "\n".join(out)


def cmd_query(a) -> int:
    cfg = _cfg(a)
    store = Store.open(cfg.db.url)
    rows = api.stories_query(store, a.symbol, a.kind, a.since, a.until, a.limit, a.offset)
    if a.json:
        print(json.dumps([{k: s[k] for k in ("symbol", "kind", "side", "start_ns", "end_ns", "severity", "text",
                                             "signal_ids")} for s in rows]))
    else:
        print(_table(rows) if rows else "no stories in that window")
    return 0


def cmd_tail(a) -> int:
    cfg = _cfg(a)
    store = Store.open(cfg.db.url)
    stop = _stop_flag()
    seen: set[str] = set(r[0] for r in store.query("SELECT id FROM stories")) if not a.from_beginning else set()
    printed = 0
    t_end = time.monotonic() + a.timeout if a.timeout else None
    while not stop[0] and (t_end is None or time.monotonic() < t_end):
        rows = api.stories_query(store, a.symbol, a.kind, None, None, api.MAX_LIMIT, 0, newest_first=True)
        for s in reversed(rows):
            if s["id"] in seen:
                continue
            seen.add(s["id"])
            print(json.dumps(s) if a.json else f"{_ns(s['start_ns'])}  {s['symbol']:<8} {s['severity']:.2f}  {s['text']}",
                  flush=True)
            printed += 1
            if a.count and printed >= a.count:
                return 0
        time.sleep(0.5)
    return 0


def cmd_rejects(a) -> int:
    cfg = _cfg(a)
    store = Store.open(cfg.db.url)
    n, rows = store.rejects(a.limit)
    if a.json:
        print(json.dumps({"rejects": n, "newest": [{**r, "raw": r["raw"].decode("utf-8", "backslashreplace")}
                                                   for r in rows]}))
        return 0
    print(f"{n} rejected records kept" + (f"; the newest {len(rows)}:" if rows else ""))
    for r in rows:
        raw = r["raw"][:80].decode("utf-8", "backslashreplace")
        print(f"{r['topic']}[{r['partition']}]@{r['offset']}  {r['reason']}: {r['detail'][:120]!r}  raw {raw!r}"
              f"{' ...' if len(r['raw']) > 80 else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obpipe-story", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--config", help="story TOML (default configs/story.toml)")
        sp.add_argument("--db", help="SQLite file or postgresql:// URL ([db] url)")

    r = sub.add_parser("run", help="consume, store, narrate, serve")
    common(r)
    r.add_argument("--kafka", metavar="HOST:PORT", help="broker (default: [kafka] bootstrap_servers, the running "
                                                        "instance's embedded broker, $OBPIPE_KAFKA, 127.0.0.1:9092)")
    r.add_argument("--group", help="consumer group ([kafka] group_id)")
    r.add_argument("--port", type=int, help="HTTP port ([http] port; 0: any free port)")
    r.add_argument("--no-http", action="store_true")
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("serve", help="the HTTP API and page only")
    common(s)
    s.add_argument("--port", type=int)
    s.set_defaults(fn=cmd_serve)

    rj = sub.add_parser("rejects", help="the records the service rejected, newest first")
    common(rj)
    rj.add_argument("--limit", type=int, default=20)
    rj.add_argument("--json", action="store_true")
    rj.set_defaults(fn=cmd_rejects)

    for name, fn in (("query", cmd_query), ("tail", cmd_tail)):
        q = sub.add_parser(name, help="stories as a table / follow new stories")
        common(q)
        q.add_argument("--symbol")
        q.add_argument("--kind", action="append", help="a signal kind (repeatable)")
        q.add_argument("--json", action="store_true")
        if name == "query":
            q.add_argument("--since", default="10m", help="10m, 90s, 2h, 1d back from the newest data, or feed ns")
            q.add_argument("--until")
            q.add_argument("--limit", type=int, default=100)
            q.add_argument("--offset", type=int, default=0)
        else:
            q.add_argument("--from-beginning", action="store_true")
            q.add_argument("--count", type=int, default=0)
            q.add_argument("--timeout", type=float, default=0.0)
        q.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except (ConfigError, StoreError, api.BadQuery) as e:
        print(f"obpipe-story: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
