"""LOBSTER message / order-book files: loader and a compiled book checker.

LOBSTER (lobsterdata.com) publishes, per stock and day, a *message* file (every event
that touched the first N price levels) and an *order-book* file whose row k is the
visible book (top N levels) **after** message k.  This module turns the message file
into ``schema.MD_DTYPE`` records, loads the order-book file into integer ticks, and
replays the messages through the aggregated book's own per-message apply
(``engine._book_kernels.apply_msg``, the rules the book writer follows), comparing the
best bid/ask with the order-book file after every message.  CLI: ``python -m engine.lobster
MESSAGE.csv ORDERBOOK.csv [--json]`` (``lobster-check``).

Message mapping (LOBSTER event type -> ``schema.K_*``)
-------------------------------------------------------
=====  =====================  ===============  ========================================
type   LOBSTER meaning        kind             book effect
=====  =====================  ===============  ========================================
1      submission             ``K_ADD``        +size at (side, price)
2      partial cancellation   ``K_CANCEL``     -size
3      deletion               ``K_DELETE``     -size (the order's remaining size)
4      visible execution      ``K_EXECUTE``    -size, and a trade
5      hidden execution       ``K_TRADE``      none (non-displayed liquidity)
6      cross trade            ``K_TRADE``      none: an auction cross never rests in
                                               the visible book, so it is a trade only
7      trading halt           ``K_HEARTBEAT``  none; ``qty`` 0 and ``px_tick`` keeps
                                               LOBSTER's raw halt code unscaled
                                               (-1 halt, 0 quoting, 1 resume)
=====  =====================  ===============  ========================================

direction 1 (buy order) -> ``SIDE_BID``; -1 (sell order) -> ``SIDE_ASK``.  ``side`` is
the side of the *resting* order, as ``K_TRADE`` / ``K_EXECUTE`` expect (an execution
of a sell order is a buyer-initiated trade).  ``seq`` is the 1-based row number (= the
line number, = the matching order-book row); ``ts_exch_ns`` is the time column in
integer nanoseconds after midnight, parsed digit-exactly (no float round trip), plus
the UTC epoch ns of that midnight: LOBSTER times are seconds after midnight New York
time of the day the file's name carries (``AMZN_2012-06-21_34200000_57600000_message_1.csv``:
ticker AMZN, 2012-06-21; ``file_info``), so 34200.0 is 13:30:00 UTC that day.  A file
whose name carries no date keeps the bare offset (``day_ns`` names the day instead);
``ts_recv_ns`` is 0.

Prices: LOBSTER prices are USD x 10,000.  ``px_tick = price // d`` where the *tick
divisor* ``d = gcd(100, gcd of all prices)``: 100 (ticks are cents) when every price is
a whole cent, 1 (raw LOBSTER units) when prices share no factor with 100, and in
between when prices come in a coarser grid than raw units, e.g. 50 (half-cent ticks)
for the AMZN sample, whose only non-cent prices are hidden executions at half-cent
midpoints (``tick_divisor=1`` keeps raw units: same results, a 50x wider ladder).
The conversion is always exact.  ``check`` detects ``d`` over *both* files
so messages and rows share one tick.  Order-book dummy prices (9999999999 ask /
-9999999999 bid, an empty side) become ``schema.NO_PX`` with size 0.

Which order-book rows are predictable
-------------------------------------
The book before message 1 is unknown, so the checker seeds both best levels from row 1
and compares from row 2 on: message k is applied to a book whose top equals row k-1,
and the resulting best bid/ask (price and size, both sides) is compared with row k.

Row k is **unpredictable** exactly when message k is a cancel, delete or visible
execution (types 2/3/4) on side s at the price of side s's best level *in row k-1*
with a size >= that level's size in row k-1, i.e. it empties the best level of s.  Row
k then shows the next level of s, which the level-1 files never described: a level
that was never at the top, or one that was but whose size may have changed, unseen,
while it was not.  Every other row is predictable: an add at or inside the touch, a
cancel/delete/execution that leaves the best level non-empty, a hidden execution, a
cross trade and a halt all determine row k from row k-1 and message k alone.  The rule
is decided from the files only (row k-1 and message k), never from the book under
test, so a book bug cannot hide by declaring its own rows unpredictable.  On the AMZN
sample it is exact: every predictable row is reproduced, and every unpredictable row
shows a best level on the emptied side that is worse than the emptied one (the counts:
docs/DECISIONS.md, "The LOBSTER check on the AMZN sample").  (A message that empties a level other than the
best would not make a row unpredictable: it does not move the top.  None occur in the
sample; every message there is at the touch or, for hidden executions, inside it.)

Resynchronisation: after every compared row whose best bid/ask differs from the book
(always counted; on a predictable row it is also a mismatch), each differing side is
re-set from the row: levels better than the row's best are removed and the row's
level is set to the row's size (an empty row side empties the book side).  Deeper
levels the book holds are kept; they are what the book offers the next time a best
level empties, and they are often right (an earlier best that was undercut and has
not changed since).  On the AMZN sample every resynced row is an unpredictable one,
and for most unpredictable rows the book's next level was right.

Ladder width: ``check`` derives it from the files' prices (``auto_width``: the whole
day's range fits twice over, at least ``MIN_AUTO_WIDTH`` ticks; the AMZN sample gets
the minimum and never re-centres).  A narrower ladder re-centres during the day and
still reproduces every predictable row as long as it holds the widest spread (the
sample's is at the open).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT

from obpipe.engine import _book_kernels as BK
from obpipe.feed_sim.feed import FeedError

__all__ = ["load_messages", "load_orderbook", "detect_tick_divisor", "auto_width", "check", "check_kernel", "main",
           "DUMMY_ASK_PX", "DUMMY_BID_PX", "ST_PREDICTABLE", "ST_MATCHED", "ST_RESYNCED"]

NO_PX = schema.NO_PX
BID = schema.SIDE_BID
ASK = schema.SIDE_ASK

#: LOBSTER's placeholder prices for a level that does not exist (empty side).
DUMMY_ASK_PX = 9999999999
DUMMY_BID_PX = -9999999999

#: LOBSTER event type (index) -> schema kind.
_KIND_OF_TYPE = np.array([0, schema.K_ADD, schema.K_CANCEL, schema.K_DELETE, schema.K_EXECUTE,
                          schema.K_TRADE, schema.K_TRADE, schema.K_HEARTBEAT], np.uint8)
_MSG_COLS = ("time", "type", "order id", "size", "price", "direction")
_PRICE_LIMIT = 1 << 52  # far above any real price; keeps px_tick well inside the book's limit
_MAX_QTY = (1 << 32) - 1  # qty is u4

#: Bits of the per-row status array written by ``check_kernel``.
ST_PREDICTABLE = 1  # row is predictable (see the module docstring)
ST_MATCHED = 2  # the book's best bid/ask equalled the row after the message
ST_RESYNCED = 4  # the book differed and was re-set from the row

#: Default smallest ladder (ticks) when the width is derived from the data.
MIN_AUTO_WIDTH = 4096
#: A price farther than this (ticks) from its file's median price is an outlier: the
#: file is refused, naming the line (a ladder spanning it could need 2^54 ticks).
MAX_PRICE_DEV_TICKS = 1 << 20
#: The widest ladder a check or replay builds (16 bytes a tick: 128 MiB).
MAX_WIDTH = 1 << 23


# --- parsing ----------------------------------------------------------------------------


def _read_text(path) -> tuple[str, int]:
    """(text, number of lines).  latin-1 never fails to decode, so a stray byte is
    reported by the line parser with its line number instead of as a decode error."""
    text = Path(path).read_text(encoding="latin-1")
    n_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if n_lines == 0:
        raise ValueError(f"{path}: empty file")
    return text, n_lines


def _bad_line(path, lineno: int, why: str, line: str | None = None) -> ValueError:
    shown = "" if line is None else f": {line[:80]!r}"
    return ValueError(f"{path}: line {lineno}: {why}{shown}")


def _is_int(s: str) -> bool:
    s = s.strip()
    t = s[1:] if s[:1] in "+-" else s
    return t.isascii() and t.isdigit() and -(1 << 63) <= int(s) < (1 << 63)


def _is_time(s: str) -> bool:
    sec, _, frac = s.strip().partition(".")
    return (sec.isascii() and sec.isdigit() and len(sec) <= 9
            and (frac == "" or (frac.isascii() and frac.isdigit() and len(frac) <= 9)))


def _diagnose(path, text: str, ncols: int | None, time_col: bool, names=None) -> ValueError:
    """Slow path, only after the vectorized parse failed: the first bad line, named."""
    width = None
    last = text.count("\n") + 1  # the (normally empty) text after the final newline
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            if lineno == last:
                break
            return _bad_line(path, lineno, "empty line")
        fields = line.split(",")
        want = ncols if ncols is not None else width
        if want is not None and len(fields) != want:
            return _bad_line(path, lineno, f"{len(fields)} fields, expected {want}", line)
        if ncols is None and width is None:
            width = len(fields)
            if width % 4:
                return _bad_line(path, lineno, f"{width} fields, expected a multiple of 4 "
                                               "(ask px, ask size, bid px, bid size per level)", line)
        for j, f in enumerate(fields):
            ok = _is_time(f) if (time_col and j == 0) else _is_int(f)
            if not ok:
                name = names[j] if names else _ob_col_name(j)
                return _bad_line(path, lineno, f"bad {name} field {f!r}", line)
    return ValueError(f"{path}: cannot parse (no single bad line found)")


def _ob_col_name(j: int) -> str:
    return f"{('ask price', 'ask size', 'bid price', 'bid size')[j % 4]} {j // 4 + 1}"


def _parse_table(path, ncols: int | None, time_col: bool, names=None):
    """(2-D array of str fields, text) of a CSV file, in one vectorized np.loadtxt pass."""
    text, n_lines = _read_text(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # blank lines: caught below by the row count
            a = np.loadtxt(io.StringIO(text), delimiter=",", dtype=str, comments=None, ndmin=2)
    except ValueError:
        raise _diagnose(path, text, ncols, time_col, names) from None
    if a.shape[0] != n_lines or (a.shape[1] != ncols if ncols is not None else a.shape[1] % 4 != 0):
        raise _diagnose(path, text, ncols, time_col, names)
    return a, text


def _first_bad(path, bad: np.ndarray, why: str, cols: np.ndarray):
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _bad_line(path, i + 1, f"{why} (line fields: {', '.join(str(c) for c in cols[i])})")


def _time_ns(t: np.ndarray) -> np.ndarray:
    """Seconds-after-midnight strings -> int64 ns, digit-exact (split on '.', the
    fraction right-padded to 9 digits).  ValueError if any is malformed."""
    parts = np.strings.partition(np.strings.strip(t), ".")
    sec, frac = parts[0], parts[2]
    bad = ~np.strings.isdigit(sec) | ((frac != "") & ~np.strings.isdigit(frac))
    bad |= (np.strings.str_len(frac) > 9) | (np.strings.str_len(sec) > 9)  # 1e9 s: keeps int64 exact
    if bad.any():
        raise ValueError("bad time")
    return sec.astype(np.int64) * 1_000_000_000 + np.strings.ljust(frac, 9, "0").astype(np.int64)


def _parse_messages(path, with_ids: bool = False):
    """(ts_ns, type, size, price, direction) int64 columns of a message file, validated
    (and the order ids last, ``with_ids``)."""
    a, text = _parse_table(path, 6, True, _MSG_COLS)
    try:
        ts = _time_ns(a[:, 0])
        v = a[:, 1:].astype(np.int64)
    except (ValueError, OverflowError):
        raise _diagnose(path, text, 6, True, _MSG_COLS) from None
    typ, size, px, direction = v[:, 0], v[:, 2], v[:, 3], v[:, 4]
    book = (typ >= 1) & (typ <= 6)
    _first_bad(path, (typ < 1) | (typ > 7), "event type not in 1..7", a)
    _first_bad(path, book & (direction != 1) & (direction != -1), "direction not 1 or -1", a)
    _first_bad(path, book & ((size <= 0) | (size > _MAX_QTY)), f"size not in 1..{_MAX_QTY}", a)
    _first_bad(path, book & ((px <= 0) | (px >= _PRICE_LIMIT)), "price not positive", a)
    _first_bad(path, (typ == 7) & (size < 0), "negative size", a)
    return (ts, typ, size, px, direction, v[:, 1]) if with_ids else (ts, typ, size, px, direction)


def _parse_orderbook(path) -> np.ndarray:
    """The order-book file as raw int64 (rows, 4 * levels), validated."""
    a, text = _parse_table(path, None, False)
    try:
        v = a.astype(np.int64)
    except (ValueError, OverflowError):
        raise _diagnose(path, text, None, False) from None
    apx, aq, bpx, bq = v[:, 0::4], v[:, 1::4], v[:, 2::4], v[:, 3::4]
    a_real, b_real = apx != DUMMY_ASK_PX, bpx != DUMMY_BID_PX
    bad_a = (a_real & ((apx <= 0) | (apx >= _PRICE_LIMIT) | (aq <= 0) | (aq > _MAX_QTY))).any(axis=1)
    bad_b = (b_real & ((bpx <= 0) | (bpx >= _PRICE_LIMIT) | (bq <= 0) | (bq > _MAX_QTY))).any(axis=1)
    _first_bad(path, bad_a, "ask level with a non-positive price or size", a)
    _first_bad(path, bad_b, "bid level with a non-positive price or size", a)
    return v


def _prices_of_messages(typ, px):
    return px[(typ >= 1) & (typ <= 6)]


def _prices_of_orderbook(ob):
    apx, bpx = ob[:, 0::4], ob[:, 2::4]
    return np.concatenate((apx[apx != DUMMY_ASK_PX], bpx[bpx != DUMMY_BID_PX]))


def detect_tick_divisor(*prices: np.ndarray) -> int:
    """``gcd(100, gcd of all prices)``: LOBSTER price units per tick (100: cents; 1:
    raw units).  Dividing every price by it is exact."""
    g = 100
    for p in prices:
        p = np.asarray(p, np.int64).ravel()
        if p.size:
            g = math.gcd(g, int(np.gcd.reduce(np.unique(p))))
    return g or 100


def _messages_to_md(ts, typ, size, px, direction, symbol: int, divisor: int) -> np.ndarray:
    n = len(typ)
    md = np.zeros(n, schema.MD_DTYPE)
    book = typ <= 6
    md["kind"] = _KIND_OF_TYPE[typ]
    md["side"] = np.where(book & (direction == -1), ASK, BID)
    md["symbol"] = symbol
    md["qty"] = np.where(book, size, 0)
    md["px_tick"] = np.where(book, px // divisor, px)  # halt: raw code, see the docstring
    md["seq"] = np.arange(1, n + 1, dtype=np.int64)
    md["ts_exch_ns"] = ts
    return md


def _orderbook_to_ticks(ob: np.ndarray, divisor: int) -> np.ndarray:
    out = ob.copy()
    apx, aq, bpx, bq = ob[:, 0::4], ob[:, 1::4], ob[:, 2::4], ob[:, 3::4]
    out[:, 0::4] = np.where(apx == DUMMY_ASK_PX, NO_PX, apx // divisor)
    out[:, 1::4] = np.where(apx == DUMMY_ASK_PX, 0, aq)
    out[:, 2::4] = np.where(bpx == DUMMY_BID_PX, NO_PX, bpx // divisor)
    out[:, 3::4] = np.where(bpx == DUMMY_BID_PX, 0, bq)
    return out


def _refuse_outliers(path, px, rows, d: int) -> None:
    """``ValueError`` naming the first line whose price (raw LOBSTER units, ``px``; 0-based
    rows ``rows``) lies more than ``MAX_PRICE_DEV_TICKS`` ticks of ``d`` units from the
    median of the file's prices."""
    if px.size == 0:
        return
    med = int(np.median(px))
    far = np.abs(px - med) // d > MAX_PRICE_DEV_TICKS
    if far.any():
        i = int(np.flatnonzero(far)[0])
        raise _bad_line(path, int(rows[i]) + 1,
                        f"outlier price {int(px[i])} (USD x 10^4): {abs(int(px[i]) - med) // d:,} ticks of {d} from "
                        f"the file's median price {med}, more than {MAX_PRICE_DEV_TICKS:,}")


