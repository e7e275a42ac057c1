"""The per-order (L3) book against the plain-dict reference, message by message."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.engine import _book_kernels as BK
from obpipe.engine import _l3_kernels as LK
from obpipe.feed_sim.l3_synth import L3SynthParams, finish_event, generate_l3_into, new_state
from obpipe.engine.book import _local_ring
from obpipe.engine.l3 import L3Book
from obpipe.ring import schema as sc

from .reference_l3 import NO_PX, RefL3

U64 = (1 << 64) - 1
_KINDS = (sc.L3_ADD, sc.L3_EXEC, sc.L3_EXEC_PX, sc.L3_CANCEL, sc.L3_DELETE, sc.L3_REPLACE, sc.L3_TRADE,
          sc.L3_CROSS, sc.L3_CLEAR, sc.L3_STALE, 0, 26)
_WEIGHTS = np.array([40, 10, 3, 10, 14, 8, 3, 1, 0.15, 0.1, 0.2, 0.2])


def _pick(rng, xs: list):
    """A random element (Python ints: numpy would turn u64 references into floats)."""
    return xs[int(rng.integers(len(xs)))]


def random_l3_stream(seed: int, n: int, n_sym: int, width: int) -> np.ndarray:
    """MD_L3 messages: adds (mostly sequential references, some random or huge, some
    duplicates), executions (some at another price, printable or not), cancels, deletes
    and replaces of live orders (some of more shares than remain), of orders referenced
    before they are added or never added, trades, crosses, clears and bad messages,
    around wandering mids with jumps beyond the ladders."""
    rng = np.random.default_rng(seed)
    m = np.zeros(n, sc.MD_L3_DTYPE)
    mids = 10_000 + 700 * np.arange(n_sym)
    live: dict[int, list[int]] = {}  # a rough view of what rests: ref -> [sym, side, px, qty]
    next_ref = 1 + int(rng.integers(1000))
    ks = rng.choice(len(_KINDS), size=n, p=_WEIGHTS / _WEIGHTS.sum())

    def new_ref():
        nonlocal next_ref
        u = rng.random()
        if u < 0.03:
            return int(rng.integers(1 << 63, U64, dtype=np.uint64))  # huge (negative as int64)
        if u < 0.06:
            return int(rng.integers(1, 1 << 40))  # anywhere
        if u < 0.08 and live:
            return _pick(rng, list(live))  # a live one: duplicate
        next_ref += 1 if rng.random() < 0.9 else int(rng.integers(2, 5000))
        return next_ref

    for j in range(n):
        k = int(_KINDS[ks[j]])
        s = int(rng.integers(n_sym))
        side = int(rng.integers(2))
        if rng.random() < 0.008:
            mids[s] += int(rng.integers(-2 * width, 2 * width))  # a jump: re-centres, evictions
        else:
            mids[s] += int(rng.integers(-1, 2))
        off = int(rng.geometric(0.3)) - 1
        px = int(mids[s] - 1 - off if side == 0 else mids[s] + 1 + off)
        if rng.random() < 0.02:
            px += int(rng.integers(-width, width))
        qty = int(rng.integers(1, 300))
        ref = nref = 0
        if k == sc.L3_ADD:
            ref = new_ref()
            live.setdefault(ref, [s, side, px, qty])
        elif sc.L3_EXEC <= k <= sc.L3_REPLACE:
            u = rng.random()
            if live and u < 0.92:
                keys = list(live)  # a random live order, or one of the newest
                ref = _pick(rng, keys) if rng.random() < 0.5 else keys[-1 - int(rng.integers(min(8, len(keys))))]
                o = live[ref]
                if k != sc.L3_REPLACE:
                    qty = int(rng.integers(1, o[3] + 1)) if rng.random() < 0.95 else o[3] + int(rng.integers(1, 50))
            elif u < 0.96:
                ref = next_ref + int(rng.integers(1, 20))  # referenced before it is added
            else:
                ref = int(rng.integers(1, 1 << 62))  # never added
            if k == sc.L3_REPLACE:
                nref = new_ref()
                o = live.pop(ref, None)
                if o is not None:
                    px = o[2] + int(rng.integers(-3, 4))
                    live.setdefault(nref, [o[0], o[1], px, qty])
            elif ref in live:
                o = live[ref]
                o[3] -= qty
                if k == sc.L3_DELETE or o[3] <= 0:
                    del live[ref]
            if k == sc.L3_EXEC_PX:
                side = int(rng.random() < 0.7)  # the printable flag
                px += int(rng.integers(-2, 3))
        elif k == sc.L3_CROSS:
            side = sc.SIDE_NONE_L3
            qty = 0 if rng.random() < 0.2 else qty
        elif k == sc.L3_CLEAR:
            for r in [r for r, o in live.items() if o[0] == s]:
                del live[r]
        elif k == sc.L3_STALE and rng.random() < 0.3:
            s = sc.SYMBOL_ALL
        if rng.random() < 0.003:
            side = 3  # bad side (matters for adds and trades)
        if rng.random() < 0.003:
            qty = 0  # bad qty (except deletes, crosses)
        if rng.random() < 0.002:
            px = 1 << 61  # bad price (adds, replaces, priced executions, trades)
        sym = s if rng.random() > 0.003 else n_sym + 1  # bad symbol (adds, trades, clears, stale marks)
        m[j] = (k, side, sym, qty, px, j + 1, 1_000 * j, 0, ref, nref)
    return m


def _ref_apply(ref: RefL3, r) -> None:
    ref.apply(int(r["kind"]), int(r["side"]), int(r["symbol"]), int(r["qty"]), int(r["px_tick"]),
              int(r["ref"]), int(r["new_ref"]))


def _events(book: L3Book, n: int) -> list[tuple]:
    ev = book.ev[:n]
    return list(zip(*(ev[f].tolist() for f in ("kind", "side", "symbol", "trade_qty", "bid_px_tick", "bid_qty",
                                               "ask_px_tick", "ask_qty", "trade_px_tick", "bid_depth_qty",
                                               "ask_depth_qty", "sym_msgs"))))


def _compare_orders(book: L3Book, ref: RefL3, where: str) -> None:
    got = {r: tuple(o) for r, o in book.orders().items()}
    assert got == {r: tuple(o) for r, o in ref.orders.items()}, where


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed,capacity", [(1, 10_000), (2, 120), (3, 400)])
def test_l3_book_equals_reference_after_every_message(seed, capacity):
    widths = [64, 96, 48]
    n_top = 6
    msgs = random_l3_stream(seed, 6000, len(widths), 64)
    book = L3Book(widths, capacity, n_levels=n_top, events=_local_ring(sc.EVENT_DTYPE, 1 << 15))
    ref = RefL3(widths, capacity)
    rng = np.random.default_rng(seed)
    for j in range(len(msgs)):
        book.apply(msgs, j, 1)
        r = msgs[j]
        _ref_apply(ref, r)
        where = f"seed {seed} after message {j} {r}"
        for s, b in enumerate(ref.books):  # every symbol's top levels, both sides
            assert book.top(s, 0, n_top) == b.top(0, n_top), where
            assert book.top(s, 1, n_top) == b.top(1, n_top), where
        for x in (int(r["ref"]), int(r["new_ref"])):  # the orders it named
            got = book.order(x)
            assert (None if got is None else tuple(got)) == ref.order(x), where
        if j % 250 == 0 or j == len(msgs) - 1:
            _compare_orders(book, ref, where)
            assert book.occupancy == len(ref.orders)
            live = list(ref.orders)
            for x in [_pick(rng, live) for _ in range(min(20, len(live)))]:
                assert book.queue_position(x) == ref.queue_position(x), where
            assert book.queue_position(U64 - 7) is None
    got = book.counters()
    for key, v in ref.counters().items():
        assert got[key] == v, key
    n_ev = int(book.ev_ctrl[sc.RING_W_HEAD])
    assert got["events_dropped"] == 0 and got["events"] == n_ev
    assert _events(book, n_ev) == ref.events
    for s in range(len(widths)):
        assert (int(book.S[s, BK.B_LAST_PX]), int(book.S[s, BK.B_LAST_QTY]), int(book.S[s, BK.B_LAST_SIDE])) \
            == ref.last[s]
        assert int(book.S[s, BK.B_MSGS]) == ref.msgs[s]
        assert bool(book.S[s, BK.B_STALE]) == ref.stale[s]
    # the stream exercised what it is meant to
    for key in ("bad_msgs", "l3_unknown_refs", "l3_duplicate_refs", "l3_overfills", "clears", "trades",
                "recentres", "out_of_ladder", "evicted_levels"):
        assert got[key] > 0, key
    assert got["qty_underflow"] == 0  # the ladders are the sum of the orders in their windows, always
    assert (got["l3_table_full"] > 0) == (capacity < 1000)
    assert got["l3_capacity"] == capacity and got["l3_peak_orders"] <= capacity
    assert int(book.E[LK.E_XN]) > 0 or capacity >= 1000  # the overflow part was used


@pytest.mark.timeout(60)
def test_l3_batches_equal_single_messages():
    msgs = random_l3_stream(7, 12_000, 2, 128)
    one = L3Book([128, 128], 300)
    for j in range(len(msgs)):
        one.apply(msgs, j, 1)
    many = L3Book([128, 128], 300)
    for j in range(0, len(msgs), 777):
        many.apply(msgs, j, min(777, len(msgs) - j))
    assert np.array_equal(one.lad, many.lad)
    assert np.array_equal(one.S[:, :14], many.S[:, :14])
    for a, b in zip(one.table, many.table):
        assert np.array_equal(a, b)
    c1, c2 = one.counters(), many.counters()
    c1.pop("batches"), c2.pop("batches")
    assert c1 == c2


@pytest.mark.timeout(60)
def test_order_table_under_collisions_and_deletes_in_any_order():
    """References that all share one direct bucket (the overflow part holds all but one),
    deleted in random order: every lookup stays right (backward-shift deletion), and a
    full table counts and skips, its skipped orders unknown later."""
    cap = 300
    book = L3Book([64], cap)
    M, X, shift = (int(book.E[i]) for i in (LK.E_HM, LK.E_XM, LK.E_XSHIFT))

    def home(r):  # the overflow bucket, as _x_home computes it
        return ((r * 0x9E3779B97F4A7C15) & U64) >> shift

    # one direct bucket; overflow homes piled at the table's end and start (probes and
    # backward shifts wrap around), and others anywhere
    cands = [5 + k * M for k in range(1, 200_000)]
    edge = [r for r in cands if home(r) >= X - 3][:40] + [r for r in cands if home(r) <= 1][:30]
    refs = edge + [r for r in cands[:400] if r not in edge][:cap - len(edge)]
    refs += [U64 - k * M for k in range(20)]  # 320 > capacity
    adds = np.zeros(len(refs), sc.MD_L3_DTYPE)
    for j, r in enumerate(refs):
        adds[j] = (sc.L3_ADD, j & 1, 0, 1 + j % 7, 1000 + (j & 1) * 3 + j % 3 * (1 - 2 * (j & 1)), j, 0, 0, r, 0)
    book.apply(adds)
    c = book.counters()
    assert c["l3_live_orders"] == cap and c["l3_table_full"] == 20 and book.occupancy == cap
    rng = np.random.default_rng(3)
    order = rng.permutation(len(refs))
    live = set(refs[:cap])
    for i in order:
        r = refs[i]
        d = np.zeros(1, sc.MD_L3_DTYPE)
        d[0] = (sc.L3_DELETE, 0, 0, 0, 0, 0, 0, 0, r, 0)
        book.apply(d)
        live.discard(r)
        probe = [_pick(rng, refs) for _ in range(8)]
        assert all((book.order(x) is not None) == (x in live) for x in probe)
    c = book.counters()
    assert c["l3_live_orders"] == 0 and c["l3_unknown_refs"] == 20
    assert book.bbo(0) == (NO_PX, 0, NO_PX, 0) and int(book.E[LK.E_XN]) == 0
    assert not (book.Hd >= 0).any() and not (book.Hx >= 0).any()


@pytest.mark.timeout(60)
def test_l3_by_hand():
    """Priorities, queue positions, replace, printable and non-printable executions,
    a cross, and a clear, step by step."""
    steps = [
        (sc.L3_ADD, 0, 0, 100, 1000, 11, 0),  # bid 100 @1000 (priority 0)
        (sc.L3_ADD, 0, 0, 50, 1000, 12, 0),  # bid 50 @1000 behind it
        (sc.L3_ADD, 0, 0, 30, 1000, 13, 0),
        (sc.L3_ADD, 1, 0, 70, 1003, 14, 0),  # ask 70 @1003
        (sc.L3_EXEC, 0, 0, 40, 0, 11, 0),  # 40 of the first bid: a sell at 1000
        (sc.L3_REPLACE, 0, 0, 20, 1000, 12, 15),  # 12 -> 15: same price, back of the queue
        (sc.L3_EXEC_PX, 1, 0, 10, 1001, 14, 0),  # printable, at 1001
        (sc.L3_EXEC_PX, 0, 0, 10, 1001, 14, 0),  # non-printable: shares leave, no print
        (sc.L3_CROSS, sc.SIDE_NONE_L3, 0, 500, 1002, 0, 0),
        (sc.L3_CANCEL, 0, 0, 5, 0, 13, 0),
        (sc.L3_ADD, 0, 1, 9, 50, 16, 0),  # another symbol
    ]
    msgs = np.zeros(len(steps), sc.MD_L3_DTYPE)
    for j, (k, side, s, q, px, r, nr) in enumerate(steps):
        msgs[j] = (k, side, s, q, px, j + 1, 0, 0, r, nr)
    book = L3Book([64, 64], 100, events=_local_ring(sc.EVENT_DTYPE, 64))
    book.apply(msgs[:5])
    assert book.queue_position(12) == (60, 1) and book.queue_position(13) == (110, 2)
    assert book.bbo(0) == (1000, 140, 1003, 70)
    book.apply(msgs[5:])
    assert book.order(12) is None and tuple(book.order(15)) == (0, 0, 1000, 20, 4)
    assert book.queue_position(11) == (0, 0) and book.queue_position(13) == (60, 1)
    assert book.queue_position(15) == (85, 2)
    assert book.bbo(0) == (1000, 105, 1003, 50) and book.bbo(1) == (50, 9, NO_PX, 0)
    # the cross is the last trade, with no aggressor; the printable C printed at 1001
    assert (int(book.S[0, BK.B_LAST_PX]), int(book.S[0, BK.B_LAST_QTY]), int(book.S[0, BK.B_LAST_SIDE])) \
        == (1002, 500, -1)
    trades = [(int(e["trade_px_tick"]), int(e["trade_qty"]), int(e["side"]))
              for e in book.ev[:int(book.ev_ctrl[sc.RING_W_HEAD])] if e["kind"] == sc.EV_TRADE]
    assert trades == [(1000, 40, 1), (1001, 10, 0)]
    assert book.counters()["trades"] == 3
    clear = np.zeros(1, sc.MD_L3_DTYPE)
    clear[0] = (sc.L3_CLEAR, 0, 0, 0, 0, 99, 0, 0, 0, 0)
    book.apply(clear)
    assert book.orders() == {16: (1, 0, 50, 9, 5)} and book.bbo(0) == (NO_PX, 0, NO_PX, 0)
    assert book.counters()["l3_live_orders"] == 1 and book.counters()["l3_peak_orders"] == 5


@pytest.mark.timeout(120)
def test_generated_day_stream_equals_reference():
    """The L3 generator's stream (many symbols, injected unknown references): the top
    levels of every touched symbol after each of the first 20,000 messages, then every
    symbol's at 100 points of the rest, equal the reference's; at the end the orders
    equal the generator's own live orders too."""
    p = L3SynthParams(n_symbols=30, seed=9, p_bad_ref=0.001, p_cross=1e-3, target_orders=50, max_orders=256,
                      ladder_ticks=128, max_depth_ticks=40)
    st = new_state(p)
    msgs = np.empty(100_000, sc.MD_L3_DTYPE)
    generate_l3_into(msgs, p, st)
    msgs = np.concatenate([msgs, finish_event(st)])
    widths = [256] * p.n_symbols
    book = L3Book(widths, 5_000, n_levels=5)
    ref = RefL3(widths, 5_000)
    for j in range(20_000):
        book.apply(msgs, j, 1)
        _ref_apply(ref, msgs[j])
        s = int(msgs[j]["symbol"])
        b = ref.books[s]
        assert book.top(s, 0, 5) == b.top(0, 5) and book.top(s, 1, 5) == b.top(1, 5), j
    rest = np.array_split(np.arange(20_000, len(msgs)), 100)
    for part in rest:
        book.apply(msgs, int(part[0]), len(part))
        for r in msgs[part[0]:part[-1] + 1]:
            _ref_apply(ref, r)
        for s, b in enumerate(ref.books):
            assert book.top(s, 0, 5) == b.top(0, 5) and book.top(s, 1, 5) == b.top(1, 5), int(part[-1])
    _compare_orders(book, ref, "end")
    assert {r: tuple(o[:4]) for r, o in book.orders().items()} == st.live_orders()
    got = book.counters()
    for key, v in ref.counters().items():
        assert got[key] == v, key
    assert got["l3_unknown_refs"] == st.n_bad_refs > 0
    assert got["l3_overfills"] == got["l3_duplicate_refs"] == got["bad_msgs"] == got["crossed"] == 0


