"""Compiled synthetic order-flow generator (the hot path of ``feed_sim.synth``).

Model
-----
Each symbol has a latent fair value ``fv`` (integer ticks) that moves as a random walk
(+-1 tick) with occasional jumps.  Liquidity providers quote around it: a bid add goes
``half_spread + g`` ticks below ``fv`` (``g`` geometric, sometimes uniform "deep"), an
ask add the same above; some adds improve the spread by landing strictly inside it.
An add at or through the opposite best is never a resting add there: either it is
repriced one tick behind the opposite best (post-only), or it is *marketable* and
turned into executions against the resting side (best first, one ``K_EXECUTE`` per
resting order filled, oldest first within a level) followed by the add of its
remainder, if any.  Marketable orders (tilted towards the side ``fv`` says is cheap)
hit the best level, sometimes sweeping several whole levels; hidden trades print
inside the spread (or at the passive best) without touching the book.  Cancels and
deletes take the newest order of a best that ``fv`` has moved through (stale quotes
fade) or a uniformly random live order.  The book size is steered towards a target
(adds become deletes above it, deletes adds below).  Events come in bursts on one
symbol; all messages of one event share its timestamp.

State (all preallocated, owned by the caller, passed to every call)
-------------------------------------------------------------------
* ``G``  int64 ``(NG,)`` stream scalars (clock, next seq, burst, pending cursor).
* ``rng`` uint64 ``(1,)`` splitmix64 counter: the whole random stream.  Our own
  generator rather than numba's ``np.random`` so the state can be saved between calls
  (numba's is per thread and not reachable from Python).
* ``ss`` int64 ``(n_sym, NSS)`` per-symbol scalars (``fv``, best px per side, non-empty
  level count per side, live order count).
* ``lv`` int64 ``(n_sym, 2, W, LV_N)`` circular price ladder per symbol and side: level
  quantity (lots), FIFO head and tail order id (one 32-byte cell per level).  Price
  ``p`` lives in slot ``p & (W - 1)``.  Every resting order is kept within ``H = W/2 - 1`` ticks of its
  symbol's ``fv`` (orders that fall out of that band when ``fv`` moves are deleted,
  and those deletes are emitted), so the live prices of a side span less than ``W``
  ticks and never share a slot: the ladder follows the market without re-centring.
* ``od`` int64 ``(n_sym * M, NO)`` order pool: price, remaining qty, side, FIFO links,
  position in ``perm``.  Order id ``s * M + j`` belongs to symbol ``s``.
* ``perm`` int64 ``(n_sym, M)``: local ids ``j``; ``perm[s, :live]`` are the live
  orders of ``s`` (uniform random pick, O(1) alloc/free by swapping).
* ``pend`` int64 ``(P, 5)`` the messages of the current event not yet handed out (an
  event, e.g. a sweep, can emit many).  Records are ``MD_DTYPE`` as five 8-byte
  words; word 0 packs kind, side, symbol and qty (``obpipe.ring.records.md_w0``).

The book state in ``ss``/``lv``/``od`` already includes the pending messages; a call
stops exactly after ``n`` messages, so chunked generation equals one-shot generation.
No I/O, no allocation in the kernels.

Build: the kernels never allocate, so they are compiled without numba's reference
counting (``obpipe.ring.jit.HOT``): with it, every array handed to an inlined helper
gets incref/decref calls in the hot loop (their cost: docs/DECISIONS.md "Compiled
code").  The small helpers that take arrays are inlined at numba IR level
(``inline="always"``; LLVM does not inline them across numba's call boundary); the RNG
helpers are left to LLVM, which does, and the rare or large paths stay calls to keep
compile time down.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT
from obpipe.ring.records import MD_W_PX, MD_W_SEQ, MD_W_TS_EXCH, MD_W_TS_RECV, md_w0


NO_PX = schema.NO_PX
BID = schema.SIDE_BID
ASK = schema.SIDE_ASK
K_ADD = schema.K_ADD
K_CANCEL = schema.K_CANCEL
K_DELETE = schema.K_DELETE
K_EXECUTE = schema.K_EXECUTE
K_TRADE = schema.K_TRADE

#: Words per MD_DTYPE record.
MD_WORDS = schema.words_of(schema.MD_DTYPE)

# --- stream scalars G[] --------------------------------------------------------------
G_T = 0  # exchange clock of the current event, ns
G_SEQ = 1  # sequence number of the next generated message
G_BURST_LEFT = 2  # events left in the current burst
G_BURST_SYM = 3  # symbol of the current burst
G_PEND_N = 4  # messages in pend
G_PEND_POS = 5  # pend messages already handed out
G_EVENTS = 6  # events generated so far
G_EMITTED = 7  # messages handed out so far
NG = 8

# --- per-symbol scalars ss[s, ] ------------------------------------------------------
S_FV = 0  # latent fair value, ticks
S_BEST = 1  # S_BEST + side: best price (ticks), NO_PX when the side is empty
S_NLEV = 3  # S_NLEV + side: non-empty levels
S_LIVE = 5  # live orders
NSS = 6

# --- ladder fields lv[s, side, slot, field] ------------------------------------------
LV_QTY = 0  # aggregated resting lots
LV_HEAD = 1  # oldest order id at the level, -1 if none
LV_TAIL = 2  # newest order id at the level, -1 if none
LV_N = 4  # fields per cell (one pad word: 32-byte cells)

# --- order pool columns od[id, ] ----------------------------------------------------
O_PX = 0  # price, ticks
O_QTY = 1  # remaining lots
O_SIDE = 2
O_NEXT = 3  # next (newer) order at the level, -1
O_PREV = 4  # previous (older) order at the level, -1
O_POS = 5  # index in perm[s]
NO = 6

# --- integer parameters pi[] ----------------------------------------------------------
PI_W = 0  # ladder width, ticks (power of two)
PI_H = 1  # band half width W/2 - 1, ticks
PI_M = 2  # order pool per symbol
PI_TARGET = 3  # soft target of live orders per symbol (adds <-> deletes steer towards it)
PI_MIN = 4  # below this many live orders (or a side empty) every event adds
PI_HALF_SPREAD = 5  # add anchor distance from fv, ticks
PI_MAX_DEPTH = 6  # max add distance behind the anchor, ticks
PI_MAX_SWEEP = 7  # max levels one sweep takes
PI_JUMP_MAX = 8  # max |fv jump|, ticks
PI_QTY_SHIFT = 9  # 64 - log2(len(qty_tab))
NPI = 10

# --- float parameters pf[] -----------------------------------------------------------
PF_C_ADD = 0  # cumulative action thresholds: add | cancel | delete | execute | trade
PF_C_CANCEL = 1
PF_C_DELETE = 2
PF_C_EXECUTE = 3
PF_P_IMPROVE = 4  # P(add goes inside a spread of >= 2 ticks)
PF_INV_LOG_DEPTH = 5  # 1 / log(1 - p) of the geometric add depth (0: always 0)
PF_P_DEEP = 6  # P(add depth uniform in 0..max_depth)
PF_P_SWEEP = 7  # P(marketable order sweeps several levels)
PF_TILT = 8  # P(buy) = 0.5 +- tilt when fv is above / below the book mid
PF_P_TICK = 9  # P(fv moves one tick) per event
PF_P_JUMP = 10  # P(fv jumps) per event
PF_INV_LOG_JUMP = 11  # geometric jump size (minus one)
PF_P_BURST = 12  # P(a non-burst event starts a burst)
PF_INV_LOG_BURST = 13  # geometric extra events of a burst
PF_GAP_NS = 14  # mean gap before a non-burst event, ns
PF_BURST_GAP_NS = 15  # mean gap inside a burst, ns
PF_P_PAUSE = 16  # P(a non-burst gap gets a long pause added)
PF_PAUSE_NS = 17  # mean pause, ns
PF_BURST_VOL = 18  # fv move probabilities are multiplied by this inside a burst
PF_P_MARKETABLE = 19  # P(an add at / through the opposite best executes; else repriced)
PF_P_FADE = 20  # P(a cancel / delete takes the newest order of a best fv moved through)
NPF = 21

# --- splitmix64 -----------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SH30 = np.uint64(30)
_SH27 = np.uint64(27)
_SH31 = np.uint64(31)
_SH11 = np.uint64(11)
_INV_2_53 = 1.0 / 9007199254740992.0

_BIG = np.int64(1) << 62


@njit(**HOT)
def _next_u64(rng):
    """Next 64 random bits (splitmix64; state ``rng[0]`` is a counter)."""
    z = rng[0] + _GOLDEN
    rng[0] = z
    z = (z ^ (z >> _SH30)) * _MIX1
    z = (z ^ (z >> _SH27)) * _MIX2
    return z ^ (z >> _SH31)


@njit(**HOT)
def _unif(rng):
    """Uniform float64 in [0, 1)."""
    return np.float64(_next_u64(rng) >> _SH11) * _INV_2_53


@njit(**HOT)
def _randint(rng, n):
    """Uniform int64 in [0, n), n >= 1."""
    k = np.int64(_unif(rng) * n)
    return k if k < n else n - 1


@njit(**HOT)
def _geom(rng, inv_log):
    """Geometric on 0, 1, 2, ... with ``inv_log = 1 / log(1 - p)`` (0: always 0)."""
    return np.int64(np.log(1.0 - _unif(rng)) * inv_log)


@njit(**HOT)
def _exp_ns(rng, mean_ns):
    """Exponential with mean ``mean_ns``, truncated to integer ns."""
    return np.int64(-np.log(1.0 - _unif(rng)) * mean_ns)


# --- output ---------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _emit(pend, G, kind, side, s, q, px):
    """Append one message stamped with the current clock and the next seq."""
    i = G[G_PEND_N]
    pend[i, 0] = md_w0(kind, side, s, q)
    pend[i, MD_W_PX] = px
    pend[i, MD_W_SEQ] = G[G_SEQ]
    pend[i, MD_W_TS_EXCH] = G[G_T]
    pend[i, MD_W_TS_RECV] = 0
    G[G_SEQ] += 1
    G[G_PEND_N] = i + 1


# --- orders and levels ----------------------------------------------------------------


@njit(**HOT, inline="always")
def _alloc(ss, perm, od, s, m):
    """A free order id of symbol ``s`` (caller checked live < m)."""
    j = ss[s, S_LIVE]
    ss[s, S_LIVE] = j + 1
    oid = s * m + perm[s, j]
    od[oid, O_POS] = j
    return oid


@njit(**HOT, inline="always")
def _free(ss, perm, od, s, m, oid):
    """Return order ``oid`` of symbol ``s`` to the free part of ``perm``."""
    j = od[oid, O_POS]
    last = ss[s, S_LIVE] - 1
    other = perm[s, last]
    perm[s, j] = other
    od[s * m + other, O_POS] = j
    perm[s, last] = oid - s * m
    od[oid, O_POS] = last
    ss[s, S_LIVE] = last


@njit(**HOT, inline="always")
def _rest(ss, lv, od, s, k, px, oid, q, mask):
    """Order ``oid`` rests ``q`` lots at (k, px), at the back of the level's queue."""
    slot = px & mask
    od[oid, O_PX] = px
    od[oid, O_QTY] = q
    od[oid, O_SIDE] = k
    tail = lv[s, k, slot, LV_TAIL]
    od[oid, O_PREV] = tail
    od[oid, O_NEXT] = -1
    if tail < 0:
        lv[s, k, slot, LV_HEAD] = oid
    else:
        od[tail, O_NEXT] = oid
    lv[s, k, slot, LV_TAIL] = oid
    if lv[s, k, slot, LV_QTY] == 0:
        ss[s, S_NLEV + k] += 1
        b = ss[s, S_BEST + k]
        if b == NO_PX or (px > b if k == BID else px < b):
            ss[s, S_BEST + k] = px
    lv[s, k, slot, LV_QTY] += q


