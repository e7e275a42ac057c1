"""The kernel book against the plain-dict reference, message by message."""
from __future__ import annotations

import math

import numpy as np
import pytest

from obpipe.engine import _book_kernels as BK
from obpipe.engine.book import Book
from obpipe.ring import schema as sc
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring

from .reference_book import NO_PX, RefBook


def random_stream(seed: int, n: int, n_sym: int, width: int) -> np.ndarray:
    """Adds, cancels, deletes, executes, trades, set-levels, clears, heartbeats and bad
    messages around a wandering mid, with excursions far outside the ladder."""
    rng = np.random.default_rng(seed)
    m = np.zeros(n, sc.MD_DTYPE)
    mids = 10_000 + 500 * np.arange(n_sym)
    live = [[{}, {}] for _ in range(n_sym)]  # rough view of what rests, to aim decrements
    kinds = np.array([sc.K_ADD, sc.K_CANCEL, sc.K_DELETE, sc.K_EXECUTE, sc.K_TRADE, sc.K_SET_LEVEL,
                      sc.K_CLEAR, sc.K_HEARTBEAT, 0, 9])
    p = np.array([40, 15, 12, 10, 4, 12, 0.3, 2, 0.5, 0.5])
    ks = rng.choice(kinds, size=n, p=p / p.sum())
    for j in range(n):
        s = int(rng.integers(n_sym))
        k = int(ks[j])
        side = int(rng.integers(2))
        if rng.random() < 0.01:
            mids[s] += int(rng.integers(-3 * width, 3 * width))  # jump: exercises re-centring
        else:
            mids[s] += int(rng.integers(-2, 3))
        off = int(rng.geometric(0.25)) - 1
        px = mids[s] - 1 - off if side == 0 else mids[s] + 1 + off
        if rng.random() < 0.03:
            px += int(rng.integers(-2 * width, 2 * width))
        qty = int(rng.integers(1, 50))
        d = live[s][side]
        if k in (sc.K_CANCEL, sc.K_DELETE, sc.K_EXECUTE) and d and rng.random() < 0.9:
            px = int(rng.choice(list(d)))
            qty = d[px] if k == sc.K_DELETE else int(rng.integers(1, d[px] + 1 + (rng.random() < 0.05) * 10))
        if k == sc.K_SET_LEVEL and rng.random() < 0.3:
            qty = 0
        if rng.random() < 0.005:
            side = 2  # bad side
        if rng.random() < 0.002:
            qty = 0  # bad qty (except set-level)
        sym = s if rng.random() > 0.002 else n_sym  # bad symbol
        m[j] = (k, side, sym, qty, px, j + 1, 1_000 * j, 0)
        if side <= 1 and sym < n_sym:
            if k == sc.K_ADD and qty > 0:
                d[px] = d.get(px, 0) + qty
            elif k in (sc.K_CANCEL, sc.K_DELETE, sc.K_EXECUTE) and px in d:
                d[px] -= qty
                if d[px] <= 0:
                    del d[px]
            elif k == sc.K_SET_LEVEL:
                if qty > 0:
                    d[px] = qty
                else:
                    d.pop(px, None)
            elif k == sc.K_CLEAR:
                live[s] = [{}, {}]
    return m


def compare(book: Book, refs: list[RefBook], n_top: int, where: str):
    for s, ref in enumerate(refs):
        assert book.bbo(s) == ref.bbo(), f"{where}: symbol {s} BBO"
        for side in (0, 1):
            assert book.top(s, side, n_top) == ref.top(side, n_top), f"{where}: symbol {s} side {side} top"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kernel_book_equals_reference_after_every_message(seed):
    widths = [64, 96, 48]
    n_top = 6
    msgs = random_stream(seed, 6000, len(widths), 64)
    book = Book(widths, n_levels=n_top)
    refs = [RefBook(w) for w in widths]
    bad = 0
    for j in range(len(msgs)):
        book.apply(msgs, j, 1)
        m = msgs[j]
        if m["symbol"] >= len(widths) or not refs[m["symbol"]].apply(int(m["kind"]), int(m["side"]),
                                                                    int(m["px_tick"]), int(m["qty"])):
            bad += 1
        compare(book, refs, n_top, f"seed {seed} after message {j} {m}")
    got = book.counters()
    assert got["bad_msgs"] == bad
    for key in RefBook(1).c:
        assert got[key] == sum(r.c[key] for r in refs), key
    # the stream really exercised the policy and the edge cases
    assert got["recentres"] > 0 and got["out_of_ladder"] > 0 and got["evicted_levels"] > 0
    assert got["qty_underflow"] > 0 and got["clears"] > 0 and bad > 0


