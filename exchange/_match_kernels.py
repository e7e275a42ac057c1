"""Compiled price-time-priority matching engine (the exchange's hot path).

Design
------
All state is preallocated numpy arrays owned by one process; nothing is allocated per
order and no Python runs per order.

* ``O`` - the order pool, int64 ``(capacity, 8)``: one 64-byte row (one cache line) per
  resting order: id, price, open quantity, prev/next slot in its level's FIFO, account,
  side, symbol.  Free rows are chained through ``O_NEXT`` from ``E[E_FREE]``; a free
  row has id 0.  Allocation and release are O(1) pops/pushes.
* ``L`` - price levels, int64 ``(n_symbols * 2 * (W + 1), 4)``: head slot, tail slot,
  total open quantity and order count.  Symbol ``s`` side ``d`` price ``px`` is row
  ``(2 s + d) (W + 1) + (px - base_sd)``; each side's row ``W`` is its parked row: a price ladder over the side's window
  ``[base, base + W)``.  Orders of a level form a doubly linked FIFO through the pool
  rows, so a cancel anywhere in a level is O(1) (the C++ original scanned a deque).
  Price -> level is one subtraction (no tree: the original's ``std::map`` cost
  O(log n) per new level).  The best level per side is kept incrementally; emptying it
  scans away from the touch to the next non-empty level, O(gap in ticks).
* Far prices (docs/DECISIONS.md "Matching: far prices").  Every price 1 .. 2^62 is
  accepted.  An order outside its side's window is *parked*: appended to the side's
  parked row (arrival order, a list like a level's, so a cancel unlinks either the same
  way), unless it would be
  the side's best (or the side is empty): then the window moves to it
  (``_recentre``: levels leaving the window are parked whole, the rows shift, parked
  orders now inside are linked into their levels in arrival order).  When the ladder
  side empties and orders are parked, the window moves to the best parked price.  So
  the best level is always in the ladder, matching never looks elsewhere, and the
  per-order path only gains a range test (a select, when unlinking); parked orders are all worse than the window.
* ``H`` - order id -> pool slot, two parts.  The direct part (``M`` = 2-4x the pool)
  holds id ``i`` in bucket ``i & (M-1)``: ids are sequential, so lookup, insert and
  delete touch one bucket.  An order still resting when an id ``M`` later needs its
  bucket moves to the overflow part, an open-addressing table (Fibonacci hash, linear
  probing, backward-shift deletion) that is probed only while it holds anything
  (``E[E_XN]``).  (Rejected: linear probing over the direct part; sequential ids form
  long runs, and a delete, or any lookup once one run had been displaced, walked them:
  1,700x slower per request after 262k long-resting orders.)  After the id table, H
  holds the FOK check's own-quantity table and its tracked-account set (``_track``).
* ``S`` - per-symbol, per-side scalars (window base, best level, level/order/quantity
  counts); ``E`` - engine scalars (next order id, free list, market-data messages
  emitted, counters); ``N`` - fill counts of the three output buffers.

Outputs go into caller-owned buffers, appended at ``N[...]``: reports
(``schema.ORDER_OUT_DTYPE``, plus the receiving account in ``racct``; a trade is the
pair of fill reports it produces, the aggressor's first) and market data
(``schema.WIRE_MSG_DTYPE``: add, partial cancel, delete, execute, exactly the feed the
pipeline's book consumes).  Before each request ``process`` checks that the buffers have
room for the worst case of that request (every order on the other side filled); if
not it stops and returns how many requests it took, and the caller drains and calls
again.  So a request is never split.

Rules (docs/DECISIONS.md "Matching"):
* price-time priority; trades at the resting order's price;
* a market order, and the rest of an IOC order, never rests: its rest is cancelled
  (``RS_UNFILLED``); FOK is checked before anything happens and rejected whole;
* every new order gets an id (1, 2, 3, ... in arrival order), accepted or not, and
  exactly one ACK or REJECT first;
* modify: a lower quantity at the same price keeps priority (a partial cancel on the
  feed); a price change or a higher quantity loses it (delete + a new add, same id;
  the order may trade at its new price);
* self-trade prevention (account != 0): when an incoming order meets a resting order
  of its own account, the resting order is cancelled (``RS_SELF_TRADE``) and matching
  goes on; the FOK check does not count such orders.

Build (``ring.jit``): compiled without numba's reference counting (``HOT``), and
``process`` with its array arguments ``noalias`` (``HOT_NOALIAS``: the caller's
arrays never share memory).  With the NRT on, every array handed to an inlined
helper got an atomic incref/decref pair in the loop: sampled with ``perf``, two
thirds of the kernel's time, and the mixed workload ran at 8.1M orders/s; without
it 18.6M, and noalias a further 1.08x (one session, medians of 5).

Inlining: the helpers of the per-order path are ``inline="always"`` (numba IR-level
inlining).  A plain call passes every array as ~7 scalars and keeps LLVM from hoisting
the state loads: all helpers as calls ran the mixed workload at 0.79x.  But IR-level
inlining is what compiling costs (46 s with everything inlined, 11 s with nothing).
The rare paths - ``_modify``, ``_reject`` (12 call sites) and the FOK check
``_fillable`` - are plain calls: 20 s to compile, and the three workloads measured
the same as fully inlined in one session (mixed 6.96M vs 6.85M orders/s, cancel-heavy
7.39M vs 7.57M, limit 6.89M vs 6.84M, medians of 7, noise +-5%; measured with the
NRT still on).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT, HOT_NOALIAS
from obpipe.ring.atomics import monotonic_ns, rdtsc
from obpipe.ring.records import (REP_W_ORDER_ID, REP_W_PX, WIRE_W_ORDER_ID, WIRE_W_PX, WIRE_W_TS_EXCH, md_w0,
                                 report_w0, report_w1)

NO_PX = schema.NO_PX
MAX_PX_TICK = 1 << 62  # prices above are rejected (bad price): window arithmetic never overflows
BUY = schema.BUY
SELL = schema.SELL

# Pool columns.
O_ID = 0
O_PX = 1
O_QTY = 2  # open quantity
O_PREV = 3
O_NEXT = 4
O_ACCT = 5
O_SIDE = 6
O_SYM = 7
NO_COLS = 8

# Level columns.
L_HEAD = 0
L_TAIL = 1
L_QTY = 2
L_CNT = 3

# Per-symbol columns (all side-indexed: column + side).
S_BASE = 0  # 0, 1: price of ladder index 0 (the side's window is [base, base + W))
S_BEST = 2  # 2, 3: ladder index of the best level per side, -1 when the side is empty
S_NLEV = 4  # 4, 5: non-empty ladder levels
S_NORD = 6  # 6, 7: resting orders (ladder and parked)
S_QTY = 8  # 8, 9: resting quantity (ladder and parked)
NS = 10

# Engine scalars.
E_NEXT_ID = 0
E_FREE = 1  # head of the free slot list (-1: pool full)
E_LIVE = 2  # resting orders
E_W = 3  # ladder width (ticks per symbol side)
E_MD = 4  # market-data messages emitted, ever (the next feed sequence is E_MD + 1)
E_REQS = 5  # requests processed
E_ACCEPTED = 6
E_REJECTED = 7
E_TRADES = 8
E_TRADED_QTY = 9
E_CANCELS = 10  # orders cancelled (user, unfilled rest, self-trade, book full)
E_MODIFIES = 11
E_STP = 12  # resting orders cancelled by self-trade prevention
E_XN = 13  # ids in the overflow part of H
E_HM = 14  # size of H's direct part (a power of two); the overflow part follows it
E_XM = 15  # size of H's overflow part (a power of two)
E_RECENTRES = 16  # ladder windows moved (``_recentre``)
E_PARKED = 17  # orders parked (a price outside its side's window), ever
E_AOFF = 18  # offset in H of the own-quantity table (4 words an entry)
E_AM = 19  # its entries (a power of two)
E_TOFF = 20  # offset in H of the tracked-account set (accounts whose own quantity the table keeps)
E_TM = 21  # its slots (a power of two)
E_TN = 22  # accounts tracked
E_FCAP = 23  # own orders a FOK check may skip before it tracks the account (FOK_WALK_CAP)
E_RS = 24  # L rows per side: W + 1 (the ladder, then the parked row)
NE = 25
FOK_WALK_CAP = 64
TRACKED_SLOTS = 4096  # at most half of them used: beyond, FOK checks of more accounts walk
E_NAMES = {E_REQS: "requests", E_ACCEPTED: "accepted", E_REJECTED: "rejected", E_TRADES: "trades",
           E_TRADED_QTY: "traded_qty", E_CANCELS: "cancelled", E_MODIFIES: "modified", E_STP: "self_trade_cancels",
           E_LIVE: "resting", E_MD: "md_messages", E_RECENTRES: "recentres", E_PARKED: "parked"}

# Output fill counts.
N_REP = 0
N_MD = 2

_H_EMPTY = -1


def new_state(n_symbols: int, width: int, capacity: int, bases=None):
    """(E, S, L, O, H) for ``n_symbols`` symbols with ``width``-tick ladders and room
    for ``capacity`` resting orders.  ``bases``: each symbol's first window's lowest
    price (ticks), or None/NO_PX to centre a side's window on its first resting price."""
    E = np.zeros(NE, np.int64)
    E[E_NEXT_ID] = 1
    E[E_W] = width
    E[E_RS] = width + 1
    S = np.zeros((n_symbols, NS), np.int64)
    S[:, S_BASE:S_BASE + 2] = 1  # (an empty side's window moves to its first order's price)
    if bases is not None:
        b = np.asarray(bases, np.int64)
        S[:, S_BASE] = np.where(b == NO_PX, 1, b)
        S[:, S_BASE + 1] = S[:, S_BASE]
    S[:, S_BEST:S_BEST + 2] = -1
    L = np.zeros((n_symbols * 2 * (width + 1), 4), np.int64)  # (each side: W levels, then its parked row)
    L[:, L_HEAD] = -1
    L[:, L_TAIL] = -1
    O = np.zeros((capacity, NO_COLS), np.int64)
    O[:, O_NEXT] = np.arange(1, capacity + 1)
    O[-1, O_NEXT] = -1
    E[E_FREE] = 0
    hsize = 1 << max(4, int(2 * capacity - 1).bit_length())
    E[E_HM] = hsize
    E[E_XM] = hsize
    E[E_AOFF] = 2 * hsize
    E[E_AM] = hsize  # >= 2x the orders that can rest: load <= 1/2
    E[E_TOFF] = 6 * hsize
    E[E_TM] = TRACKED_SLOTS
    E[E_FCAP] = FOK_WALK_CAP
    H = np.zeros(6 * hsize + TRACKED_SLOTS, np.int64)  # (the own table's zeros are committed as used)
    H[:2 * hsize] = _H_EMPTY
    return E, S, L, O, H


