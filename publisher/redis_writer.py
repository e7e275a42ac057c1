"""The Redis writer process: the book writer's seqlock snapshots -> live state in Redis.

A reader of the snapshot region and the stats block (never of a ring: it takes nothing
from anyone) and the single writer of its stats row (``ROW_REDIS``).  Design:

- Rounds, at most one per ``interval_ms``: each round copies every symbol's snapshot
  (seqlock read, a torn copy retried by ``SnapshotRegion.read``) and writes, in one
  MULTI/EXEC pipeline, the symbols whose snapshot changed since the last successful
  write (or that were last written a third of the expiry ago), the pipeline's headline
  counters, and a PUBLISH per symbol whose best bid/ask changed.  So a symbol is written
  at most once per interval however fast its book moves, readers never see its BBO and
  its depth from two different snapshots, and the load on Redis is bounded by the
  number of symbols, not by the feed rate.
- Every key has an expiry (``ttl_s``), refreshed while the writer runs: a dead
  instance leaves nothing behind.
- Redis down, slow or refusing: the round fails (client timeout ``timeout_s``, no
  retries inside the client), is counted in ``redis_errors``, and the next round comes
  after a back-off (0.1 s doubling to 2 s); the first failure and the first success
  after it are printed once each; after a failure every symbol is written again (a
  restarted Redis has forgotten them). Nothing upstream waits: this is its own process
  and nothing reads from it.

Key layout: docs/REDIS.md.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import orjson

from obpipe.feed_sim import wire_kernels as WK
from obpipe.ring import schema as sc
from obpipe.ring.runtime import background_priority, child_setup, claim_row, mark_running
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.stats import ROW_ANALYSIS, ROW_BOOK, ROW_PUBLISHER, ROW_REDIS, ROW_RX

_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.1, 2.0


@dataclass(frozen=True)
class RedisWriterSpec:
    """Everything the child needs, copied from ``[redis]`` by the wiring
    (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    instance: str
    symbols: tuple[str, ...]
    url: str  # redis://host:port[/db], rediss://..., or unix:///path
    interval_ms: float = 10.0  # at most one write per symbol per interval
    ttl_s: float = 5.0  # every key expires this long after its last write
    timeout_s: float = 1.0  # connect and command timeout: a slow Redis fails the round
    prefix: str = "obpipe"  # keys obpipe:<instance>:...
    cores: tuple[int, ...] = ()
    background: bool = False  # SCHED_IDLE: only CPU the book writer and rx leave
    parent_pid: int = 0
    quiet: bool = False


def key_prefix(prefix: str, instance: str) -> str:
    """``<prefix>:<instance>:``, the start of every key and channel of one instance."""
    return f"{prefix}:{instance}:"


def _px(v: int):
    return None if v == sc.NO_PX else v


def state_fields(r, written_ns: int) -> dict[str, int | str]:
    """The ``bbo`` hash of one snapshot record: integers, and "" for an empty side or
    no trade yet (a hash holds no null)."""
    def px(v):
        return "" if int(v) == sc.NO_PX else int(v)

    return {"bid_px_tick": px(r["bid_px_tick"]), "bid_qty": int(r["bid_qty"]),
            "ask_px_tick": px(r["ask_px_tick"]), "ask_qty": int(r["ask_qty"]),
            "last_trade_px_tick": px(r["last_trade_px_tick"]), "last_trade_qty": int(r["last_trade_qty"]),
            "last_trade_side": int(r["last_trade_side"]), "msgs_applied": int(r["msgs_applied"]),
            "seq": int(r["seq"]), "ts_exch_ns": int(r["ts_exch_ns"]), "version": int(r["version"]),
            "written_ns": written_ns}


def depth_json(r) -> bytes:
    """The ``depth`` value of one snapshot record: its top-N levels per side, best first,
    as ``[px_tick, qty]`` pairs, with the snapshot's seq and version."""
    n = int(r["n_levels"])
    bids = [[int(p), int(q)] for p, q in zip(r["bid_px"][:n], r["bid_lvl_qty"][:n]) if int(p) != sc.NO_PX]
    asks = [[int(p), int(q)] for p, q in zip(r["ask_px"][:n], r["ask_lvl_qty"][:n]) if int(p) != sc.NO_PX]
    return orjson.dumps({"seq": int(r["seq"]), "version": int(r["version"]), "bids": bids, "asks": asks})


def headline(rows) -> dict[str, int]:
    """The pipeline's headline counters from a stats-block copy (the ``stats`` hash)."""
    rx, book = rows[ROW_RX], rows[ROW_BOOK]
    t = sc.RX_TRACKER_BASE
    return {"rx_messages": int(rx[t + WK.T_MESSAGES]), "gap_messages": int(rx[t + WK.T_GAP_MSGS]),
            "ring_drops": int(rx[t + WK.T_RING_DROPS]), "applied": int(book[sc.ST_BOOK_MSGS]),
            "events": int(book[sc.ST_BOOK_EVENTS]), "trades": int(book[sc.ST_BOOK_TRADES]),
            "signals": int(rows[ROW_ANALYSIS][sc.ST_AN_SIGNALS]),
            "published": int(rows[ROW_PUBLISHER][sc.ST_PUB_DELIVERED]),
            "redis_writes": int(rows[ROW_REDIS][sc.ST_REDIS_WRITES]),
            "redis_errors": int(rows[ROW_REDIS][sc.ST_REDIS_ERRORS])}


class RedisWriter:
    """The writing loop's state; ``round`` does one round.  ``row`` is the stats row
    (any int64 array of ``STATS_WORDS`` in tests), ``stats`` the attached stats block."""

    def __init__(self, spec: RedisWriterSpec, snaps: SnapshotRegion, stats, row, log=None):
        import redis  # imported here: nothing else of the pipeline needs it
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.spec, self.snaps, self.stats, self.row = spec, snaps, stats, row
        self.log = log or (lambda msg: None)
        self.errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(spec.url, socket_timeout=spec.timeout_s,
                                           socket_connect_timeout=spec.timeout_s, retry=Retry(NoBackoff(), 0),
                                           health_check_interval=0)
        kp = key_prefix(spec.prefix, spec.instance)
        self.bbo_keys = [f"{kp}bbo:{s}" for s in spec.symbols]
        self.depth_keys = [f"{kp}depth:{s}" for s in spec.symbols]
        self.stats_key = f"{kp}stats"
        n = min(len(spec.symbols), snaps.n_slots)
        self.n = n
        self.versions = [-1] * n  # version last written per symbol (-1: write it)
        self.written_ns = [0] * n  # CLOCK_MONOTONIC of that write
        self.bbos: list[tuple | None] = [None] * n  # (bid px, bid qty, ask px, ask qty) last published
        self.ttl_ms = max(1, int(spec.ttl_s * 1000))
        self.refresh_ns = int(spec.ttl_s * 1e9 / 3)
        self.up = -1
        self.backoff_s = 0.0
        row[sc.ST_REDIS_UP] = -1

    def round(self, now_ns: int | None = None) -> bool:
        """Read every snapshot, write what changed; True if Redis took it (or there was
        nothing to write), False if the round failed (counted, back-off set)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        wall_ns = time.time_ns()
        pipe = self.client.pipeline(transaction=True)
        done = []  # (symbol index, version, bbo) written by this round
        pubs = 0
        for i in range(self.n):
            try:
                r = self.snaps.read(i, max_tries=100_000)
            except TimeoutError:
                self.row[sc.ST_REDIS_TORN] += 1
                continue
            v = int(r["version"])
            if v == self.versions[i] and now_ns - self.written_ns[i] < self.refresh_ns:
                continue
            sym = self.spec.symbols[i]
            pipe.hset(self.bbo_keys[i], mapping=state_fields(r, wall_ns))
            pipe.pexpire(self.bbo_keys[i], self.ttl_ms)
            pipe.set(self.depth_keys[i], depth_json(r), px=self.ttl_ms)
            bbo = (int(r["bid_px_tick"]), int(r["bid_qty"]), int(r["ask_px_tick"]), int(r["ask_qty"]))
            if bbo != self.bbos[i]:
                pipe.publish(self.bbo_keys[i], orjson.dumps(
                    {"symbol": sym, "bid_px_tick": _px(bbo[0]), "bid_qty": bbo[1], "ask_px_tick": _px(bbo[2]),
                     "ask_qty": bbo[3], "seq": int(r["seq"]), "ts_exch_ns": int(r["ts_exch_ns"])}))
                pubs += 1
            done.append((i, v, bbo))
        counters = headline(self.stats.snapshot())
        counters["redis_writes"] += len(done)
        counters["written_ns"] = wall_ns
        pipe.hset(self.stats_key, mapping=counters)
        pipe.pexpire(self.stats_key, self.ttl_ms)
        try:
            pipe.execute()
        except self.errors as e:
            self._failed(e)
            return False
        finally:
            pipe.reset()
        for i, v, bbo in done:
            self.versions[i], self.written_ns[i], self.bbos[i] = v, now_ns, bbo
        row = self.row
        row[sc.ST_REDIS_ROUNDS] += 1
        row[sc.ST_REDIS_WRITES] += len(done)
        row[sc.ST_REDIS_PUBLISHES] += pubs
        if self.up != 1:
            if self.up == 0:
                row[sc.ST_REDIS_RECONNECTS] += 1
                self.log(f"redis: writing again to {self.spec.url}")
            self.up = 1
            row[sc.ST_REDIS_UP] = 1
        self.backoff_s = 0.0
        return True

    def _failed(self, e: Exception) -> None:
        self.row[sc.ST_REDIS_ERRORS] += 1
        self.versions = [-1] * self.n  # a restarted Redis has forgotten everything: write it all again
        self.bbos = [None] * self.n
        if self.up != 0:
            self.log(f"redis: {self.spec.url} failed ({type(e).__name__}: {e}); the pipeline goes on, "
                     f"writes resume when it is back")
            self.up = 0
            self.row[sc.ST_REDIS_UP] = 0
        self.backoff_s = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, 2 * self.backoff_s))

    def close(self) -> None:
        try:
            self.client.close()
        except self.errors:
            pass


class AccountWriter:
    """Per-account live state of an exchange (docs/REDIS.md ``account:<A>``): its open
    order count and, per symbol, position, average open price and realized P&L.  The
    exchange's store writer calls ``write`` after its commits with the accounts they
    changed, and with every account every ``ttl_s / 3`` (so live keys never expire and a
    restarted Redis is refilled).  A failing Redis is counted (``errors``) and skipped
    with backoff; the store writer never waits for it beyond ``timeout_s``."""

    def __init__(self, url: str, prefix: str, instance: str, symbols: tuple[str, ...] = (), ttl_s: float = 5.0,
                 timeout_s: float = 1.0, log=None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url, self.symbols, self.log = url, symbols, log or (lambda msg: None)
        self.errors_t = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.kp = key_prefix(prefix, instance)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.refresh_s = ttl_s / 3
        self.next_full = 0.0  # monotonic time of the next write of every account
        self.retry_at = 0.0
        self.backoff_s = 0.0
        self.writes = self.errors = 0
        self.up = -1

    def _name(self, sym: int) -> str:
        return self.symbols[sym] if 0 <= sym < len(self.symbols) else str(sym)

    def fields(self, st: dict, wall_ns: int) -> dict:
        """The hash of one account: ``open_orders``, ``updated_ns`` and per symbol
        ``qty:<S>`` (signed lots), ``avg_px_tick:<S>`` (average open price, "" when flat),
        ``realized_pnl:<S>`` (ticks x lots)."""
        f = {"open_orders": st["open_orders"], "updated_ns": wall_ns}
        for sym, (qty, cost, pnl) in sorted(st["positions"].items()):
            s = self._name(sym)
            f[f"qty:{s}"] = qty
            f[f"avg_px_tick:{s}"] = repr(cost / abs(qty)) if qty else ""
            f[f"realized_pnl:{s}"] = pnl
        return f

    def due(self, now: float) -> tuple[bool, bool]:
        """(may write now, must write every account)."""
        return now >= self.retry_at, now >= self.next_full

    def write(self, state: dict[int, dict], full: bool, now: float | None = None) -> bool:
        """Replace the hashes of ``state``'s accounts (one MULTI); False if Redis failed."""
        now = time.monotonic() if now is None else now
        wall_ns = time.time_ns()
        pipe = self.client.pipeline(transaction=True)
        for acct, st in state.items():
            key = f"{self.kp}account:{acct}"
            pipe.delete(key)
            pipe.hset(key, mapping=self.fields(st, wall_ns))
            pipe.pexpire(key, self.ttl_ms)
        try:
            if state:
                pipe.execute()
        except self.errors_t as e:
            self.errors += 1
            self.backoff_s = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, 2 * self.backoff_s))
            self.retry_at = now + self.backoff_s
            self.next_full = 0.0  # (a restarted Redis has forgotten everything)
            if self.up != 0:
                self.log(f"redis: {self.url} failed ({type(e).__name__}: {e}); account state resumes when it is back")
                self.up = 0
            return False
        finally:
            pipe.reset()
        if self.up == 0:
            self.log(f"redis: writing account state again to {self.url}")
        self.up = 1
        self.backoff_s = 0.0
        self.writes += len(state)
        if full:
            self.next_full = now + self.refresh_s
        return True

    def close(self) -> None:
        try:
            self.client.close()
        except self.errors_t:
            pass


def run(spec: RedisWriterSpec, stop) -> int:
    """Write rounds until ``stop`` is set, then one last round (the final books); returns 0."""
    stats, row = claim_row(spec.instance, ROW_REDIS)
    snaps = SnapshotRegion.attach(spec.instance, "snap")

    def log(msg):
        if not spec.quiet:
            print(f"obpipe redis writer: {msg}", file=sys.stderr, flush=True)

    w = RedisWriter(spec, snaps, stats, row, log)
    mark_running(row)
    if spec.background:
        background_priority()
    interval_ns = int(spec.interval_ms * 1e6)
    try:
        while not stop.is_set():
            t0 = time.monotonic_ns()
            w.round(t0)
            row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                break  # orphaned
            wake = t0 + max(interval_ns, int(w.backoff_s * 1e9))
            while not stop.is_set() and (left := wake - time.monotonic_ns()) > 0:
                time.sleep(min(left / 1e9, 0.05))
                row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
        w.round()  # the final books (the book writer has stopped by now)
    finally:
        w.close()
        row[sc.ST_STATE] = sc.STATE_STOPPED
    return 0


def main_entry(spec: RedisWriterSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "redis")
    sys.exit(run(spec, stop))