@pytest.mark.timeout(120)
def test_batches_equal_single_messages():
    msgs = random_stream(7, 20_000, 2, 128)
    one = Book([128, 128])
    for j in range(len(msgs)):
        one.apply(msgs, j, 1)
    many = Book([128, 128])
    for j in range(0, len(msgs), 777):
        many.apply(msgs, j, min(777, len(msgs) - j))
    assert np.array_equal(one.lad, many.lad)
    assert np.array_equal(one.S[:, :14], many.S[:, :14])
    c1, c2 = one.counters(), many.counters()
    c1.pop("batches"), c2.pop("batches")
    assert c1 == c2


def test_out_of_ladder_policy_by_hand():
    book = Book([20], n_levels=2)  # window of 20 ticks
    ref = RefBook(20)
    steps = [
        (sc.K_ADD, 0, 100, 5),  # first price centres the window: [90, 110)
        (sc.K_ADD, 1, 102, 7),
        (sc.K_ADD, 0, 91, 1),  # deep bid, inside
        (sc.K_ADD, 1, 112, 3),  # outside: re-centre on mid 101 -> [91, 111): 112 still outside -> reject
        (sc.K_ADD, 1, 110, 3),  # 110 is outside [90,110): re-centre on 101 -> [91,111), bid 91 stays
        (sc.K_CANCEL, 0, 80, 1),  # decrement outside: counted, ignored
        (sc.K_ADD, 0, 101, 2),  # improves bid: mid = (101+102)//2 = 101
        (sc.K_ADD, 1, 109, 1),
        (sc.K_DELETE, 0, 101, 2),  # back to 100/102
        (sc.K_ADD, 0, 89, 4),  # outside below: centre 101 -> [91,111) -> reject
        (sc.K_DELETE, 1, 110, 3),
        (sc.K_SET_LEVEL, 1, 111, 6),  # centre 101 -> window [91, 111): 111 outside -> reject
    ]
    msgs = np.zeros(len(steps), sc.MD_DTYPE)
    for j, (k, side, px, q) in enumerate(steps):
        msgs[j] = (k, side, 0, q, px, j + 1, 0, 0)
    for j, (k, side, px, q) in enumerate(steps):
        book.apply(msgs, j, 1)
        ref.apply(k, side, px, q)
        assert book.bbo(0) == ref.bbo(), steps[j]
    c = book.counters()
    assert c["out_of_ladder"] == 4 and c["recentres"] == 1 and c["evicted_levels"] == 0
    assert book.window(0) == (91, 111)
    assert book.top(0, 0, 2) == [(100, 5), (91, 1)]
    # now move the market: all resting levels go, a far add recentres around its price
    book2 = Book([20], n_levels=2)
    seq = [(sc.K_ADD, 0, 100, 5), (sc.K_ADD, 1, 104, 5), (sc.K_ADD, 0, 93, 1),
           (sc.K_DELETE, 0, 100, 5), (sc.K_DELETE, 1, 104, 5),  # only the bid at 93 rests
           (sc.K_ADD, 1, 103, 2),  # inside; mid (93+103)//2 = 98
           (sc.K_ADD, 1, 111, 1)]  # outside [90,110): centre 98 -> [88,108): still outside -> reject
    msgs = np.zeros(len(seq), sc.MD_DTYPE)
    for j, (k, side, px, q) in enumerate(seq):
        msgs[j] = (k, side, 0, q, px, j + 1, 0, 0)
    book2.apply(msgs)
    assert book2.counters()["out_of_ladder"] == 1
    # a symbol whose book emptied re-centres on the new price and keeps nothing stale
    seq = [(sc.K_DELETE, 0, 93, 1), (sc.K_DELETE, 1, 103, 2), (sc.K_ADD, 0, 500, 9), (sc.K_ADD, 1, 505, 4)]
    msgs = np.zeros(len(seq), sc.MD_DTYPE)
    for j, (k, side, px, q) in enumerate(seq):
        msgs[j] = (k, side, 0, q, px, j + 1, 0, 0)
    book2.apply(msgs)
    assert book2.bbo(0) == (500, 9, 505, 4)
    assert book2.window(0) == (490, 510)
    assert book2.counters()["recentres"] == 1 and book2.counters()["evicted_levels"] == 0