@njit(**HOT)
def _rescan_best(ss, lv, s, k, px, mask, w):
    """Best of side ``k`` after level ``px`` (the best) emptied: the next non-empty level
    away from the touch.  Every live price is within the fv band, so the scan never
    meets a slot of another price."""
    if ss[s, S_NLEV + k] == 0:
        ss[s, S_BEST + k] = NO_PX
        return
    step = -1 if k == BID else 1
    p = px + step
    for _ in range(w):
        if lv[s, k, p & mask, LV_QTY] > 0:
            ss[s, S_BEST + k] = p
            return
        p += step
    ss[s, S_BEST + k] = NO_PX  # unreachable while the invariants hold


@njit(**HOT, inline="always")
def _remove(ss, lv, od, perm, s, oid, mask, w, m, keep_best):
    """Order ``oid`` leaves the book with all its remaining qty; its id is freed.
    ``keep_best=False`` skips best maintenance (the caller rescans afterwards)."""
    k = od[oid, O_SIDE]
    px = od[oid, O_PX]
    slot = px & mask
    prv = od[oid, O_PREV]
    nxt = od[oid, O_NEXT]
    if prv < 0:
        lv[s, k, slot, LV_HEAD] = nxt
    else:
        od[prv, O_NEXT] = nxt
    if nxt < 0:
        lv[s, k, slot, LV_TAIL] = prv
    else:
        od[nxt, O_PREV] = prv
    left = lv[s, k, slot, LV_QTY] - od[oid, O_QTY]
    lv[s, k, slot, LV_QTY] = left
    od[oid, O_QTY] = 0
    _free(ss, perm, od, s, m, oid)
    if left == 0:
        ss[s, S_NLEV + k] -= 1
        if keep_best and ss[s, S_BEST + k] == px:
            _rescan_best(ss, lv, s, k, px, mask, w)


