"""Queries over the store, shared by ``obpipe-story query`` and the HTTP API.

Parameters are checked here (``BadQuery`` names the bad one) and bound by the
database driver.  Time windows are feed time: ``since`` is a duration back from the
newest stored time (``10m``, ``90s``, ``2h``, ``1d``) or an absolute feed time in
integer ns; ``until`` likewise (default: no upper bound).
"""
from __future__ import annotations

import json
import re

from obpipe.publisher.schema import SIGNAL_KINDS, SYMBOL_RE as _SYMBOL_PATTERN

from obpipe.story.store import Store

MAX_LIMIT = 5000
MAX_OFFSET = 10**12  # rows to skip: far beyond any table, far below SQL's 64-bit limit
I64_MAX = 2**63 - 1  # SQL BIGINT: a bound outside it is a 400, not the driver's OverflowError
_DUR = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h|d)")  # at most 10^12 units: never overflows
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
#: A symbol a query may name: the schema's charset (publisher.schema.SYMBOL_RE; it reaches
#: SQL as a bound parameter and the page as text, but anything else is a typo or an attack,
#: answered 400).
SYMBOL_RE = re.compile(_SYMBOL_PATTERN)
_INT = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only (int() also takes '1_000', ' 7', Arabic digits)


class BadQuery(ValueError):
    """A query parameter that is not acceptable; raised by the ``*_query`` functions."""


def _duration_ns(text: str) -> int | None:
    m = _DUR.fullmatch(text)
    if not m:
        return None
    whole, _, frac = m.group(1).partition(".")
    unit = _UNIT_NS[m.group(2)]
    return int(whole) * unit + int(frac or "0") * unit // 10 ** len(frac or "0")  # exact, no float


def parse_int(name: str, text: str, lo: int, hi: int) -> int:
    """``text`` as a whole number in ``lo..hi``, or ``BadQuery`` naming ``name``."""
    if not _INT.fullmatch(text) or not lo <= int(text) <= hi:
        raise BadQuery(f"{name}={text[:40]!r}: a whole number {lo}..{hi}")
    return int(text)


def newest_ns(store: Store, symbol: str | None) -> int | None:
    """The newest feed time stored (for ``symbol``, or any)."""
    where, p = ("WHERE symbol = ?", (symbol,)) if symbol else ("", ())
    a = store.query(f"SELECT MAX(ts_exch_ns) FROM signals {where}", p)[0][0]
    b = store.query(f"SELECT MAX(end_ns) FROM summaries {where}", p)[0][0]
    vals = [x for x in (a, b) if x is not None]
    return max(vals) if vals else None