# --- id -> slot table ---------------------------------------------------------------

@njit(**HOT, inline="always")
def _x_home(E, oid):
    """Overflow bucket of ``oid``: a multiplicative (Fibonacci) hash, so old ids that
    collided in the direct part do not cluster."""
    h = (np.uint64(oid) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return E[E_HM] + np.int64(h & np.uint64(E[E_XM] - 1))


@njit(**HOT, inline="always")
def _h_find(E, H, O, oid):
    """Slot of resting order ``oid`` or -1: its direct bucket, else (only while some
    old order sits in the overflow part) the overflow probe."""
    s = H[oid & (E[E_HM] - 1)]
    if s >= 0 and O[s, O_ID] == oid:
        return s
    if E[E_XN] == 0:
        return -1
    base = E[E_HM]
    mx = E[E_XM] - 1
    i = _x_home(E, oid)
    while H[i] != _H_EMPTY:
        if O[H[i], O_ID] == oid:
            return H[i]
        i = base + ((i - base + 1) & mx)
    return -1


@njit(**HOT, inline="always")
def _x_insert(E, H, oid, slot):
    base = E[E_HM]
    mx = E[E_XM] - 1
    i = _x_home(E, oid)
    while H[i] != _H_EMPTY:
        i = base + ((i - base + 1) & mx)
    H[i] = slot
    E[E_XN] += 1


@njit(**HOT, inline="always")
def _h_insert(E, H, O, oid, slot):
    b = oid & (E[E_HM] - 1)
    old = H[b]
    if old >= 0:  # an order M ids older still rests: it moves to the overflow part
        _x_insert(E, H, O[old, O_ID], old)
    H[b] = slot


@njit(**HOT)
def _x_delete(E, H, O, oid):
    """Remove ``oid`` from the overflow part: linear probing with backward-shift
    deletion (no tombstones), homes by ``_x_home``."""
    base = E[E_HM]
    mx = E[E_XM] - 1
    i = _x_home(E, oid) - base
    while O[H[base + i], O_ID] != oid:
        i = (i + 1) & mx
    j = i
    while True:
        j = (j + 1) & mx
        s = H[base + j]
        if s == _H_EMPTY:
            break
        k = _x_home(E, O[s, O_ID]) - base
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            H[base + i] = s
            i = j
    H[base + i] = _H_EMPTY
    E[E_XN] -= 1


@njit(**HOT, inline="always")
def _h_delete(E, H, O, oid):
    b = oid & (E[E_HM] - 1)
    s = H[b]
    if s >= 0 and O[s, O_ID] == oid:
        H[b] = _H_EMPTY
    else:
        _x_delete(E, H, O, oid)


# --- own quantity per (account, symbol, side, price): the FOK check's ---------------------
# An open-addressing table in H after the id table: entries (account, 2 sym + side, px,
# open quantity) of the resting orders (ladder or parked) of *tracked* accounts; account
# 0 marks an empty entry.  An account is tracked from the first FOK check of its that
# skips more than E[E_FCAP] (64) of its own orders (``_track``: one pass over the pool
# enters them); from then on every change of its orders' open quantity updates the table
# (``_own_add``) and its FOK checks take a level's quantity less its own there in O(1),
# instead of walking the level's orders (issue 13: an account with many resting orders
# made every FOK check walk them all).  Only tracked accounts pay: the per-order path
# tests one slot of the tracked set (kept for every account, the table cost the
# workloads with accounts 0.79x).

@njit(**HOT, inline="always")
def _a_home(E, acct, ss, px):
    """A hashed start per (account, symbol-side) plus the price: one account's entries
    near the touch are neighbours (a few cache lines and pages), which a hash of the
    price too scattered over the table (a TLB miss per update: the workloads with
    accounts ran at 0.70x)."""
    h = ((np.uint64(acct) << np.uint64(17)) | np.uint64(ss)) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64(((h >> np.uint64(24)) + np.uint64(px)) & np.uint64(E[E_AM] - 1))


@njit(**HOT, inline="always")
def _a_slot(E, H, acct, ss, px):
    """Word offset in H of the entry of (acct, ss, px), or of the empty entry where it
    would go (all zeros: quantity 0)."""
    a = E[E_AOFF]
    m = E[E_AM] - 1
    i = _a_home(E, acct, ss, px)
    while H[a + 4 * i] != 0 and not (H[a + 4 * i] == acct and H[a + 4 * i + 1] == ss and H[a + 4 * i + 2] == px):
        i = (i + 1) & m
    return a + 4 * i


@njit(**HOT)
def _own(E, H, acct, ss, px):
    """Open quantity of ``acct``'s orders at ``px`` on symbol-side ``ss``."""
    return H[_a_slot(E, H, acct, ss, px) + 3]


@njit(**HOT, inline="always")
def _tracked(E, H, acct):
    """Is ``acct`` (!= 0) in the tracked set?  Usually one load of an empty slot."""
    t = E[E_TOFF]
    m = E[E_TM] - 1
    i = acct & m
    while H[t + i] != 0:
        if H[t + i] == acct:
            return True
        i = (i + 1) & m
    return False


@njit(**HOT)
def _track(E, H, O, acct):
    """Track ``acct``: add it to the set and enter its resting orders in the own table
    (one pass over the pool).  False when the set is full (half its slots)."""
    if 2 * (E[E_TN] + 1) > E[E_TM]:
        return False
    t = E[E_TOFF]
    m = E[E_TM] - 1
    i = acct & m
    while H[t + i] != 0:
        i = (i + 1) & m
    H[t + i] = acct
    E[E_TN] += 1
    for s in range(len(O)):
        if O[s, O_ID] != 0 and O[s, O_ACCT] == acct:
            _own_add(E, H, acct, 2 * O[s, O_SYM] + O[s, O_SIDE], O[s, O_PX], O[s, O_QTY])
    return True


@njit(**HOT)
def _own_change(E, H, O, slot, dq):
    """Pool row ``slot``'s open quantity changes by ``dq``: if its account is tracked,
    so does the account's entry at its price.  (Called only while some account is
    tracked: the per-order path tests E[E_TN] alone.)"""
    a = O[slot, O_ACCT]
    if a != 0 and _tracked(E, H, a):
        _own_add(E, H, a, 2 * O[slot, O_SYM] + O[slot, O_SIDE], O[slot, O_PX], dq)


@njit(**HOT)
def _own_add(E, H, acct, ss, px, dq):
    """Add ``dq`` to ``acct``'s open quantity at ``px`` (an entry that reaches 0 is
    removed)."""
    e = _a_slot(E, H, acct, ss, px)
    if H[e] == 0:
        H[e] = acct
        H[e + 1] = ss
        H[e + 2] = px
    H[e + 3] += dq
    if H[e + 3] == 0:
        _a_remove(E, H, e)


@njit(**HOT)
def _a_remove(E, H, e):
    """Empty the entry at word ``e``: linear probing with backward-shift deletion (no
    tombstones)."""
    a = E[E_AOFF]
    m = E[E_AM] - 1
    i = (e - a) // 4
    j = i
    while True:
        j = (j + 1) & m
        f = a + 4 * j
        if H[f] == 0:
            break
        k = _a_home(E, H[f], H[f + 1], H[f + 2])
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            for c in range(4):
                H[a + 4 * i + c] = H[f + c]
            i = j
    for c in range(4):
        H[a + 4 * i + c] = 0


# --- outputs -------------------------------------------------------------------------

@njit(**HOT, inline="always")
def _report(rep, racct, N, typ, side, reason, flags, sym, qty, leaves, px, oid, acct):
    """Append one ORDER_OUT_DTYPE record, written as its four little-endian words
    (``rep`` is the report buffer viewed as int64 (n, 4): 4 stores, not 10)."""
    k = N[N_REP]
    rep[k, 0] = report_w0(typ, side, reason, flags, sym)
    rep[k, 1] = report_w1(qty, leaves)
    rep[k, REP_W_PX] = px
    rep[k, REP_W_ORDER_ID] = oid
    racct[k] = acct
    N[N_REP] = k + 1


@njit(**HOT, inline="always")
def _md(md, N, E, kind, side, sym, qty, oid, px, ts):
    """Append one WIRE_MSG_DTYPE message as its four words (``md`` viewed as int64 (n, 4))."""
    k = N[N_MD]
    md[k, 0] = md_w0(kind, side, sym, qty)
    md[k, WIRE_W_ORDER_ID] = oid
    md[k, WIRE_W_PX] = px
    md[k, WIRE_W_TS_EXCH] = ts
    N[N_MD] = k + 1


# --- levels --------------------------------------------------------------------------

@njit(**HOT, inline="always")
def _row(E, sym, side, i):
    """Row of ladder index ``i`` (0 .. W-1) of a side; index W is the side's parked row."""
    return (2 * sym + side) * E[E_RS] + i


@njit(**HOT, inline="always")
def _prow(E, sym, side):
    return _row(E, sym, side, E[E_W])


@njit(**HOT, inline="always")
def _better(side, a, b):
    """Is price (or ladder index) ``a`` better than ``b`` for ``side``?"""
    return a > b if side == BUY else a < b


@njit(**HOT, inline="always")
def _rescan(E, S, L, O, sym, side, i):
    """The level at index ``i`` just emptied and was the best: find the next best (the
    best parked order's price, moving the window there, when the ladder is empty)."""
    if S[sym, S_NLEV + side] == 0:
        if L[_prow(E, sym, side), L_CNT] == 0:
            S[sym, S_BEST + side] = -1
        else:
            _recentre_on_parked(E, S, L, O, sym, side)
        return
    r0 = _row(E, sym, side, 0)
    if side == BUY:
        k = i - 1
        while L[r0 + k, L_CNT] == 0:
            k -= 1
    else:
        k = i + 1
        while L[r0 + k, L_CNT] == 0:
            k += 1
    S[sym, S_BEST + side] = k


@njit(**HOT, inline="always")
def _link(S, L, O, slot, sym, side, r, i):
    """Link pool row ``slot`` at the back of ladder level row ``r`` (index ``i``): the
    level's and the ladder's counts (not the side's order/quantity totals)."""
    if L[r, L_CNT] == 0:
        S[sym, S_NLEV + side] += 1
        b = S[sym, S_BEST + side]
        if b < 0 or (side == BUY and i > b) or (side == SELL and i < b):
            S[sym, S_BEST + side] = i
    _push(L, O, r, slot, slot, 1, O[slot, O_QTY])


@njit(**HOT, inline="always")
def _push(L, O, r, h, t, n, q):
    """Append the chain of ``n`` orders ``h`` .. ``t`` (linked among themselves) holding
    quantity ``q`` at the back of row ``r``'s list (a level, or a parked row)."""
    O[t, O_NEXT] = -1
    pt = L[r, L_TAIL]
    O[h, O_PREV] = pt
    if pt < 0:
        L[r, L_HEAD] = h
    else:
        O[pt, O_NEXT] = h
    L[r, L_TAIL] = t
    L[r, L_QTY] += q
    L[r, L_CNT] += n


@njit(**HOT, inline="always")
def _cut(L, O, r, slot, q):
    """Take ``slot`` (open quantity ``q``) out of row ``r``'s list."""
    p = O[slot, O_PREV]
    n = O[slot, O_NEXT]
    if p >= 0:
        O[p, O_NEXT] = n
    else:
        L[r, L_HEAD] = n
    if n >= 0:
        O[n, O_PREV] = p
    else:
        L[r, L_TAIL] = p
    L[r, L_QTY] -= q
    L[r, L_CNT] -= 1


@njit(**HOT, inline="always")
def _append(E, S, L, O, H, slot):
    """Link pool row ``slot`` (id, px, qty, side, sym, acct set) at the back of its level."""
    sym = O[slot, O_SYM]
    side = O[slot, O_SIDE]
    i = O[slot, O_PX] - S[sym, S_BASE + side]
    if np.uint64(i) < np.uint64(E[E_W]):  # (one unsigned compare: 0 <= i < W)
        _link(S, L, O, slot, sym, side, _row(E, sym, side, i), i)
    else:
        _append_far(E, S, L, O, slot)
    q = O[slot, O_QTY]
    S[sym, S_NORD + side] += 1
    S[sym, S_QTY + side] += q
    E[E_LIVE] += 1
    if E[E_TN] != 0:
        _own_change(E, H, O, slot, q)


@njit(**HOT, inline="always")
def _unlink(E, S, L, O, H, slot, release):
    """Take pool row ``slot`` out of its level (its open quantity leaves the level);
    with ``release`` also drop its id and return the row to the free list."""
    sym = O[slot, O_SYM]
    side = O[slot, O_SIDE]
    i = O[slot, O_PX] - S[sym, S_BASE + side]
    q = O[slot, O_QTY]
    S[sym, S_NORD + side] -= 1
    S[sym, S_QTY + side] -= q
    E[E_LIVE] -= 1
    if E[E_TN] != 0:
        _own_change(E, H, O, slot, -q)
    W = E[E_W]
    if not np.uint64(i) < np.uint64(W):  # parked (outside the window): the side's row W
        i = W
    r = _row(E, sym, side, i)
    _cut(L, O, r, slot, q)
    if (L[r, L_CNT] == 0) & (i != W):
        S[sym, S_NLEV + side] -= 1
        if S[sym, S_BEST + side] == i:
            _rescan(E, S, L, O, sym, side, i)
    if release:
        _h_delete(E, H, O, O[slot, O_ID])
        O[slot, O_ID] = 0
        O[slot, O_NEXT] = E[E_FREE]
        E[E_FREE] = slot


# --- far prices: parked orders and moving the window (rare; plain calls) ------------------

@njit(**HOT)
def _recentre(E, S, L, O, sym, side, nb):
    """Move the side's window to ``[nb, nb + W)``: ladder levels that leave it are parked
    whole (each level's orders stay together, in their order), the rows of the rest
    shift, and parked orders whose price is now inside are linked into their levels in
    parked order (time priority kept).  O(W + parked orders of the side)."""
    W = E[E_W]
    ob = S[sym, S_BASE + side]
    r0 = _row(E, sym, side, 0)
    pr = r0 + W
    if S[sym, S_NLEV + side] > 0:
        for i in range(W):
            r = r0 + i
            if L[r, L_CNT] > 0 and not (nb <= ob + i < nb + W):
                _push(L, O, pr, L[r, L_HEAD], L[r, L_TAIL], L[r, L_CNT], L[r, L_QTY])
                E[E_PARKED] += L[r, L_CNT]
                L[r, L_HEAD] = -1
                L[r, L_TAIL] = -1
                L[r, L_QTY] = 0
                L[r, L_CNT] = 0
        d = nb - ob  # new index j holds old index j + d
        if d != 0:
            for jj in range(W):
                j = jj if d > 0 else W - 1 - jj  # (copy away from the overlap)
                if 0 <= j + d < W:
                    for c in range(4):
                        L[r0 + j, c] = L[r0 + j + d, c]
                else:
                    L[r0 + j, L_HEAD] = -1
                    L[r0 + j, L_TAIL] = -1
                    L[r0 + j, L_QTY] = 0
                    L[r0 + j, L_CNT] = 0
    S[sym, S_BASE + side] = nb
    S[sym, S_NLEV + side] = 0
    S[sym, S_BEST + side] = -1
    o = L[pr, L_HEAD]
    while o >= 0:
        nxt = O[o, O_NEXT]
        i = O[o, O_PX] - nb
        if 0 <= i < W:
            _cut(L, O, pr, o, O[o, O_QTY])
            _push(L, O, r0 + i, o, o, 1, O[o, O_QTY])
        o = nxt
    n = 0
    best = -1
    for i in range(W):
        if L[r0 + i, L_CNT] > 0:
            n += 1
            if best < 0 or side == BUY:
                best = i
    S[sym, S_NLEV + side] = n
    S[sym, S_BEST + side] = best
    E[E_RECENTRES] += 1


@njit(**HOT)
def _centre(E, px):
    return max(1, px - E[E_W] // 2)


@njit(**HOT)
def _recentre_on_parked(E, S, L, O, sym, side):
    """The ladder side is empty and orders are parked: the window moves to the best."""
    o = L[_prow(E, sym, side), L_HEAD]
    best = O[o, O_PX]
    while o >= 0:
        if _better(side, O[o, O_PX], best):
            best = O[o, O_PX]
        o = O[o, O_NEXT]
    _recentre(E, S, L, O, sym, side, _centre(E, best))


@njit(**HOT)
def _append_far(E, S, L, O, slot):
    """``slot``'s price is outside its side's window.  If it would be the side's best
    (or the side is empty) the window moves to it, so the best is always a ladder level
    (matching never looks anywhere else); else the order is parked."""
    sym = O[slot, O_SYM]
    side = O[slot, O_SIDE]
    px = O[slot, O_PX]
    b = S[sym, S_BEST + side]
    if b < 0 or _better(side, px, S[sym, S_BASE + side] + b):
        if b < 0 and L[_prow(E, sym, side), L_CNT] == 0:
            S[sym, S_BASE + side] = _centre(E, px)  # empty side: nothing to move
        else:
            _recentre(E, S, L, O, sym, side, _centre(E, px))
        i = px - S[sym, S_BASE + side]
        _link(S, L, O, slot, sym, side, _row(E, sym, side, i), i)
    else:
        _push(L, O, _prow(E, sym, side), slot, slot, 1, O[slot, O_QTY])
        E[E_PARKED] += 1


# --- matching ------------------------------------------------------------------------

@njit(**HOT)
def _fillable(E, S, L, O, H, sym, side, limit, px, acct, want):
    """Quantity an order could take right now, up to ``want`` (own-account orders,
    which self-trade prevention would cancel, do not count)."""
    got = _fill_walk(E, S, L, O, H, sym, side, limit, px, acct, want, acct != 0 and _tracked(E, H, acct))
    if got < 0:  # the walk skipped too many own orders and tracked the account: again, O(levels)
        got = _fill_walk(E, S, L, O, H, sym, side, limit, px, acct, want, True)
    return got


@njit(**HOT)
def _fill_walk(E, S, L, O, H, sym, side, limit, px, acct, want, tracked):
    """``_fillable``'s walk: a ladder level in O(1) (its quantity, less the account's own
    there when ``tracked``), or order by order for an untracked account; then the parked
    orders within the limit.  -1 if it skipped more than E[E_FCAP] own orders and so
    began tracking the account."""
    opp = 1 - side
    skipped = 0
    b = S[sym, S_BEST + opp]
    if b < 0:
        return 0
    base = S[sym, S_BASE + opp]
    r0 = _row(E, sym, opp, 0)
    got = 0
    W = E[E_W]
    k = b
    while 0 <= k < W and got < want:
        lp = base + k
        if limit and ((side == BUY and lp > px) or (side == SELL and lp < px)):
            return got
        r = r0 + k
        if L[r, L_CNT] > 0:
            if acct == 0:
                got += L[r, L_QTY]
            elif tracked:
                got += L[r, L_QTY] - _own(E, H, acct, 2 * sym + opp, lp)
            else:
                o = L[r, L_HEAD]
                while o >= 0 and got < want:
                    if O[o, O_ACCT] != acct:
                        got += O[o, O_QTY]
                    else:
                        skipped += 1
                        if skipped > E[E_FCAP] and _track(E, H, O, acct):
                            return -1
                    o = O[o, O_NEXT]
        k += 1 if side == BUY else -1
    # past the window: the parked orders (all worse than it) within the limit
    o = L[_prow(E, sym, opp), L_HEAD]
    while o >= 0 and got < want:
        lp = O[o, O_PX]
        if not (limit and ((side == BUY and lp > px) or (side == SELL and lp < px))) and (
                acct == 0 or O[o, O_ACCT] != acct):
            got += O[o, O_QTY]
        o = O[o, O_NEXT]
    return got


@njit(**HOT, inline="always")
def _aggress(E, S, L, O, H, rep, racct, md, N, ts, oid, acct, side, sym, limit, px, qty, rest):
    """Match ``qty`` of order ``oid`` against the other side; rest the remainder
    (``rest``) or cancel it.  The ACK/MODIFIED report is already out."""
    opp = 1 - side
    r0 = _row(E, sym, opp, 0)
    left = qty
    while left > 0:
        b = S[sym, S_BEST + opp]
        if b < 0:
            break
        lp = S[sym, S_BASE + opp] + b  # (emptying the ladder can move the window)
        if limit and ((side == BUY and lp > px) or (side == SELL and lp < px)):
            break
        r = r0 + b
        o = L[r, L_HEAD]
        while left > 0 and o >= 0:
            nxt = O[o, O_NEXT]
            if acct != 0 and O[o, O_ACCT] == acct:
                q = O[o, O_QTY]
                _report(rep, racct, N, schema.R_CANCELLED, opp, schema.RS_SELF_TRADE, 0, sym, q, 0, lp,
                        O[o, O_ID], acct)
                _md(md, N, E, schema.K_DELETE, opp, sym, q, O[o, O_ID], lp, ts)
                _unlink(E, S, L, O, H, o, True)
                E[E_STP] += 1
                E[E_CANCELS] += 1
            else:
                rq = O[o, O_QTY]
                f = left if left < rq else rq
                left -= f
                rid = O[o, O_ID]
                E[E_TRADES] += 1  # (the trade itself is the pair of fill reports below)
                E[E_TRADED_QTY] += f
                _report(rep, racct, N, schema.R_FILL, side, 0,
                        schema.RF_AGGRESSOR | (schema.RF_DONE if left == 0 else 0), sym, f, left, lp, oid, acct)
                _report(rep, racct, N, schema.R_FILL, opp, 0, schema.RF_DONE if f == rq else 0, sym, f, rq - f,
                        lp, rid, O[o, O_ACCT])
                _md(md, N, E, schema.K_EXECUTE, opp, sym, f, rid, lp, ts)
                if f == rq:
                    _unlink(E, S, L, O, H, o, True)
                else:
                    O[o, O_QTY] = rq - f
                    L[r, L_QTY] -= f
                    S[sym, S_QTY + opp] -= f
                    if E[E_TN] != 0:
                        _own_change(E, H, O, o, -f)
            o = nxt
    if left == 0:
        return
    if rest:
        slot = E[E_FREE]
        if slot >= 0:
            E[E_FREE] = O[slot, O_NEXT]
            O[slot, O_ID] = oid
            O[slot, O_PX] = px
            O[slot, O_QTY] = left
            O[slot, O_ACCT] = acct
            O[slot, O_SIDE] = side
            O[slot, O_SYM] = sym
            _h_insert(E, H, O, oid, slot)
            _append(E, S, L, O, H, slot)
            _md(md, N, E, schema.K_ADD, side, sym, left, oid, px, ts)
            return
        reason = schema.RS_BOOK_FULL
    else:
        reason = schema.RS_UNFILLED
    _report(rep, racct, N, schema.R_CANCELLED, side, reason, 0, sym, left, 0, px if limit else 0, oid, acct)
    E[E_CANCELS] += 1


@njit(**HOT, inline="always")
def _sane(px):
    """Every price 1 .. MAX_PX_TICK is accepted, however far from the book (one outside
    its side's window is parked, or moves the window: ``_append_far``)."""
    return 0 < px <= MAX_PX_TICK


@njit(**HOT)
def _reject(E, rep, racct, N, side, reason, sym, oid, acct):
    _report(rep, racct, N, schema.R_REJECT, side, reason, 0, sym, 0, 0, 0, oid, acct)
    E[E_REJECTED] += 1


@njit(**HOT)
def _bad_new(S, side, ot, tif, sym, qty):
    """Why a new order is rejected (the first failed check, in this order)."""
    if side > 1:
        return schema.RS_BAD_SIDE
    if ot > schema.OT_MARKET or tif > schema.TIF_FOK:
        return schema.RS_BAD_TYPE
    if sym >= S.shape[0]:
        return schema.RS_BAD_SYMBOL
    if qty <= 0:
        return schema.RS_BAD_QTY
    return schema.RS_BAD_PRICE


@njit(**HOT, inline="always")
def _new_order(E, S, L, O, H, rep, racct, md, N, ts, c):
    oid = E[E_NEXT_ID]
    E[E_NEXT_ID] = oid + 1
    side = np.int64(c.side)
    sym = np.int64(c.symbol)
    acct = np.int64(c.account)
    qty = np.int64(c.qty)
    ot = np.int64(c.ord_type)
    tif = np.int64(c.tif)
    px = np.int64(c.px_tick)
    limit = ot == schema.OT_LIMIT
    if (side > 1) | (ot > schema.OT_MARKET) | (tif > schema.TIF_FOK) | (sym >= S.shape[0]) | (qty <= 0) | (
            limit & ((px <= 0) | (px > MAX_PX_TICK))):  # (one branch for the valid order)
        _reject(E, rep, racct, N, side, _bad_new(S, side, ot, tif, sym, qty), sym, oid, acct)
        return
    if not limit:
        px = 0
    if tif == schema.TIF_FOK and _fillable(E, S, L, O, H, sym, side, limit, px, acct, qty) < qty:
        _reject(E, rep, racct, N, side, schema.RS_FOK_UNFILLABLE, sym, oid, acct)
        return
    E[E_ACCEPTED] += 1
    _report(rep, racct, N, schema.R_ACK, side, 0, 0, sym, qty, qty, px, oid, acct)
    _aggress(E, S, L, O, H, rep, racct, md, N, ts, oid, acct, side, sym, limit, px, qty,
             limit and tif == schema.TIF_GTC)


@njit(**HOT, inline="always")
def _owned(E, O, H, rep, racct, N, c):
    """The slot of the resting order a cancel/modify targets, or -1 after rejecting it
    (unknown order, or another account's)."""
    oid = np.int64(c.order_id)
    acct = np.int64(c.account)
    slot = _h_find(E, H, O, oid) if oid > 0 else -1
    if slot < 0:
        _reject(E, rep, racct, N, np.int64(c.side), schema.RS_UNKNOWN_ORDER, np.int64(c.symbol), oid, acct)
        return -1
    if O[slot, O_ACCT] != acct:
        _reject(E, rep, racct, N, O[slot, O_SIDE], schema.RS_NOT_OWNER, O[slot, O_SYM], oid, acct)
        return -1
    return slot


@njit(**HOT, inline="always")
def _cancel(E, S, L, O, H, rep, racct, md, N, ts, c):
    slot = _owned(E, O, H, rep, racct, N, c)
    if slot < 0:
        return
    oid = O[slot, O_ID]
    acct = O[slot, O_ACCT]
    side = O[slot, O_SIDE]
    sym = O[slot, O_SYM]
    q = O[slot, O_QTY]
    px = O[slot, O_PX]
    _report(rep, racct, N, schema.R_CANCELLED, side, schema.RS_USER, 0, sym, q, 0, px, oid, acct)
    _md(md, N, E, schema.K_DELETE, side, sym, q, oid, px, ts)
    _unlink(E, S, L, O, H, slot, True)
    E[E_CANCELS] += 1


@njit(**HOT)
def _modify(E, S, L, O, H, rep, racct, md, N, ts, c):
    slot = _owned(E, O, H, rep, racct, N, c)
    if slot < 0:
        return
    oid = O[slot, O_ID]
    acct = O[slot, O_ACCT]
    side = O[slot, O_SIDE]
    sym = O[slot, O_SYM]
    qty = np.int64(c.qty)
    if qty <= 0:
        _reject(E, rep, racct, N, side, schema.RS_BAD_QTY, sym, oid, acct)
        return
    old_px = O[slot, O_PX]
    old_q = O[slot, O_QTY]
    px = np.int64(c.px_tick)
    if px <= 0:
        px = old_px
    elif not _sane(px):
        _reject(E, rep, racct, N, side, schema.RS_BAD_PRICE, sym, oid, acct)
        return
    E[E_MODIFIES] += 1
    _report(rep, racct, N, schema.R_MODIFIED, side, 0, 0, sym, qty, qty, px, oid, acct)
    if px == old_px and qty <= old_q:  # keeps its place
        d = old_q - qty
        if d > 0:
            O[slot, O_QTY] = qty
            i = px - S[sym, S_BASE + side]
            L[_row(E, sym, side, i if 0 <= i < E[E_W] else E[E_W]), L_QTY] -= d  # (or its parked row)
            S[sym, S_QTY + side] -= d
            if E[E_TN] != 0:
                _own_change(E, H, O, slot, -d)
            _md(md, N, E, schema.K_CANCEL, side, sym, d, oid, px, ts)
        return
    # loses its place: out of the book, then in again as a new arrival (it may trade)
    _md(md, N, E, schema.K_DELETE, side, sym, old_q, oid, old_px, ts)
    _unlink(E, S, L, O, H, slot, True)
    _aggress(E, S, L, O, H, rep, racct, md, N, ts, oid, acct, side, sym, True, px, qty, True)


@njit(**HOT_NOALIAS)
def process(cmds, start, n, ts, E, S, L, O, H, rep, racct, md, N, lat):
    """Process requests ``cmds[start:start+n]`` (``ORDER_IN_DTYPE``) stamped ``ts``
    (ns, the market data's ``ts_exch_ns``).  Reports, trades and market data are
    appended to ``rep``/``racct`` and ``md`` at ``N`` (``rep`` and ``md``: the
    ORDER_OUT_DTYPE / WIRE_MSG_DTYPE buffers viewed as int64 (n, 4) words).  If ``len(lat) > 0``,
    ``lat[start + j]`` gets request j's cost in CPU cycles.  Returns how many requests
    were processed: fewer than ``n`` when an output buffer could not hold the worst
    case of the next one (drain and call again).  No two array arguments may share
    memory (compiled ``noalias``)."""
    timed = len(lat) > 0
    md0 = N[N_MD]
    done = _process(cmds, start, n, ts, E, S, L, O, H, rep, racct, md, N, lat, timed)
    E[E_MD] += N[N_MD] - md0  # counted here, not per message
    return done


@njit(**HOT, inline="always")
def _process(cmds, start, n, ts, E, S, L, O, H, rep, racct, md, N, lat, timed):
    for j in range(n):
        c = cmds[start + j]
        t0 = rdtsc() if timed else 0
        # room for the worst case: every order on the book's other side filled (or
        # self-trade cancelled) = 2 reports + 1 trade + 1 md each, plus a few more
        # (every resting order: a modify's symbol is its order's, not the request's field)
        sym = np.int64(c.symbol)
        live = E[E_LIVE]
        if N[N_REP] + 2 * live + 4 > len(rep) or N[N_MD] + live + 3 > len(md):
            return j
        t = c.type
        if c._reserved != 0:
            _reject(E, rep, racct, N, np.int64(c.side), schema.RS_MALFORMED, sym, np.int64(c.order_id),
                    np.int64(c.account))
        elif t == schema.OE_NEW:
            _new_order(E, S, L, O, H, rep, racct, md, N, ts, c)
        elif t == schema.OE_CANCEL:
            _cancel(E, S, L, O, H, rep, racct, md, N, ts, c)
        elif t == schema.OE_MODIFY:
            _modify(E, S, L, O, H, rep, racct, md, N, ts, c)
        else:
            _reject(E, rep, racct, N, np.int64(c.side), schema.RS_BAD_TYPE, sym, np.int64(c.order_id),
                    np.int64(c.account))
        E[E_REQS] += 1
        if timed:
            lat[start + j] = rdtsc() - t0
    return n


# --- read-outs (PRINT, tests, recovery checks) -----------------------------------------

@njit(**HOT)
def levels(E, S, L, sym, side, px, qty, cnt):
    """Non-empty ladder levels of one side, best first, into px/qty/cnt; returns how
    many (at most ``len(px)``).  (Parked orders: ``parked``.)"""
    b = S[sym, S_BEST + side]
    if b < 0:
        return 0
    r0 = _row(E, sym, side, 0)
    base = S[sym, S_BASE + side]
    k = b
    m = 0
    W = E[E_W]
    while 0 <= k < W and m < len(px):
        r = r0 + k
        if L[r, L_CNT] > 0:
            px[m] = base + k
            qty[m] = L[r, L_QTY]
            cnt[m] = L[r, L_CNT]
            m += 1
        k += -1 if side == BUY else 1
    return m


@njit(**HOT)
def orders(E, S, L, O, sym, side, out):
    """Every ladder order of one side in priority order (best price first, then time):
    rows of (id, px, open qty, account) into ``out``; returns how many.  (The parked
    ones, all worse: ``parked``.)"""
    b = S[sym, S_BEST + side]
    if b < 0:
        return 0
    r0 = _row(E, sym, side, 0)
    k = b
    m = 0
    W = E[E_W]
    while 0 <= k < W and m < len(out):
        m = _rows_of(O, L[r0 + k, L_HEAD], out, m)
        k += -1 if side == BUY else 1
    return m


@njit(**HOT)
def parked(E, L, O, sym, side, out):
    """The parked orders of one side in arrival order (time priority within a price):
    rows of (id, px, open qty, account) into ``out``; returns how many."""
    return _rows_of(O, L[_prow(E, sym, side), L_HEAD], out, 0)


@njit(**HOT)
def n_parked(E, L, sym, side):
    return L[_prow(E, sym, side), L_CNT]


@njit(**HOT, inline="always")
def _rows_of(O, o, out, m):
    """Rows (id, px, open qty, account) of the orders linked from slot ``o`` into
    ``out`` from row ``m`` on, while it has room; returns the next free row."""
    while o >= 0 and m < len(out):
        out[m, 0] = O[o, O_ID]
        out[m, 1] = O[o, O_PX]
        out[m, 2] = O[o, O_QTY]
        out[m, 3] = O[o, O_ACCT]
        m += 1
        o = O[o, O_NEXT]
    return m


@njit(**HOT)
def cycles_per_ns(spin_ns):
    """Calibrate the cycle counter against CLOCK_MONOTONIC over ``spin_ns``."""
    t0 = monotonic_ns()
    c0 = rdtsc()
    while monotonic_ns() - t0 < spin_ns:
        pass
    return (rdtsc() - c0) / (monotonic_ns() - t0)
