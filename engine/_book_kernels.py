"""Compiled aggregated price-level book on a fixed ladder (the book writer's hot path).

Design
------
State lives in three preallocated arrays owned by the single book-writer process:

* ``lad`` - int64 quantities, all symbols back to back.  Symbol ``s``'s bids are
  ``lad[S[s,B_OFF] : S[s,B_OFF] + W]``, its asks ``lad[S[s,B_OFF+1] : ... + W]``; index
  ``i`` is price ``S[s,B_BASE] + i`` ticks.  Price -> index is one subtraction; no
  dict, no tree, no allocation.  Each side has ``PAD`` always-zero words on both
  sides, so the events' depth window (up to ``PAD`` ticks from the best) is a fixed,
  unrolled, branch-free sum that never needs clipping at the ladder's edge.
* ``S`` - int64 ``(n_symbols, NS)``: per-symbol scalars (ladder base, best indices,
  level counts, last trade, sequence, dirty flag, last emitted BBO), one row each.
* ``C`` - int64 counters, indexed by ``schema.ST_BOOK_*`` (copied to the shared stats
  row at every batch end).

Best bid/ask are kept incrementally: an add/set above the best (below, for asks)
moves it in O(1); emptying the best level scans away from the touch to the next
non-empty level (O(gap), and O(1) when the side's level count says it is empty).

Out-of-ladder policy (documented in docs/DECISIONS.md): the window is
``[base, base + W)``.  The first price of a symbol centres it.  A message that *adds*
liquidity (add, or set-level to a positive size) at a price outside the window
re-centres the window on the current mid (on the best of the one non-empty side, or
on the price itself when the book is empty) if the price then fits; non-empty levels
that fall outside the new window are dropped and counted (``evicted_levels``).  If the
price does not fit even then (more than W/2 ticks from the market), the message is
rejected and counted (``out_of_ladder``).  A message that *removes* liquidity at a
price outside the window (that level is not held) is counted as ``out_of_ladder`` and
ignored.  Nothing is ever written outside the ladder.

Events carry, besides the top of book, the lots resting within ``S[s, B_DT]`` ticks of
each side's best (the depth band, ``band_depth``): a contiguous sum, much cheaper per
event than walking the top-N non-empty levels.  Snapshots, built once per batch,
carry the exact top-N non-empty levels.

One message's effect on the ladder is ``apply_msg`` (the per-kind rules, level set as
``set_level``): ``apply_batch`` applies every message through it and so do the LOBSTER
checker and replay (``engine.lobster``), so their model book follows the book writer's
rules exactly; the batch adds what only the writer does (message checks, sequence and
last trade, events).

Granularity: ``apply_batch`` applies ``n`` messages; events (top-of-book changes and
trades) are written to the events ring as they happen but published (made visible) at
the end of the batch; each symbol touched by the batch gets exactly one snapshot,
published after the batch's last message, reflecting the book after that message.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.atomics import f64_bits, monotonic_ns, store_relaxed
from obpipe.ring.latency import record_batch
from obpipe.ring.kernels import (
    payload_check,
    ring_available,
    ring_claim,
    ring_publish,
    ring_release,
    ring_wait,
    snap_write,
)
from obpipe.ring.jit import HOT

NO_PX = schema.NO_PX
BID = schema.SIDE_BID
ASK = schema.SIDE_ASK

# Columns of S.
B_OFF = 0  # B_OFF + side: offset of that side's ladder in lad
B_WIDTH = 2  # W, ladder width in ticks
B_BASE = 3  # price (ticks) of index 0; NO_PX until the first price
B_BEST = 4  # B_BEST + side: index of the best level, -1 when the side is empty
B_NLEV = 6  # B_NLEV + side: number of non-empty levels
B_LAST_PX = 8  # last trade price (NO_PX before the first)
B_LAST_QTY = 9
B_LAST_SIDE = 10  # aggressor side of the last trade, -1 before the first
B_MSGS = 11  # messages applied to this symbol
B_SEQ = 12  # feed sequence of the last applied message
B_TS_EXCH = 13  # its exchange timestamp
B_DIRTY = 14  # 1 when touched since the last snapshot
B_VERSION = 15  # snapshots published
B_PREV = 16  # B_PREV + 0..3: bid px, bid qty, ask px, ask qty as last emitted (EV_BBO)
B_TS_APPLY = 20  # apply stamp of the last batch that touched the symbol
B_DT = 21  # the depth band of events, ticks ([book] event_depth_ticks), 1..PAD
B_UNCROSS = 22  # 1: an add that crosses the other side removes the levels it crosses ([book] uncross)
B_STALE = 23  # 1: messages for this book were lost (per-order input, a gap not healed) until it is cleared
NS = 24
#: Always-zero words around each side's ladder; also the widest events depth band.
PAD = 16

_PX_LIMIT = 1 << 60  # |px_tick| beyond this is malformed (keeps index math exact)


def new_state(widths, n_levels, depth_ticks=10, uncross=False):
    """Allocate ``lad``, ``S`` and ``C`` for symbols with ladder ``widths`` (ticks);
    events will carry the lots within ``depth_ticks`` of each best; with ``uncross``,
    an add or level set that crosses the other side's best removes the other side's
    levels it crosses, as stale (counted)."""
    widths = np.asarray(widths, dtype=np.int64)
    if widths.ndim != 1 or len(widths) == 0 or (widths < 2 * n_levels).any():
        raise ValueError(f"ladder widths must be >= 2 * snapshot levels ({2 * n_levels}), got {widths}")
    if not 1 <= depth_ticks <= PAD:
        raise ValueError(f"events depth band must be 1..{PAD} ticks, got {depth_ticks}")
    S = np.zeros((len(widths), NS), np.int64)
    block = 2 * widths + 3 * PAD  # PAD bids PAD asks PAD
    start = np.concatenate(([0], np.cumsum(block)[:-1]))
    S[:, B_OFF] = start + PAD
    S[:, B_OFF + 1] = start + 2 * PAD + widths
    S[:, B_WIDTH] = widths
    S[:, B_DT] = depth_ticks
    S[:, B_UNCROSS] = 1 if uncross else 0
    reset_state(S)
    lad = np.zeros(int(block.sum()), np.int64)
    C = np.zeros(schema.STATS_WORDS, np.int64)
    return lad, S, C


def reset_state(S):
    S[:, B_BASE] = NO_PX
    S[:, B_BEST] = -1
    S[:, B_BEST + 1] = -1
    S[:, B_NLEV] = 0
    S[:, B_NLEV + 1] = 0
    S[:, B_LAST_PX] = NO_PX
    S[:, B_LAST_QTY] = 0
    S[:, B_LAST_SIDE] = -1
    S[:, B_MSGS:B_DIRTY + 1] = 0
    S[:, B_VERSION] = 0
    S[:, B_PREV] = NO_PX
    S[:, B_PREV + 1] = 0
    S[:, B_PREV + 2] = NO_PX
    S[:, B_PREV + 3] = 0
    S[:, B_TS_APPLY] = 0


# --- level primitives ----------------------------------------------------------------
# Each keeps the level count and the best index of its side up to date.

@njit(**HOT, inline="always")
def band_depth(lad, S, s, side):
    """Lots resting within ``S[s, B_DT]`` ticks of a side's best, best included (0 if
    the side is empty).  A fixed ``PAD``-word window, masked to the band and fully
    unrolled: no branches, no clipping (the padding is always zero), several times
    cheaper per event than summing a clipped, variable-length band (docs/DECISIONS.md,
    "Events carry depth as a tick band")."""
    b = S[s, B_BEST + side]
    if b < 0:
        return 0
    d = S[s, B_DT]
    tot = 0
    if side == BID:
        p0 = S[s, B_OFF] + b - (PAD - 1)
        for k in range(PAD):
            tot += lad[p0 + k] if PAD - 1 - k < d else 0
    else:
        p0 = S[s, B_OFF + 1] + b
        for k in range(PAD):
            tot += lad[p0 + k] if k < d else 0
    return tot


@njit(**HOT, inline="always")
def _scan_from(lad, o, w, side, i):
    """First non-empty level at or beyond index ``i`` away from the touch, or -1."""
    if side == BID:
        while i >= 0:
            if lad[o + i] > 0:
                return i
            i -= 1
        return -1
    while i < w:
        if lad[o + i] > 0:
            return i
        i += 1
    return -1


@njit(**HOT, inline="always")
def _better(side, i, b):
    """True when index ``i`` is better than the best index ``b`` (or the side is empty)."""
    if b < 0:
        return True
    return i > b if side == BID else i < b


@njit(**HOT, inline="always")
def _level_grow(lad, S, s, side, i, q):
    """Level (side, i) += q, q > 0."""
    w = S[s, B_WIDTH]
    p = S[s, B_OFF + side] + i
    old = lad[p]
    lad[p] = old + q
    if old == 0:
        S[s, B_NLEV + side] += 1
        if _better(side, i, S[s, B_BEST + side]):
            S[s, B_BEST + side] = i


@njit(**HOT, inline="always")
def _level_shrink_to(lad, S, s, side, i, new):
    """Level (side, i) := new where new < current (new >= 0)."""
    w = S[s, B_WIDTH]
    o = S[s, B_OFF + side]
    lad[o + i] = new
    if new == 0:
        S[s, B_NLEV + side] -= 1
        if S[s, B_BEST + side] == i:
            if S[s, B_NLEV + side] == 0:
                S[s, B_BEST + side] = -1
            else:
                S[s, B_BEST + side] = _scan_from(lad, o, w, side, i - 1 if side == BID else i + 1)


@njit(**HOT, inline="always")
def _uncross(lad, S, C, s, side, i):
    """After level (side, i) grew: if it crosses the other side's best, empty the other
    side's levels from its best through index i (stale: a market would have matched
    them; a level-1 LOBSTER file, say, never reports cancels away from the touch).
    Returns True if it removed any."""
    b = S[s, B_BEST + 1 - side]
    if b < 0 or (side == BID and i < b) or (side == ASK and i > b):
        return False
    return _remove_crossed(lad, S, C, s, side, i, b)


@njit(**HOT)
def _remove_crossed(lad, S, C, s, side, i, b):
    """``_uncross``'s removal, a plain call: rare, and one compiled copy instead of one
    per inlined call site."""
    o = 1 - side
    off = S[s, B_OFF + o]
    step = 1 if side == BID else -1  # asks from their best up to i; bids down to i
    k = b
    n = 0
    while True:
        if lad[off + k] > 0:
            _level_shrink_to(lad, S, s, o, k, 0)
            n += 1
        if k == i:
            break
        k += step
    C[schema.ST_BOOK_UNCROSSED] += n
    return n > 0


@njit(**HOT)
def _recentre(lad, S, C, s, nb):
    """Move symbol s's window to base ``nb``; evict levels that fall outside (counted)."""
    w = S[s, B_WIDTH]
    d = nb - S[s, B_BASE]
    C[schema.ST_BOOK_RECENTRES] += 1
    for side in range(2):
        o = S[s, B_OFF + side]
        if d > 0:
            for i in range(min(d, w)):
                if lad[o + i] > 0:
                    C[schema.ST_BOOK_EVICTED_LEVELS] += 1
            for i in range(d, w):
                lad[o + i - d] = lad[o + i]
            for i in range(max(w - d, 0), w):
                lad[o + i] = 0
        elif d < 0:
            e = -d
            for i in range(max(w - e, 0), w):
                if lad[o + i] > 0:
                    C[schema.ST_BOOK_EVICTED_LEVELS] += 1
            for i in range(w - 1, e - 1, -1):
                lad[o + i] = lad[o + i - e]
            for i in range(min(e, w)):
                lad[o + i] = 0
        n = 0
        for i in range(w):
            if lad[o + i] > 0:
                n += 1
        S[s, B_NLEV + side] = n
        S[s, B_BEST + side] = _scan_from(lad, o, w, side, w - 1 if side == BID else 0)
    S[s, B_BASE] = nb