def window(store: Store, symbol: str | None, since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """(lo, hi) feed-time bounds in ns (None: open)."""
    out = []
    for name, text in (("since", since), ("until", until)):
        if text in (None, ""):
            out.append(None)
            continue
        text = str(text)
        if _INT.fullmatch(text):
            out.append(parse_int(name, text, 0, I64_MAX))
            continue
        d = _duration_ns(text)
        if d is None:
            raise BadQuery(f"{name}={text[:40]!r}: a duration like 10m, 90s, 2h, 1d, or feed time in ns 0..{I64_MAX}")
        ref = newest_ns(store, symbol)
        out.append(None if ref is None else max(ref - d, 0))  # (feed time is >= 0)
    return out[0], out[1]


def _check(symbol, kinds, limit, offset):
    if symbol is not None and not SYMBOL_RE.fullmatch(symbol):
        raise BadQuery(f"symbol={symbol[:40]!r}: 1-16 letters, digits, '.', '_' or '-'")
    for k in kinds or ():
        if k not in SIGNAL_KINDS:
            raise BadQuery(f"kind={k[:40]!r}: one of {', '.join(SIGNAL_KINDS)}")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit={limit!r}: 1..{MAX_LIMIT}")
    if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise BadQuery(f"offset={offset!r}: 0..{MAX_OFFSET}")


def _where(symbol, kinds, col, lo, hi):
    conds, params = [], []
    if symbol:
        conds.append("symbol = ?")
        params.append(symbol)
    if kinds:
        kinds = sorted(set(kinds))  # (a kind named 10,000 times is one placeholder, not 10,000)
        conds.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params += kinds
    if lo is not None:
        conds.append(f"{col} >= ?")
        params.append(lo)
    if hi is not None:
        conds.append(f"{col} <= ?")
        params.append(hi)
    return ("WHERE " + " AND ".join(conds)) if conds else "", params


def stories_query(store: Store, symbol=None, kinds=None, since=None, until=None, limit=100, offset=0,
                  newest_first=False) -> list[dict]:
    """Stories overlapping the window, oldest first (or newest first)."""
    _check(symbol, kinds, limit, offset)
    lo, hi = window(store, symbol, since, until)
    where, p = _where(symbol, kinds, "end_ns", lo, None)
    if hi is not None:
        where += (" AND " if where else "WHERE ") + "start_ns <= ?"
        p.append(hi)
    order = "DESC" if newest_first else "ASC"
    rows = store.query(f"SELECT id, symbol, kind, side, start_ns, end_ns, severity, text, signal_ids FROM stories "
                       f"{where} ORDER BY start_ns {order}, id {order} LIMIT ? OFFSET ?", (*p, limit, offset))
    return [{"id": r[0], "symbol": r[1], "kind": r[2], "side": r[3], "start_ns": r[4], "end_ns": r[5],
             "severity": r[6], "text": r[7], "signal_ids": json.loads(r[8])} for r in rows]


def signals_query(store: Store, symbol=None, kinds=None, since=None, until=None, limit=100, offset=0) -> list[dict]:
    _check(symbol, kinds, limit, offset)
    lo, hi = window(store, symbol, since, until)
    where, p = _where(symbol, kinds, "ts_exch_ns", lo, hi)
    rows = store.query(f"SELECT id, symbol, kind, side, seq, ts_exch_ns, tick_size, bid_tick, ask_tick, bid_qty, "
                       f"ask_qty, vals FROM signals {where} ORDER BY ts_exch_ns, id LIMIT ? OFFSET ?",
                       (*p, limit, offset))
    return [{"id": r[0], "symbol": r[1], "kind": r[2], "side": r[3], "seq": r[4], "ts_exch_ns": r[5],
             "tick_size": r[6], "bbo": {"bid_tick": r[7], "ask_tick": r[8], "bid_qty": r[9], "ask_qty": r[10]},
             "values": json.loads(r[11])} for r in rows]


_SUMMARY_KEYS = ("symbol", "start_ns", "end_ns", "tick_size", "bid_tick", "ask_tick", "mid_tick", "spread_min",
                 "spread_mean", "spread_max", "volume_buy", "volume_sell", "trades", "messages")


def summaries_query(store: Store, symbol=None, since=None, until=None, limit=1000, offset=0,
                    points=None) -> list[dict]:
    """Summaries starting in the window, oldest first.  With ``points`` (1..5000), the
    window is cut into that many equal buckets and each bucket with data is one row:
    mean mid and mean spread, min/max spread, summed volume, trades and messages, ``n``
    summaries, and ``bid_tick``/``ask_tick`` null - a chart of any window at any length
    in one request, instead of its first ``limit`` summaries."""
    _check(symbol, None, limit, offset)
    lo, hi = window(store, symbol, since, until)
    if points is None:
        where, p = _where(symbol, None, "start_ns", lo, hi)
        rows = store.query(f"SELECT {', '.join(_SUMMARY_KEYS)} FROM summaries {where} "
                           f"ORDER BY start_ns, symbol LIMIT ? OFFSET ?", (*p, limit, offset))
        return [dict(zip(_SUMMARY_KEYS, r)) for r in rows]
    if not isinstance(points, int) or not 1 <= points <= MAX_LIMIT:
        raise BadQuery(f"points={points!r}: 1..{MAX_LIMIT}")
    if lo is None or hi is None:
        w_, p_ = _where(symbol, None, "start_ns", lo, hi)
        a, b = store.query(f"SELECT MIN(start_ns), MAX(start_ns) FROM summaries {w_}", p_)[0]
        if a is None:
            return []
        lo, hi = (a if lo is None else lo), (b if hi is None else hi)
    width = min(max(1, -(-(hi - lo + 1) // points)), I64_MAX)  # ceil: at most ``points`` buckets
    where, p = _where(symbol, None, "start_ns", lo, hi)
    rows = store.query(
        "SELECT symbol, MIN(start_ns), MAX(end_ns), MAX(tick_size), AVG(mid_tick), MIN(spread_min), "
        "AVG(spread_mean), MAX(spread_max), CAST(SUM(volume_buy) AS BIGINT), CAST(SUM(volume_sell) AS BIGINT), "
        "CAST(SUM(trades) AS BIGINT), CAST(SUM(messages) AS BIGINT), COUNT(*) "
        f"FROM summaries {where} GROUP BY symbol, (start_ns - CAST(? AS BIGINT)) / CAST(? AS BIGINT) "
        "ORDER BY 2, 1 LIMIT ? OFFSET ?", (*p, lo, width, limit, offset))
    return [{"symbol": r[0], "start_ns": r[1], "end_ns": r[2], "tick_size": r[3], "bid_tick": None,
             "ask_tick": None, "mid_tick": r[4], "spread_min": r[5], "spread_mean": r[6], "spread_max": r[7],
             "volume_buy": r[8], "volume_sell": r[9], "trades": r[10], "messages": r[11], "n": r[12]} for r in rows]


def symbols(store: Store) -> list[dict]:
    rows = store.query("SELECT symbol, COUNT(*), MAX(end_ns) FROM summaries GROUP BY symbol ORDER BY symbol")
    st = dict(store.query("SELECT symbol, COUNT(*) FROM stories GROUP BY symbol"))
    names = {r[0] for r in rows} | set(st)
    by = {r[0]: r for r in rows}
    return [{"symbol": s, "summaries": by[s][1] if s in by else 0, "stories": st.get(s, 0),
             "newest_ns": by[s][2] if s in by else None} for s in sorted(names)]
