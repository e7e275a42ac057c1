"""Compiled per-order (L3) book: an order table in front of the aggregated ladders.

Order-by-order feeds (Nasdaq ITCH 5.0, LOBSTER with order ids) name an order by its
reference only when they execute, cancel, delete or replace it.  This module keeps
every live order and resolves each ``schema.MD_L3_DTYPE`` message to the (symbol,
side, price, shares) it means, then drives the aggregated book of
``engine._book_kernels`` with it (``apply_msg`` with K_ADD / K_CANCEL / K_DELETE /
K_EXECUTE / K_TRADE / K_CLEAR, then ``after_msg``), so ladders, events and snapshots
are derived exactly as for aggregated input.  Design, sizing and figures:
docs/L3BOOK.md.

State (preallocated by ``new_table``, owned by the one book writer)
--------------------------------------------------------------------
* ``O`` int64 ``(capacity, 4)``, the order pool: one 32-byte row per order with a
  stable index: reference, price (ticks), ``qty | symbol << 32 | side << 48``
  (remaining shares >= 1 while live; 0 marks a free row), arrival priority.  A free
  row's priority word links the free list (LIFO: the row freed last is reused first,
  and it is still in cache).  Rows ``[0, E[E_HWM])`` have ever been used; scans
  (clear, queue position) stop there.
* ``Hd`` int32 ``(M,)``, the direct part of reference -> row: reference ``r`` lives in
  bucket ``r & (M - 1)`` (``M`` = 2-4x the capacity, a power of two).  Exchanges number
  orders in arrival order, so the orders a message names are mostly recent ones,
  whose buckets are neighbours (a few hot cache lines), and lookup, insert and delete
  touch one bucket.  When a bucket is taken by an order still live ``M`` references
  later, that older order moves to
* ``Hx`` int32 ``(X,)``, the overflow part: open addressing (Fibonacci hash, linear
  probing, backward-shift deletion: no tombstones, so probe lengths never degrade),
  ``X`` = 2-4x the capacity (load <= 1/2 even if every live order were there), probed
  only while it holds anything.  Any reference (random, reused, huge) still works:
  the direct part is then just a first guess.
* ``E`` int64 scalars (``E_*``): sizes, free list head, rows used, live and peak
  orders, next priority, the largest reference ever added (an add of a reference
  above it is new: no duplicate lookup).

Messages (``apply_batch_l3``; checks count ``bad_msgs`` like ``apply_batch``'s):

* L3_ADD: a live reference is a duplicate (counted, skipped); a full table counts
  ``l3_table_full`` and skips (later references to it are unknown); else the order
  enters with the next priority and K_ADD applies.
* L3_EXEC: K_EXECUTE of the shares at the order's price (a trade at that price, the
  aggressor the other side).  L3_EXEC_PX (ITCH C): printable (``side`` 1): K_EXECUTE at
  the order's level, the trade at ``px_tick``; non-printable (``side`` 0): the shares
  leave the level as K_CANCEL and no trade is printed (Nasdaq reports that volume in
  the cross message; printing both would count it twice).
* L3_CANCEL: K_CANCEL; L3_DELETE: K_DELETE of what remains.  An execution or cancel of
  more shares than remain is clamped (``l3_overfills``); an order left with 0 shares
  leaves the table.
* L3_REPLACE: the old order leaves (K_DELETE of its rest), the new reference enters at
  ``px_tick`` for ``qty`` on the old side with a new priority (K_ADD); one message, so
  at most one EV_BBO.  A new reference already live: counted duplicate, only the
  delete happens.  An unknown old reference: counted, skipped (the side is unknown).
* L3_TRADE: K_TRADE (hidden order, no book change), ``side`` the resting side.
* L3_CROSS: no book change and no event (the events' trade side is an aggressor side,
  which a cross has not); counted as a trade (``trades``) and the symbol's last trade
  becomes it with side -1.  A cross of 0 shares changes nothing.
* L3_CLEAR: every order of the symbol leaves the table (a scan of the used rows: rare)
  and K_CLEAR empties its ladders (and lifts a stale mark).
* L3_STALE: the symbol's book (every book: ``SYMBOL_ALL``) is marked stale (messages
  were lost), shown in its next snapshot, until an L3_CLEAR; nothing else changes.
* Unknown references: counted ``l3_unknown_refs`` and skipped.

The ladders are a window on the table: the ladder policy of ``_book_kernels`` (window,
re-centre, out of ladder) is applied to each resolved message, and whenever a message
moves a symbol's window its ladders are rebuilt from its live orders
(``_rebuild_levels``, a scan: re-centres are rare), so a level a re-centre evicted, or
an order added while its price was outside the window, is there again once the window
holds its price.  So each ladder is always the exact sum of the live orders inside its
window.  ``[book] uncross`` does not apply: a per-order book has no stale levels.

Prefetch: while applying message j, ``apply_batch_l3`` fetches the direct bucket of
message j + 2 ``PF_D`` and the pool row of message j + ``PF_D`` (a two-stage software
prefetch, ``llvm.prefetch``), so the order's cache lines are there when its message
comes; with hundreds of thousands of live orders most of them would not be
(docs/L3BOOK.md "Figures").

Build (``ring.jit.HOT``): no reference counting, no allocation; the small helpers are
``inline="always"``, the rare paths (overflow insert and delete, clear) plain calls,
and ``apply_msg`` / ``after_msg`` have one call site each (a replace's delete half is
the plain call ``_ladder_delete``): IR-level inlining is what compiling costs.
"""
from __future__ import annotations

