"""Compiled analysis kernels: five signal detectors and periodic summaries over the
book writer's events ring.  No I/O, no allocation; state lives in arrays the caller
allocates once (``new_state``).

Design
------
Input is the "events" ring only (``schema.EVENT_DTYPE``: one record per top-of-book
change and per trade, carrying the best prices, sizes and the depth within
``[book] event_depth_ticks`` of each best).  The analysis never reads the book's
memory.  Output goes into the "signals" ring (``schema.SIGNAL_DTYPE``); when it is
full the record is dropped and counted (signals and summaries separately): the
analysis never waits for the publisher.

Every decision uses feed time (``ts_exch_ns``) and event content only, so the same
events give the same signals and summaries; the one wall-clock field is
``ts_detect_ns``.  Depth between the touch and the band edge is only *sampled* at
events (a cancel two ticks behind the best that changes nothing at the top produces
no event); detectors see it at the next event of that symbol.

Detectors (per symbol; each fires once per episode and re-arms by hysteresis or by
re-anchoring, so a persistent condition is one signal, not one per event):

1. spread widening: spread >= ``ratio`` x its EWMA baseline (time constant ``tau``
   in feed time; the baseline is updated with the *previous* spread, so a jump does
   not dilute its own baseline) and >= ``min_ticks``; re-arms when the spread falls to
   ``rearm`` x baseline.  Needs ``warmup`` valid events first.
2. imbalance: |depth imbalance| >= ``depth_thr`` and |top-of-book imbalance| >=
   ``tob_thr`` on the same side, with at least ``min_depth`` lots in the two bands;
   re-arms when |depth imbalance| < ``rearm``.  Side = the heavy side.
3. microprice shift: the size-weighted microprice moved >= ``shift_ticks`` from the
   lowest/highest value seen within ``window`` (monotonic min/max deques in feed
   time); after firing, the window restarts from the current value.
4. sweep: trades with the same aggressor side within ``window`` of the burst's first
   trade form a burst; it fires once when the burst has traded at >= ``levels``
   distinct successive prices or >= ``burst_qty`` lots (0 = volume rule off).
5. liquidity withdrawal: per side, "adjusted depth" = band depth + lots traded
   against that side so far, so trades do not move it and only cancels do.  A max
   deque over ``window`` gives the highest adjusted depth recently; it fires when
   (that max - now) >= ``fraction`` x the band depth at that moment and that depth was
   >= ``min_depth``; then the side's window restarts.  An emptied side (clear) resets.

Deques hold ``QCAP`` entries per symbol and deque; when one is full its oldest entry is
dropped (the window then covers the last QCAP distinct extremes, which for a monotonic
deque is rarely binding).

Summaries: feed time is cut into intervals of ``interval_ns``.  The first event whose
exchange time falls in a later interval closes the current one: every symbol seen so
far gets one summary for it (BBO and mid at the close, time-weighted mean and min/max
spread, imbalances at the close, traded volume by aggressor side, trades, messages
applied, events).  Intervals in which no event arrived at all produce no summaries.
``flush_summaries`` closes the open interval at the end of a stream.

Build: ``ring.jit.HOT`` (no NRT reference counting; the kernels allocate nothing).
With the NRT on, the event loop paid an atomic incref/decref pair for every array
handed to an inlined detector (measured in docs/DECISIONS.md).  ``_on_event`` is the
per-event sequence of steps; each detector is one helper, inlined at IR level
(``inline="always"``: as real calls they made the event loop several times slower,
docs/DECISIONS.md).

Alternatives rejected: reading snapshots (a polling reader sees some states twice and
misses others, so the output would depend on timing); per-event Python (far below the
rate the book writer emits events; docs/DECISIONS.md).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT
from obpipe.ring.atomics import cpu_relax, realtime_ns, sched_yield
from obpipe.ring.kernels import ring_available, ring_claim, ring_publish, ring_release

NO_PX = schema.NO_PX
BID = schema.SIDE_BID
ASK = schema.SIDE_ASK
SIDE_NONE = schema.SIDE_NONE

#: Parameter vector (float64), filled from ``[analysis]`` by analysis.process.params().
P_INTERVAL_NS = 0
P_SPREAD_ON = 1
P_SPREAD_RATIO = 2
P_SPREAD_MIN_TICKS = 3
P_SPREAD_TAU_NS = 4
P_SPREAD_WARMUP = 5
P_SPREAD_REARM = 6
P_IMB_ON = 7
P_IMB_TOB = 8
P_IMB_DEPTH = 9
P_IMB_MIN_DEPTH = 10
P_IMB_REARM = 11
P_MP_ON = 12
P_MP_TICKS = 13
P_MP_WINDOW_NS = 14
P_SWEEP_ON = 15
P_SWEEP_LEVELS = 16
P_SWEEP_QTY = 17
P_SWEEP_WINDOW_NS = 18
P_WD_ON = 19
P_WD_FRACTION = 20
P_WD_MIN_DEPTH = 21
P_WD_WINDOW_NS = 22
N_PARAMS = 23


def _values_of(kind):
    return schema.SUMMARY_VALUES if kind == 0 else schema.SIGNAL_VALUES[kind]


def _iv_slot(kind, name):
    """Index in ``iv`` of value ``name`` of signal kind ``kind`` (0: a summary)."""
    return schema.value_slot(_values_of(kind), name, "iv")


def _fv_slot(kind, name):
    """Index in ``fv`` of value ``name`` of signal kind ``kind`` (0: a summary)."""
    return schema.value_slot(_values_of(kind), name, "fv")


#: Where each detector writes its values: slots of ``iv``/``fv`` from the one table,
#: ``ring.schema.SIGNAL_VALUES`` (names as published, docs/SCHEMA.md).
V_SP_SPREAD = _iv_slot(schema.SIG_SPREAD, "spread_ticks")
V_SP_BASE = _fv_slot(schema.SIG_SPREAD, "baseline_ticks")
V_SP_RATIO = _fv_slot(schema.SIG_SPREAD, "ratio")
V_IMB_TOB = _fv_slot(schema.SIG_IMBALANCE, "tob_imbalance")
V_IMB_DEPTH = _fv_slot(schema.SIG_IMBALANCE, "depth_imbalance")
V_IMB_BID = _iv_slot(schema.SIG_IMBALANCE, "bid_depth")
V_IMB_ASK = _iv_slot(schema.SIG_IMBALANCE, "ask_depth")
V_MP_SHIFT = _fv_slot(schema.SIG_MICROPRICE, "shift_ticks")
V_MP_FROM = _fv_slot(schema.SIG_MICROPRICE, "from_tick")
V_MP_TO = _fv_slot(schema.SIG_MICROPRICE, "to_tick")
V_MP_ELAPSED = _iv_slot(schema.SIG_MICROPRICE, "elapsed_ns")
V_SW_LEVELS = _iv_slot(schema.SIG_SWEEP, "levels")
V_SW_VOLUME = _iv_slot(schema.SIG_SWEEP, "volume")
V_SW_TRADES = _iv_slot(schema.SIG_SWEEP, "trades")
V_SW_FIRST = _iv_slot(schema.SIG_SWEEP, "first_tick")
V_SW_LAST = _iv_slot(schema.SIG_SWEEP, "last_tick")
V_SW_ELAPSED = _iv_slot(schema.SIG_SWEEP, "elapsed_ns")
V_WD_BEFORE = _iv_slot(schema.SIG_WITHDRAWAL, "depth_before")
V_WD_AFTER = _iv_slot(schema.SIG_WITHDRAWAL, "depth_after")
V_WD_DROP = _fv_slot(schema.SIG_WITHDRAWAL, "drop_fraction")
V_WD_ELAPSED = _iv_slot(schema.SIG_WITHDRAWAL, "elapsed_ns")
V_WD_TOUCH = _iv_slot(schema.SIG_WITHDRAWAL, "touch_tick")
#: Where a summary's values go (``ring.schema.SUMMARY_VALUES``; the record's
#: ``ts_exch_ns`` is the interval's start).
SUM_END = _iv_slot(0, "end_ns")
SUM_BUY = _iv_slot(0, "buy_volume")
SUM_SELL = _iv_slot(0, "sell_volume")
SUM_TRADES = _iv_slot(0, "trades")
SUM_MSGS = _iv_slot(0, "messages")
SUM_EVENTS = _iv_slot(0, "events")
SUM_SP_MIN = _fv_slot(0, "spread_min")
SUM_SP_MEAN = _fv_slot(0, "spread_mean")
SUM_SP_MAX = _fv_slot(0, "spread_max")
SUM_TOB = _fv_slot(0, "tob_imbalance")
SUM_DEPTH = _fv_slot(0, "depth_imbalance")
SUM_MID = _fv_slot(0, "mid_tick")

#: Per-symbol integer state A[s, :].
A_SEEN = 0  # 1 once the symbol had an event
A_BID = 1  # current top of book and bands (as of the last event)
A_ASK = 2
A_BQ = 3
A_AQ = 4
A_BD = 5
A_AD = 6
A_SEQ = 7  # last event's feed sequence
A_TS = 8  # last event's exchange time
A_SP_ARMED = 9
A_SP_N = 10  # valid spreads seen (warm-up)
A_SP_PREV = 11  # previous valid spread (-1 none)
A_SP_TS = 12  # its time
A_IMB_ARMED = 13
A_SW_SIDE = 14  # current burst: aggressor side, first time, first/last price, levels, volume, trades, fired
A_SW_T0 = 15
A_SW_FIRST = 16
A_SW_LAST = 17
A_SW_LEVELS = 18
A_SW_VOL = 19
A_SW_TRADES = 20
A_SW_FIRED = 21
A_WD_CUM = 22  # +0 bid, +1 ask: lots traded against that side so far
A_QH = 24  # +d: deque head counter (4 deques)
A_QT = 28  # +d: deque tail counter
A_SM_MIN = 32  # summary: spread min/max in the open interval (-1 none)
A_SM_MAX = 33
A_SM_DT = 34  # ns of the interval with a valid spread
A_SM_LAST_TS = 35  # time the current spread started to count
A_SM_BUY = 36
A_SM_SELL = 37
A_SM_TRADES = 38
A_SM_EVENTS = 39
A_SM_MSGS0 = 40  # sym_msgs at the interval's start
A_SM_MSGS = 41  # sym_msgs at the last event
A_SM_SPREAD = 42  # current spread (-1 none)
NA = 43

#: Per-symbol float state F[s, :].
F_SP_BASE = 0  # EWMA baseline of the spread, ticks
F_SM_SW = 1  # summary: sum of spread x ns
NF = 2

#: Global state G (int64).
G_IV = 0  # open interval index (ts // interval_ns), -1 before the first event
G_NEXT = 1  # start of the next interval, ns
NG = 2

#: Deques: 0 microprice min (stores -mp), 1 microprice max, 2 bid withdrawal, 3 ask withdrawal.
QCAP = 256
Q_MP_MIN = 0
Q_MP_MAX = 1
Q_WD = 2  # + side


def new_state(n_symbols: int):
    """(A, F, G, QT, QV, QX) zeroed and initialised for ``n_symbols`` symbols."""
    A = np.zeros((n_symbols, NA), np.int64)
    F = np.zeros((n_symbols, NF), np.float64)
    G = np.zeros(NG, np.int64)
    QT = np.zeros((n_symbols, 4, QCAP), np.int64)  # entry time
    QV = np.zeros((n_symbols, 4, QCAP), np.float64)  # entry key (max-deque order)
    QX = np.zeros((n_symbols, 4, QCAP), np.int64)  # entry aux (withdrawal: band depth then)
    reset_state(A, F, G)
    return A, F, G, QT, QV, QX


def reset_state(A, F, G):
    A[:] = 0
    F[:] = 0.0
    G[G_IV] = -1
    A[:, A_BID] = NO_PX
    A[:, A_ASK] = NO_PX
    A[:, A_SP_ARMED] = 1
    A[:, A_SP_PREV] = -1
    A[:, A_IMB_ARMED] = 1
    A[:, A_SM_MIN] = -1
    A[:, A_SM_MAX] = -1
    A[:, A_SM_SPREAD] = -1


# --- deques ------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _q_clear(A, s, d):
    A[s, A_QH + d] = A[s, A_QT + d]


@njit(**HOT, inline="always")
def _q_expire(A, QT, s, d, t_min):
    h = A[s, A_QH + d]
    t = A[s, A_QT + d]
    while h < t and QT[s, d, h & (QCAP - 1)] < t_min:
        h += 1
    A[s, A_QH + d] = h


@njit(**HOT, inline="always")
def _q_push_max(A, QT, QV, QX, s, d, ts, v, x):
    """Monotonic max-deque push: drop entries from the back whose key <= v."""
    h = A[s, A_QH + d]
    t = A[s, A_QT + d]
    while t > h and QV[s, d, (t - 1) & (QCAP - 1)] <= v:
        t -= 1
    if t - h == QCAP:
        h += 1  # full: forget the oldest
    j = t & (QCAP - 1)
    QT[s, d, j] = ts
    QV[s, d, j] = v
    QX[s, d, j] = x
    A[s, A_QH + d] = h
    A[s, A_QT + d] = t + 1


# --- output ------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _out(out, slot, rtype, kind, side, s, A):
    """Fill the common fields of output record ``slot`` from symbol ``s``'s state."""
    o = out[slot]
    o.rtype = rtype
    o.kind = kind
    o.side = side
    o.symbol = s
    o.seq = A[s, A_SEQ]
    o.ts_exch_ns = A[s, A_TS]
    o.ts_detect_ns = realtime_ns()
    o.bid_px_tick = A[s, A_BID]
    o.ask_px_tick = A[s, A_ASK]
    o.bid_qty = A[s, A_BQ]
    o.ask_qty = A[s, A_AQ]
    for k in range(6):
        o.iv[k] = 0
        o.fv[k] = 0.0
    return o