@njit(**HOT, inline="always")
def _locate(lad, S, C, s, px, grow):
    """Ladder index of ``px`` for symbol s, re-centring per the policy when ``grow``;
    -1 when the price is outside the ladder (the caller counts it)."""
    w = S[s, B_WIDTH]
    base = S[s, B_BASE]
    if base == NO_PX:
        if not grow:
            return -1
        S[s, B_BASE] = px - w // 2
        return w // 2
    i = px - base
    if i >= 0 and i < w:
        return i
    if not grow:
        return -1
    bb = S[s, B_BEST]
    ba = S[s, B_BEST + 1]
    if bb >= 0 and ba >= 0:
        c = base + (bb + ba) // 2
    elif bb >= 0:
        c = base + bb
    elif ba >= 0:
        c = base + ba
    else:
        c = px
    nb = c - w // 2
    if px < nb or px >= nb + w:
        return -1
    _recentre(lad, S, C, s, nb)
    return px - nb


@njit(**HOT, inline="always")
def best_px(S, s, side):
    b = S[s, B_BEST + side]
    return NO_PX if b < 0 else S[s, B_BASE] + b


@njit(**HOT, inline="always")
def best_qty(lad, S, s, side):
    b = S[s, B_BEST + side]
    return 0 if b < 0 else lad[S[s, B_OFF + side] + b]