def _msgs(seq):
    msgs = np.zeros(len(seq), sc.MD_DTYPE)
    for j, (k, side, px, q) in enumerate(seq):
        msgs[j] = (k, side, 0, q, px, j + 1, 0, 0)
    return msgs


def test_uncross_removes_the_stale_levels_an_add_crosses_and_counts_them():
    # bids 100/99/97, asks 103/105; then a stale-bid story: asks arrive at 99 and at 96
    seq = [(sc.K_ADD, 0, 100, 5), (sc.K_ADD, 0, 99, 4), (sc.K_ADD, 0, 97, 2), (sc.K_ADD, 1, 103, 7),
           (sc.K_ADD, 1, 105, 1), (sc.K_ADD, 1, 99, 3)]
    plain, unx = Book([64], n_levels=4), Book([64], n_levels=4, uncross=True)
    for b in (plain, unx):
        b.apply(_msgs(seq))
    assert plain.bbo(0) == (100, 5, 99, 3) and plain.counters()["crossed"] == 1  # crossed, and it stays
    assert plain.counters()["uncrossed_levels"] == 0
    # bids at 100 and 99 (the equal price too) were crossed: gone; 97 stays; the new ask is the best
    assert unx.bbo(0) == (97, 2, 99, 3) and unx.top(0, 0, 4) == [(97, 2)]
    assert unx.counters()["uncrossed_levels"] == 2 and unx.counters()["crossed"] == 0
    # a set-level on the bid through every ask: all three asks go, from the best outwards
    unx.apply(_msgs([(sc.K_SET_LEVEL, 0, 106, 8)]))
    assert unx.bbo(0) == (106, 8, NO_PX, 0) and unx.counters()["uncrossed_levels"] == 5
    assert unx.top(0, 1, 4) == [] and unx.top(0, 0, 4) == [(106, 8), (97, 2)]
    # adds that do not cross, and decrements, never remove anything
    unx.apply(_msgs([(sc.K_ADD, 1, 107, 1), (sc.K_ADD, 0, 105, 1), (sc.K_CANCEL, 1, 107, 1)]))
    assert unx.counters()["uncrossed_levels"] == 5 and unx.top(0, 0, 4) == [(106, 8), (105, 1), (97, 2)]


def test_recentre_evicts_far_levels_and_counts_them():
    book = Book([20], n_levels=3)
    seq = [(sc.K_ADD, 0, 100, 5), (sc.K_ADD, 1, 101, 5), (sc.K_ADD, 0, 91, 2), (sc.K_ADD, 1, 109, 2),
           # market moves up: bid 100 and ask 101 go, new touch 104/105
           (sc.K_DELETE, 0, 100, 5), (sc.K_DELETE, 1, 101, 5), (sc.K_ADD, 0, 104, 3), (sc.K_ADD, 1, 105, 3),
           # add at 112 (outside [90,110)): centre (104+105)//2 = 104 -> [94, 114); bid 91 is evicted
           (sc.K_ADD, 1, 112, 1)]
    msgs = np.zeros(len(seq), sc.MD_DTYPE)
    for j, (k, side, px, q) in enumerate(seq):
        msgs[j] = (k, side, 0, q, px, j + 1, 0, 0)
    book.apply(msgs)
    assert book.window(0) == (94, 114)
    assert book.top(0, 0, 3) == [(104, 3)]
    assert book.top(0, 1, 3) == [(105, 3), (109, 2), (112, 1)]
    c = book.counters()
    assert c["recentres"] == 1 and c["evicted_levels"] == 1 and c["out_of_ladder"] == 0