# --- summaries ---------------------------------------------------------------------


@njit(**HOT, inline="always")
def _imbalance(a, b):
    if a + b <= 0:
        return np.nan
    return (a - b) / (a + b)


@njit(**HOT)
def _close_interval(A, F, G, P, out, o_head, o_free, n_out, C):
    """Emit one summary per seen symbol for the open interval; reset the accumulators.
    Returns the new n_out."""
    iv_ns = np.int64(P[P_INTERVAL_NS])
    start = G[G_IV] * iv_ns
    end = start + iv_ns
    mask = out.shape[0] - 1
    for s in range(A.shape[0]):
        if A[s, A_SEEN] == 0:
            continue
        sp = A[s, A_SM_SPREAD]
        if sp >= 0:
            t0 = max(A[s, A_SM_LAST_TS], start)
            if end > t0:
                F[s, F_SM_SW] += sp * float(end - t0)
                A[s, A_SM_DT] += end - t0
        if n_out < o_free:
            o = _out(out, (o_head + n_out) & mask, schema.OUT_SUMMARY, 0, SIDE_NONE, s, A)
            o.ts_exch_ns = start
            o.iv[SUM_END] = end
            o.iv[SUM_BUY] = A[s, A_SM_BUY]
            o.iv[SUM_SELL] = A[s, A_SM_SELL]
            o.iv[SUM_TRADES] = A[s, A_SM_TRADES]
            o.iv[SUM_MSGS] = A[s, A_SM_MSGS] - A[s, A_SM_MSGS0]
            o.iv[SUM_EVENTS] = A[s, A_SM_EVENTS]
            if A[s, A_SM_MIN] >= 0:
                o.fv[SUM_SP_MIN] = A[s, A_SM_MIN]
                o.fv[SUM_SP_MAX] = A[s, A_SM_MAX]
                o.fv[SUM_SP_MEAN] = F[s, F_SM_SW] / A[s, A_SM_DT] if A[s, A_SM_DT] > 0 else float(A[s, A_SM_SPREAD])
            else:
                o.fv[SUM_SP_MIN] = np.nan
                o.fv[SUM_SP_MEAN] = np.nan
                o.fv[SUM_SP_MAX] = np.nan
            both = A[s, A_BID] != NO_PX and A[s, A_ASK] != NO_PX
            o.fv[SUM_TOB] = _imbalance(A[s, A_BQ], A[s, A_AQ]) if both else np.nan
            o.fv[SUM_DEPTH] = _imbalance(A[s, A_BD], A[s, A_AD]) if both else np.nan
            o.fv[SUM_MID] = 0.5 * (A[s, A_BID] + A[s, A_ASK]) if both else np.nan
            n_out += 1
        else:
            C[schema.ST_AN_SUMMARY_DROPS] += 1
        C[schema.ST_AN_SUMMARIES] += 1  # (dropped ones too, as signals are counted)
        # next interval starts with the current spread as its min and max
        A[s, A_SM_MIN] = sp
        A[s, A_SM_MAX] = sp
        A[s, A_SM_DT] = 0
        F[s, F_SM_SW] = 0.0
        A[s, A_SM_LAST_TS] = end
        A[s, A_SM_BUY] = 0
        A[s, A_SM_SELL] = 0
        A[s, A_SM_TRADES] = 0
        A[s, A_SM_EVENTS] = 0
        A[s, A_SM_MSGS0] = A[s, A_SM_MSGS]
    return n_out