import llvmlite.binding as _llb
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from obpipe.ring import schema
from obpipe.ring.atomics import monotonic_ns
from obpipe.ring.jit import HOT
from obpipe.ring.kernels import ring_claim

from obpipe.engine._book_kernels import (_PX_LIMIT, B_BASE, B_DIRTY, B_LAST_PX, B_LAST_QTY, B_LAST_SIDE, B_STALE,
                                         B_WIDTH, _level_grow, after_msg, apply_msg, clear_symbol, end_apply,
                                         end_batch, next_batch)

K_ADD = schema.K_ADD
K_CANCEL = schema.K_CANCEL
K_DELETE = schema.K_DELETE
K_EXECUTE = schema.K_EXECUTE
K_TRADE = schema.K_TRADE
K_CLEAR = schema.K_CLEAR
NO_PX = schema.NO_PX

# Pool columns.
O_REF = 0  # order reference
O_PX = 1  # limit price, ticks
O_QSS = 2  # remaining shares | symbol << 32 | side << 48; 0: free row
O_PRIO = 3  # arrival priority (smaller: earlier); free row: next free row, -1 at the end
NO_COLS = 4

# Scalars E[].
E_CAP = 0  # rows of the pool
E_HM = 1  # direct part size M (power of two)
E_XM = 2  # overflow size X (power of two)
E_XSHIFT = 3  # 64 - log2(X): the Fibonacci hash's shift
E_XN = 4  # entries in the overflow part
E_FREE = 5  # head of the free list of rows (-1: none)
E_HWM = 6  # rows ever used: [0, E_HWM)
E_LIVE = 7  # live orders
E_PEAK = 8  # most live orders at once
E_PRIO = 9  # next arrival priority
E_MAXREF = 10  # largest reference ever added (signed compare); -1 before the first
NE = 11

_QMASK = np.int64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.int32(-1)


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def new_table(capacity: int):
    """Allocate an order table for ``capacity`` live orders: ``(O, Hd, Hx, E)``.

    Memory: 32 B of pool per order, plus 4 B per direct and per overflow bucket (2-4
    buckets per order each): 48-64 B per order of capacity."""
    capacity = int(capacity)
    if not 1 <= capacity < 1 << 30:
        raise ValueError(f"order table capacity must be 1 .. 2**30 - 1 orders, got {capacity}")
    m = _pow2_at_least(2 * capacity)
    O = np.zeros((capacity, NO_COLS), np.int64)
    Hd = np.full(m, _EMPTY, np.int32)
    Hx = np.full(m, _EMPTY, np.int32)
    E = np.zeros(NE, np.int64)
    E[E_CAP] = capacity
    E[E_HM] = m
    E[E_XM] = m
    E[E_XSHIFT] = 64 - (m.bit_length() - 1)
    reset_table(O, Hd, Hx, E)
    return O, Hd, Hx, E