@njit(**HOT)
def top_levels(lad, S, s, side, n, px_out, qty_out):
    """Fill the top ``n`` levels of a side (best first); returns how many exist.
    Unused entries get NO_PX / 0."""
    w = S[s, B_WIDTH]
    o = S[s, B_OFF + side]
    base = S[s, B_BASE]
    i = S[s, B_BEST + side]
    k = 0
    step = -1 if side == BID else 1
    while i >= 0 and i < w and k < n:
        q = lad[o + i]
        if q > 0:
            px_out[k] = base + i
            qty_out[k] = q
            k += 1
        i += step
    for j in range(k, n):
        px_out[j] = NO_PX
        qty_out[j] = 0
    return k


@njit(**HOT)
def clear_symbol(lad, S, s):
    """Clear/reset: both sides of symbol s emptied (the window stays where it is)."""
    for side in range(2):
        o = S[s, B_OFF + side]
        for i in range(S[s, B_WIDTH]):
            lad[o + i] = 0
    S[s, B_BEST] = -1
    S[s, B_BEST + 1] = -1
    S[s, B_NLEV] = 0
    S[s, B_NLEV + 1] = 0
    S[s, B_STALE] = 0


# --- one message ----------------------------------------------------------------------
# The per-kind rules of the book, in one place: ``apply_batch`` applies every message
# through ``apply_msg``, and so do the LOBSTER checker and replay (``engine.lobster``),
# whose model book must follow exactly the rules the book writer follows.