# --- detectors ---------------------------------------------------------------------


@njit(**HOT, inline="always")
def _signal(out, o_head, o_free, n_out, kind, side, s, A, C):
    """(slot, new n_out) for a new signal, its common fields filled in; slot -1 when the
    signals ring is full (a counted drop).  Counts the signal either way: detection does
    not depend on room."""
    C[schema.ST_AN_SIGNALS] += 1
    C[schema.ST_AN_BY_KIND + kind - 1] += 1
    if n_out < o_free:
        slot = (o_head + n_out) & (out.shape[0] - 1)
        _out(out, slot, schema.OUT_SIGNAL, kind, side, s, A)
        return slot, n_out + 1
    C[schema.ST_AN_SIGNAL_DROPS] += 1
    return -1, n_out


@njit(**HOT, inline="always")
def _spread_widening(s, ts, spread, A, F, P, out, o_head, o_free, n_out, C):
    """1. Spread >= ratio x its EWMA baseline (and >= min_ticks): fire, disarm until the
    spread falls to rearm x baseline.  ``spread`` is valid (> 0)."""
    prev = A[s, A_SP_PREV]
    if prev < 0:
        F[s, F_SP_BASE] = float(spread)
    else:
        dt = ts - A[s, A_SP_TS]
        if dt > 0:
            # irregular-interval EWMA weight; dt / (tau + dt) ~ 1 - exp(-dt / tau) for
            # dt << tau and stays in (0, 1): no exp() per event
            alpha = dt / (P[P_SPREAD_TAU_NS] + dt)
            F[s, F_SP_BASE] += alpha * (prev - F[s, F_SP_BASE])
    base = F[s, F_SP_BASE]
    A[s, A_SP_N] += 1
    A[s, A_SP_PREV] = spread
    A[s, A_SP_TS] = ts
    if A[s, A_SP_ARMED] != 0:
        if (A[s, A_SP_N] > P[P_SPREAD_WARMUP] and spread >= P[P_SPREAD_MIN_TICKS]
                and spread >= P[P_SPREAD_RATIO] * base):
            A[s, A_SP_ARMED] = 0
            slot, n_out = _signal(out, o_head, o_free, n_out, schema.SIG_SPREAD, SIDE_NONE, s, A, C)
            if slot >= 0:
                o = out[slot]
                o.iv[V_SP_SPREAD] = spread
                o.fv[V_SP_BASE] = base
                o.fv[V_SP_RATIO] = spread / base if base > 0 else np.inf
    elif spread <= P[P_SPREAD_REARM] * base:
        A[s, A_SP_ARMED] = 1
    return n_out