def _l3(steps):
    """MD_L3 records from (kind, side, symbol, qty, px, ref) tuples."""
    msgs = np.zeros(len(steps), sc.MD_L3_DTYPE)
    for j, (k, side, sym, q, px, r) in enumerate(steps):
        msgs[j] = (k, side, sym, q, px, j + 1, 0, 0, r, 0)
    return msgs


@pytest.mark.timeout(60)
def test_a_moved_window_rebuilds_the_ladders_from_the_orders():
    """A re-centre evicts a level, and its order is back when the window returns; an add
    outside the window is counted and rests in the table, and shows once the window
    holds its price.  The book stays exact: no underflow on the order's later delete."""
    book = L3Book([20], 100, n_levels=5)
    A, D = sc.L3_ADD, sc.L3_DELETE
    book.apply(_l3([(A, 0, 0, 10, 100, 1), (A, 1, 0, 5, 109, 2), (A, 0, 0, 7, 91, 3),
                    (A, 1, 0, 3, 111, 4)]))  # out of [90, 110): centre (100 + 109) // 2 -> [94, 114), 91 evicted
    assert book.window(0) == (94, 114) and book.top(0, 0, 5) == [(100, 10)]
    assert book.counters()["evicted_levels"] == 1 and book.order(3) is not None
    book.apply(_l3([(D, 0, 0, 0, 0, 2), (D, 0, 0, 0, 0, 4),
                    (A, 0, 0, 2, 90, 5),  # centre on the bid 100 -> [90, 110): the order at 91 is back
                    (A, 0, 0, 4, 60, 6)]))  # far: counted, kept in the table
    assert book.window(0) == (90, 110) and book.top(0, 0, 5) == [(100, 10), (91, 7), (90, 2)]
    c = book.counters()
    assert c["recentres"] == 2 and c["out_of_ladder"] == 1 and c["l3_live_orders"] == 4
    book.apply(_l3([(D, 0, 0, 0, 0, 3), (D, 0, 0, 0, 0, 1), (D, 0, 0, 0, 0, 5),
                    (A, 1, 0, 1, 58, 7)]))  # asks empty, bids only the far one (not in the ladder): centre 58
    assert book.window(0) == (48, 68) and book.bbo(0) == (60, 4, 58, 1)
    assert book.counters()["qty_underflow"] == 0


