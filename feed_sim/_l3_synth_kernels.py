"""Compiled per-order (L3) flow generator (the hot path of ``feed_sim.l3_synth``).

Model
-----
Many symbols, picked per event with weight ``1 / (s + 1) ** skew``, in bursts.  Each
symbol's latent fair value ``fv`` random-walks one tick at a time; its book is a set of
orders, each with an exchange-wide reference (1, 2, 3, ... in arrival order, as Nasdaq
numbers them), kept in FIFO queues per price level.  An event is one action:

* add: a new order ``half_spread + g`` ticks behind ``fv`` (``g`` geometric, sometimes
  uniform "deep"), repriced one tick behind the opposite best if it would cross (the
  book is never crossed);
* delete (most), partial cancel, replace: of a live order chosen, with probability
  ``p_recent``, among the symbol's ``recent`` newest adds (so most orders die soon
  after they arrive, near the touch), else uniformly among its live orders (so some
  rest long).  A replace moves the order to a new price near ``fv`` with a new size
  and a new reference (new priority);
* execution: a marketable order takes the best level of one side oldest order first
  (one L3_EXEC per order touched, the last one possibly partial), sometimes sweeping
  several levels; some executions are reported with a price (L3_EXEC_PX, printable or
  not);
* hidden trade (L3_TRADE) inside the spread or at a best; rarely a cross (L3_CROSS);
* optionally (``p_bad_ref``) an execution, cancel or delete of a reference never
  added (from ``1 << 62`` up): the injected errors a book must count as unknown.

Orders that leave the band ``|px - fv| <= H`` when ``fv`` moves are deleted (emitted).
The number of live orders per symbol is steered towards a target.  Every message other
than the injected ones names a live order with enough shares.

State and its layout are ``_synth_kernels``'s (``ss``, ``lv``, ``od``, ``perm``, whose
level and order primitives this module reuses), with two extra columns: ``od[:,
O_REF]`` the order's reference, ``ss[:, S_REC]`` the symbol's count of adds, which
indexes its ring ``rec`` of recent adds (order id, reference).  Messages are written
as int64 words of ``schema.MD_L3_DTYPE`` records into ``pend`` (one event's messages),
then handed out, so a call stops exactly after ``n`` messages and chunked generation
equals one-shot generation.  No I/O, no allocation.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT
from obpipe.ring.records import md_w0

from obpipe.feed_sim import _synth_kernels as SK
from obpipe.feed_sim._synth_kernels import (_alloc, _draw_qty, _exp_ns, _geom, _randint, _reduce, _remove,
                                            _rest, _unif)

NO_PX = schema.NO_PX
BID = schema.SIDE_BID
ASK = schema.SIDE_ASK
S_FV = SK.S_FV
S_BEST = SK.S_BEST
S_NLEV = SK.S_NLEV
S_LIVE = SK.S_LIVE
LV_QTY = SK.LV_QTY
LV_HEAD = SK.LV_HEAD
O_PX = SK.O_PX
O_QTY = SK.O_QTY
O_SIDE = SK.O_SIDE

#: Words per MD_L3 record and the word of each whole-word field.
L3_WORDS = schema.words_of(schema.MD_L3_DTYPE)
W_PX, W_SEQ, W_TS_EXCH, W_TS_RECV, W_REF, W_NEW_REF = (schema.MD_L3_DTYPE.fields[f][1] // 8 for f in (
    "px_tick", "seq", "ts_exch_ns", "ts_recv_ns", "ref", "new_ref"))

#: Extra columns: order reference (od), adds so far (ss).
O_REF = SK.NO
NO = SK.NO + 2
S_REC = SK.NSS
NSS = SK.NSS + 1

#: First reference of the injected never-added ones.
BAD_REF_BASE = 1 << 62

# --- stream scalars G[] --------------------------------------------------------------
G_T = 0  # exchange clock of the current event, ns
G_SEQ = 1  # seq of the next generated message
G_REF = 2  # next order reference
G_BAD_REF = 3  # next injected never-added reference
G_BURST_LEFT = 4
G_BURST_SYM = 5
G_PEND_N = 6
G_PEND_POS = 7
G_EVENTS = 8
G_EMITTED = 9
G_BAD = 10  # injected bad references so far
NG = 11

# --- integer parameters pi[] ----------------------------------------------------------
PI_W = 0  # ladder width, ticks (power of two)
PI_H = 1  # band half width W/2 - 1
PI_M = 2  # order pool per symbol
PI_TARGET = 3
PI_MIN = 4
PI_HALF_SPREAD = 5
PI_MAX_DEPTH = 6
PI_MAX_SWEEP = 7
PI_QTY_SHIFT = 8
PI_RECENT = 9  # ring of recent adds per symbol (power of two)
NPI = 10

# --- float parameters pf[] -----------------------------------------------------------
PF_C_ADD = 0  # cumulative: add | delete | cancel | replace | execute | hidden trade
PF_C_DELETE = 1
PF_C_CANCEL = 2
PF_C_REPLACE = 3
PF_C_EXECUTE = 4
PF_P_CROSS = 5  # per event
PF_P_BAD_REF = 6  # per event
PF_P_RECENT = 7
PF_INV_LOG_DEPTH = 8
PF_P_DEEP = 9
PF_P_SWEEP = 10
PF_P_EXEC_PX = 11
PF_P_PRINTABLE = 12
PF_P_TICK = 13
PF_P_BURST = 14
PF_INV_LOG_BURST = 15
PF_GAP_NS = 16
PF_BURST_GAP_NS = 17
NPF = 18


@njit(**HOT, inline="always")
def _emit(pend, G, kind, side, s, q, px, ref, nref):
    """Append one MD_L3 record stamped with the clock and the next seq."""
    i = G[G_PEND_N]
    pend[i, 0] = md_w0(kind, side, s, q)
    pend[i, W_PX] = px
    pend[i, W_SEQ] = G[G_SEQ]
    pend[i, W_TS_EXCH] = G[G_T]
    pend[i, W_TS_RECV] = 0
    pend[i, W_REF] = ref
    pend[i, W_NEW_REF] = nref
    G[G_SEQ] += 1
    G[G_PEND_N] = i + 1


@njit(**HOT, inline="always")
def _new_order(G, ss, lv, od, perm, rec, s, side, px, q, mask, m):
    """Order id of a new live order resting at the back of (side, px); its reference
    is the next one, and it enters the symbol's ring of recent adds."""
    oid = _alloc(ss, perm, od, s, m)
    _rest(ss, lv, od, s, side, px, oid, q, mask)
    ref = G[G_REF]
    G[G_REF] = ref + 1
    od[oid, O_REF] = ref
    k = ss[s, S_REC]
    ss[s, S_REC] = k + 1
    r = k & (rec.shape[1] - 1)
    rec[s, r, 0] = oid
    rec[s, r, 1] = ref
    return oid