@njit(**HOT, inline="always")
def _book_imbalance(s, bq, aq, bd, ad, A, P, out, o_head, o_free, n_out, C):
    """2. Depth and top-of-book imbalance beyond their thresholds on the same side:
    fire for the heavy side, disarm until |depth imbalance| < rearm.  Both sums > 0."""
    di = (bd - ad) / (bd + ad)
    ti = (bq - aq) / (bq + aq)
    if A[s, A_IMB_ARMED] != 0:
        if (bd + ad >= P[P_IMB_MIN_DEPTH] and abs(di) >= P[P_IMB_DEPTH] and abs(ti) >= P[P_IMB_TOB]
                and di * ti > 0):
            A[s, A_IMB_ARMED] = 0
            side = BID if di > 0 else ASK
            slot, n_out = _signal(out, o_head, o_free, n_out, schema.SIG_IMBALANCE, side, s, A, C)
            if slot >= 0:
                o = out[slot]
                o.iv[V_IMB_BID] = bd
                o.iv[V_IMB_ASK] = ad
                o.fv[V_IMB_TOB] = ti
                o.fv[V_IMB_DEPTH] = di
    elif abs(di) < P[P_IMB_REARM]:
        A[s, A_IMB_ARMED] = 1
    return n_out


@njit(**HOT, inline="always")
def _microprice_shift(s, ts, has_mp, bpx, apx, bq, aq, A, QT, QV, QX, P, out, o_head, o_free, n_out, C):
    """3. The microprice moved >= shift_ticks from the window's low or high: fire, then
    the window restarts from here.  No microprice (``has_mp`` false): the window empties."""
    if not has_mp:
        _q_clear(A, s, Q_MP_MIN)
        _q_clear(A, s, Q_MP_MAX)
        return n_out
    mp = (bpx * float(aq) + apx * float(bq)) / float(bq + aq)
    w = np.int64(P[P_MP_WINDOW_NS])
    _q_expire(A, QT, s, Q_MP_MIN, ts - w)
    _q_expire(A, QT, s, Q_MP_MAX, ts - w)
    _q_push_max(A, QT, QV, QX, s, Q_MP_MIN, ts, -mp, 0)
    _q_push_max(A, QT, QV, QX, s, Q_MP_MAX, ts, mp, 0)
    jl = A[s, A_QH + Q_MP_MIN] & (QCAP - 1)
    jh = A[s, A_QH + Q_MP_MAX] & (QCAP - 1)
    lo = -QV[s, Q_MP_MIN, jl]
    hi = QV[s, Q_MP_MAX, jh]
    fire = 0
    frm = mp
    t_frm = ts
    if mp - lo >= P[P_MP_TICKS]:
        fire, frm, t_frm = 1, lo, QT[s, Q_MP_MIN, jl]
    elif hi - mp >= P[P_MP_TICKS]:
        fire, frm, t_frm = 2, hi, QT[s, Q_MP_MAX, jh]
    if fire != 0:
        side = BID if fire == 1 else ASK
        slot, n_out = _signal(out, o_head, o_free, n_out, schema.SIG_MICROPRICE, side, s, A, C)
        if slot >= 0:
            o = out[slot]
            o.iv[V_MP_ELAPSED] = ts - t_frm
            o.fv[V_MP_SHIFT] = mp - frm
            o.fv[V_MP_FROM] = frm
            o.fv[V_MP_TO] = mp
        # re-anchor: the next shift is measured from here
        _q_clear(A, s, Q_MP_MIN)
        _q_clear(A, s, Q_MP_MAX)
        _q_push_max(A, QT, QV, QX, s, Q_MP_MIN, ts, -mp, 0)
        _q_push_max(A, QT, QV, QX, s, Q_MP_MAX, ts, mp, 0)
    return n_out