def reset_table(O, Hd, Hx, E):
    """Forget every order (sizes kept)."""
    O[:] = 0
    Hd[:] = _EMPTY
    Hx[:] = _EMPTY
    E[E_XN] = 0
    E[E_FREE] = -1
    E[E_HWM] = 0
    E[E_LIVE] = 0
    E[E_PEAK] = 0
    E[E_PRIO] = 0
    E[E_MAXREF] = -1


# --- prefetch ----------------------------------------------------------------------------

_PREFETCH = "llvm.prefetch.p0" if _llb.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint: bring word ``i`` of C-contiguous ``arr`` (flat index) into the cache
    (``llvm.prefetch``: read, keep; x86 ``prefetcht0``).  Never faults."""
    if not (isinstance(arr, types.Array) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen


#: Prefetch distance, messages: the direct bucket of message j + 2 PF_D and the pool row
#: of message j + PF_D are fetched while message j is applied.
PF_D = 8


# --- reference -> row ------------------------------------------------------------------


@njit(**HOT, inline="always")
def _x_home(E, ref):
    """Overflow bucket of ``ref``: multiplicative (Fibonacci) hash, top bits."""
    return np.int64((np.uint64(ref) * _GOLDEN) >> np.uint64(E[E_XSHIFT]))


@njit(**HOT)
def _x_find(O, Hx, E, ref):
    """Row of ``ref`` in the overflow part, or -1."""
    mx = E[E_XM] - 1
    i = _x_home(E, ref)
    while True:
        r = Hx[i]
        if r < 0:
            return np.int64(-1)
        if O[r, O_REF] == ref:
            return np.int64(r)
        i = (i + 1) & mx


@njit(**HOT, inline="always")
def find(O, Hd, Hx, E, ref):
    """Row of live order ``ref``, or -1: its direct bucket, else (only while the
    overflow part holds anything) the overflow probe."""
    r = np.int64(Hd[np.uint64(ref & (E[E_HM] - 1))])
    if r >= 0 and O[np.uint64(r), O_REF] == ref:
        return r
    if E[E_XN] == 0:
        return np.int64(-1)
    return _x_find(O, Hx, E, ref)


@njit(**HOT)
def _x_insert(O, Hx, E, ref, row):
    mx = E[E_XM] - 1
    i = _x_home(E, ref)
    while Hx[i] >= 0:
        i = (i + 1) & mx
    Hx[i] = row
    E[E_XN] += 1


@njit(**HOT)
def _x_delete(O, Hx, E, ref):
    """Remove ``ref`` (present) from the overflow part: linear probing with
    backward-shift deletion (an entry after the hole moves into it unless its home lies
    cyclically in (hole, its slot]), so no tombstones."""
    mx = E[E_XM] - 1
    i = _x_home(E, ref)
    while O[Hx[i], O_REF] != ref:
        i = (i + 1) & mx
    j = i
    while True:
        j = (j + 1) & mx
        r = Hx[j]
        if r < 0:
            break
        k = _x_home(E, O[r, O_REF])
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            Hx[i] = r
            i = j
    Hx[i] = _EMPTY
    E[E_XN] -= 1


@njit(**HOT, inline="always")
def _h_insert(O, Hd, Hx, E, ref, row):
    b = ref & (E[E_HM] - 1)
    old = np.int64(Hd[b])
    if old >= 0:  # an order M references older still lives: it moves to the overflow part
        _x_insert(O, Hx, E, O[old, O_REF], old)
    Hd[b] = row


@njit(**HOT, inline="always")
def _h_delete(O, Hd, Hx, E, ref, row):
    b = ref & (E[E_HM] - 1)
    if Hd[b] == row:
        Hd[b] = _EMPTY
    else:
        _x_delete(O, Hx, E, ref)


# --- rows -------------------------------------------------------------------------------


@njit(**HOT, inline="always")
def _enter(O, Hd, Hx, E, ref, s, side, px, q):
    """A new live order: its row, or -1 when the pool is full (nothing changed)."""
    row = E[E_FREE]
    if row >= 0:
        E[E_FREE] = O[row, O_PRIO]
    elif E[E_HWM] < E[E_CAP]:
        row = E[E_HWM]
        E[E_HWM] = row + 1
    else:
        return np.int64(-1)
    O[row, O_REF] = ref
    O[row, O_PX] = px
    O[row, O_QSS] = q | (s << 32) | (side << 48)
    O[row, O_PRIO] = E[E_PRIO]
    E[E_PRIO] += 1
    _h_insert(O, Hd, Hx, E, ref, row)
    if ref > E[E_MAXREF]:
        E[E_MAXREF] = ref
    live = E[E_LIVE] + 1
    E[E_LIVE] = live
    if live > E[E_PEAK]:
        E[E_PEAK] = live
    return row


@njit(**HOT, inline="always")
def _leave(O, Hd, Hx, E, row, ref):
    """Order ``ref`` at ``row`` leaves: out of the index, its row to the free list."""
    _h_delete(O, Hd, Hx, E, ref, row)
    O[row, O_QSS] = 0
    O[row, O_PRIO] = E[E_FREE]
    E[E_FREE] = row
    E[E_LIVE] -= 1


@njit(**HOT)
def _forget_symbol(O, Hd, Hx, E, s):
    """Every live order of symbol ``s`` leaves (a scan of the used rows).  Returns how many."""
    n = 0
    for row in range(E[E_HWM]):
        w = O[row, O_QSS]
        if w != 0 and ((w >> 32) & 0xFFFF) == s:
            _leave(O, Hd, Hx, E, row, O[row, O_REF])
            n += 1
    return n


# --- the batch --------------------------------------------------------------------------


@njit(**HOT)
def _ladder_delete(lad, S, C, s, side, px, q):
    """A replace's first half on the ladder: K_DELETE of the old order's rest (a plain
    call: one compiled copy of ``apply_msg`` fewer in ``apply_batch_l3``)."""
    apply_msg(lad, S, C, s, K_DELETE, side, px, q, False)


@njit(**HOT)
def _rebuild_levels(lad, S, O, E, s):
    """Symbol ``s``'s ladders := the sum of its live orders inside its window (a scan of
    the used rows), after the window moved: orders of levels a re-centre evicted, or
    added while outside the window, are back as soon as the window holds them again.
    The stale mark stays."""
    stale = S[s, B_STALE]
    clear_symbol(lad, S, s)
    S[s, B_STALE] = stale
    base = S[s, B_BASE]
    w = S[s, B_WIDTH]
    for row in range(E[E_HWM]):
        x = O[row, O_QSS]
        if x != 0 and ((x >> 32) & 0xFFFF) == s:
            i = O[row, O_PX] - base
            if i >= 0 and i < w:
                _level_grow(lad, S, s, x >> 48, i, x & _QMASK)


@njit(**HOT)
def _mark_stale(S, dirty, s):
    """Stale mark for symbol s, or every symbol (SYMBOL_ALL): published with the next
    snapshot, until an L3_CLEAR."""
    lo, hi = (0, S.shape[0]) if s == schema.SYMBOL_ALL else (s, s + 1)
    for x in range(lo, hi):
        S[x, B_STALE] = 1
        if S[x, B_DIRTY] == 0:
            S[x, B_DIRTY] = 1
            dirty[0] += 1
            dirty[dirty[0]] = x


@njit(**HOT)
def apply_batch_l3(md, start, n, mask, lad, S, C, ev, ev_ctrl, dirty, O, Hd, Hx, E):
    """Apply ``MD_L3_DTYPE`` messages ``md[(start + j) & mask]`` for j in 0..n-1
    (``mask = -1`` for a plain array) to the order table ``O, Hd, Hx, E`` and, through
    it, to the ladders, exactly as ``_book_kernels.apply_batch`` does for aggregated
    messages (events into the events ring, published at the end; touched symbols
    appended to ``dirty``).  Returns n.

    Each kind resolves to one K_* on one (symbol, side, price, shares), then one
    ``apply_msg`` and one ``after_msg`` (a single call site each: IR-level inlining is
    what compiling costs)."""
    ev_cap = ev.shape[0]
    ev_mask = ev_cap - 1
    ev_head, ev_free = ring_claim(ev_ctrl, ev_cap, ev_cap)
    ne = 0
    dropped = 0
    n_sym = S.shape[0]
    hm = E[E_HM] - 1
    for j in range(n):
        # a two-stage prefetch: the bucket two distances ahead, the row one distance ahead
        if j + 2 * PF_D < n:
            _prefetch(Hd, np.int64(md[(start + j + 2 * PF_D) & mask].ref) & hm)
        if j + PF_D < n:
            r = Hd[np.int64(md[(start + j + PF_D) & mask].ref) & hm]
            if r >= 0:
                _prefetch(O, np.int64(r) * NO_COLS)
        m = md[np.uint64((start + j) & mask)]  # (unsigned indices: no negative-index wraparound)
        kind = np.int64(m.kind)
        ref = np.int64(m.ref)
        q = np.int64(m.qty)
        px = np.int64(m.px_tick)
        bad_px = px <= -_PX_LIMIT or px >= _PX_LIMIT
        if kind == schema.L3_ADD:
            s = np.int64(m.symbol)
            side = np.int64(m.side)
            if s >= n_sym or side > 1 or q <= 0 or bad_px:
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
            if ref <= E[E_MAXREF] and find(O, Hd, Hx, E, ref) >= 0:
                C[schema.ST_BOOK_L3_DUPLICATE] += 1
                continue
            if _enter(O, Hd, Hx, E, ref, s, side, px, q) < 0:
                C[schema.ST_BOOK_L3_FULL] += 1
                continue
            lk = K_ADD
            tpx = px
        elif kind >= schema.L3_EXEC and kind <= schema.L3_REPLACE:
            if (kind != schema.L3_DELETE and q <= 0) or (kind == schema.L3_EXEC_PX and bad_px) or (
                    kind == schema.L3_REPLACE and bad_px):
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
            row = find(O, Hd, Hx, E, ref)
            if row < 0:
                C[schema.ST_BOOK_L3_UNKNOWN] += 1
                continue
            w = O[row, O_QSS]
            rem = w & _QMASK
            s = (w >> 32) & 0xFFFF
            side = w >> 48
            opx = O[row, O_PX]
            tpx = opx
            if kind == schema.L3_REPLACE:
                _leave(O, Hd, Hx, E, row, ref)
                nref = np.int64(m.new_ref)
                if nref <= E[E_MAXREF] and find(O, Hd, Hx, E, nref) >= 0:
                    C[schema.ST_BOOK_L3_DUPLICATE] += 1  # the old order leaves all the same
                    lk = K_DELETE
                    px = opx
                    q = rem
                else:
                    _ladder_delete(lad, S, C, s, side, opx, rem)  # (never moves the window)
                    _enter(O, Hd, Hx, E, nref, s, side, px, q)  # (a row was just freed)
                    lk = K_ADD
            else:
                if kind == schema.L3_DELETE:
                    q = rem
                elif q > rem:
                    C[schema.ST_BOOK_L3_OVERFILL] += 1
                    q = rem
                if q == rem:
                    _leave(O, Hd, Hx, E, row, ref)
                else:
                    O[row, O_QSS] = w - q
                if kind == schema.L3_EXEC:
                    lk = K_EXECUTE
                elif kind == schema.L3_EXEC_PX:
                    lk = K_EXECUTE if m.side != 0 else K_CANCEL
                    tpx = px
                elif kind == schema.L3_CANCEL:
                    lk = K_CANCEL
                else:
                    lk = K_DELETE
                px = opx
        elif kind == schema.L3_TRADE or kind == schema.L3_CROSS:
            s = np.int64(m.symbol)
            side = np.int64(m.side)
            if s >= n_sym or bad_px or (kind == schema.L3_TRADE and (side > 1 or q <= 0)):
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
            lk = K_TRADE
            tpx = px
        elif kind == schema.L3_CLEAR:
            s = np.int64(m.symbol)
            if s >= n_sym:
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
            _forget_symbol(O, Hd, Hx, E, s)
            lk = K_CLEAR
            side = 0
            tpx = px
        elif kind == schema.L3_STALE:
            s = np.int64(m.symbol)
            if s >= n_sym and s != schema.SYMBOL_ALL:
                C[schema.ST_BOOK_BAD_MSG] += 1
                continue
            _mark_stale(S, dirty, s)
            continue
        else:
            C[schema.ST_BOOK_BAD_MSG] += 1
            continue
        base0 = S[s, B_BASE]
        if kind == schema.L3_CROSS:
            # no aggressor: last trade with side -1, no EV_TRADE (after_msg: no book change)
            trade = False
            if q > 0:
                C[schema.ST_BOOK_TRADES] += 1
                S[s, B_LAST_PX] = px
                S[s, B_LAST_QTY] = q
                S[s, B_LAST_SIDE] = -1
        else:
            # never uncross: a per-order book has no stale levels to remove
            trade, _ = apply_msg(lad, S, C, s, lk, side, px, q, False)
            if S[s, B_BASE] != base0 and base0 != NO_PX:
                _rebuild_levels(lad, S, O, E, s)
        ne, dropped = after_msg(lad, S, C, ev, ev_head, ev_mask, ev_free, ne, dropped, dirty, s, lk, side,
                                np.int64(m.seq), np.int64(m.ts_exch_ns), base0, trade, tpx, q, False)
    end_apply(C, ev_ctrl, ev_head, ne, dropped, n)
    C[schema.ST_BOOK_L3_LIVE] = E[E_LIVE]
    C[schema.ST_BOOK_L3_PEAK] = E[E_PEAK]
    C[schema.ST_BOOK_L3_CAPACITY] = E[E_CAP]
    return n


@njit(**HOT)
def drain_l3(md_ctrl, md, max_batch, budget, lad, S, C, ev, ev_ctrl, n_levels, dirty, snap_words,
             snap_base0, slot_words, pay, lv_px, lv_qty, row, hist, hist_local, spin_iters, yield_iters,
             O, Hd, Hx, E, doze_ns=0):
    """``_book_kernels.drain`` for an md ring of ``MD_L3_DTYPE`` records: the same loop
    (``next_batch``, apply, ``end_batch``) with ``apply_batch_l3`` and the order table
    ``O, Hd, Hx, E`` after the backoff's arguments; the L3 counters are copied to the stats row
    too.  Returns messages applied."""
    done = 0
    mask = md.shape[0] - 1
    while done < budget:
        tail, n = next_batch(md_ctrl, max_batch, spin_iters, yield_iters, doze_ns)
        if n == 0:
            break
        ts = monotonic_ns()
        apply_batch_l3(md, tail, n, mask, lad, S, C, ev, ev_ctrl, dirty, O, Hd, Hx, E)
        end_batch(md_ctrl, md, tail, n, mask, lad, S, C, n_levels, dirty, snap_words, snap_base0, slot_words, pay,
                  lv_px, lv_qty, row, hist, hist_local, ts, schema.ST_BOOK_L3_OVERFILL)
        done += n
    return done


# --- queries (not the hot path) -----------------------------------------------------------


@njit(**HOT)
def queue_position(O, Hd, Hx, E, ref):
    """(shares ahead, orders ahead) of live order ``ref`` at its price level: the live
    orders of its symbol, side and price with an earlier priority.  (-1, -1) when
    ``ref`` is not live.  A scan of the used rows (docs/L3BOOK.md: why not per-level
    lists)."""
    row = find(O, Hd, Hx, E, ref)
    if row < 0:
        return np.int64(-1), np.int64(-1)
    key = O[row, O_QSS] >> 32  # symbol and side
    px = O[row, O_PX]
    prio = O[row, O_PRIO]
    shares = np.int64(0)
    orders = np.int64(0)
    for r in range(E[E_HWM]):
        w = O[r, O_QSS]
        if (w >> 32) == key and w != 0 and O[r, O_PX] == px and O[r, O_PRIO] < prio:
            shares += w & _QMASK
            orders += 1
    return shares, orders


@njit(**HOT)
def lookup(O, Hd, Hx, E, ref):
    """Row of live order ``ref`` or -1 (the Python face reads the row)."""
    return find(O, Hd, Hx, E, ref)