@njit(**HOT, inline="always")
def _pick(rng, pf, ss, od, perm, rec, s, m):
    """A live order of symbol s: one of its recent adds still live (P = p_recent), else
    uniformly random."""
    if _unif(rng) < pf[PF_P_RECENT]:
        n = min(ss[s, S_REC], rec.shape[1])
        if n > 0:
            r = (ss[s, S_REC] - 1 - _randint(rng, n)) & (rec.shape[1] - 1)
            oid = rec[s, r, 0]
            if od[oid, O_QTY] > 0 and od[oid, O_REF] == rec[s, r, 1]:
                return oid
    return s * m + perm[s, _randint(rng, ss[s, S_LIVE])]


@njit(**HOT)
def _price(rng, pi, pf, ss, s, side):
    """A resting price for a new order of ``side``: behind fv, never crossing the
    opposite best; NO_PX when none fits the band."""
    fv = ss[s, S_FV]
    if _unif(rng) < pf[PF_P_DEEP]:
        g = _randint(rng, pi[PI_MAX_DEPTH] + 1)
    else:
        g = min(_geom(rng, pf[PF_INV_LOG_DEPTH]), pi[PI_MAX_DEPTH])
    off = pi[PI_HALF_SPREAD] + g
    h = pi[PI_H]
    if side == BID:
        px = fv - off
        opp = ss[s, S_BEST + ASK]
        if opp != NO_PX and px >= opp:
            px = opp - 1
        return px if px >= fv - h else NO_PX
    px = fv + off
    opp = ss[s, S_BEST + BID]
    if opp != NO_PX and px <= opp:
        px = opp + 1
    return px if px <= fv + h else NO_PX