@njit(**HOT, inline="always")
def _sweep(s, ts, tpx, tq, agg, A, P, out, o_head, o_free, n_out, C):
    """4. A trade joins the current burst (same aggressor, within the window of its first
    trade) or starts one; the burst fires once at ``levels`` prices or ``burst_qty`` lots."""
    if (A[s, A_SW_TRADES] == 0 or A[s, A_SW_SIDE] != agg
            or ts - A[s, A_SW_T0] > np.int64(P[P_SWEEP_WINDOW_NS])):
        A[s, A_SW_SIDE] = agg
        A[s, A_SW_T0] = ts
        A[s, A_SW_FIRST] = tpx
        A[s, A_SW_LAST] = tpx
        A[s, A_SW_LEVELS] = 1
        A[s, A_SW_VOL] = 0
        A[s, A_SW_TRADES] = 0
        A[s, A_SW_FIRED] = 0
    elif tpx != A[s, A_SW_LAST]:
        A[s, A_SW_LEVELS] += 1
        A[s, A_SW_LAST] = tpx
    A[s, A_SW_VOL] += tq
    A[s, A_SW_TRADES] += 1
    if A[s, A_SW_FIRED] == 0 and (A[s, A_SW_LEVELS] >= P[P_SWEEP_LEVELS]
                                  or (P[P_SWEEP_QTY] > 0 and A[s, A_SW_VOL] >= P[P_SWEEP_QTY])):
        A[s, A_SW_FIRED] = 1
        slot, n_out = _signal(out, o_head, o_free, n_out, schema.SIG_SWEEP, agg, s, A, C)
        if slot >= 0:
            o = out[slot]
            o.iv[V_SW_LEVELS] = A[s, A_SW_LEVELS]
            o.iv[V_SW_VOLUME] = A[s, A_SW_VOL]
            o.iv[V_SW_TRADES] = A[s, A_SW_TRADES]
            o.iv[V_SW_FIRST] = A[s, A_SW_FIRST]
            o.iv[V_SW_LAST] = A[s, A_SW_LAST]
            o.iv[V_SW_ELAPSED] = ts - A[s, A_SW_T0]
    return n_out