@njit(**HOT, inline="always")
def set_level(lad, S, C, s, side, px, q, grow, may_uncross):
    """Level (side, px) of symbol s := q (q >= 0), the set-level rule.  ``grow``: the
    price may re-centre the window (a set-level message passes ``q > 0``: only a level
    that adds liquidity may move the window).  ``may_uncross`` as in ``apply_msg``.
    Returns -1 when px is outside the ladder (counted ``out_of_ladder``), 1 when the
    level grew across the other side's best and uncrossed it, else 0."""
    i = _locate(lad, S, C, s, px, grow)
    if i < 0:
        C[schema.ST_BOOK_OUT_OF_LADDER] += 1
        return -1
    old = lad[S[s, B_OFF + side] + i]
    if q > old:
        _level_grow(lad, S, s, side, i, q - old)
        if may_uncross and S[s, B_UNCROSS]:
            if _uncross(lad, S, C, s, side, i):
                return 1
    elif q < old:
        _level_shrink_to(lad, S, s, side, i, q)
    return 0


@njit(**HOT, inline="always")
def apply_msg(lad, S, C, s, kind, side, px, q, may_uncross):
    """Apply one message's effect on symbol s's ladder: the per-kind rules (module
    docstring; out-of-ladder, underflow, uncrossing, trades, clears and heartbeats
    counted in ``C``).  The message is already checked (``apply_batch``: kind, side,
    symbol, price range, qty).  ``may_uncross``: honour the symbol's ``[book] uncross``
    (``S[s, B_UNCROSS]``); False never uncrosses (the LOBSTER model book keeps levels
    only).  The caller does the rest: message counts, sequence, last trade, events.
    Returns (trade, uncrossed): the message is a trade (execute, hidden trade); an add
    or level set removed crossed levels of the other side."""
    trade = False
    uncrossed = False
    if kind == schema.K_ADD:
        i = _locate(lad, S, C, s, px, True)
        if i < 0:
            C[schema.ST_BOOK_OUT_OF_LADDER] += 1
        else:
            _level_grow(lad, S, s, side, i, q)
            if may_uncross and S[s, B_UNCROSS]:
                uncrossed = _uncross(lad, S, C, s, side, i)
    elif kind >= schema.K_CANCEL and kind <= schema.K_EXECUTE:
        i = _locate(lad, S, C, s, px, False)
        if i < 0:
            C[schema.ST_BOOK_OUT_OF_LADDER] += 1
        else:
            old = lad[S[s, B_OFF + side] + i]
            if q > old:
                C[schema.ST_BOOK_QTY_UNDERFLOW] += 1
                if old > 0:
                    _level_shrink_to(lad, S, s, side, i, 0)
            else:
                _level_shrink_to(lad, S, s, side, i, old - q)
        trade = kind == schema.K_EXECUTE
    elif kind == schema.K_TRADE:
        trade = True
    elif kind == schema.K_SET_LEVEL:
        uncrossed = set_level(lad, S, C, s, side, px, q, q > 0, may_uncross) > 0
    elif kind == schema.K_CLEAR:
        clear_symbol(lad, S, s)
        C[schema.ST_BOOK_CLEARS] += 1
    else:
        C[schema.ST_BOOK_HEARTBEATS] += 1
    if trade:
        C[schema.ST_BOOK_TRADES] += 1
    return trade, uncrossed