def _refuse_message_outliers(path, typ, px, d: int) -> None:
    rows = np.flatnonzero((typ >= 1) & (typ <= 6))
    _refuse_outliers(path, px[rows], rows, d)


def _refuse_orderbook_outliers(path, ob, d: int) -> None:
    p = np.concatenate((ob[:, 0::4], ob[:, 2::4]), axis=1)
    real = (p != DUMMY_ASK_PX) & (p != DUMMY_BID_PX)
    rows = np.nonzero(real)[0]  # row-major: the first far one is on the first bad line
    _refuse_outliers(path, p[real], rows, d)


def _check_divisor(path, d, prices):
    if d is None:
        return detect_tick_divisor(prices)
    d = int(d)
    if d <= 0:
        raise ValueError(f"tick divisor must be positive, got {d}")
    if prices.size and (prices % d).any():
        raise ValueError(f"{path}: tick divisor {d} does not divide every price "
                         f"(detected divisor: {detect_tick_divisor(prices)})")
    return d


#: LOBSTER's file names: TICKER_YYYY-MM-DD_STARTMS_ENDMS_message_LEVELS.csv (or _orderbook_).
_NAME = re.compile(r"([A-Za-z0-9.]{1,16})_(\d{4})-(\d{2})-(\d{2})_\d+_\d+_(?:message|orderbook)_\d+\.csv")
_EXCHANGE_TZ = "America/New_York"  # LOBSTER's times are NASDAQ local time