@njit(**HOT, inline="always")
def _withdrawal(s, ts, bpx, apx, bd, ad, A, QT, QV, QX, P, out, o_head, o_free, n_out, C):
    """5. Per side: adjusted depth (band depth + lots traded against the side) fell from
    the window's high by >= fraction x the depth then: fire, restart the side's window.
    An empty side empties its window."""
    w = np.int64(P[P_WD_WINDOW_NS])
    for side in range(2):
        d = Q_WD + side
        px = bpx if side == BID else apx
        if px == NO_PX:
            _q_clear(A, s, d)
            continue
        depth = bd if side == BID else ad
        adj = depth + A[s, A_WD_CUM + side]
        _q_expire(A, QT, s, d, ts - w)
        _q_push_max(A, QT, QV, QX, s, d, ts, float(adj), depth)
        j = A[s, A_QH + d] & (QCAP - 1)
        before = QX[s, d, j]
        drop = QV[s, d, j] - adj
        if before >= P[P_WD_MIN_DEPTH] and before > 0 and drop >= P[P_WD_FRACTION] * before:
            slot, n_out = _signal(out, o_head, o_free, n_out, schema.SIG_WITHDRAWAL, side, s, A, C)
            if slot >= 0:
                o = out[slot]
                o.iv[V_WD_BEFORE] = before
                o.iv[V_WD_AFTER] = depth
                o.iv[V_WD_ELAPSED] = ts - QT[s, d, j]
                o.iv[V_WD_TOUCH] = px
                o.fv[V_WD_DROP] = min(1.0, drop / before)
            _q_clear(A, s, d)
            _q_push_max(A, QT, QV, QX, s, d, ts, float(adj), depth)
    return n_out


