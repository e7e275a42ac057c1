"""Peer baselines: how fast do two public order-book libraries apply our L2 stream?

The stream is the obpipe book stream as four equal-length int64 arrays
``kind, side, px_tick, qty`` (kinds as in ``ring/schema.py``: ADD=1 level += qty,
CANCEL=2 / DELETE=3 / EXECUTE=4 level -= qty, TRADE=5 hidden trade (book
unchanged), SET_LEVEL=6 level := qty (0 removes), CLEAR=7 empty both sides,
HEARTBEAT=8 nothing; side 0 = bid, 1 = ask).  Both peers store *absolute* level
sizes, so each adapter turns our deltas into absolute sizes, each in the way
that is natural (and fastest) for that library.  Each function returns the
median msgs/s over ``repeats`` runs, every run on a fresh book applying the
whole stream, and can assert the final best bid / best ask (in ticks).

order-book 0.6.1 (bmoscon, C extension, import name ``order_book``)
    Fed exactly as its README shows (https://github.com/bmoscon/orderbook,
    README "Basic Usage", also the PyPI long description): ``ob = OrderBook()``,
    ``ob.bids[price] = size``, ``del ob.bids[price]``, best level via
    ``ob.bids.index(0)`` / ``ob.asks.index(0)``; prices are Python floats
    (``px_tick * 0.01``, converted once, outside the timed region).  The
    per-message loop is plain Python (that is how the library is used) but
    tight: lists instead of numpy scalars, locals bound once, dispatch on the
    most common kinds first.  The current level size needed to turn a delta
    into an absolute size is read back from the book itself (``b[p]``,
    guarded by ``p in b`` for ADD because ``SortedDict`` has no ``.get`` and
    ``b[missing]`` raises KeyError) -- no shadow Python dict.  CLEAR is
    ``ob.bids = {}; ob.asks = {}``, which resets the existing SortedDict objects
    in place (checked: the bound ``ob.bids`` object stays the same).
    Caveat, from the C source (orderbook/sorteddict.c): a side is a plain
    ``dict`` plus a *lazily* rebuilt sorted key tuple -- ``__setitem__`` only marks
    it dirty and the full sort happens on the next ``index()``/iteration.  So
    with nobody reading the top of book per message, the default run is
    effectively "dict updates in a Python loop".  ``read_top_each_msg=True``
    additionally reads ``index(0)`` of the touched side after every book-changing
    message (what a consumer that needs the BBO on each update pays).

hftbacktest 2.4.4 (nkaz001, Rust core, numba bindings)
    The 2.x Python package does *not* expose a standalone market depth with
    ``update_bid_depth``/``update_ask_depth``: ``hftbacktest.binding`` only wraps
    read accessors of ``HashMapMarketDepth`` / ``ROIVectorMarketDepth``
    (``best_bid_tick``, ``bid_qty_at_tick``, ...) obtained from a backtester via
    ``hbt.depth(asset_no)``, plus ``FuseMarketDepth`` (a BBO+depth fuser with no
    best-price read-back).  The L2 update functions exist only in the Rust crate
    (``L2MarketDepth`` trait, https://docs.rs/hftbacktest/latest/hftbacktest/depth/trait.L2MarketDepth.html),
    where the backtester's local processor calls them for every depth event.
    So the closest supported route -- and the one its docs recommend for speed
    (https://hftbacktest.readthedocs.io/en/latest/tutorials/Getting%20Started.html:
    normalized feed as a numpy ``event_dtype`` array given to
    ``BacktestAsset().data(...)``, ``HashMapMarketDepthBacktest([asset])``, driven
    from a ``numba.njit`` function with ``hbt.elapse(...)``; data format at
    https://hftbacktest.readthedocs.io/en/latest/data.html) -- is: convert the
    stream once to an ``event_dtype`` array, build a backtester per run, and time
    one njit call ``hbt.elapse(<beyond the end>)``, during which the Rust core
    applies every event to its local ``HashMapMarketDepth`` (``update_bid_depth``
    / ``update_ask_depth`` / ``clear_depth``), with no per-event Python or numba
    round trip.  Compile time is excluded by a warm-up run on a short prefix.
    Absolute sizes: the depth's read-back (``bid_qty_at_tick``) is only callable
    *between* elapse steps, so using it would mean one elapse per message; instead
    absolute level quantities are precomputed outside the timed region by a
    simple numba pass (``_hbt_encode``) -- the choice the task allows.
    Encoding per message (one event each, ``exch_ts == local_ts == i + 1`` ns):
      ADD/CANCEL/DELETE/EXECUTE/SET_LEVEL -> DEPTH_EVENT|LOCAL_EVENT|BUY/SELL_EVENT,
          qty = new absolute level size (0 removes the level);
      TRADE -> TRADE_EVENT|LOCAL_EVENT, aggressor = the other side than the
          resting ``side`` (ignored by the depth; ``last_trades_capacity`` is 0);
      CLEAR -> DEPTH_CLEAR_EVENT|LOCAL_EVENT with no side flag (= clear both sides);
      HEARTBEAT -> LOCAL_EVENT with no kind bits (consumed, changes nothing).
    Only LOCAL_EVENT is set: the strategy-visible local book is the peer's book;
    also flagging EXCH_EVENT would make its exchange simulator maintain a second
    copy of the depth, which obpipe does not do.
    ``depth="roivec"`` runs the same thing on ``ROIVectorMarketDepthBacktest``
    (dense vector over a range of interest; ROI = stream's min..max tick).
    Caveat found while writing this: ``BacktestAsset.data(ndarray)`` *borrows*
    the array's buffer (no copy) -- the array must outlive the backtester, or
    the run reads freed memory (observed: a silently empty book).  Also the
    depth resolves crossed books its own way (an incoming bid at/above the best
    ask moves the best ask); a valid, uncrossed stream is assumed.

Run this file to self-test both adapters on a ~200k-message random valid stream
and print the rates as JSON.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
from numba import njit, types
from numba.typed import Dict

# Message kinds / sides (mirror ring/schema.py K_* and SIDE_*; kept local so this
# benchmark helper does not depend on the engine package layout).
ADD, CANCEL, DELETE, EXECUTE, TRADE, SET_LEVEL, CLEAR, HEARTBEAT = 1, 2, 3, 4, 5, 6, 7, 8
BID, ASK = 0, 1
TICK_SIZE = 0.01  # price = px_tick * TICK_SIZE for the float-priced peers

__all__ = ["peer_order_book_msgs_per_s", "peer_hftbacktest_msgs_per_s"]


def _as_stream(kind, side, px_tick, qty):
    arrs = [np.ascontiguousarray(a, dtype=np.int64) for a in (kind, side, px_tick, qty)]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("kind, side, px_tick, qty must have equal length")
    if n == 0:
        raise ValueError("empty stream")
    return arrs


def _check_best(who, got_bid, got_ask, expect_bid, expect_ask):
    if expect_bid is not None:
        assert got_bid == expect_bid, f"{who}: best bid tick {got_bid} != expected {expect_bid}"
    if expect_ask is not None:
        assert got_ask == expect_ask, f"{who}: best ask tick {got_ask} != expected {expect_ask}"


# --------------------------------------------------------------------------------------
# order-book (bmoscon)
# --------------------------------------------------------------------------------------

def _ob_apply(ob, kinds, sides, prices, qtys):
    """Apply the stream to ``ob``.  Hot loop: keep it tight (locals, lists, zip)."""
    books = (ob.bids, ob.asks)
    for k, s, p, q in zip(kinds, sides, prices, qtys):
        if k == 1:  # ADD: level += q
            b = books[s]
            if p in b:
                b[p] += q
            else:
                b[p] = q
        elif k <= 4:  # CANCEL / DELETE / EXECUTE: level -= q (level exists: valid stream)
            b = books[s]
            r = b[p] - q
            if r:
                b[p] = r
            else:
                del b[p]
        elif k == 6:  # SET_LEVEL: level := q, 0 removes
            b = books[s]
            if q:
                b[p] = q
            elif p in b:
                del b[p]
        elif k == 7:  # CLEAR: resets both SortedDicts in place
            ob.bids = {}
            ob.asks = {}
        # 5 TRADE (hidden), 8 HEARTBEAT: book unchanged


def _ob_apply_read_top(ob, kinds, sides, prices, qtys):
    """Same as ``_ob_apply`` plus reading the touched side's top level after every
    book-changing message (forces the library's lazy key sort each time)."""
    books = (ob.bids, ob.asks)
    top = None
    for k, s, p, q in zip(kinds, sides, prices, qtys):
        if k == 1:
            b = books[s]
            if p in b:
                b[p] += q
            else:
                b[p] = q
        elif k <= 4:
            b = books[s]
            r = b[p] - q
            if r:
                b[p] = r
            else:
                del b[p]
        elif k == 6:
            b = books[s]
            if q:
                b[p] = q
            elif p in b:
                del b[p]
        else:
            if k == 7:
                ob.bids = {}
                ob.asks = {}
            continue
        if b:
            top = b.index(0)
    return top


def _ob_best_ticks(ob):
    bids, asks = ob.bids, ob.asks
    bb = round(bids.index(0)[0] / TICK_SIZE) if len(bids) else None
    ba = round(asks.index(0)[0] / TICK_SIZE) if len(asks) else None
    return bb, ba


def peer_order_book_msgs_per_s(kind, side, px_tick, qty, repeats=3,
                               expect_best_bid_tick=None, expect_best_ask_tick=None,
                               read_top_each_msg=False) -> float:
    """Median msgs/s of ``order_book.OrderBook`` applying the stream (fresh book per run).

    Outside the timed region: numpy -> Python lists, float prices ``px_tick * 0.01``.
    Inside: the Python loop in ``_ob_apply`` (or ``_ob_apply_read_top`` when
    ``read_top_each_msg``).  After each run the best bid/ask (ticks) are asserted
    against ``expect_best_*_tick`` when given.
    """
    from order_book import OrderBook

    kind, side, px_tick, qty = _as_stream(kind, side, px_tick, qty)
    n = len(kind)
    kinds = kind.tolist()
    sides = side.tolist()
    prices = (px_tick * TICK_SIZE).tolist()
    qtys = qty.tolist()
    apply = _ob_apply_read_top if read_top_each_msg else _ob_apply
    perf = time.perf_counter

    rates = []
    for _ in range(max(1, int(repeats))):
        ob = OrderBook()
        t0 = perf()
        apply(ob, kinds, sides, prices, qtys)
        dt = perf() - t0
        rates.append(n / dt)
        bb, ba = _ob_best_ticks(ob)
        _check_best("order_book", bb, ba, expect_best_bid_tick, expect_best_ask_tick)
    return float(statistics.median(rates))


# --------------------------------------------------------------------------------------
# hftbacktest
# --------------------------------------------------------------------------------------

# hftbacktest event flags (hftbacktest/types.py), repeated as plain ints for numba.
_HBT_DEPTH_EVENT = 1
_HBT_TRADE_EVENT = 2
_HBT_DEPTH_CLEAR_EVENT = 3
_HBT_LOCAL_EVENT = 1 << 30
_HBT_BUY_EVENT = 1 << 29
_HBT_SELL_EVENT = 1 << 28


@njit(cache=False)
def _hbt_encode(kind, side, px_tick, qty, tick_size, ev, ts, px, aq):
    """Stream -> hftbacktest event fields, with absolute level quantities.

    Keeps one int64 level-size map per side (outside the timed region) so every
    book-changing message becomes one depth event carrying the new absolute size.
    """
    bids = Dict.empty(key_type=types.int64, value_type=types.int64)
    asks = Dict.empty(key_type=types.int64, value_type=types.int64)
    for i in range(kind.shape[0]):
        k = kind[i]
        s = side[i]
        t = px_tick[i]
        q = qty[i]
        ts[i] = i + 1
        px[i] = t * tick_size
        book = bids if s == 0 else asks
        sflag = _HBT_BUY_EVENT if s == 0 else _HBT_SELL_EVENT
        if k == 1 or k == 2 or k == 3 or k == 4 or k == 6:
            cur = book.get(t, 0)
            if k == 1:
                new = cur + q
            elif k == 6:
                new = q
            else:
                new = cur - q
            if new > 0:
                book[t] = new
            elif t in book:
                del book[t]
            ev[i] = _HBT_DEPTH_EVENT | _HBT_LOCAL_EVENT | sflag
            aq[i] = new
        elif k == 5:
            # side = resting side; hftbacktest's trade side flag is the aggressor.
            aflag = _HBT_SELL_EVENT if s == 0 else _HBT_BUY_EVENT
            ev[i] = _HBT_TRADE_EVENT | _HBT_LOCAL_EVENT | aflag
            aq[i] = q
        elif k == 7:
            bids.clear()
            asks.clear()
            ev[i] = _HBT_DEPTH_CLEAR_EVENT | _HBT_LOCAL_EVENT  # no side flag: both sides
            px[i] = 0.0
            aq[i] = 0
        else:  # HEARTBEAT (and anything unknown): a local no-op event
            ev[i] = _HBT_LOCAL_EVENT
            px[i] = 0.0
            aq[i] = 0


def _hbt_events(kind, side, px_tick, qty):
    from hftbacktest.binding import event_dtype

    n = len(kind)
    ev = np.empty(n, np.int64)
    ts = np.empty(n, np.int64)
    px = np.empty(n, np.float64)
    aq = np.empty(n, np.int64)
    _hbt_encode(kind, side, px_tick, qty, TICK_SIZE, ev, ts, px, aq)
    out = np.zeros(n, event_dtype)
    out["ev"] = ev.astype(np.uint64)
    out["exch_ts"] = ts
    out["local_ts"] = ts
    out["px"] = px
    out["qty"] = aq.astype(np.float64)
    return out


@njit
def _hbt_drive(hbt):
    # One elapse far past the last timestamp: the Rust core applies every event to
    # the local market depth.  Returns (elapse rc, best bid tick, best ask tick).
    rc = hbt.elapse(1 << 60)
    d = hbt.depth(0)
    return rc, d.best_bid_tick, d.best_ask_tick


def _hbt_build(events, depth, roi):
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest, ROIVectorMarketDepthBacktest

    asset = (
        BacktestAsset()
        .data(events)  # NB: borrowed buffer -- caller keeps ``events`` alive
        .linear_asset(1.0)
        .constant_order_latency(0, 0)
        .risk_adverse_queue_model()
        .no_partial_fill_exchange()
        .trading_value_fee_model(0.0, 0.0)
        .tick_size(TICK_SIZE)
        .lot_size(1.0)
        .last_trades_capacity(0)
    )
    if depth == "hashmap":
        return HashMapMarketDepthBacktest([asset])
    if depth == "roivec":
        asset.roi_lb(roi[0] * TICK_SIZE).roi_ub(roi[1] * TICK_SIZE)
        return ROIVectorMarketDepthBacktest([asset])
    raise ValueError(f"depth must be 'hashmap' or 'roivec', not {depth!r}")


def _hbt_tick_or_none(t):
    # hftbacktest: INVALID_MIN / INVALID_MAX (i64 min/max) mean "no level".
    return None if t in (np.iinfo(np.int64).min, np.iinfo(np.int64).max) else int(t)


_HBT_WARM = set()


def peer_hftbacktest_msgs_per_s(kind, side, px_tick, qty, repeats=3,
                                expect_best_bid_tick=None, expect_best_ask_tick=None,
                                depth="hashmap") -> float:
    """Median msgs/s of hftbacktest's Rust market depth applying the stream.

    Outside the timed region: encoding to ``event_dtype`` with absolute level
    sizes (``_hbt_encode``), building a fresh backtester per run, and the numba
    compile (warm-up on a short prefix).  Timed: the single njit ``_hbt_drive``
    call.  ``depth`` is ``"hashmap"`` (HashMapMarketDepthBacktest, the docs'
    default) or ``"roivec"`` (ROIVectorMarketDepthBacktest).
    """
    kind, side, px_tick, qty = _as_stream(kind, side, px_tick, qty)
    n = len(kind)
    events = _hbt_events(kind, side, px_tick, qty)  # must outlive every backtester below
    roi = (int(px_tick.min()) - 1, int(px_tick.max()) + 1)

    if depth not in _HBT_WARM:  # compile _hbt_drive for this backtester type
        warm = events[: min(n, 2000)].copy()
        hbt = _hbt_build(warm, depth, roi)
        _hbt_drive(hbt)
        hbt.close()
        del warm
        _HBT_WARM.add(depth)

    perf = time.perf_counter
    rates = []
    for _ in range(max(1, int(repeats))):
        hbt = _hbt_build(events, depth, roi)
        t0 = perf()
        rc, bb, ba = _hbt_drive(hbt)
        dt = perf() - t0
        hbt.close()
        assert rc == 1, f"hftbacktest: elapse did not reach the end of data (rc={rc})"
        rates.append(n / dt)
        _check_best(f"hftbacktest[{depth}]", _hbt_tick_or_none(bb), _hbt_tick_or_none(ba),
                    expect_best_bid_tick, expect_best_ask_tick)
    del events
    return float(statistics.median(rates))


# --------------------------------------------------------------------------------------
# self-test
# --------------------------------------------------------------------------------------

def _random_stream(n, seed=12345, mid=10_000, band=50):
    """Random *valid* stream around ``mid``: bids in [mid-band, mid-1], asks in
    [mid+1, mid+band] (never crossed); a dict of level sizes keeps every
    decrement within the level.  Returns arrays and the expected best ticks."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    sd = rng.integers(0, 2, n)
    off = rng.integers(1, band + 1, n)
    q = rng.integers(1, 500, n)
    r2 = rng.random(n)
    kind = np.empty(n, np.int64)
    side = np.empty(n, np.int64)
    px = np.empty(n, np.int64)
    qty = np.empty(n, np.int64)
    books = ({}, {})
    clear_at = set(rng.integers(n // 10, n - n // 10, 3).tolist())
    for i in range(n):
        s = int(sd[i])
        b = books[s]
        tick = mid - int(off[i]) if s == BID else mid + int(off[i])
        x = u[i]
        if i in clear_at:
            k, tick, qq = CLEAR, 0, 0
            books[0].clear()
            books[1].clear()
        elif x < 0.40 or (x < 0.80 and not b):  # ADD (also the fallback on an empty side)
            k, qq = ADD, int(q[i])
            b[tick] = b.get(tick, 0) + qq
        elif x < 0.62:  # CANCEL / DELETE: part or all of a random existing level
            levels = list(b)
            tick = levels[int(r2[i] * len(levels))]
            lvl = b[tick]
            if x < 0.52:
                k, qq = CANCEL, 1 + int(r2[i] * 7919) % lvl
            else:
                k, qq = DELETE, lvl if r2[i] < 0.5 else 1 + int(r2[i] * 104729) % lvl
            b[tick] = lvl - qq
            if not b[tick]:
                del b[tick]
        elif x < 0.70:  # EXECUTE against the best level of the resting side
            tick = max(b) if s == BID else min(b)
            lvl = b[tick]
            k, qq = EXECUTE, 1 + int(r2[i] * 7919) % lvl
            b[tick] = lvl - qq
            if not b[tick]:
                del b[tick]
        elif x < 0.80:  # SET_LEVEL (20% of them remove the level)
            k = SET_LEVEL
            qq = 0 if r2[i] < 0.2 else int(q[i])
            if qq:
                b[tick] = qq
            else:
                b.pop(tick, None)
        elif x < 0.88:  # hidden TRADE
            k, qq = TRADE, int(q[i])
        else:
            k, tick, qq = HEARTBEAT, 0, 0
        kind[i], side[i], px[i], qty[i] = k, s, tick, qq
    best_bid = max(books[BID]) if books[BID] else None
    best_ask = min(books[ASK]) if books[ASK] else None
    return kind, side, px, qty, best_bid, best_ask


def _main(argv):
    n = int(argv[1]) if len(argv) > 1 else 200_000
    kind, side, px, qty, bb, ba = _random_stream(n)
    chk = dict(expect_best_bid_tick=bb, expect_best_ask_tick=ba)
    import hftbacktest
    import order_book  # noqa: F401
    from importlib.metadata import version

    out = {
        "n_msgs": n,
        "kind_counts": {int(k): int(c) for k, c in zip(*np.unique(kind, return_counts=True))},
        "expected_best_bid_tick": bb,
        "expected_best_ask_tick": ba,
        "order_book_version": version("order-book"),
        "hftbacktest_version": hftbacktest.__version__,
        "order_book_msgs_per_s": peer_order_book_msgs_per_s(kind, side, px, qty, **chk),
        "order_book_read_top_each_msg_msgs_per_s": peer_order_book_msgs_per_s(
            kind, side, px, qty, read_top_each_msg=True, **chk),
        "hftbacktest_msgs_per_s": peer_hftbacktest_msgs_per_s(kind, side, px, qty, **chk),
        "hftbacktest_roivec_msgs_per_s": peer_hftbacktest_msgs_per_s(
            kind, side, px, qty, depth="roivec", **chk),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    _main(sys.argv)