@njit(**HOT, inline="always")
def _reduce(lv, od, s, oid, q, mask):
    """Order ``oid`` loses ``q`` lots, q < its remaining qty (the level stays non-empty)."""
    od[oid, O_QTY] -= q
    lv[s, od[oid, O_SIDE], od[oid, O_PX] & mask, LV_QTY] -= q


@njit(**HOT)
def _consume(pend, G, ss, lv, od, perm, s, r, q, limited, px_limit, max_levels, mask, w, m):
    """Execute up to ``q`` lots against resting side ``r`` from its best level outward:
    one K_EXECUTE per resting order touched, oldest first.  Stops when ``q`` is filled,
    the side is empty, the best is beyond ``px_limit`` (if ``limited``) or
    ``max_levels`` levels have been emptied.  Returns the unfilled qty."""
    emptied = 0
    while q > 0:
        b = ss[s, S_BEST + r]
        if b == NO_PX:
            break
        if limited and (b > px_limit if r == ASK else b < px_limit):
            break
        oid = lv[s, r, b & mask, LV_HEAD]
        oq = od[oid, O_QTY]
        if q >= oq:
            _emit(pend, G, K_EXECUTE, r, s, oq, b)
            q -= oq
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
            if ss[s, S_BEST + r] != b:
                emptied += 1
                if emptied >= max_levels:
                    break
        else:
            _emit(pend, G, K_EXECUTE, r, s, q, b)
            _reduce(lv, od, s, oid, q, mask)
            q = 0
    return q