# --- one event -----------------------------------------------------------------------


@njit(**HOT, inline="always")
def _next_interval(ts, A, F, G, P, out, o_head, o_free, n_out, C):
    """``ts`` lies past the open interval (or none is open): close it, open ``ts``'s."""
    iv_ns = np.int64(P[P_INTERVAL_NS])
    iv = ts // iv_ns
    if G[G_IV] >= 0:
        n_out = _close_interval(A, F, G, P, out, o_head, o_free, n_out, C)
    G[G_IV] = iv
    G[G_NEXT] = (iv + 1) * iv_ns
    for k in range(A.shape[0]):
        A[k, A_SM_LAST_TS] = iv * iv_ns
    return n_out


@njit(**HOT, inline="always")
def _take_book(e, s, ts, bpx, apx, bq, aq, bd, ad, A):
    """The event's book state becomes symbol ``s``'s (for the next summary and signal)."""
    A[s, A_SEEN] = 1
    A[s, A_BID] = bpx
    A[s, A_ASK] = apx
    A[s, A_BQ] = bq
    A[s, A_AQ] = aq
    A[s, A_BD] = bd
    A[s, A_AD] = ad
    A[s, A_SEQ] = np.int64(e.seq)
    A[s, A_TS] = ts
    A[s, A_SM_EVENTS] += 1
    A[s, A_SM_MSGS] = np.int64(e.sym_msgs)


@njit(**HOT, inline="always")
def _summary_spread(s, ts, spread, A, F):
    """Summary: the previous spread counts until ``ts`` (time weighting); ``spread``
    (-1: none) is the current one and enters the interval's min and max."""
    t0 = A[s, A_SM_LAST_TS]
    if A[s, A_SM_SPREAD] >= 0 and ts > t0:
        F[s, F_SM_SW] += A[s, A_SM_SPREAD] * float(ts - t0)
        A[s, A_SM_DT] += ts - t0
    if ts > t0:
        A[s, A_SM_LAST_TS] = ts
    A[s, A_SM_SPREAD] = spread
    if spread >= 0:
        if A[s, A_SM_MIN] < 0 or spread < A[s, A_SM_MIN]:
            A[s, A_SM_MIN] = spread
        if spread > A[s, A_SM_MAX]:
            A[s, A_SM_MAX] = spread


@njit(**HOT, inline="always")
def _count_trade(s, tq, agg, A):
    """Summary volume by aggressor side; the resting side lost ``tq`` lots to a trade
    (the withdrawal detector's adjusted depth)."""
    A[s, A_SM_TRADES] += 1
    if agg == BID:
        A[s, A_SM_BUY] += tq
    else:
        A[s, A_SM_SELL] += tq
    A[s, A_WD_CUM + (1 - agg)] += tq


@njit(**HOT, inline="always")
def _on_event(e, A, F, G, P, QT, QV, QX, out, o_head, o_free, n_out, C):
    """Apply one event: maybe close an interval, take its book state, update the
    summary, run the five detectors."""
    s = np.int64(e.symbol)
    if s >= A.shape[0]:
        return n_out  # the writer never sends one; defensive
    ts = np.int64(e.ts_exch_ns)
    if ts >= G[G_NEXT] or G[G_IV] < 0:  # (one compare per event; the division only there)
        n_out = _next_interval(ts, A, F, G, P, out, o_head, o_free, n_out, C)
    # (an event older than the open interval counts in the open interval)

    bpx = np.int64(e.bid_px_tick)
    apx = np.int64(e.ask_px_tick)
    bq = np.int64(e.bid_qty)
    aq = np.int64(e.ask_qty)
    bd = np.int64(e.bid_depth_qty)
    ad = np.int64(e.ask_depth_qty)
    _take_book(e, s, ts, bpx, apx, bq, aq, bd, ad, A)
    valid = bpx != NO_PX and apx != NO_PX and apx > bpx
    spread = apx - bpx if valid else np.int64(-1)
    _summary_spread(s, ts, spread, A, F)
    is_trade = e.kind == schema.EV_TRADE
    tq = np.int64(0)
    agg = np.int64(0)
    if is_trade:
        tq = np.int64(e.trade_qty)
        agg = np.int64(e.side)
        _count_trade(s, tq, agg, A)

    if P[P_SPREAD_ON] != 0.0 and valid:
        n_out = _spread_widening(s, ts, spread, A, F, P, out, o_head, o_free, n_out, C)
    if P[P_IMB_ON] != 0.0 and valid and bd + ad > 0 and bq + aq > 0:
        n_out = _book_imbalance(s, bq, aq, bd, ad, A, P, out, o_head, o_free, n_out, C)
    if P[P_MP_ON] != 0.0:
        n_out = _microprice_shift(s, ts, valid and bq + aq > 0, bpx, apx, bq, aq, A, QT, QV, QX, P,
                                  out, o_head, o_free, n_out, C)
    if P[P_SWEEP_ON] != 0.0 and is_trade:
        n_out = _sweep(s, ts, np.int64(e.trade_px_tick), tq, agg, A, P, out, o_head, o_free, n_out, C)
    if P[P_WD_ON] != 0.0:
        n_out = _withdrawal(s, ts, bpx, apx, bd, ad, A, QT, QV, QX, P, out, o_head, o_free, n_out, C)
    return n_out