# --- events -------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _emit(ev, slot, kind, side, s, seq, ts_exch, lad, S, tpx, tqty):
    """Write one event into events-ring record ``slot`` (the caller checked for room)."""
    e = ev[slot]
    e.kind = kind
    e.side = side
    e.symbol = s
    e.trade_qty = tqty
    e.seq = seq
    e.ts_exch_ns = ts_exch
    e.bid_px_tick = best_px(S, s, BID)
    e.ask_px_tick = best_px(S, s, ASK)
    e.trade_px_tick = tpx
    e.bid_qty = best_qty(lad, S, s, BID)
    e.ask_qty = best_qty(lad, S, s, ASK)
    e.bid_depth_qty = band_depth(lad, S, s, BID)
    e.ask_depth_qty = band_depth(lad, S, s, ASK)
    e.sym_msgs = S[s, B_MSGS]


# --- snapshot payload ----------------------------------------------------------------


@njit(**HOT)
def build_payload(lad, S, s, n_levels, pay, lv_px, lv_qty):
    """Fill snapshot payload words ``pay`` for symbol s (check word included)."""
    bpx = best_px(S, s, BID)
    apx = best_px(S, s, ASK)
    bq = best_qty(lad, S, s, BID)
    aq = best_qty(lad, S, s, ASK)
    pay[schema.SW_BID_PX] = bpx
    pay[schema.SW_BID_QTY] = bq
    pay[schema.SW_ASK_PX] = apx
    pay[schema.SW_ASK_QTY] = aq
    both = bpx != NO_PX and apx != NO_PX
    pay[schema.SW_SPREAD] = apx - bpx if both else NO_PX
    nan = np.nan
    pay[schema.SW_IMBALANCE] = f64_bits((bq - aq) / (bq + aq) if bq + aq > 0 else nan)
    if both:
        # bid + spread * bq / (bq + aq): the same value as (bid*aq + ask*bq)/(bq+aq)
        # without the int64 products, which overflow for large prices x sizes
        pay[schema.SW_MICROPRICE] = f64_bits(bpx + (apx - bpx) * (bq / (bq + aq)))
    else:
        pay[schema.SW_MICROPRICE] = f64_bits(nan)
    h = schema.SNAP_HEADER_WORDS
    top_levels(lad, S, s, BID, n_levels, lv_px, lv_qty)
    db = 0
    for k in range(n_levels):
        pay[h + k] = lv_px[k]
        pay[h + n_levels + k] = lv_qty[k]
        db += lv_qty[k]
    top_levels(lad, S, s, ASK, n_levels, lv_px, lv_qty)
    da = 0
    for k in range(n_levels):
        pay[h + 2 * n_levels + k] = lv_px[k]
        pay[h + 3 * n_levels + k] = lv_qty[k]
        da += lv_qty[k]
    pay[schema.SW_DEPTH_IMBALANCE] = f64_bits((db - da) / (db + da) if db + da > 0 else nan)
    pay[schema.SW_LAST_PX] = S[s, B_LAST_PX]
    pay[schema.SW_LAST_QTY] = S[s, B_LAST_QTY]
    pay[schema.SW_LAST_SIDE] = S[s, B_LAST_SIDE]
    pay[schema.SW_MSGS] = S[s, B_MSGS]
    pay[schema.SW_SEQ] = S[s, B_SEQ]
    pay[schema.SW_TS_EXCH] = S[s, B_TS_EXCH]
    pay[schema.SW_TS_APPLY] = S[s, B_TS_APPLY]
    pay[schema.SW_VERSION] = S[s, B_VERSION]
    pay[schema.SW_N_LEVELS] = n_levels
    pay[schema.SW_STALE] = S[s, B_STALE]
    nw = h + 4 * n_levels + 1
    pay[nw - 1] = payload_check(pay, nw)