def _expected_events(msgs, width, depth_ticks):
    ref = RefBook(width)
    out = []
    prev = (NO_PX, 0, NO_PX, 0)
    for m in msgs:
        k, side, px, q = int(m["kind"]), int(m["side"]), int(m["px_tick"]), int(m["qty"])
        if m["symbol"] != 0 or not ref.apply(k, side, px, q):
            continue

        b = ref.bbo()
        state = (b[0], b[2], b[1], b[3], ref.band_depth(0, depth_ticks), ref.band_depth(1, depth_ticks))
        if k in (sc.K_EXECUTE, sc.K_TRADE):
            out.append((sc.EV_TRADE, 1 - side, int(m["seq"]), px, q) + state)
        if b != prev:
            out.append((sc.EV_BBO, 0, int(m["seq"]), NO_PX, 0) + state)
            prev = b
    return out


@pytest.mark.timeout(120)
def test_events_ring_gets_one_event_per_bbo_change_and_trade(instance):
    msgs = random_stream(11, 4000, 1, 256)
    ev = Ring.create(instance, "events", sc.EVENT_DTYPE, 1 << 14)
    try:
        book = Book([256], n_levels=4, events=(ev.ctrl, ev.records), depth_ticks=5)
        for j in range(0, len(msgs), 100):
            book.apply(msgs, j, min(100, len(msgs) - j))
        got = np.zeros(len(ev), sc.EVENT_DTYPE)
        n = ev.pop(got)
        got = [(int(e["kind"]), int(e["side"]), int(e["seq"]), int(e["trade_px_tick"]), int(e["trade_qty"]),
                int(e["bid_px_tick"]), int(e["ask_px_tick"]), int(e["bid_qty"]), int(e["ask_qty"]),
                int(e["bid_depth_qty"]), int(e["ask_depth_qty"])) for e in got[:n]]
        want = _expected_events(msgs, 256, 5)
        assert len(want) > 500 and any(w[9] > w[7] for w in want)  # the band reaches past the best level
        assert got == want
        assert book.counters()["events"] == n and book.counters()["events_dropped"] == 0
    finally:
        ev.unlink()


@pytest.mark.timeout(60)
def test_full_events_ring_drops_and_counts(instance):
    msgs = random_stream(12, 3000, 1, 256)
    ev = Ring.create(instance, "events", sc.EVENT_DTYPE, 64)
    try:
        book = Book([256], n_levels=4, events=(ev.ctrl, ev.records))
        book.apply(msgs)
        c = book.counters()
        total = len(_expected_events(msgs, 256, 4))
        assert c["events"] == 64 and c["events_dropped"] == total - 64
        assert len(ev) == 64
    finally:
        ev.unlink()