def file_info(path) -> tuple[str | None, int | None]:
    """(ticker, UTC epoch ns of the trading day's midnight in New York) from a LOBSTER
    file name; (None, None) when the name is not LOBSTER's."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    m = _NAME.fullmatch(Path(path).name)
    if m is None:
        return None, None
    try:
        day = datetime(int(m[2]), int(m[3]), int(m[4]), tzinfo=ZoneInfo(_EXCHANGE_TZ))
    except ValueError:
        return None, None  # (not a date, e.g. 2012-13-45)
    return m[1], int(day.timestamp()) * 1_000_000_000


def load_messages(path, symbol: int = 0, tick_divisor: int | None = None, return_tick: bool = False,
                  day_ns: int | None = None):
    """A LOBSTER message CSV as ``schema.MD_DTYPE`` records (mapping: module docstring).

    ``tick_divisor`` (LOBSTER price units per tick) is detected from the prices when
    ``None``; with ``return_tick`` the result is ``(records, tick_divisor)``.  A bad
    line raises ``ValueError`` naming the file and the line number.  ``day_ns``: the
    epoch ns the times count from (``None``: the file name's day, ``file_info``, else 0).
    """
    if not 0 <= symbol <= 0xFFFF:
        raise ValueError(f"symbol must be 0..65535, got {symbol}")
    if day_ns is None:
        day_ns = file_info(path)[1] or 0
    ts, typ, size, px, direction = _parse_messages(path)
    ts += day_ns
    d = _check_divisor(path, tick_divisor, _prices_of_messages(typ, px))
    _refuse_message_outliers(path, typ, px, d)
    md = _messages_to_md(ts, typ, size, px, direction, symbol, d)
    return (md, d) if return_tick else md


#: LOBSTER event type -> ``schema.L3_*`` (per order; 7, a halt, has none: left out).
_L3_KIND_OF_TYPE = np.array([0, schema.L3_ADD, schema.L3_CANCEL, schema.L3_DELETE, schema.L3_EXEC,
                             schema.L3_TRADE, schema.L3_CROSS, 0], np.uint8)


def load_messages_l3(path, symbol: int = 0, tick_divisor: int | None = None, day_ns: int | None = None):
    """A LOBSTER message CSV per order, as ``schema.MD_L3_DTYPE`` records for the per-order
    book (``engine.l3``): 1 submission -> L3_ADD, 2 partial cancellation -> L3_CANCEL, 3
    deletion -> L3_DELETE, 4 visible execution -> L3_EXEC (all by order id), 5 hidden
    execution -> L3_TRADE, 6 cross -> L3_CROSS; halts (7) are left out, so ``seq`` (the
    row number) skips them.  Returns (records, tick divisor).  Orders submitted before the
    file starts are unknown to the book: their cancels, deletes and executions are counted
    (``l3_unknown_refs``) and skipped."""
    if not 0 <= symbol <= 0xFFFF:
        raise ValueError(f"symbol must be 0..65535, got {symbol}")
    if day_ns is None:
        day_ns = file_info(path)[1] or 0
    ts, typ, size, px, direction, oid = _parse_messages(path, with_ids=True)
    d = _check_divisor(path, tick_divisor, _prices_of_messages(typ, px))
    _refuse_message_outliers(path, typ, px, d)
    keep = typ <= 6
    md = np.zeros(int(keep.sum()), schema.MD_L3_DTYPE)
    md["kind"] = _L3_KIND_OF_TYPE[typ[keep]]
    md["side"] = np.where(typ[keep] == 6, schema.SIDE_NONE_L3, np.where(direction[keep] == -1, ASK, BID))
    md["symbol"] = symbol
    md["qty"] = size[keep]
    md["px_tick"] = px[keep] // d
    md["seq"] = np.flatnonzero(keep) + 1
    md["ts_exch_ns"] = ts[keep] + day_ns
    md["ref"] = np.where(typ[keep] <= 4, oid[keep], 0).astype(np.uint64)
    return md, d


def load_orderbook(path, tick_divisor: int | None = None, return_tick: bool = False):
    """A LOBSTER order-book CSV as int64 ``(rows, 4 * levels)``: per level ask px, ask
    size, bid px, bid size, prices in ticks; dummy prices (empty) -> ``NO_PX``, size 0.

    ``tick_divisor`` as in ``load_messages``.  Detected alone it can differ from the
    message file's (the AMZN sample: 100 here, 50 there, as only hidden executions
    print at half cents), so load a pair with one divisor, as ``check`` does.
    """
    ob = _parse_orderbook(path)
    d = _check_divisor(path, tick_divisor, _prices_of_orderbook(ob))
    _refuse_orderbook_outliers(path, ob, d)
    out = _orderbook_to_ticks(ob, d)
    return (out, d) if return_tick else out


# --- the checker kernel -------------------------------------------------------------------


@njit(**HOT, inline="always")
def _apply_one(lad, S, C, s, kind, side, px, q):
    """One message through the book's own per-message apply (``BK.apply_msg``, the rules
    of ``apply_batch``), as the model book: no uncrossing, no events; counted as applied."""
    BK.apply_msg(lad, S, C, s, kind, side, px, q, False)
    C[schema.ST_BOOK_MSGS] += 1


@njit(**HOT, inline="always")
def _better_best(S, s, side, px):
    """Ladder index of ``side``'s best level when it is better than ``px`` (every level
    is, when px is NO_PX), else -1."""
    b = S[s, BK.B_BEST + side]
    if b < 0:
        return -1
    bpx = S[s, BK.B_BASE] + b
    if px != NO_PX and (bpx <= px if side == BID else bpx >= px):
        return -1
    return b


@njit(**HOT)
def _remove_level(lad, S, C, s, side, b):
    """Empty ``side``'s level at ladder index ``b`` (a held level): the book's level set
    to 0 at its price."""
    BK.set_level(lad, S, C, s, side, S[s, BK.B_BASE] + b, 0, False, False)


@njit(**HOT)
def _resync_side(lad, S, C, s, side, px, q):
    """Make (px, q) the best level of ``side``: levels better than px are removed, the
    level at px is set to q (px == NO_PX empties the side).  Returns False if px does
    not fit the ladder even after a re-centre."""
    while True:
        b = _better_best(S, s, side, px)
        if b < 0:
            break
        _remove_level(lad, S, C, s, side, b)
    if px == NO_PX:
        return True
    return BK.set_level(lad, S, C, s, side, px, q, True, False) >= 0


@njit(**HOT)
def check_kernel(md, top, s, lad, S, C, via_batch, ev, ev_ctrl, dirty, status):
    """Replay ``md`` against order-book rows ``top`` (int64 ``(n, >= 4)``, ticks: ask px,
    ask qty, bid px, bid qty of the best level; ``NO_PX``/0 when empty) on symbol ``s``
    of a fresh book state (``lad``, ``S``, ``C``).

    Seeds both best levels from row 0, then for k = 1..n-1 applies message k, compares
    the best bid/ask with row k, and re-syncs the book from the row when it differs.
    Messages are applied with the book's per-message apply (``BK.apply_msg``), or,
    when ``via_batch``, with ``apply_batch(md, k, 1, ...)`` itself (events into
    ``ev``/``ev_ctrl``, symbols into ``dirty``).  ``status[k]`` gets ``ST_*`` bits.

    Returns (rows, predictable, matched, resynced, first_mismatch) with
    ``first_mismatch`` the 0-based index of the first predictable row that did not
    match, or -1.
    """
    n = md.shape[0]
    rows = 0
    pred = 0
    matched = 0
    resynced = 0
    first = -1
    if n == 0:
        return rows, pred, matched, resynced, first
    status[0] = 0
    _resync_side(lad, S, C, s, BID, top[0, 2], top[0, 3])
    _resync_side(lad, S, C, s, ASK, top[0, 0], top[0, 1])
    for k in range(1, n):
        m = md[k]
        kind = np.int64(m.kind)
        side = np.int64(m.side)
        q = np.int64(m.qty)
        px = np.int64(m.px_tick)
        # classification from the files alone: does message k empty row k-1's best level?
        empties = False
        if kind == schema.K_CANCEL or kind == schema.K_DELETE or kind == schema.K_EXECUTE:
            c = 2 if side == BID else 0
            empties = top[k - 1, c] != NO_PX and px == top[k - 1, c] and q >= top[k - 1, c + 1]
        if via_batch:
            BK.apply_batch(md, k, 1, -1, lad, S, C, ev, ev_ctrl, dirty)
        else:
            _apply_one(lad, S, C, s, kind, side, px, q)
        bpx = BK.best_px(S, s, BID)
        bq = BK.best_qty(lad, S, s, BID)
        apx = BK.best_px(S, s, ASK)
        aq = BK.best_qty(lad, S, s, ASK)
        bid_ok = bpx == top[k, 2] and bq == top[k, 3]
        ask_ok = apx == top[k, 0] and aq == top[k, 1]
        st = 0
        rows += 1
        if not empties:
            st |= ST_PREDICTABLE
            pred += 1
        if bid_ok and ask_ok:
            st |= ST_MATCHED
            if not empties:
                matched += 1
        else:
            if not empties and first < 0:
                first = k
            if not bid_ok:
                _resync_side(lad, S, C, s, BID, top[k, 2], top[k, 3])
            if not ask_ok:
                _resync_side(lad, S, C, s, ASK, top[k, 0], top[k, 1])
            st |= ST_RESYNCED
            resynced += 1
        status[k] = st
    return rows, pred, matched, resynced, first


# --- the check ----------------------------------------------------------------------------


def auto_width(*tick_prices: np.ndarray) -> int:
    """A ladder width (ticks) holding the whole price range twice over wherever the
    window is centred inside it: next power of two >= 2 * span + 2, at least
    ``MIN_AUTO_WIDTH``; ``ValueError`` above ``MAX_WIDTH``."""
    lo, hi = None, None
    for p in tick_prices:
        p = p[p != NO_PX]
        if p.size:
            lo = int(p.min()) if lo is None else min(lo, int(p.min()))
            hi = int(p.max()) if hi is None else max(hi, int(p.max()))
    span = 0 if lo is None else hi - lo
    w = max(MIN_AUTO_WIDTH, 1 << (2 * span + 2 - 1).bit_length())
    if w > MAX_WIDTH:  # (the loaders refuse outliers first, naming the line: a backstop)
        raise ValueError(f"prices span {span:,} ticks: a ladder for them needs {w:,} ticks, more than {MAX_WIDTH:,}")
    return w


def _new_run(width: int, s: int):
    lad, S, C = BK.new_state([width] * (s + 1), 1)
    ev_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    ev = np.zeros(2, schema.EVENT_DTYPE)  # nobody consumes it: events are counted as dropped
    dirty = np.zeros(s + 2, np.int64)
    return lad, S, C, ev, ev_ctrl, dirty


def run_check(md: np.ndarray, top: np.ndarray, width: int, via_batch: bool = False):
    """Run ``check_kernel`` on a fresh book.  Returns (counts tuple, status array,
    counters C, seconds spent in the kernel)."""
    if md.dtype != schema.MD_DTYPE:
        raise TypeError(f"messages must be MD_DTYPE records, got {md.dtype}")
    if len(md) != len(top):
        raise ValueError(f"{len(md)} messages but {len(top)} order-book rows")
    top = np.ascontiguousarray(top[:, :4], dtype=np.int64)
    s = int(md["symbol"][0]) if len(md) else 0
    if len(md) and (md["symbol"] != s).any():
        raise ValueError("messages of more than one symbol")
    lad, S, C, ev, ev_ctrl, dirty = _new_run(width, s)
    status = np.zeros(len(md), np.uint8)
    t0 = time.perf_counter()
    res = check_kernel(md, top, s, lad, S, C, via_batch, ev, ev_ctrl, dirty, status)
    dt = time.perf_counter() - t0
    return tuple(int(x) for x in res), status, C, dt


def check(message_csv, orderbook_csv, width: int | None = None, symbol: int = 0,
          tick_divisor: int | None = None, via_batch: bool = False) -> dict:
    """Replay a LOBSTER message file against its order-book file (module docstring).

    ``width``: ladder width in ticks (``None``: ``auto_width`` of the files' prices).
    ``tick_divisor``: price units per tick (``None``: detected over both files).
    ``via_batch``: apply through ``apply_batch`` one message at a time instead of its
    per-message apply alone (slower; exercises the book writer's exact path).

    Returns a dict: ``rows`` compared (all but row 1), ``predictable``, ``matched``
    (predictable rows reproduced exactly), ``unpredictable``, ``resynced`` (rows after
    which the book was re-set from the row), ``first_mismatch_row`` (1-based row / line
    number of the first predictable row not reproduced, -1 if none), ``msgs_per_s`` of
    the kernel (compile excluded), plus ``tick_divisor``, ``width`` and the book's
    ``out_of_ladder`` / ``qty_underflow`` / ``recentres`` / ``evicted_levels`` counters.
    """
    ts, typ, size, px, direction = _parse_messages(message_csv)
    ob = _parse_orderbook(orderbook_csv)
    if len(ob) != len(typ):
        raise ValueError(f"{message_csv} has {len(typ)} rows but {orderbook_csv} has {len(ob)}")
    mprices, oprices = _prices_of_messages(typ, px), _prices_of_orderbook(ob)
    if tick_divisor is None:
        d = detect_tick_divisor(mprices, oprices)
    else:
        d = _check_divisor(message_csv, tick_divisor, mprices)
        _check_divisor(orderbook_csv, d, oprices)
    _refuse_message_outliers(message_csv, typ, px, d)
    _refuse_orderbook_outliers(orderbook_csv, ob, d)
    md = _messages_to_md(ts, typ, size, px, direction, symbol, d)
    top = _orderbook_to_ticks(ob, d)
    if width is None:
        width = auto_width(md["px_tick"][md["kind"] != schema.K_HEARTBEAT], top[:, 0::2])
    width = int(width)
    if not 2 <= width <= MAX_WIDTH:
        raise ValueError(f"ladder width must be 2..{MAX_WIDTH:,} ticks, got {width:,}")
    warm = min(len(md), 16)  # compile (or load the cache) outside the timed run
    run_check(md[:warm], top[:warm], width, via_batch)
    (rows, pred, matched, resynced, first), _status, C, dt = run_check(md, top, width, via_batch)
    return {
        "rows": rows,
        "predictable": pred,
        "matched": matched,
        "resynced": resynced,
        "unpredictable": rows - pred,
        "first_mismatch_row": first + 1 if first >= 0 else -1,
        "msgs_per_s": rows / dt if dt > 0 else float("inf"),
        "tick_divisor": d,
        "width": width,
        "out_of_ladder": int(C[schema.ST_BOOK_OUT_OF_LADDER]),
        "qty_underflow": int(C[schema.ST_BOOK_QTY_UNDERFLOW]),
        "recentres": int(C[schema.ST_BOOK_RECENTRES]),
        "evicted_levels": int(C[schema.ST_BOOK_EVICTED_LEVELS]),
    }


# --- the replay stream ----------------------------------------------------------------------


@njit(**HOT)
def _apply_call(lad, S, C, s, kind, side, px, q):
    """``_apply_one`` as a plain call: the replay kernel applies through it at three
    places, and an IR-inlined copy at each would multiply its compile time
    (docs/DECISIONS.md, "One per-message apply")."""
    _apply_one(lad, S, C, s, kind, side, px, q)


@njit(**HOT, inline="always")
def _put(out, j, kind, side, s, px, q, ts):
    out[j].kind = kind
    out[j].side = side
    out[j].symbol = s
    out[j].qty = q
    out[j].px_tick = px
    out[j].ts_exch_ns = ts
    return j + 1


@njit(**HOT)
def replay_kernel(md, ob, s, lad, S, C, out, ends):
    """The replay stream of messages ``md`` (rows 1..n) and their order-book rows ``ob``
    (int64 ``(n, 4 L)``, ticks) into ``out``: row 1's levels as set-level seeds, then
    each message k >= 2 followed by the set-level corrections that make the best bid and
    ask equal row k: a zero-quantity set-level for each level better than the row's best
    (removed), then the row's best level at the row's size.  ``lad``/``S``/``C`` is a
    fresh model book on symbol ``s`` (levels only: no uncrossing, a ladder that never
    re-centres); it applies the stream as it writes it.  ``ends[k - 2]`` = records
    written through message k's corrections.  Returns the records written, or -1 when
    ``out`` is too small (a caller doubles it and calls again)."""
    n = md.shape[0]
    cap = out.shape[0]
    j = 0
    if n == 0:
        return 0
    ts0 = np.int64(md[0].ts_exch_ns)
    for c in range(0, ob.shape[1], 4):  # seeds: every level of row 1, asks first
        for side, pc in ((ASK, c), (BID, c + 2)):
            px = ob[0, pc]
            q = ob[0, pc + 1]
            if px != NO_PX and q > 0:
                if j >= cap:
                    return -1
                j = _put(out, j, schema.K_SET_LEVEL, side, s, px, q, ts0)
                _apply_call(lad, S, C, s, schema.K_SET_LEVEL, side, px, q)
    for k in range(1, n):
        if j >= cap:
            return -1
        out[j] = md[k]
        j += 1
        m = md[k]
        ts = np.int64(m.ts_exch_ns)
        _apply_call(lad, S, C, s, np.int64(m.kind), np.int64(m.side), np.int64(m.px_tick), np.int64(m.qty))
        for side, pc in ((BID, 2), (ASK, 0)):
            fpx = ob[k, pc]
            fq = ob[k, pc + 1]
            while True:  # levels better than the row's best are stale: removed
                b = _better_best(S, s, side, fpx)
                if b < 0:
                    break
                if j >= cap:
                    return -1
                j = _put(out, j, schema.K_SET_LEVEL, side, s, S[s, BK.B_BASE] + b, 0, ts)
                _remove_level(lad, S, C, s, side, b)
            if fpx != NO_PX and (BK.best_px(S, s, side) != fpx or BK.best_qty(lad, S, s, side) != fq):
                if j >= cap:
                    return -1
                j = _put(out, j, schema.K_SET_LEVEL, side, s, fpx, fq, ts)
                _apply_call(lad, S, C, s, schema.K_SET_LEVEL, side, fpx, fq)
        ends[k - 1] = j
    return j


def replay_stream(md: np.ndarray, ob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a replay sends for a message file ``md`` (``load_messages``) and its
    order-book rows ``ob`` (``load_orderbook``, the same ticks): row 1's levels as
    set-level messages (LOBSTER's book before message 1 is unknown; row 1 is the book
    after it), then messages 2.., each followed by the set-level corrections that make
    a receiving book's best bid and ask equal its order-book row (``replay_kernel``).
    A level-N file says nothing of an order cancelled while it was outside the top N
    levels, so a book built from the messages alone keeps such levels; once the market
    moves through them its top is wrong (crossed, or stale sizes) until the file
    speaks of that price again.  The corrections are the check's resynchronisations
    (module docstring), sent as messages, so every receiver's top follows the file.
    Returns (stream, ends): ``seq`` 1..; ``ends[k]`` = records through message k + 2
    and its corrections, so ``stream[ends[k] - 1]`` ends the part that row k + 2
    describes.  A book applying the stream reproduces each row's best levels whether it
    uncrosses or not."""
    if md.dtype != schema.MD_DTYPE:
        raise TypeError(f"messages must be MD_DTYPE records, got {md.dtype}")
    if len(md) != len(ob):
        raise ValueError(f"{len(md)} messages but {len(ob)} order-book rows")
    ob = np.ascontiguousarray(ob, dtype=np.int64)
    s = int(md["symbol"][0]) if len(md) else 0
    if len(md) and (md["symbol"] != s).any():
        raise ValueError("messages of more than one symbol")
    width = auto_width(md["px_tick"][md["kind"] != schema.K_HEARTBEAT], ob[:, 0::2])
    cap = 2 * len(md) + ob.shape[1] + 64
    while True:
        lad, S, C = BK.new_state([width] * (s + 1), 1)
        out = np.zeros(cap, schema.MD_DTYPE)
        ends = np.zeros(max(len(md) - 1, 0), np.int64)
        j = replay_kernel(md, ob, s, lad, S, C, out, ends)
        if j >= 0:
            break
        cap *= 2
    out = out[:j]
    out["seq"] = np.arange(1, j + 1)
    return out, ends


# --- CLI ----------------------------------------------------------------------------------


# --- the replay feed's loader -----------------------------------------------------

def orderbook_beside(message_csv: str) -> Path | None:
    p = Path(message_csv)
    name = re.sub(r"_message_(\d+)\.csv$", r"_orderbook_\1.csv", p.name)
    q = p.with_name(name)
    return q if name != p.name and q.exists() else None


def load_lobster(path: str, symbol: int = 0, return_tick: bool = False):
    """A LOBSTER message file as MD records; with the order-book file beside it, the
    replay stream of ``engine.replay_stream`` (row 1's levels as seeds, then
    each message with the set-level corrections that keep the receiver's best levels
    equal to its order-book row; see the module docstring).  ``return_tick``: also the
    tick divisor (LOBSTER price units per tick)."""
    if file_info(path)[1] is None:
        raise FeedError(f"{Path(path).name}: no trading day in the file name: a LOBSTER file is named "
                        f"TICKER_YYYY-MM-DD_START_END_message_N.csv, its times seconds after that day's midnight "
                        f"(New York); rename it so")
    try:
        md, d = load_messages(path, symbol=symbol, return_tick=True)
        ob_path = orderbook_beside(path)
        if ob_path is not None and len(md):
            md = replay_stream(md, load_orderbook(ob_path, tick_divisor=d))[0]
    except ValueError as e:
        raise FeedError(str(e)) from None
    return (md, d) if return_tick else md


def _table(r: dict, message_csv: str) -> str:
    pct = 100.0 * r["matched"] / r["predictable"] if r["predictable"] else 100.0
    first = "-" if r["first_mismatch_row"] < 0 else str(r["first_mismatch_row"])
    lines = [
        f"lobster-check {Path(message_csv).name}",
        f"  rows compared   {r['rows']:>10,}",
        f"  predictable     {r['predictable']:>10,}",
        f"  matched         {r['matched']:>10,}  ({pct:.3f} % of predictable)",
        f"  unpredictable   {r['unpredictable']:>10,}  (message empties a best level)",
        f"  resynced        {r['resynced']:>10,}",
        f"  first mismatch  {first:>10}",
        f"  tick            {r['tick_divisor']:>10}  LOBSTER price units (USD 1e-4)",
        f"  ladder width    {r['width']:>10,}  ticks",
        f"  kernel          {r['msgs_per_s'] / 1e6:>10.1f}  M msgs/s",
        "  result          " + ("OK: every predictable row matched" if r["matched"] == r["predictable"]
                               else "FAIL: predictable rows differ"),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``lobster-check MESSAGE.csv ORDERBOOK.csv [--json] [--width N]``.  Exit 0 when
    every predictable row matched, 1 otherwise, 2 on a missing or bad file."""
    p = argparse.ArgumentParser(prog="lobster-check", description="Replay a LOBSTER message file through the "
                                "obpipe book and compare the best bid/ask with the order-book file.")
    p.add_argument("message_csv")
    p.add_argument("orderbook_csv")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--width", type=int, default=None,
                   help="ladder width in ticks (default: derived from the files' price range)")
    a = p.parse_args(argv)
    try:
        r = check(a.message_csv, a.orderbook_csv, width=a.width)
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        print(f"lobster-check: error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else _table(r, a.message_csv))
    return 0 if r["matched"] == r["predictable"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