@njit(**HOT)
def _consume(pend, G, rng, pf, ss, lv, od, perm, s, r, q, max_levels, mask, w, m):
    """A marketable order of ``q`` shares (``max_levels`` whole levels when q is huge)
    against resting side ``r``, oldest first at the best: one execution per order
    touched (L3_EXEC, or L3_EXEC_PX with P = p_exec_px)."""
    emptied = 0
    while q > 0:
        b = ss[s, S_BEST + r]
        if b == NO_PX:
            break
        oid = lv[s, r, b & mask, LV_HEAD]
        oq = od[oid, O_QTY]
        x = min(q, oq)
        if _unif(rng) < pf[PF_P_EXEC_PX]:
            printable = 1 if _unif(rng) < pf[PF_P_PRINTABLE] else 0
            _emit(pend, G, schema.L3_EXEC_PX, printable, s, x, b + (1 - 2 * r) * printable, od[oid, O_REF], 0)
        else:
            _emit(pend, G, schema.L3_EXEC, 0, s, x, 0, od[oid, O_REF], 0)
        q -= x
        if x == oq:
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
            if ss[s, S_BEST + r] != b:
                emptied += 1
                if emptied >= max_levels:
                    break
        else:
            _reduce(lv, od, s, oid, x, mask)


@njit(**HOT)
def _move_fv(pend, G, ss, lv, od, perm, s, new_fv, h, mask, w, m):
    """fv := new_fv (one tick away); the orders at the price leaving the band are
    deleted (emitted), and a best that left is re-found."""
    old = ss[s, S_FV]
    p = old - h if new_fv > old else old + h
    slot = p & mask
    for k in range(2):
        while lv[s, k, slot, LV_QTY] > 0:
            oid = lv[s, k, slot, LV_HEAD]
            _emit(pend, G, schema.L3_DELETE, 0, s, 0, 0, od[oid, O_REF], 0)
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
    ss[s, S_FV] = new_fv