@pytest.mark.timeout(60)
def test_stale_marks_until_cleared():
    book = L3Book([64, 64, 64], 100)
    book.apply(_l3([(sc.L3_ADD, 0, 1, 5, 100, 1), (sc.L3_STALE, 0, 1, 0, 0, 0)]))
    assert book.S[:, BK.B_STALE].tolist() == [0, 1, 0] and book.order(1) is not None
    book.apply(_l3([(sc.L3_CLEAR, 0, 1, 0, 0, 0), (sc.L3_STALE, 0, sc.SYMBOL_ALL, 0, 0, 0)]))
    assert book.S[:, BK.B_STALE].tolist() == [1, 1, 1] and book.order(1) is None
    book.apply(_l3([(sc.L3_CLEAR, 0, 2, 0, 0, 0), (sc.L3_STALE, 0, 7, 0, 0, 0)]))  # symbol 7: bad
    assert book.S[:, BK.B_STALE].tolist() == [1, 1, 0] and book.counters()["bad_msgs"] == 1


@pytest.mark.timeout(120)
def test_drain_l3_from_a_ring_equals_apply():
    """The book writer's loop on an md ring of MD_L3 records (wrapping, batches of 100):
    the same ladders, table, events and counters as ``L3Book.apply``, a snapshot per
    symbol, and the order table's counters in the stats row."""
    widths = [64, 96, 48]
    msgs = random_l3_stream(4, 3000, len(widths), 64)
    ref = L3Book(widths, 400, n_levels=4, events=_local_ring(sc.EVENT_DTYPE, 1 << 14))
    ref.apply(msgs)
    book = L3Book(widths, 400, n_levels=4, events=_local_ring(sc.EVENT_DTYPE, 1 << 14))
    md_ctrl, md = _local_ring(sc.MD_L3_DTYPE, 1024)
    slot_words = sc.snapshot_slot_words(4)
    snap = np.zeros(len(widths) * slot_words, np.int64)
    row = np.zeros(sc.STATS_WORDS, np.int64)
    hist = np.zeros(256, np.int64)
    done = 0
    for lo in range(0, len(msgs), 700):
        chunk = msgs[lo:lo + 700]
        for j, r in enumerate(chunk):
            md[(lo + j) & 1023] = r
        md_ctrl[sc.RING_W_HEAD] = lo + len(chunk)
        done += LK.drain_l3(md_ctrl, md, 100, 1 << 20, book.lad, book.S, book.C, book.ev, book.ev_ctrl, 4,
                            book.dirty, snap, 0, slot_words, book.pay, book._lv_px, book._lv_qty, row, hist,
                            np.zeros_like(hist), 0, 0, *book.table)
    assert done == len(msgs) and md_ctrl[sc.RING_W_TAIL] == len(msgs)
    assert np.array_equal(book.lad, ref.lad) and np.array_equal(book.S[:, :BK.B_DIRTY], ref.S[:, :BK.B_DIRTY])
    for a, b in zip(book.table, ref.table):
        assert np.array_equal(a, b)
    n_ev = int(ref.ev_ctrl[sc.RING_W_HEAD])
    assert int(book.ev_ctrl[sc.RING_W_HEAD]) == n_ev and _events(book, n_ev) == _events(ref, n_ev)
    c, r = book.counters(), ref.counters()
    assert c.pop("batches") == 30 and c.pop("snapshots") > 0
    r.pop("batches"), r.pop("snapshots")
    assert c == r
    for i, name in sc.BOOK_STAT_NAMES.items():  # the stats row has every counter
        assert row[i] == book.C[i], name
    assert row[sc.ST_BOOK_L3_LIVE] == book.occupancy > 0 and row[sc.ST_BOOK_L3_CAPACITY] == 400
    for s in range(len(widths)):  # each symbol's last snapshot: its book after the last message
        pay = snap[s * slot_words + 8:]
        assert (pay[sc.SW_BID_PX], pay[sc.SW_BID_QTY], pay[sc.SW_ASK_PX], pay[sc.SW_ASK_QTY]) == book.bbo(s)
        assert pay[sc.SW_STALE] == book.S[s, BK.B_STALE]