# --- the batch ------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _tob_changed(lad, S, s, sd):
    """Did side sd's best (price, qty) change since last recorded?  Records it.  Branch
    free: an empty side has best -1, and lad[off - 1] is an always-zero pad word."""
    b = S[s, B_BEST + sd]
    qq = lad[S[s, B_OFF + sd] + b]
    p = S[s, B_BASE] + b if b >= 0 else NO_PX
    ch = (p != S[s, B_PREV + 2 * sd]) | (qq != S[s, B_PREV + 2 * sd + 1])
    S[s, B_PREV + 2 * sd] = p
    S[s, B_PREV + 2 * sd + 1] = qq
    return ch


@njit(**HOT, inline="always")
def after_msg(lad, S, C, ev, ev_head, ev_mask, ev_free, ne, dropped, dirty, s, kind, side, seq, ts_exch, base0,
              trade, tpx, tq, uncrossed):
    """What follows one message's ``apply_msg`` in the book writer: the symbol's message
    count, sequence and dirty mark; on a trade (``trade``: price ``tpx``, ``tq`` lots,
    ``side`` resting) its last trade and an EV_TRADE event; on a top-of-book change an
    EV_BBO event.  ``kind`` is the K_* applied, ``base0`` the window base before it,
    ``uncrossed`` as ``apply_msg`` returned.  Events go to slot ``(ev_head + ne) &
    ev_mask`` while ``ne < ev_free``, else count as ``dropped``.  Returns the updated
    (ne, dropped).  Shared by ``apply_batch`` and the per-order book (``engine._l3_kernels``),
    which resolves an order's message to the K_* it means."""
    S[s, B_MSGS] += 1
    S[s, B_SEQ] = seq
    S[s, B_TS_EXCH] = ts_exch
    if S[s, B_DIRTY] == 0:
        S[s, B_DIRTY] = 1
        dirty[0] += 1
        dirty[dirty[0]] = s
    if trade:
        agg = 1 - side
        S[s, B_LAST_PX] = tpx
        S[s, B_LAST_QTY] = tq
        S[s, B_LAST_SIDE] = agg
        if ne < ev_free:
            _emit(ev, (ev_head + ne) & ev_mask, schema.EV_TRADE, agg, s, seq, ts_exch, lad, S, tpx, tq)
            ne += 1
        else:
            dropped += 1
    # Top-of-book change.  Only the touched side can move, except on a clear or a
    # re-centre (the window moved: evictions may touch both sides).
    if kind == schema.K_TRADE or kind == schema.K_HEARTBEAT:
        changed = False
    elif kind == schema.K_CLEAR or S[s, B_BASE] != base0 or uncrossed:
        changed = _tob_changed(lad, S, s, 0) | _tob_changed(lad, S, s, 1)
    else:
        changed = _tob_changed(lad, S, s, side)
    if changed:
        bb = S[s, B_BEST]
        ba = S[s, B_BEST + 1]
        if bb >= 0 and ba >= 0 and bb >= ba:
            C[schema.ST_BOOK_CROSSED] += 1
        if ne < ev_free:
            _emit(ev, (ev_head + ne) & ev_mask, schema.EV_BBO, 0, s, seq, ts_exch, lad, S, NO_PX, 0)
            ne += 1
        else:
            dropped += 1
    return ne, dropped


