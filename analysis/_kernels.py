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
With the NRT on, the event loop paid atomic incref/decref pairs for the arrays handed
to its inlined detectors: 108.8 ns/event then, 65.1 without (same session, medians
of 5, same counters).

Alternatives rejected: reading snapshots (a polling reader sees some states twice and
misses others, so the output would depend on timing); per-event Python (caps near
1M events/s).
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

#: Values of a signal record, per kind (names as published, publisher/schema.py).
#: spread_widening: iv[0] spread_ticks; fv[0] baseline_ticks, fv[1] ratio
#: imbalance: iv[0] bid_depth, iv[1] ask_depth; fv[0] tob_imbalance, fv[1] depth_imbalance
#: microprice_shift: iv[0] elapsed_ns; fv[0] shift_ticks, fv[1] from_tick, fv[2] to_tick
#: sweep: iv[0] levels, iv[1] volume, iv[2] trades, iv[3] first_tick, iv[4] last_tick, iv[5] elapsed_ns
#: liquidity_withdrawal: iv[0] depth_before, iv[1] depth_after, iv[2] elapsed_ns, iv[3] touch_tick; fv[0] drop_fraction
#: Summary record: ts_exch_ns = interval start; iv[0] end_ns, iv[1] buy volume, iv[2] sell
#: volume, iv[3] trades, iv[4] messages, iv[5] events; fv[0..2] spread min/mean/max,
#: fv[3] tob imbalance, fv[4] depth imbalance, fv[5] mid (NaN = none).

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
            o.iv[0] = end
            o.iv[1] = A[s, A_SM_BUY]
            o.iv[2] = A[s, A_SM_SELL]
            o.iv[3] = A[s, A_SM_TRADES]
            o.iv[4] = A[s, A_SM_MSGS] - A[s, A_SM_MSGS0]
            o.iv[5] = A[s, A_SM_EVENTS]
            if A[s, A_SM_MIN] >= 0:
                o.fv[0] = A[s, A_SM_MIN]
                o.fv[2] = A[s, A_SM_MAX]
                o.fv[1] = F[s, F_SM_SW] / A[s, A_SM_DT] if A[s, A_SM_DT] > 0 else float(A[s, A_SM_SPREAD])
            else:
                o.fv[0] = np.nan
                o.fv[1] = np.nan
                o.fv[2] = np.nan
            both = A[s, A_BID] != NO_PX and A[s, A_ASK] != NO_PX
            o.fv[3] = _imbalance(A[s, A_BQ], A[s, A_AQ]) if both else np.nan
            o.fv[4] = _imbalance(A[s, A_BD], A[s, A_AD]) if both else np.nan
            o.fv[5] = 0.5 * (A[s, A_BID] + A[s, A_ASK]) if both else np.nan
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
def _on_event(e, A, F, G, P, QT, QV, QX, out, o_head, o_free, n_out, C):
    """Apply one event to symbol state, run the detectors, maybe close an interval."""
    s = np.int64(e.symbol)
    if s >= A.shape[0]:
        return n_out  # the writer never sends one; defensive
    ts = np.int64(e.ts_exch_ns)
    if ts >= G[G_NEXT] or G[G_IV] < 0:  # (one compare per event; the division only here)
        iv_ns = np.int64(P[P_INTERVAL_NS])
        iv = ts // iv_ns
        if G[G_IV] >= 0:
            n_out = _close_interval(A, F, G, P, out, o_head, o_free, n_out, C)
        G[G_IV] = iv
        G[G_NEXT] = (iv + 1) * iv_ns
        for k in range(A.shape[0]):
            A[k, A_SM_LAST_TS] = iv * iv_ns
    # (an event older than the open interval counts in the open interval)

    bpx = np.int64(e.bid_px_tick)
    apx = np.int64(e.ask_px_tick)
    bq = np.int64(e.bid_qty)
    aq = np.int64(e.ask_qty)
    bd = np.int64(e.bid_depth_qty)
    ad = np.int64(e.ask_depth_qty)
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

    # summary: time-weighted spread, min/max, volume
    t0 = A[s, A_SM_LAST_TS]
    if A[s, A_SM_SPREAD] >= 0 and ts > t0:
        F[s, F_SM_SW] += A[s, A_SM_SPREAD] * float(ts - t0)
        A[s, A_SM_DT] += ts - t0
    if ts > t0:
        A[s, A_SM_LAST_TS] = ts
    valid = bpx != NO_PX and apx != NO_PX and apx > bpx
    spread = apx - bpx if valid else np.int64(-1)
    A[s, A_SM_SPREAD] = spread
    if valid:
        if A[s, A_SM_MIN] < 0 or spread < A[s, A_SM_MIN]:
            A[s, A_SM_MIN] = spread
        if spread > A[s, A_SM_MAX]:
            A[s, A_SM_MAX] = spread

    is_trade = e.kind == schema.EV_TRADE
    tq = np.int64(0)
    agg = np.int64(0)
    if is_trade:
        tq = np.int64(e.trade_qty)
        agg = np.int64(e.side)
        A[s, A_SM_TRADES] += 1
        if agg == BID:
            A[s, A_SM_BUY] += tq
        else:
            A[s, A_SM_SELL] += tq
        A[s, A_WD_CUM + (1 - agg)] += tq  # the resting side lost these lots to a trade

    # 1. spread widening
    if P[P_SPREAD_ON] != 0.0 and valid:
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
                    o.iv[0] = spread
                    o.fv[0] = base
                    o.fv[1] = spread / base if base > 0 else np.inf
        elif spread <= P[P_SPREAD_REARM] * base:
            A[s, A_SP_ARMED] = 1

    # 2. imbalance
    if P[P_IMB_ON] != 0.0 and valid and bd + ad > 0 and bq + aq > 0:
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
                    o.iv[0] = bd
                    o.iv[1] = ad
                    o.fv[0] = ti
                    o.fv[1] = di
        elif abs(di) < P[P_IMB_REARM]:
            A[s, A_IMB_ARMED] = 1

    # 3. microprice shift
    if P[P_MP_ON] != 0.0:
        if valid and bq + aq > 0:
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
                    o.iv[0] = ts - t_frm
                    o.fv[0] = mp - frm
                    o.fv[1] = frm
                    o.fv[2] = mp
                # re-anchor: the next shift is measured from here
                _q_clear(A, s, Q_MP_MIN)
                _q_clear(A, s, Q_MP_MAX)
                _q_push_max(A, QT, QV, QX, s, Q_MP_MIN, ts, -mp, 0)
                _q_push_max(A, QT, QV, QX, s, Q_MP_MAX, ts, mp, 0)
        else:
            _q_clear(A, s, Q_MP_MIN)
            _q_clear(A, s, Q_MP_MAX)

    # 4. sweep / aggressive burst
    if P[P_SWEEP_ON] != 0.0 and is_trade:
        tpx = np.int64(e.trade_px_tick)
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
                o.iv[0] = A[s, A_SW_LEVELS]
                o.iv[1] = A[s, A_SW_VOL]
                o.iv[2] = A[s, A_SW_TRADES]
                o.iv[3] = A[s, A_SW_FIRST]
                o.iv[4] = A[s, A_SW_LAST]
                o.iv[5] = ts - A[s, A_SW_T0]

    # 5. liquidity withdrawal
    if P[P_WD_ON] != 0.0:
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
                    o.iv[0] = before
                    o.iv[1] = depth
                    o.iv[2] = ts - QT[s, d, j]
                    o.iv[3] = px
                    o.fv[0] = min(1.0, drop / before)
                _q_clear(A, s, d)
                _q_push_max(A, QT, QV, QX, s, d, ts, float(adj), depth)
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
def run_loop(ev_ctrl, ev, out_ctrl, out, A, F, G, P, QT, QV, QX, C, max_n, budget, spin_iters, yield_iters):
    """Process events until ``budget`` are done or the ring stays empty through the
    spin and yield phases; returns events processed (0: idle, the caller sleeps)."""
    done = 0
    idle = 0
    while done < budget:
        k = process(ev_ctrl, ev, out_ctrl, out, A, F, G, P, QT, QV, QX, C, max_n)
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