@njit(**HOT, inline="always")
def _event(pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, rec, pend):
    """Generate one event (one or more messages) into ``pend``, updating the book."""
    w = pi[PI_W]
    h = pi[PI_H]
    m = pi[PI_M]
    mask = w - 1
    qshift = pi[PI_QTY_SHIFT]

    left = G[G_BURST_LEFT]
    if left > 0:
        s = G[G_BURST_SYM]
        G[G_BURST_LEFT] = left - 1
        G[G_T] += _exp_ns(rng, pf[PF_BURST_GAP_NS])
    else:
        s = np.int64(np.searchsorted(sym_cum, _unif(rng), side="right"))
        if s >= sym_cum.shape[0]:
            s = sym_cum.shape[0] - 1
        G[G_T] += _exp_ns(rng, pf[PF_GAP_NS])
        if _unif(rng) < pf[PF_P_BURST]:
            G[G_BURST_LEFT] = _geom(rng, pf[PF_INV_LOG_BURST])
            G[G_BURST_SYM] = s

    if _unif(rng) < pf[PF_P_TICK]:
        fv = ss[s, S_FV]
        d = 1 if _unif(rng) < 0.5 else -1
        if fv + d < h + 1:
            d = 1
        _move_fv(pend, G, ss, lv, od, perm, s, fv + d, h, mask, w, m)

    if _unif(rng) < pf[PF_P_BAD_REF]:  # a reference never added
        u = _unif(rng)
        kind = schema.L3_DELETE if u < 0.5 else (schema.L3_CANCEL if u < 0.75 else schema.L3_EXEC)
        _emit(pend, G, kind, 0, s, 1 + _randint(rng, 100), 0, BAD_REF_BASE + G[G_BAD_REF], 0)
        G[G_BAD_REF] += 1
        G[G_BAD] += 1
        return
    if _unif(rng) < pf[PF_P_CROSS]:
        _emit(pend, G, schema.L3_CROSS, schema.SIDE_NONE_L3, s, _draw_qty(rng, qty_tab, qshift) * 10,
              ss[s, S_FV], 0, 0)
        return

    live = ss[s, S_LIVE]
    nb = ss[s, S_NLEV + BID]
    na = ss[s, S_NLEV + ASK]
    side = _randint(rng, 2)
    u = _unif(rng)
    if live >= m - 1:
        act = 1  # pool full: delete
    elif live < pi[PI_MIN] or nb == 0 or na == 0:
        act = 0
        if nb == 0 and na != 0:
            side = BID
        elif na == 0 and nb != 0:
            side = ASK
    else:
        if u < pf[PF_C_ADD]:
            act = 0
        elif u < pf[PF_C_DELETE]:
            act = 1
        elif u < pf[PF_C_CANCEL]:
            act = 2
        elif u < pf[PF_C_REPLACE]:
            act = 3
        elif u < pf[PF_C_EXECUTE]:
            act = 4
        else:
            act = 5
        tgt = pi[PI_TARGET]  # steer towards the target size
        if act == 0:
            if live > tgt and _unif(rng) * (m - 1 - tgt) < live - tgt:
                act = 1
        elif act == 1:
            if live < tgt and _unif(rng) * tgt < tgt - live:
                act = 0

    if act == 0:
        px = _price(rng, pi, pf, ss, s, side)
        if px != NO_PX:
            q = _draw_qty(rng, qty_tab, qshift)
            oid = _new_order(G, ss, lv, od, perm, rec, s, side, px, q, mask, m)
            _emit(pend, G, schema.L3_ADD, side, s, q, px, od[oid, O_REF], 0)
    elif act <= 3:
        oid = _pick(rng, pf, ss, od, perm, rec, s, m)
        ref = od[oid, O_REF]
        oq = od[oid, O_QTY]
        if act == 2 and oq >= 2:
            c = 1 + _randint(rng, oq - 1)
            _emit(pend, G, schema.L3_CANCEL, 0, s, c, 0, ref, 0)
            _reduce(lv, od, s, oid, c, mask)
        elif act == 3:
            k = od[oid, O_SIDE]
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
            px = _price(rng, pi, pf, ss, s, k)
            if px == NO_PX:
                _emit(pend, G, schema.L3_DELETE, 0, s, 0, 0, ref, 0)
            else:
                q = _draw_qty(rng, qty_tab, qshift)
                nid = _new_order(G, ss, lv, od, perm, rec, s, k, px, q, mask, m)
                _emit(pend, G, schema.L3_REPLACE, 0, s, q, px, ref, od[nid, O_REF])
        else:
            _emit(pend, G, schema.L3_DELETE, 0, s, 0, 0, ref, 0)
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
    elif act == 4:
        r = ASK if side == BID else BID  # an aggressive buy hits the asks
        nlev = ss[s, S_NLEV + r]
        if nlev >= 3 and _unif(rng) < pf[PF_P_SWEEP]:
            lev = min(2 + _randint(rng, pi[PI_MAX_SWEEP] - 1), nlev - 1)
            _consume(pend, G, rng, pf, ss, lv, od, perm, s, r, np.int64(1) << 40, lev, mask, w, m)
        else:
            _consume(pend, G, rng, pf, ss, lv, od, perm, s, r, _draw_qty(rng, qty_tab, qshift), 1, mask, w, m)
    else:
        bb = ss[s, S_BEST + BID]
        ba = ss[s, S_BEST + ASK]
        q = _draw_qty(rng, qty_tab, qshift)
        if ba - bb >= 2:
            px = bb + 1 + _randint(rng, ba - bb - 1)
        else:
            px = bb if side == BID else ba
        _emit(pend, G, schema.L3_TRADE, side, s, q, px, 0, 0)


@njit(**HOT)
def generate_words(out, n, pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, rec, pend):
    """Write the next ``n`` messages of the stream into ``out[:n]`` (int64 ``(>= n,
    L3_WORDS)``: MD_L3 records as words), continuing from and advancing the state.
    Returns ``n``."""
    i = 0
    while i < n:
        pos = G[G_PEND_POS]
        cnt = G[G_PEND_N]
        if pos == cnt:
            G[G_PEND_POS] = 0
            G[G_PEND_N] = 0
            _event(pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, rec, pend)
            G[G_EVENTS] += 1
            continue
        k = min(n - i, cnt - pos)
        for j in range(k):
            for c in range(L3_WORDS):
                out[i + j, c] = pend[pos + j, c]
        i += k
        G[G_PEND_POS] = pos + k
    G[G_EMITTED] += n
    return n