@njit(**HOT, inline="always")
def end_apply(C, ev_ctrl, ev_head, ne, dropped, n):
    """The end of a batch's apply (``apply_batch``, ``_l3_kernels.apply_batch_l3``): its
    ``ne`` events published, message, batch and event counts added."""
    if ne > 0:
        ring_publish(ev_ctrl, ev_head + ne)
    C[schema.ST_BOOK_MSGS] += n
    C[schema.ST_BOOK_BATCHES] += 1
    C[schema.ST_BOOK_EVENTS] += ne
    C[schema.ST_BOOK_EVENTS_DROPPED] += dropped


@njit(**HOT)
def apply_batch(md, start, n, mask, lad, S, C, ev, ev_ctrl, dirty):
    """Apply messages ``md[(start + j) & mask]`` for j in 0..n-1 (``mask = -1`` for a
    plain array).  Emits events into the events ring (``ev`` = its records view,
    ``ev_ctrl`` = its control words) and publishes them at the end.  Symbols touched
    are appended to ``dirty`` (``dirty[0]`` holds the count).  Returns n."""
    ev_cap = ev.shape[0]
    ev_mask = ev_cap - 1
    ev_head, ev_free = ring_claim(ev_ctrl, ev_cap, ev_cap)
    ne = 0
    dropped = 0
    n_sym = S.shape[0]
    for j in range(n):
        m = md[(start + j) & mask]
        kind = np.int64(m.kind)
        side = np.int64(m.side)
        s = np.int64(m.symbol)
        q = np.int64(m.qty)
        px = np.int64(m.px_tick)
        if s >= n_sym or kind < schema.K_ADD or kind > schema.K_HEARTBEAT:
            C[schema.ST_BOOK_BAD_MSG] += 1
            continue
        if kind < schema.K_CLEAR:
            if side > 1 or px <= -_PX_LIMIT or px >= _PX_LIMIT or (q <= 0 and kind != schema.K_SET_LEVEL):
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
        base0 = S[s, B_BASE]
        trade, uncrossed = apply_msg(lad, S, C, s, kind, side, px, q, True)
        ne, dropped = after_msg(lad, S, C, ev, ev_head, ev_mask, ev_free, ne, dropped, dirty, s, kind, side,
                                np.int64(m.seq), np.int64(m.ts_exch_ns), base0, trade, px, q, uncrossed)
    end_apply(C, ev_ctrl, ev_head, ne, dropped, n)
    return n