@njit(**HOT)
def process(ev_ctrl, ev, out_ctrl, out, A, F, G, P, QT, QV, QX, C, max_n):
    """Consume up to ``max_n`` events from the events ring, write signals and summaries
    into the signals ring (drop and count when full).  Returns events consumed."""
    tail, avail = ring_available(ev_ctrl, max_n)
    n = min(avail, max_n)
    if n <= 0:
        return 0
    cap_out = out.shape[0]
    o_head, o_free = ring_claim(out_ctrl, cap_out, cap_out)
    n_out = 0
    emask = ev.shape[0] - 1
    for i in range(n):
        n_out = _on_event(ev[(tail + i) & emask], A, F, G, P, QT, QV, QX, out, o_head, o_free, n_out, C)
    ring_release(ev_ctrl, tail + n)
    if n_out > 0:
        ring_publish(out_ctrl, o_head + n_out)
    C[schema.ST_AN_EVENTS] += n
    return n


@njit(**HOT)
def flush_summaries(out_ctrl, out, A, F, G, P, C):
    """Close the open interval (end of stream): one summary per seen symbol."""
    if G[G_IV] < 0:
        return 0
    cap_out = out.shape[0]
    o_head, o_free = ring_claim(out_ctrl, cap_out, cap_out)
    n_out = _close_interval(A, F, G, P, out, o_head, o_free, 0, C)
    G[G_IV] = -1
    if n_out > 0:
        ring_publish(out_ctrl, o_head + n_out)
    return n_out


@njit(**HOT)
def relay(ev_ctrl, evw, rec_ctrl, recw, C, max_n):
    """Copy the next events (up to ``max_n``, not yet consumed) on to the tick
    recorder's ring; a full ring drops and counts.  Returns how many are available
    (``process`` then consumes exactly those).  The book writer never sees the recorder:
    this copy is the analysis's (docs/DECISIONS.md "The tick recorder's feed")."""
    tail, avail = ring_available(ev_ctrl, max_n)
    n = min(avail, max_n)
    if n <= 0:
        return 0
    cap = recw.shape[0]
    h, k = ring_claim(rec_ctrl, cap, n)
    emask = evw.shape[0] - 1
    rmask = cap - 1
    w = evw.shape[1]
    for i in range(k):
        s = (tail + i) & emask
        d = (h + i) & rmask
        for j in range(w):
            recw[d, j] = evw[s, j]
    if k > 0:
        ring_publish(rec_ctrl, h + k)
    C[schema.ST_AN_RELAYED] += k
    C[schema.ST_AN_RELAY_DROPS] += n - k
    return n


@njit(**HOT)
def run_loop(ev_ctrl, ev, out_ctrl, out, A, F, G, P, QT, QV, QX, C, max_n, budget, spin_iters, yield_iters,
             evw, rec_ctrl, recw):
    """Process events until ``budget`` are done or the ring stays empty through the
    spin and yield phases; returns events processed (0: idle, the caller sleeps).
    ``recw`` with rows: each batch is first relayed to the tick recorder's ring."""
    done = 0
    idle = 0
    rec = recw.shape[0] > 0
    while done < budget:
        m = relay(ev_ctrl, evw, rec_ctrl, recw, C, max_n) if rec else max_n
        k = process(ev_ctrl, ev, out_ctrl, out, A, F, G, P, QT, QV, QX, C, m) if m > 0 else 0
        if k > 0:
            done += k
            idle = 0
            continue
        idle += 1
        if idle <= spin_iters:
            cpu_relax()
        elif idle <= spin_iters + yield_iters:
            sched_yield()
        else:
            break
    return done