@pytest.mark.timeout(120)
def test_snapshot_after_batch_matches_reference(instance):
    n_levels = 5
    msgs = random_stream(5, 3000, 2, 200)
    snaps = SnapshotRegion.create(instance, "snap", 2, n_levels)
    try:
        book = Book([200, 200], n_levels=n_levels, snapshots=snaps)
        refs = [RefBook(200), RefBook(200)]
        reader = SnapshotRegion.attach(instance, "snap")
        last_seq = {}
        n_msgs = {0: 0, 1: 0}
        for j in range(0, len(msgs), 250):
            batch = msgs[j:j + 250]
            book.apply(msgs, j, len(batch))
            for m in batch:
                s = int(m["symbol"])
                if s < 2:
                    if refs[s].apply(int(m["kind"]), int(m["side"]), int(m["px_tick"]), int(m["qty"])):
                        n_msgs[s] += 1
                        last_seq[s] = int(m["seq"])
            for s in (0, 1):
                r = reader.read(s)
                ref = refs[s]
                bb, bq, ba, aq = ref.bbo()
                assert (int(r["bid_px_tick"]), int(r["bid_qty"]), int(r["ask_px_tick"]), int(r["ask_qty"])) == (
                    bb, bq, ba, aq)
                assert int(r["spread_tick"]) == (ba - bb if bb != NO_PX and ba != NO_PX else NO_PX)
                bids = ref.top(0, n_levels)
                asks = ref.top(1, n_levels)
                assert [int(x) for x in r["bid_px"][:len(bids)]] == [p for p, _ in bids]
                assert [int(x) for x in r["ask_lvl_qty"][:len(asks)]] == [q for _, q in asks]
                assert all(int(x) == NO_PX for x in r["bid_px"][len(bids):])
                if bq + aq:
                    assert math.isclose(r["imbalance"], (bq - aq) / (bq + aq))
                if bb != NO_PX and ba != NO_PX:
                    assert math.isclose(r["microprice_tick"], (bb * aq + ba * bq) / (bq + aq))
                db, da = sum(q for _, q in bids), sum(q for _, q in asks)
                if db + da:
                    assert math.isclose(r["depth_imbalance"], (db - da) / (db + da))
                assert int(r["msgs_applied"]) == n_msgs[s]
                assert int(r["seq"]) == last_seq[s]
                lp, lq, ls = ref.last
                assert (int(r["last_trade_px_tick"]), int(r["last_trade_qty"]), int(r["last_trade_side"])) == (
                    lp, lq, ls)
                assert int(r["n_levels"]) == n_levels
        assert reader.retries == 0 and reader.reads == 2 * 12
        reader.close()
    finally:
        snaps.unlink()


# --- the one per-message apply (engine._book_kernels.apply_msg) ----------------------


def _ladder_view(book_or_state):
    lad, S, C = book_or_state
    cols = [BK.B_BASE, BK.B_BEST, BK.B_BEST + 1, BK.B_NLEV, BK.B_NLEV + 1]
    keys = [sc.ST_BOOK_OUT_OF_LADDER, sc.ST_BOOK_RECENTRES, sc.ST_BOOK_EVICTED_LEVELS, sc.ST_BOOK_QTY_UNDERFLOW,
            sc.ST_BOOK_TRADES, sc.ST_BOOK_CLEARS, sc.ST_BOOK_HEARTBEATS, sc.ST_BOOK_UNCROSSED]
    return lad.copy(), S[:, cols].copy(), C[keys].copy()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("uncross", [False, True])
def test_apply_batch_applies_every_message_through_apply_msg(uncross):
    """The batch's effect on the ladder and its counters is ``apply_msg``'s, message by
    message; what the batch adds is the message check (a bad message touches nothing)."""
    widths = [64, 96]
    msgs = random_stream(4, 4000, len(widths), 64)
    book = Book(widths, n_levels=4, uncross=uncross)
    lad, S, C = BK.new_state(widths, 4, 10, uncross)
    applied = trades = 0
    for j in range(len(msgs)):
        bad0 = book.counters()["bad_msgs"]
        book.apply(msgs, j, 1)
        m = msgs[j]
        if book.counters()["bad_msgs"] == bad0:
            kind = int(m["kind"])
            trade, _ = BK.apply_msg(lad, S, C, int(m["symbol"]), kind, int(m["side"]), int(m["px_tick"]),
                                    int(m["qty"]), True)
            assert trade == (kind in (sc.K_EXECUTE, sc.K_TRADE)), f"message {j} {m}"
            applied += 1
            trades += trade
        for a, b in zip(_ladder_view((book.lad, book.S, book.C)), _ladder_view((lad, S, C))):
            assert np.array_equal(a, b), f"after message {j} {m}"
    assert 0 < applied < len(msgs) and trades == book.counters()["trades"] > 0
    assert (book.counters()["uncrossed_levels"] > 0) == uncross