@njit(**HOT)
def _move_fv(pend, G, ss, lv, od, perm, s, new_fv, h, mask, w, m):
    """Set symbol ``s``'s fair value; orders that leave the band ``|px - fv| <= h`` are
    deleted (emitted as K_DELETE, lowest price first) and the bests fixed up."""
    old = ss[s, S_FV]
    if new_fv > old:
        lo = old - h
        hi = min(new_fv - h - 1, old + h)
    else:
        lo = max(new_fv + h + 1, old - h)
        hi = old + h
    for p in range(lo, hi + 1):
        slot = p & mask
        for k in range(2):
            while lv[s, k, slot, LV_QTY] > 0:
                oid = lv[s, k, slot, LV_HEAD]
                _emit(pend, G, K_DELETE, k, s, od[oid, O_QTY], od[oid, O_PX])
                _remove(ss, lv, od, perm, s, oid, mask, w, m, False)
    ss[s, S_FV] = new_fv
    for k in range(2):
        b = ss[s, S_BEST + k]
        if b != NO_PX and (b < new_fv - h or b > new_fv + h):
            if ss[s, S_NLEV + k] == 0:
                ss[s, S_BEST + k] = NO_PX
            else:  # scan the new band from its most aggressive price away from the touch
                step = -1 if k == BID else 1
                p = new_fv + h if k == BID else new_fv - h
                ss[s, S_BEST + k] = NO_PX
                for _ in range(2 * h + 1):
                    if lv[s, k, p & mask, LV_QTY] > 0:
                        ss[s, S_BEST + k] = p
                        break
                    p += step


@njit(**HOT)
def _draw_qty(rng, qty_tab, shift):
    """Order size in lots from the inverse-CDF table."""
    return qty_tab[np.int64(_next_u64(rng) >> np.uint64(shift))]