@njit(**HOT)
def publish_snapshots(lad, S, C, dirty, n_levels, snap_words, snap_base0, slot_words, pay, lv_px, lv_qty,
                      ts_apply):
    """One snapshot per symbol touched since the last call; clears the dirty list."""
    nd = dirty[0]
    for k in range(1, nd + 1):
        s = dirty[k]
        S[s, B_DIRTY] = 0
        S[s, B_VERSION] += 1
        S[s, B_TS_APPLY] = ts_apply
        build_payload(lad, S, s, n_levels, pay, lv_px, lv_qty)
        snap_write(snap_words, snap_base0 + s * slot_words, pay, pay.shape[0])
    C[schema.ST_BOOK_SNAPSHOTS] += nd
    dirty[0] = 0
    return nd


@njit(**HOT)
def publish_counters(C, row, lo, hi):
    """Copy counters lo..hi-1 to the shared stats row (owner: the book writer)."""
    for k in range(lo, hi):
        store_relaxed(row, k, C[k])


@njit(**HOT, inline="always")
def next_batch(md_ctrl, max_batch, spin_iters, yield_iters, doze_ns):
    """The book writer's next batch: (tail, n) of whatever is there now, up to
    ``max_batch`` md records, waiting through the spin -> yield -> doorbell backoff when
    there are none; n = 0: still none (idle)."""
    tail, n = ring_available(md_ctrl, max_batch)
    if n == 0:
        if ring_wait(md_ctrl, spin_iters, yield_iters, doze_ns) == 0:
            return tail, 0
        tail, n = ring_available(md_ctrl, max_batch)
    return tail, min(n, max_batch)


@njit(**HOT, inline="always")
def end_batch(md_ctrl, md, tail, n, mask, lad, S, C, n_levels, dirty, snap_words, snap_base0, slot_words, pay,
              lv_px, lv_qty, row, hist, hist_local, ts, last_counter):
    """What follows a batch's apply in the book writer: each message's receive -> apply
    latency into the shared histogram ``hist`` (the second stamp), the md slots
    released, one snapshot per touched symbol, counters ``ST_BOOK_MSGS .. last_counter``
    and the heartbeat (``ts``, the batch's start) copied to the stats ``row``."""
    record_batch(md, tail, n, mask, monotonic_ns(), hist, hist_local)
    ring_release(md_ctrl, tail + n)
    publish_snapshots(lad, S, C, dirty, n_levels, snap_words, snap_base0, slot_words, pay, lv_px, lv_qty, ts)
    publish_counters(C, row, schema.ST_BOOK_MSGS, last_counter + 1)
    store_relaxed(row, schema.ST_HEARTBEAT_NS, ts)


@njit(**HOT)
def drain(md_ctrl, md, max_batch, budget, lad, S, C, ev, ev_ctrl, n_levels, dirty, snap_words,
          snap_base0, slot_words, pay, lv_px, lv_qty, row, hist, hist_local, spin_iters, yield_iters, doze_ns=0):
    """The book writer's loop: apply batches from the md ring until ``budget`` messages
    are applied or the ring stays empty through the spin -> yield backoff, and then
    (``doze_ns`` > 0) blocked on the ring's doorbell that long.

    Per batch: apply (events published), then ``end_batch`` (latency, release,
    snapshots, counters, heartbeat).  Returns messages applied (0: idle; the caller
    sleeps briefly and checks its stop flag).  The per-order book's loop
    (``_l3_kernels.drain_l3``) is this one with its own apply.
    """
    done = 0
    mask = md.shape[0] - 1
    while done < budget:
        tail, n = next_batch(md_ctrl, max_batch, spin_iters, yield_iters, doze_ns)
        if n == 0:
            break
        ts = monotonic_ns()
        apply_batch(md, tail, n, mask, lad, S, C, ev, ev_ctrl, dirty)
        end_batch(md_ctrl, md, tail, n, mask, lad, S, C, n_levels, dirty, snap_words, snap_base0, slot_words, pay,
                  lv_px, lv_qty, row, hist, hist_local, ts, schema.ST_BOOK_UNCROSSED)
        done += n
    return done