def test_apply_msg_uncrosses_only_when_asked_and_the_book_says_so():
    """``may_uncross=False`` (the LOBSTER model book) never removes crossed levels, even
    on a book configured to uncross; True honours the book's ``[book] uncross``."""
    seq = [(sc.K_ADD, 0, 100, 5), (sc.K_ADD, 0, 99, 4), (sc.K_ADD, 1, 103, 7)]
    crossing = (sc.K_ADD, 1, 99, 3)  # an ask through both bids
    got = {}
    for uncross in (False, True):
        for may in (False, True):
            lad, S, C = BK.new_state([64], 4, 10, uncross)
            for k, side, px, q in seq:
                BK.apply_msg(lad, S, C, 0, k, side, px, q, may)
            k, side, px, q = crossing
            got[uncross, may] = (BK.apply_msg(lad, S, C, 0, k, side, px, q, may)[1],
                                 int(C[sc.ST_BOOK_UNCROSSED]), int(BK.best_px(S, 0, 0)))
    assert got[True, True] == (True, 2, NO_PX)
    for key in ((False, False), (False, True), (True, False)):
        assert got[key] == (False, 0, 100), key


def test_set_level_grow_decides_whether_a_price_outside_the_window_moves_it():
    """The set-level rule: a level that adds liquidity outside the window re-centres it
    (a set-level message passes ``grow = q > 0``; the LOBSTER resync always grows); one
    that may not grow is counted out of the ladder and changes nothing."""
    lad, S, C = BK.new_state([20], 2)
    assert BK.set_level(lad, S, C, 0, 0, 100, 5, True, True) == 0  # first price: centres the window
    base = int(S[0, BK.B_BASE])
    assert BK.set_level(lad, S, C, 0, 0, 125, 3, False, True) == -1
    assert int(S[0, BK.B_BASE]) == base and C[sc.ST_BOOK_OUT_OF_LADDER] == 1 and C[sc.ST_BOOK_RECENTRES] == 0
    assert BK.set_level(lad, S, C, 0, 0, 105, 3, True, True) == 0  # inside: just set
    assert BK.set_level(lad, S, C, 0, 1, 112, 4, True, True) == 0  # outside, within W/2 of the mid: moves
    assert int(S[0, BK.B_BASE]) != base and C[sc.ST_BOOK_RECENTRES] == 1
    assert BK.set_level(lad, S, C, 0, 0, 105, 0, False, True) == 0  # set to 0: the level goes
    assert int(BK.best_px(S, 0, 0)) == 100 and int(BK.best_px(S, 0, 1)) == 112


# -- regressions a review demonstrated (each test failed before its fix) -----------------

def test_event_and_snapshot_quantities_beyond_u32(instance):
    ev = Ring.create(instance, "events", sc.EVENT_DTYPE, 16)
    try:
        book = Book([64], 4, events=(ev.ctrl, ev.records))
        book.apply(_msgs([(sc.K_ADD, 0, 100, 3_000_000_000), (sc.K_ADD, 0, 100, 3_000_000_000)]))
        out = np.zeros(4, sc.EVENT_DTYPE)
        assert ev.pop(out) == 2
        assert int(out["bid_qty"][1]) == 6_000_000_000 and int(out["bid_depth_qty"][1]) == 6_000_000_000
    finally:
        ev.unlink()


def test_microprice_does_not_overflow_for_large_prices_and_sizes(instance):
    snaps = SnapshotRegion.create(instance, "snap", 1, 4)
    try:
        book = Book([64], 4, snapshots=snaps)
        px = 6_000_000_000_000  # e.g. BTC at a 1e-8 tick
        book.apply(_msgs([(sc.K_ADD, 0, px, 2_000_000), (sc.K_ADD, 1, px + 2, 2_000_000)]))
        assert math.isclose(snaps.read(0)["microprice_tick"], px + 1.0, rel_tol=0, abs_tol=1e-3)
    finally:
        snaps.unlink()


def test_book_inspection_checks_symbol_and_side():
    book = Book([64, 64], 4)
    with pytest.raises(IndexError):
        book.bbo(5)
    with pytest.raises(IndexError):
        book.clear(-1)
    with pytest.raises(ValueError):
        book.top(1, 2, 3)