# --- one event ------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _event(pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, pend):
    """Generate one event (one or more messages) into ``pend``, updating the book."""
    w = pi[PI_W]
    h = pi[PI_H]
    m = pi[PI_M]
    mask = w - 1
    qshift = pi[PI_QTY_SHIFT]

    # symbol and clock
    left = G[G_BURST_LEFT]
    if left > 0:
        s = G[G_BURST_SYM]
        G[G_BURST_LEFT] = left - 1
        G[G_T] += _exp_ns(rng, pf[PF_BURST_GAP_NS])
        vol = pf[PF_BURST_VOL]
    else:
        s = np.int64(np.searchsorted(sym_cum, _unif(rng), side="right"))
        if s >= sym_cum.shape[0]:
            s = sym_cum.shape[0] - 1
        gap = _exp_ns(rng, pf[PF_GAP_NS])
        if _unif(rng) < pf[PF_P_PAUSE]:
            gap += _exp_ns(rng, pf[PF_PAUSE_NS])
        G[G_T] += gap
        if _unif(rng) < pf[PF_P_BURST]:
            G[G_BURST_LEFT] = _geom(rng, pf[PF_INV_LOG_BURST])
            G[G_BURST_SYM] = s
        vol = 1.0

    # fair value
    u = _unif(rng)
    pt = pf[PF_P_TICK] * vol
    d = 0
    if u < pt:
        d = 1 if u < 0.5 * pt else -1
    elif u < pt + pf[PF_P_JUMP] * vol:
        d = min(1 + _geom(rng, pf[PF_INV_LOG_JUMP]), pi[PI_JUMP_MAX])
        if _unif(rng) < 0.5:
            d = -d
    if d != 0:
        fv = ss[s, S_FV]
        if fv + d < h + 1:  # keep every band price >= 1 tick: reflect
            d = -d
        _move_fv(pend, G, ss, lv, od, perm, s, fv + d, h, mask, w, m)
    fv = ss[s, S_FV]

    # action
    live = ss[s, S_LIVE]
    nb = ss[s, S_NLEV + BID]
    na = ss[s, S_NLEV + ASK]
    u = _unif(rng)
    if live >= m - 1:  # order pool full: make room
        act = K_DELETE
        side = BID
    elif live < pi[PI_MIN] or nb == 0 or na == 0:
        act = K_ADD
        if nb == 0 and na != 0:
            side = BID
        elif na == 0 and nb != 0:
            side = ASK
        else:
            side = _randint(rng, 2)
    else:
        if u < pf[PF_C_ADD]:
            act = K_ADD
        elif u < pf[PF_C_CANCEL]:
            act = K_CANCEL
        elif u < pf[PF_C_DELETE]:
            act = K_DELETE
        elif u < pf[PF_C_EXECUTE]:
            act = K_EXECUTE
        else:
            act = K_TRADE
        # keep the book near its target size: above it adds turn into deletes, below it
        # deletes turn into adds, the more so the further away
        tgt = pi[PI_TARGET]
        if act == K_ADD:
            if live > tgt and _unif(rng) * (m - 1 - tgt) < live - tgt:
                act = K_DELETE
        elif act == K_DELETE:
            if live < tgt and _unif(rng) * tgt < tgt - live:
                act = K_ADD
        side = _randint(rng, 2)

    bb = ss[s, S_BEST + BID]
    ba = ss[s, S_BEST + ASK]
    if act == K_ADD:
        q = _draw_qty(rng, qty_tab, qshift)
        if bb != NO_PX and ba != NO_PX and ba - bb >= 2 and _unif(rng) < pf[PF_P_IMPROVE]:
            k = 1 + _randint(rng, ba - bb - 1)
            px = bb + k if side == BID else ba - k
        else:
            if _unif(rng) < pf[PF_P_DEEP]:
                g = _randint(rng, pi[PI_MAX_DEPTH] + 1)
            else:
                g = min(_geom(rng, pf[PF_INV_LOG_DEPTH]), pi[PI_MAX_DEPTH])
            off = pi[PI_HALF_SPREAD] + g
            px = fv - off if side == BID else fv + off
            opp = ba if side == BID else bb
            if opp != NO_PX and (px >= opp if side == BID else px <= opp):
                # post-only: repriced one tick behind the opposite best, unless that
                # leaves the fv band (possible just after a jump) or it is marketable:
                # then it executes up to px and the rest rests at px
                rep = opp - 1 if side == BID else opp + 1
                if abs(rep - fv) <= h and _unif(rng) >= pf[PF_P_MARKETABLE]:
                    px = rep
                else:
                    q = _consume(pend, G, ss, lv, od, perm, s, 1 - side, q, True, px, _BIG, mask, w, m)
        if q > 0:
            oid = _alloc(ss, perm, od, s, m)
            _emit(pend, G, K_ADD, side, s, q, px)
            _rest(ss, lv, od, s, side, px, oid, q, mask)
    elif act == K_CANCEL or act == K_DELETE:
        # quotes fade: a best that the fair value has moved through (a bid above its
        # anchor fv - half_spread, an ask below fv + half_spread) loses its newest order
        # with P(fade); otherwise a uniformly random live order goes
        hs = pi[PI_HALF_SPREAD]
        oid = -1
        stale_bid = bb != NO_PX and bb > fv - hs
        stale_ask = ba != NO_PX and ba < fv + hs
        if (stale_bid or stale_ask) and _unif(rng) < pf[PF_P_FADE]:
            if stale_bid and (not stale_ask or _unif(rng) < 0.5):
                oid = lv[s, BID, bb & mask, LV_TAIL]
            else:
                oid = lv[s, ASK, ba & mask, LV_TAIL]
        if oid < 0:
            oid = s * m + perm[s, _randint(rng, live)]
        oq = od[oid, O_QTY]
        if act == K_CANCEL and oq >= 2:
            c = 1 + _randint(rng, oq - 1)
            _emit(pend, G, K_CANCEL, od[oid, O_SIDE], s, c, od[oid, O_PX])
            _reduce(lv, od, s, oid, c, mask)
        else:
            _emit(pend, G, K_DELETE, od[oid, O_SIDE], s, oq, od[oid, O_PX])
            _remove(ss, lv, od, perm, s, oid, mask, w, m, True)
    elif act == K_EXECUTE:
        mid2 = bb + ba
        p_buy = 0.5
        if 2 * fv > mid2:
            p_buy += pf[PF_TILT]
        elif 2 * fv < mid2:
            p_buy -= pf[PF_TILT]
        r = ASK if _unif(rng) < p_buy else BID  # resting side hit
        nlev = ss[s, S_NLEV + r]
        if nlev >= 3 and _unif(rng) < pf[PF_P_SWEEP]:
            lev = min(2 + _randint(rng, pi[PI_MAX_SWEEP] - 1), nlev - 1)
            _consume(pend, G, ss, lv, od, perm, s, r, _BIG, False, 0, lev, mask, w, m)
        else:
            q = _draw_qty(rng, qty_tab, qshift)
            _consume(pend, G, ss, lv, od, perm, s, r, q, False, 0, 1, mask, w, m)
    else:  # hidden trade: inside the spread, or at the passive best
        q = _draw_qty(rng, qty_tab, qshift)
        if ba - bb >= 2:
            px = bb + 1 + _randint(rng, ba - bb - 1)
        else:
            px = bb if side == BID else ba
        _emit(pend, G, K_TRADE, side, s, q, px)


# --- driver ---------------------------------------------------------------------------


@njit(**HOT)
def generate_words(out, n, pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, pend):
    """Write the next ``n`` messages of the stream into ``out[:n]`` (int64 ``(>=n, 5)``,
    MD_DTYPE records as words).  Continues from, and advances, the state arrays.
    Returns ``n``."""
    i = 0
    while i < n:
        pos = G[G_PEND_POS]
        cnt = G[G_PEND_N]
        if pos == cnt:
            G[G_PEND_POS] = 0
            G[G_PEND_N] = 0
            _event(pi, pf, qty_tab, sym_cum, G, rng, ss, lv, od, perm, pend)
            G[G_EVENTS] += 1
            continue
        k = min(n - i, cnt - pos)
        for j in range(k):
            for c in range(MD_WORDS):
                out[i + j, c] = pend[pos + j, c]
        i += k
        G[G_PEND_POS] = pos + k
    G[G_EMITTED] += n
    return n
