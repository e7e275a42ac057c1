"""The compiled matching engine (exchange/matching.py, exchange/_match_kernels.py): its rules
one by one, then against the plain-Python reference (reference_matcher.py) on a long
random request stream."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from obpipe.exchange import _match_kernels as MK
from obpipe.exchange.matching import MatchingEngine, cancel, modify, new_order, requests
from obpipe.ring import schema as sc
from tests.helpers import REPO

from .reference_matcher import RefMatcher, as_tuples

BUY, SELL = sc.BUY, sc.SELL
LIMIT, MARKET = sc.OT_LIMIT, sc.OT_MARKET
GTC, IOC, FOK = sc.TIF_GTC, sc.TIF_IOC, sc.TIF_FOK
AGG, DONE = sc.RF_AGGRESSOR, sc.RF_DONE


def engine(**kw) -> MatchingEngine:
    kw.setdefault("band_ticks", 1000)
    return MatchingEngine(**kw)


def run(eng: MatchingEngine, *reqs, ts_ns: int = 0):
    """Process ``reqs`` (1-record arrays) in one call; (reports, trades, md) as tuples."""
    return as_tuples(eng.process(np.concatenate(reqs), ts_ns))


# Expected report tuples: (type, side, reason, flags, symbol, qty, leaves, px, id, account).
def ack(oid, side, qty, px, sym=0, acct=0):
    return (sc.R_ACK, side, 0, 0, sym, qty, qty, px, oid, acct)


def fill(oid, side, qty, leaves, px, flags, sym=0, acct=0):
    return (sc.R_FILL, side, 0, flags, sym, qty, leaves, px, oid, acct)


def cancelled(oid, side, reason, qty, px, sym=0, acct=0):
    return (sc.R_CANCELLED, side, reason, 0, sym, qty, 0, px, oid, acct)


def reject(oid, side, reason, sym=0, acct=0):
    return (sc.R_REJECT, side, reason, 0, sym, 0, 0, 0, oid, acct)


def modified(oid, side, qty, px, sym=0, acct=0):
    return (sc.R_MODIFIED, side, 0, 0, sym, qty, qty, px, oid, acct)


# Expected md tuples: (kind, side, symbol, qty, id, px, ts).
def md(kind, side, qty, oid, px, sym=0, ts=0):
    return (kind, side, sym, qty, oid, px, ts)


def ids(side_orders):
    return [row[0] for row in side_orders]


# --- basics ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_ids_are_sequential_and_every_new_order_gets_one_ack_or_reject_first():
    eng = engine()
    reps, trades, mds = run(eng, new_order(BUY, 5, 1000), new_order(BUY, 0, 1000), new_order(SELL, 7, 1001, account=3))
    assert reps == [ack(1, BUY, 5, 1000), reject(2, BUY, sc.RS_BAD_QTY), ack(3, SELL, 7, 1001, acct=3)]
    assert trades == []
    assert mds == [md(sc.K_ADD, BUY, 5, 1, 1000), md(sc.K_ADD, SELL, 7, 3, 1001)]
    assert eng.next_order_id == 4 and eng.resting == 2 and eng.md_messages == 2
    assert eng.book() == {"bids": [[1, 1000, 5, 0]], "asks": [[3, 1001, 7, 3]]}


@pytest.mark.timeout(120)
def test_fifo_within_a_level_oldest_fills_first():
    eng = engine()
    run(eng, new_order(SELL, 10, 1000), new_order(SELL, 10, 1000), new_order(SELL, 10, 1000))
    reps, trades, mds = run(eng, new_order(BUY, 15, 1000), ts_ns=77)
    assert trades == [(4, 1, 1000, 10, BUY), (4, 2, 1000, 5, BUY)]
    assert reps == [ack(4, BUY, 15, 1000),
                    fill(4, BUY, 10, 5, 1000, AGG), fill(1, SELL, 10, 0, 1000, DONE),
                    fill(4, BUY, 5, 0, 1000, AGG | DONE), fill(2, SELL, 5, 5, 1000, 0)]
    assert mds == [md(sc.K_EXECUTE, SELL, 10, 1, 1000, ts=77), md(sc.K_EXECUTE, SELL, 5, 2, 1000, ts=77)]
    assert eng.book()["asks"] == [[2, 1000, 5, 0], [3, 1000, 10, 0]]
    assert eng.levels(0, SELL) == [(1000, 15, 2)]


@pytest.mark.timeout(120)
def test_partial_fill_of_the_incoming_order_rests_its_remainder():
    eng = engine()
    run(eng, new_order(SELL, 10, 1000))
    reps, trades, mds = run(eng, new_order(BUY, 25, 1002))
    assert trades == [(2, 1, 1000, 10, BUY)]  # at the resting price, not 1002
    assert reps == [ack(2, BUY, 25, 1002), fill(2, BUY, 10, 15, 1000, AGG), fill(1, SELL, 10, 0, 1000, DONE)]
    assert mds == [md(sc.K_EXECUTE, SELL, 10, 1, 1000), md(sc.K_ADD, BUY, 15, 2, 1002)]
    assert eng.book() == {"bids": [[2, 1002, 15, 0]], "asks": []}


@pytest.mark.timeout(120)
def test_partial_fill_of_the_resting_order_keeps_its_place():
    eng = engine()
    run(eng, new_order(SELL, 30, 1000), new_order(SELL, 5, 1000))
    reps, trades, _ = run(eng, new_order(BUY, 10, 1000))
    assert trades == [(3, 1, 1000, 10, BUY)]
    assert reps[-1] == fill(1, SELL, 10, 20, 1000, 0)  # not done: 20 left
    assert eng.book()["asks"] == [[1, 1000, 20, 0], [2, 1000, 5, 0]]
    assert eng.resting == 2


@pytest.mark.timeout(120)
def test_sweep_takes_levels_best_price_first_and_stops_at_the_limit():
    eng = engine()
    run(eng, new_order(SELL, 30, 10100), new_order(SELL, 20, 10050), new_order(SELL, 5, 10200))
    reps, trades, _ = run(eng, new_order(BUY, 60, 10100))
    assert trades == [(4, 2, 10050, 20, BUY), (4, 1, 10100, 30, BUY)]
    assert reps[-1] == fill(1, SELL, 30, 0, 10100, DONE)
    # the 10200 ask is beyond the limit: the buy's last 10 rest at 10100
    assert eng.book() == {"bids": [[4, 10100, 10, 0]], "asks": [[3, 10200, 5, 0]]}
    # a sell sweeps bids highest first
    run(eng, new_order(BUY, 7, 10090))
    _, trades, _ = run(eng, new_order(SELL, 12, 10000))
    assert trades == [(4, 6, 10100, 10, SELL), (5, 6, 10090, 2, SELL)]
    assert eng.levels(0, BUY) == [(10090, 5, 1)]


# --- market, IOC, FOK ------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_market_order_on_an_empty_book_is_cancelled_and_nothing_rests():
    eng = engine()
    reps, trades, mds = run(eng, new_order(BUY, 10, ord_type=MARKET))
    assert reps == [ack(1, BUY, 10, 0), cancelled(1, BUY, sc.RS_UNFILLED, 10, 0)]
    assert trades == [] and mds == []
    assert eng.resting == 0 and eng.book() == {"bids": [], "asks": []}


@pytest.mark.timeout(120)
def test_market_order_takes_what_there_is_and_its_rest_is_cancelled():
    eng = engine()
    run(eng, new_order(BUY, 50, 9900), new_order(BUY, 50, 10000))
    reps, trades, _ = run(eng, new_order(SELL, 120, 1 << 40, ord_type=MARKET))  # its price is ignored
    assert trades == [(2, 3, 10000, 50, SELL), (1, 3, 9900, 50, SELL)]
    assert reps[0] == ack(3, SELL, 120, 0)
    assert reps[-1] == cancelled(3, SELL, sc.RS_UNFILLED, 20, 0)
    assert eng.resting == 0


@pytest.mark.timeout(120)
def test_ioc_rest_is_cancelled_and_never_rests():
    eng = engine()
    run(eng, new_order(SELL, 4, 1000), new_order(SELL, 4, 1003))
    reps, trades, mds = run(eng, new_order(BUY, 10, 1001, tif=IOC))
    assert trades == [(3, 1, 1000, 4, BUY)]
    assert reps[-1] == cancelled(3, BUY, sc.RS_UNFILLED, 6, 1001)
    assert [m[0] for m in mds] == [sc.K_EXECUTE]  # no add
    assert eng.book() == {"bids": [], "asks": [[2, 1003, 4, 0]]}
    reps, trades, mds = run(eng, new_order(BUY, 3, 1001, tif=IOC))  # nothing to take
    assert reps == [ack(4, BUY, 3, 1001), cancelled(4, BUY, sc.RS_UNFILLED, 3, 1001)]
    assert trades == [] and mds == [] and eng.resting == 1


@pytest.mark.timeout(120)
def test_fok_that_can_fill_fills_completely_across_levels():
    eng = engine()
    run(eng, new_order(SELL, 4, 1000), new_order(SELL, 4, 1001), new_order(SELL, 4, 1002))
    reps, trades, _ = run(eng, new_order(BUY, 6, 1001, tif=FOK))
    assert trades == [(4, 1, 1000, 4, BUY), (4, 2, 1001, 2, BUY)]
    assert reps[0] == ack(4, BUY, 6, 1001) and reps[-2] == fill(4, BUY, 2, 0, 1001, AGG | DONE)
    assert eng.book()["asks"] == [[2, 1001, 2, 0], [3, 1002, 4, 0]]
    assert eng.book()["bids"] == []


@pytest.mark.timeout(120)
def test_fok_that_cannot_fill_is_rejected_whole_and_the_book_is_unchanged():
    eng = engine()
    run(eng, new_order(SELL, 4, 1000), new_order(SELL, 4, 1001), new_order(SELL, 100, 1002))
    before = eng.book()
    # 8 lots within the limit 1001: 9 is too many, even though 1002 has plenty
    reps, trades, mds = run(eng, new_order(BUY, 9, 1001, tif=FOK))
    assert reps == [reject(4, BUY, sc.RS_FOK_UNFILLABLE)]
    assert trades == [] and mds == []
    assert eng.book() == before
    reps, _, _ = run(eng, new_order(BUY, 200, tif=FOK, ord_type=MARKET))  # market FOK: 108 on the book
    assert reps == [reject(5, BUY, sc.RS_FOK_UNFILLABLE)]
    assert eng.book() == before
    reps, trades, _ = run(eng, new_order(BUY, 8, 1001, tif=FOK))  # exactly enough
    assert sum(t[3] for t in trades) == 8 and reps[-2][2:4] == (0, AGG | DONE)


# --- cancel ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_cancel_of_a_resting_order_removes_it():
    eng = engine()
    run(eng, new_order(BUY, 10, 1000), new_order(BUY, 20, 1000))
    reps, trades, mds = run(eng, cancel(1), ts_ns=5)
    assert reps == [cancelled(1, BUY, sc.RS_USER, 10, 1000)]
    assert mds == [md(sc.K_DELETE, BUY, 10, 1, 1000, ts=5)] and trades == []
    assert eng.book()["bids"] == [[2, 1000, 20, 0]]


@pytest.mark.timeout(120)
def test_cancel_of_unknown_filled_and_already_cancelled_orders_is_rejected():
    eng = engine()
    run(eng, new_order(SELL, 5, 1000), new_order(BUY, 5, 1000), new_order(BUY, 1, 990))  # 1 and 2 fill
    reps, _, mds = run(eng, cancel(99), cancel(1), cancel(2), cancel(3), cancel(3), cancel(0))
    assert reps == [reject(99, 0, sc.RS_UNKNOWN_ORDER), reject(1, 0, sc.RS_UNKNOWN_ORDER),
                    reject(2, 0, sc.RS_UNKNOWN_ORDER), cancelled(3, BUY, sc.RS_USER, 1, 990),
                    reject(3, 0, sc.RS_UNKNOWN_ORDER), reject(0, 0, sc.RS_UNKNOWN_ORDER)]
    assert mds == [md(sc.K_DELETE, BUY, 1, 3, 990)]
    assert eng.resting == 0
    assert eng.next_order_id == 4  # cancels take no id


# --- modify ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_modify_quantity_down_keeps_the_place():
    eng = engine()
    run(eng, new_order(SELL, 10, 1000), new_order(SELL, 10, 1000))
    reps, trades, mds = run(eng, modify(1, 4))
    assert reps == [modified(1, SELL, 4, 1000)] and trades == []
    assert mds == [md(sc.K_CANCEL, SELL, 6, 1, 1000)]  # a partial cancel of the difference
    assert eng.book()["asks"] == [[1, 1000, 4, 0], [2, 1000, 10, 0]]
    # the same price given explicitly and the same quantity: still first, nothing on the feed
    reps, _, mds = run(eng, modify(1, 4, 1000))
    assert reps == [modified(1, SELL, 4, 1000)] and mds == []
    _, trades, _ = run(eng, new_order(BUY, 5, 1000))
    assert trades == [(3, 1, 1000, 4, BUY), (3, 2, 1000, 1, BUY)]


@pytest.mark.timeout(120)
def test_modify_quantity_up_loses_the_place():
    eng = engine()
    run(eng, new_order(SELL, 10, 1000), new_order(SELL, 10, 1000))
    reps, trades, mds = run(eng, modify(1, 11))
    assert reps == [modified(1, SELL, 11, 1000)] and trades == []
    assert mds == [md(sc.K_DELETE, SELL, 10, 1, 1000), md(sc.K_ADD, SELL, 11, 1, 1000)]
    assert eng.book()["asks"] == [[2, 1000, 10, 0], [1, 1000, 11, 0]]


@pytest.mark.timeout(120)
def test_modify_price_loses_the_place_even_when_moving_back():
    eng = engine()
    run(eng, new_order(BUY, 10, 1000), new_order(BUY, 10, 1000), new_order(BUY, 10, 999))
    reps, _, mds = run(eng, modify(1, 10, 999))
    assert reps == [modified(1, BUY, 10, 999)]
    assert mds == [md(sc.K_DELETE, BUY, 10, 1, 1000), md(sc.K_ADD, BUY, 10, 1, 999)]
    assert eng.book()["bids"] == [[2, 1000, 10, 0], [3, 999, 10, 0], [1, 999, 10, 0]]
    run(eng, modify(1, 10, 1000))
    assert eng.book()["bids"] == [[2, 1000, 10, 0], [1, 1000, 10, 0], [3, 999, 10, 0]]


@pytest.mark.timeout(120)
def test_modify_to_a_crossing_price_trades_as_a_new_arrival():
    eng = engine()
    run(eng, new_order(SELL, 5, 1002), new_order(SELL, 5, 1003), new_order(BUY, 8, 1000))
    reps, trades, mds = run(eng, modify(3, 8, 1002))
    assert reps == [modified(3, BUY, 8, 1002), fill(3, BUY, 5, 3, 1002, AGG), fill(1, SELL, 5, 0, 1002, DONE)]
    assert trades == [(3, 1, 1002, 5, BUY)]
    assert mds == [md(sc.K_DELETE, BUY, 8, 3, 1000), md(sc.K_EXECUTE, SELL, 5, 1, 1002),
                   md(sc.K_ADD, BUY, 3, 3, 1002)]
    assert eng.book() == {"bids": [[3, 1002, 3, 0]], "asks": [[2, 1003, 5, 0]]}
    # filled completely by a modify: gone, and further modifies are unknown
    reps, trades, _ = run(eng, modify(3, 5, 1003), modify(3, 1))
    assert trades == [(3, 2, 1003, 5, BUY)]
    assert reps[-1] == reject(3, 0, sc.RS_UNKNOWN_ORDER)
    assert eng.resting == 0


@pytest.mark.timeout(120)
def test_modify_rejects_unknown_bad_quantity_and_bad_price_and_changes_nothing():
    eng = engine(band_ticks=100)
    run(eng, new_order(BUY, 10, 1000))  # window [950, 1050)
    before = eng.book()
    reps, trades, mds = run(eng, modify(7, 5), modify(1, 0), modify(1, 5, TOO_HIGH), modify(1, 5, (1 << 63) - 1))
    assert reps == [reject(7, 0, sc.RS_UNKNOWN_ORDER), reject(1, BUY, sc.RS_BAD_QTY),
                    reject(1, BUY, sc.RS_BAD_PRICE), reject(1, BUY, sc.RS_BAD_PRICE)]
    assert trades == [] and mds == [] and eng.book() == before
    reps, _, _ = run(eng, modify(1, 5, 1050), modify(1, 5, 949), modify(1, 5, 1 << 62))  # outside the window
    assert [r[0] for r in reps] == [sc.R_MODIFIED] * 3
    assert eng.book()["bids"] == [[1, 1 << 62, 5, 0]]


# --- self-trade prevention, ownership ---------------------------------------------------

@pytest.mark.timeout(120)
def test_self_trade_prevention_cancels_the_resting_own_order_and_matching_goes_on():
    eng = engine()
    run(eng, new_order(SELL, 5, 1000, account=7), new_order(SELL, 5, 1000, account=8),
        new_order(SELL, 5, 1001, account=7))
    reps, trades, mds = run(eng, new_order(BUY, 8, 1001, account=7))
    assert reps == [ack(4, BUY, 8, 1001, acct=7),
                    cancelled(1, SELL, sc.RS_SELF_TRADE, 5, 1000, acct=7),
                    fill(4, BUY, 5, 3, 1000, AGG, acct=7), fill(2, SELL, 5, 0, 1000, DONE, acct=8),
                    cancelled(3, SELL, sc.RS_SELF_TRADE, 5, 1001, acct=7)]
    assert trades == [(4, 2, 1000, 5, BUY)]
    assert mds == [md(sc.K_DELETE, SELL, 5, 1, 1000), md(sc.K_EXECUTE, SELL, 5, 2, 1000),
                   md(sc.K_DELETE, SELL, 5, 3, 1001), md(sc.K_ADD, BUY, 3, 4, 1001)]
    assert eng.book() == {"bids": [[4, 1001, 3, 7]], "asks": []}


@pytest.mark.timeout(120)
def test_self_trade_prevention_leaves_own_orders_behind_the_last_fill_alone():
    eng = engine()
    run(eng, new_order(SELL, 5, 1000, account=8), new_order(SELL, 5, 1000, account=7))
    reps, trades, _ = run(eng, new_order(BUY, 5, 1000, account=7))
    assert trades == [(3, 1, 1000, 5, BUY)]
    assert not any(r[2] == sc.RS_SELF_TRADE for r in reps)
    assert eng.book()["asks"] == [[2, 1000, 5, 7]]


@pytest.mark.timeout(120)
def test_account_zero_has_no_self_trade_prevention():
    eng = engine()
    run(eng, new_order(SELL, 5, 1000))
    reps, trades, _ = run(eng, new_order(BUY, 5, 1000))
    assert trades == [(2, 1, 1000, 5, BUY)]
    assert not any(r[0] == sc.R_CANCELLED for r in reps)


@pytest.mark.timeout(120)
def test_fok_does_not_count_own_orders():
    eng = engine()
    run(eng, new_order(SELL, 10, 1000, account=1), new_order(SELL, 10, 1000, account=2))
    before = eng.book()
    reps, _, mds = run(eng, new_order(BUY, 15, 1000, tif=FOK, account=1))  # 20 there, only 10 not its own
    assert reps == [reject(3, BUY, sc.RS_FOK_UNFILLABLE, acct=1)] and mds == []
    assert eng.book() == before
    reps, trades, _ = run(eng, new_order(BUY, 10, 1000, tif=FOK, account=1))
    assert trades == [(4, 2, 1000, 10, BUY)]
    assert reps[1] == cancelled(1, SELL, sc.RS_SELF_TRADE, 10, 1000, acct=1)
    assert eng.resting == 0


@pytest.mark.timeout(120)
def test_cancel_and_modify_of_another_accounts_order_are_refused():
    eng = engine()
    run(eng, new_order(BUY, 10, 1000, account=1))
    before = eng.book()
    reps, trades, mds = run(eng, cancel(1, account=2), modify(1, 5, account=2), cancel(1),
                            modify(1, 20, 1001, account=0))
    assert reps == [reject(1, BUY, sc.RS_NOT_OWNER, acct=2)] * 2 + [reject(1, BUY, sc.RS_NOT_OWNER)] * 2
    assert trades == [] and mds == [] and eng.book() == before
    reps, _, _ = run(eng, cancel(1, account=1))
    assert reps == [cancelled(1, BUY, sc.RS_USER, 10, 1000, acct=1)]


# --- rejects, far prices, pool -----------------------------------------------------------

TOO_HIGH = (1 << 62) + 1  # the one bad positive price: above MAX_PX_TICK

def _raw_new(side=BUY, qty=5, px=1000, ord_type=LIMIT, tif=GTC, symbol=0):
    c = requests(1)
    c["type"], c["side"], c["ord_type"], c["tif"] = sc.OE_NEW, side, ord_type, tif
    c["qty"], c["px_tick"], c["symbol"] = qty, px, symbol
    return c


@pytest.mark.timeout(120)
@pytest.mark.parametrize("req, side, reason, sym", [
    (_raw_new(side=2), 2, sc.RS_BAD_SIDE, 0),
    (_raw_new(ord_type=2), BUY, sc.RS_BAD_TYPE, 0),
    (_raw_new(tif=3), BUY, sc.RS_BAD_TYPE, 0),
    (_raw_new(symbol=2), BUY, sc.RS_BAD_SYMBOL, 2),
    (_raw_new(qty=0), BUY, sc.RS_BAD_QTY, 0),
    (_raw_new(px=0), BUY, sc.RS_BAD_PRICE, 0),
    (_raw_new(px=-5), BUY, sc.RS_BAD_PRICE, 0),
    (_raw_new(px=TOO_HIGH), BUY, sc.RS_BAD_PRICE, 0),
    (_raw_new(side=SELL, px=TOO_HIGH, qty=0), SELL, sc.RS_BAD_QTY, 0),  # quantity is checked before price
])
def test_bad_new_orders_are_rejected_take_an_id_and_change_nothing(req, side, reason, sym):
    eng = engine(n_symbols=2, band_ticks=100)
    run(eng, new_order(SELL, 3, 1000))
    before = eng.book()
    reps, trades, mds = run(eng, req)
    assert reps == [reject(2, side, reason, sym)]
    assert trades == [] and mds == [] and eng.book() == before
    assert eng.next_order_id == 3


@pytest.mark.timeout(120)
def test_unknown_request_type_is_rejected_without_taking_an_id():
    eng = engine()
    c = requests(1)
    c["type"], c["order_id"], c["side"], c["account"] = 9, 42, SELL, 4
    reps, _, _ = run(eng, c)
    assert reps == [reject(42, SELL, sc.RS_BAD_TYPE, acct=4)]
    assert eng.next_order_id == 1


@pytest.mark.timeout(120)
def test_a_request_with_its_reserved_field_set_is_malformed_whatever_it_is():
    eng = engine()
    run(eng, new_order(BUY, 10, 1000))
    c = np.concatenate([new_order(SELL, 10, 1000, account=2), cancel(1)])
    c["_reserved"] = 1
    reps, trades, mds = run(eng, c)
    assert reps == [reject(0, SELL, sc.RS_MALFORMED, acct=2), reject(1, 0, sc.RS_MALFORMED)]
    assert trades == [] and mds == []
    assert eng.next_order_id == 2 and eng.book()["bids"] == [[1, 1000, 10, 0]]


@pytest.mark.timeout(120)
def test_every_sane_price_is_accepted_however_far_from_the_window():
    eng = engine(n_symbols=2, band_ticks=100)
    px = [1000, 1049, 1050, 949, 1, 1 << 62, 5000, 10 ** 12]
    reps, _, _ = run(eng, *[new_order(BUY, 1, p) for p in px], *[new_order(SELL, 1, p, symbol=1) for p in px])
    assert [r[0] for r in reps] == [sc.R_ACK] * 2 * len(px)
    assert eng.levels(0, BUY) == [(p, 1, 1) for p in sorted(px, reverse=True)]
    assert eng.levels(1, SELL) == [(p, 1, 1) for p in sorted(px)]
    fixed = engine(n_symbols=1, band_ticks=100, bases=[2000])
    reps, _, _ = run(fixed, new_order(BUY, 1, 1999), new_order(BUY, 1, 2000), new_order(BUY, 1, 2099),
                     new_order(BUY, 1, 2100))
    assert [r[0] for r in reps] == [sc.R_ACK] * 4


@pytest.mark.timeout(120)
def test_the_readme_price_improvement_scenario_trades():
    """issue 13, item 10: `LIMIT,SELL,10000.00,50` then `LIMIT,BUY,10500.00,50` was
    REJECTED 2 bad price (a fixed band centred on the first price)."""
    eng = engine(band_ticks=1 << 16)
    reps, trades, _ = run(eng, new_order(SELL, 50, 1_000_000), new_order(BUY, 50, 1_050_000))
    assert trades == [(2, 1, 1_000_000, 50, BUY)]
    assert [r[0] for r in reps] == [sc.R_ACK, sc.R_ACK, sc.R_FILL, sc.R_FILL]


@pytest.mark.timeout(120)
def test_far_orders_keep_price_time_priority_when_the_window_moves_to_them():
    eng = engine(band_ticks=100)
    # bids: 1000 (window [950, 1050)), then far ones at 500 (two, FIFO) and 100: parked
    run(eng, new_order(BUY, 1, 1000), new_order(BUY, 2, 500, account=1), new_order(BUY, 3, 100),
        new_order(BUY, 4, 500, account=2))
    assert eng.n_parked(0, BUY) == 3
    assert [o[0] for o in eng.orders(0, BUY)] == [1, 2, 4, 3]
    # a sell sweeping everything: 1000 first, then the window moves to 500 (ids 2, 4), then 100
    reps, trades, _ = run(eng, new_order(SELL, 10, 50))
    assert trades == [(1, 5, 1000, 1, SELL), (2, 5, 500, 2, SELL), (4, 5, 500, 4, SELL), (3, 5, 100, 3, SELL)]
    assert eng.resting == 0 and int(eng.E[MK.E_RECENTRES]) >= 2
    # a far better bid moves the window up; the old best is parked and comes back in order
    run(eng, new_order(BUY, 1, 1000), new_order(BUY, 1, 1000), new_order(BUY, 1, 5000), new_order(SELL, 2, 1))
    assert eng.book()["bids"] == [[7, 1000, 1, 0]]  # 5000 then 1000's first order (id 6) traded
    fok = _out(eng, new_order(SELL, 1, 1000, tif=FOK), new_order(SELL, 2, 1, tif=FOK))
    assert [int(r["type"]) for r in fok.reports] == [sc.R_ACK, sc.R_FILL, sc.R_FILL, sc.R_REJECT]


@pytest.mark.timeout(120)
def test_pool_full_cancels_the_rest_and_a_freed_slot_is_reused():
    eng = engine(capacity=2)
    run(eng, new_order(SELL, 1, 1000), new_order(SELL, 1, 1001))
    reps, trades, mds = run(eng, new_order(SELL, 5, 1002))
    assert reps == [ack(3, SELL, 5, 1002), cancelled(3, SELL, sc.RS_BOOK_FULL, 5, 1002)]
    assert trades == [] and mds == [] and eng.resting == 2
    run(eng, new_order(BUY, 1, 1000))  # fills order 1: a slot frees up
    reps, _, mds = run(eng, new_order(SELL, 5, 1002))
    assert reps == [ack(5, SELL, 5, 1002)] and mds == [md(sc.K_ADD, SELL, 5, 5, 1002)]
    assert eng.book()["asks"] == [[2, 1001, 1, 0], [5, 1002, 5, 0]]


# --- batches and output buffers ---------------------------------------------------------

class Flow:
    """Random requests, one at a time, aimed using the reference's state (live ids,
    owners, symbols).  Prices cluster within ~40 ticks of a slowly wandering mid so that
    most new orders cross; a few accounts so self-trade prevention fires; a sprinkling of
    every kind of bad request."""

    def __init__(self, seed: int, ref: RefMatcher, mids=(10_000, 5_000), accounts=(0, 1, 2, 3),
                 aim_symbol: bool = False):
        self.rng = np.random.default_rng(seed)
        self.ref = ref
        self.mids = list(mids)
        self.mid0 = list(mids)
        self.accounts = accounts
        # modify/cancel carry the target's symbol (True) or a random one (the engine
        # must not care; but see test_modify_with_another_symbol_field_...)
        self.aim_symbol = aim_symbol
        kinds = ["limit", "ioc", "fok", "market", "cancel", "modify", "bad"]
        p = np.array([40, 7, 7, 5, 18, 18, 5], float)
        self.kinds, self.p = kinds, p / p.sum()

    def _qty(self):
        r = self.rng
        return int(r.integers(50, 300)) if r.random() < 0.05 else int(min(r.geometric(0.15), 60))

    def _px(self, sym, side):
        r = self.rng
        if r.random() < 0.01:
            return int(r.choice([0, self.mids[sym] - 500, self.mids[sym] + 500]))  # bad price
        skew = -8 if side == BUY else 8
        return self.mids[sym] + skew + int(r.integers(-20, 21))

    def next(self) -> np.ndarray:
        r = self.rng
        n_sym = len(self.mids)
        for s in range(n_sym):  # wander, but stay well inside the band
            self.mids[s] = int(np.clip(self.mids[s] + r.integers(-1, 2), self.mid0[s] - 15, self.mid0[s] + 15))
        kind = self.kinds[int(r.choice(len(self.kinds), p=self.p))]
        sym = int(r.integers(n_sym))
        side = int(r.integers(2))
        acct = int(r.choice(self.accounts))
        if kind == "limit":
            return new_order(side, self._qty(), self._px(sym, side), symbol=sym, account=acct)
        if kind in ("ioc", "fok"):
            return new_order(side, self._qty(), self._px(sym, side), tif=IOC if kind == "ioc" else FOK,
                             symbol=sym, account=acct)
        if kind == "market":
            return new_order(side, self._qty(), ord_type=MARKET, tif=int(r.choice([GTC, IOC, FOK])), symbol=sym,
                             account=acct)
        live = self.ref.by_id
        target = None
        if kind in ("cancel", "modify") and live and r.random() < 0.85:
            target = live[int(r.choice(list(live)))]
            oid = target.id
            if r.random() < 0.9:
                acct = target.acct
        else:
            oid = int(r.integers(0, self.ref.next_order_id + 3))  # mostly dead ids
        if kind in ("cancel", "modify"):
            c = cancel(oid, account=acct) if kind == "cancel" else self._modify(oid, target, acct)
            c["symbol"] = target.sym if (target is not None and self.aim_symbol) else int(r.integers(n_sym))
            return c
        # bad requests
        bad = int(r.integers(7))
        c = new_order(side, self._qty(), self._px(sym, side), symbol=sym, account=acct)
        if bad == 0:
            c["side"] = 2 + int(r.integers(250))
        elif bad == 1:
            c["ord_type"] = 2
        elif bad == 2:
            c["tif"] = 3
        elif bad == 3:
            c["symbol"] = n_sym + int(r.integers(3))
        elif bad == 4:
            c["qty"] = 0
        elif bad == 5:
            c["type"] = int(r.choice([0, 4, 200]))
        else:
            c = cancel(oid, account=acct) if r.random() < 0.5 else c
            c["_reserved"] = int(r.integers(1, 1 << 16))
        return c

    def _modify(self, oid, o, acct):
        r = self.rng
        if o is None:
            return modify(oid, self._qty(), account=acct)
        u = r.random()
        if u < 0.30:  # down (or equal), keeps the place; price given or not
            return modify(oid, int(r.integers(1, o.qty + 1)), o.px if r.random() < 0.5 else 0, account=acct)
        if u < 0.50:  # up
            return modify(oid, o.qty + int(r.integers(1, 20)), 0, account=acct)
        if u < 0.90:  # new price, maybe crossing
            return modify(oid, self._qty(), o.px + int(r.integers(-12, 13)), account=acct)
        if u < 0.95:
            return modify(oid, 0, account=acct)  # bad quantity
        return modify(oid, o.qty, o.px + int(r.choice([-5000, 5000])), account=acct)  # bad price


def generate(seed: int, n: int, ref: RefMatcher, **kw) -> tuple[np.ndarray, tuple[list, list, list]]:
    """``n`` requests aimed by ``ref``, which processes them one by one; returns them and
    everything ``ref`` produced."""
    flow = Flow(seed, ref, **kw)
    reqs = requests(n)
    outs = ([], [], [])
    for i in range(n):
        reqs[i] = flow.next()[0]
        for acc, part in zip(outs, ref.process(reqs[i:i + 1])):
            acc.extend(part)
    return reqs, outs


def one_by_one(eng: MatchingEngine, reqs: np.ndarray, ts_ns: int = 0):
    outs = ([], [], [])
    for i in range(len(reqs)):
        for acc, part in zip(outs, as_tuples(eng.process(reqs[i:i + 1], ts_ns))):
            acc.extend(part)
    return outs


@pytest.mark.timeout(120)
def test_a_stream_longer_than_max_batch_in_one_call_equals_one_by_one():
    kw = dict(n_symbols=2, band_ticks=200, capacity=64)
    reqs, ref_out = generate(11, 3000, RefMatcher(**kw), aim_symbol=True)
    big = MatchingEngine(max_batch=16, **kw)
    out = big.process(reqs, 123)
    # the kernel had to stop and drain (the outputs are copies, not buffer views)
    assert not np.shares_memory(out.reports, big.rep)
    single = MatchingEngine(max_batch=16, **kw)
    expected = one_by_one(single, reqs, 123)
    got = as_tuples(out)
    assert len(got[0]) > 2 * len(big.rep)  # far more output than the buffers hold
    assert got == expected
    for s in range(2):
        assert big.book(s) == single.book(s)
    # and the reference agrees (timestamps aside: it ran at ts 0)
    assert got[0] == ref_out[0] and got[1] == ref_out[1]
    assert [m[:6] for m in got[2]] == [m[:6] for m in ref_out[2]]


@pytest.mark.timeout(120)
def test_a_sweep_of_many_orders_in_one_call_equals_one_by_one():
    n = 2500
    reqs = np.concatenate([new_order(SELL, 1 + i % 3, 1000 + i % 50) for i in range(n)]
                          + [new_order(BUY, 10 ** 6, ord_type=MARKET)])
    big = MatchingEngine(band_ticks=200, capacity=3000, max_batch=1)
    out = big.process(reqs)
    assert not np.shares_memory(out.reports, big.rep)  # it needed a second round
    single = MatchingEngine(band_ticks=200, capacity=3000, max_batch=1)
    got, expected = as_tuples(out), one_by_one(single, reqs)
    assert got == expected
    assert len(got[1]) == n and big.resting == 0
    assert got[0][-1] == cancelled(n + 1, BUY, sc.RS_UNFILLED, 10 ** 6 - sum(1 + i % 3 for i in range(n)), 0)


@pytest.mark.timeout(120)
def test_max_batch_zero_is_refused_or_still_takes_a_request():
    """``max_batch`` sizes the output buffers; 0 (not checked by the constructor) left
    no room beyond the pool and ``process`` raised "cannot happen"."""
    try:
        eng = MatchingEngine(band_ticks=100, capacity=1, max_batch=0)
    except ValueError as e:
        assert "max_batch" in str(e)
        return
    reps, _, _ = run(eng, new_order(BUY, 1, 1000))
    assert reps == [ack(1, BUY, 1, 1000)]


_XSYM_MODIFY = textwrap.dedent("""
    import numpy as np
    from obpipe.exchange.matching import MatchingEngine, cancel, modify, new_order
    from obpipe.ring import schema as sc
    reqs = [new_order(sc.SELL, 1, 1000, symbol=1) for _ in range(50)]  # ids 1..50
    reqs.append(new_order(sc.BUY, 50, 900, symbol=1))  # id 51
    for k in range(25):  # traffic on symbol 0 fills the md buffer: ids 52..76
        reqs += [new_order(sc.BUY, 1, 500), cancel(52 + k)]
    reqs.append(modify(51, 50, 1000))  # its symbol field is 0; the order is on symbol 1
    reqs = np.concatenate(reqs)
    kw = dict(n_symbols=2, band_ticks=1000, capacity=100, max_batch=1)
    big = MatchingEngine(**kw)
    out = big.process(reqs)
    single = MatchingEngine(**kw)
    n_md = sum(len(single.process(reqs[i:i + 1]).md) for i in range(len(reqs)))
    print(len(out.md), n_md, flush=True)
""")


@pytest.mark.timeout(240)
def test_modify_with_another_symbol_field_does_not_overrun_the_output_buffers():
    """A modify names its order by id; the request's symbol field (0 by default,
    ``matching.modify`` does not set it) is not the order's symbol.  The kernel's room
    check must size the worst case by the order's symbol, else the sweep writes past
    the end of the market-data buffer.  Run in a child: the overrun corrupts memory."""
    p = subprocess.run([sys.executable, "-c", _XSYM_MODIFY], cwd=REPO, capture_output=True, text=True, timeout=220)
    assert p.returncode == 0, f"child died with status {p.returncode}: {p.stdout} {p.stderr[-2000:]}"
    got, expected = (int(x) for x in p.stdout.split())
    assert got == expected == 152


# --- market data ------------------------------------------------------------------------

def apply_md(msgs, orders: dict) -> None:
    """Apply md tuples to ``orders`` (id -> [sym, side, px, qty]), checking each message
    against what is resting."""
    for kind, side, sym, qty, oid, px, _ in msgs:
        if kind == sc.K_ADD:
            assert oid not in orders and qty > 0
            orders[oid] = [sym, side, px, qty]
            continue
        o = orders[oid]
        assert o[:3] == [sym, side, px], (kind, oid)
        if kind == sc.K_DELETE:
            assert qty == o[3]
            del orders[oid]
        else:
            assert kind in (sc.K_CANCEL, sc.K_EXECUTE) and 0 < qty <= o[3]
            o[3] -= qty
            if o[3] == 0:
                assert kind == sc.K_EXECUTE  # a partial cancel never empties an order
                del orders[oid]


def md_levels(orders: dict, sym: int, side: int):
    lv: dict[int, list[int]] = {}
    for s, d, px, q in orders.values():
        if (s, d) == (sym, side):
            lv.setdefault(px, [0, 0])
            lv[px][0] += q
            lv[px][1] += 1
    return [(px, q, n) for px, (q, n) in sorted(lv.items(), reverse=(side == BUY))]


@pytest.mark.timeout(120)
def test_market_data_rebuilds_the_engines_levels():
    kw = dict(n_symbols=2, band_ticks=200, capacity=200)
    reqs, _ = generate(5, 20_000, RefMatcher(**kw))
    eng = MatchingEngine(**kw)
    orders: dict = {}
    n_md = 0
    for start in range(0, len(reqs), 997):
        out = eng.process(reqs[start:start + 997], ts_ns=start)
        assert (out.md["ts_exch_ns"] == start).all()
        _, _, msgs = as_tuples(out)
        n_md += len(msgs)
        apply_md(msgs, orders)
        for s in range(2):
            for side in (BUY, SELL):
                assert md_levels(orders, s, side) == eng.levels(s, side)
        assert len(orders) == eng.resting
    assert n_md == eng.md_messages > 10_000


# --- differential against the reference ---------------------------------------------------

@pytest.mark.timeout(300)
def test_random_requests_match_the_reference_request_by_request():
    n_symbols = 2
    kw = dict(n_symbols=n_symbols, band_ticks=200, capacity=100)
    ref = RefMatcher(**kw)
    eng = MatchingEngine(**kw)
    flow = Flow(20240611, ref)
    n = 100_000
    seen = {"trades": 0, "stp": 0, "book_full": 0, "fok_reject": 0, "keep_place": 0}
    for i in range(n):
        req = flow.next()
        got = as_tuples(eng.process(req, i))
        want = ref.process(req, i)
        assert got == want, f"request {i}: {req}"
        for s in range(n_symbols):  # the whole book: every order, in priority order
            assert eng.book(s) == ref.book(s), (i, s)
        assert eng.resting == ref.resting, i
        if i % 500 == 499 or i == n - 1:
            for s in range(n_symbols):
                for side in (BUY, SELL):
                    assert eng.levels(s, side) == ref.levels(s, side), (i, s, side)
        seen["trades"] += len(want[1])
        seen["stp"] += sum(r[2] == sc.RS_SELF_TRADE for r in want[0])
        seen["book_full"] += sum(r[2] == sc.RS_BOOK_FULL for r in want[0])
        seen["fok_reject"] += sum(r[2] == sc.RS_FOK_UNFILLABLE for r in want[0])
        seen["keep_place"] += sum(m[0] == sc.K_CANCEL for m in want[2])
    assert eng.next_order_id == ref.next_order_id and eng.md_messages == ref.md_messages
    # the stream exercised what it is meant to (prices 500 and 5,000 off the mid: parked)
    assert seen["trades"] > 20_000 and min(seen.values()) > 100, seen
    assert eng.counters()["parked"] > 100 and eng.counters()["recentres"] > 100, eng.counters()


class DriftFlow(Flow):
    """``Flow`` whose mids drift steadily from their start to ``factor`` times it over
    ``n`` requests (a symbol whose price moves tenfold in a run)."""

    def __init__(self, seed, ref, n: int, factor: float = 10.0, **kw):
        super().__init__(seed, ref, **kw)
        self.step = [(factor - 1) * m / n for m in self.mids]
        self.k = 0

    def next(self):
        self.k += 1
        self.mids = [int(m0 + st * self.k) for m0, st in zip(self.mid0, self.step)]
        self.mid0_saved = self.mid0
        self.mid0 = list(self.mids)  # (Flow's wander stays within 15 of the drifting mid)
        try:
            return super().next()
        finally:
            self.mid0 = self.mid0_saved


@pytest.mark.timeout(300)
def test_a_tenfold_price_drift_trades_like_the_reference():
    """issue 13, item 10: the price of both symbols drifts 10x (10,000 -> 100,000 and
    5,000 -> 50,000 ticks) through a 200-tick ladder: windows move, far orders park and
    come back, and every report, trade, market-data message and the whole book equal
    the reference's (which has no ladder at all)."""
    n = 20_000
    kw = dict(n_symbols=2, band_ticks=200, capacity=400)
    ref = RefMatcher(**kw)
    eng = MatchingEngine(**kw)
    tracking = MatchingEngine(**kw)  # and one whose FOK checks track every account at once
    tracking.E[MK.E_FCAP] = 0
    flow = DriftFlow(7, ref, n)
    trades = 0
    for i in range(n):
        req = flow.next()
        got = as_tuples(eng.process(req, i))
        want = ref.process(req, i)
        assert got == want, f"request {i}: {req}"
        assert as_tuples(tracking.process(req, i)) == want, f"request {i}: {req}"
        trades += len(want[1])
        if i % 250 == 249 or i == n - 1:
            for s in range(2):
                assert eng.book(s) == ref.book(s) == tracking.book(s), (i, s)
                for side in (BUY, SELL):
                    assert eng.levels(s, side) == ref.levels(s, side), (i, s, side)
    assert flow.mids[0] >= 99_000 and flow.mids[1] >= 49_000
    c = eng.counters()
    assert trades > 5_000 and c["recentres"] > 500 and c["parked"] > 500, (trades, c)
    assert int(tracking.E[MK.E_TN]) == 3 and int(eng.E[MK.E_TN]) == 0  # accounts 1-3 tracked


def _out(eng, *reqs):
    return eng.process(np.concatenate(reqs))


@pytest.mark.timeout(120)
def test_a_rejected_first_order_does_not_place_the_window():
    eng = engine(band_ticks=100)
    absurd = _out(eng, new_order(BUY, 1, (1 << 63) - 10))  # rejected: not a sane price
    assert [int(r["reason"]) for r in absurd.reports] == [sc.RS_BAD_PRICE]
    fok = _out(eng, new_order(BUY, 5, 10 ** 12, tif=FOK))  # rejected: nothing to fill it
    assert [int(r["reason"]) for r in fok.reports] == [sc.RS_FOK_UNFILLABLE]
    ok = _out(eng, new_order(BUY, 5, 10_000))  # the first resting one places the bid window
    assert int(ok.reports[0]["type"]) == sc.R_ACK and int(eng.S[0, MK.S_BASE + BUY]) == 10_000 - 50
    assert int(_out(eng, new_order(SELL, 5, 10_049)).reports[0]["type"]) == sc.R_ACK
    assert int(_out(eng, new_order(SELL, 5, 10_050)).reports[0]["type"]) == sc.R_ACK
    assert int(eng.E[MK.E_PARKED]) == 0  # each side's window is its own


@pytest.mark.timeout(120)
def test_orders_resting_longer_than_the_id_table_keep_lookups_one_bucket():
    eng = engine(capacity=64)  # direct part of the id table: 128 buckets
    E = eng.E
    _out(eng, *[new_order(BUY, 1, 9_000 + i) for i in range(60)])  # ids 1..60 rest
    nxt = 61
    for _ in range(20):  # 2,000 more orders rest for a moment each (placed, then cancelled)
        reqs = []
        for k in range(100):
            reqs += [new_order(BUY, 1, 9_100), cancel(nxt + k)]
        _out(eng, *reqs)
        nxt += 100
    assert int(E[MK.E_TRADES]) == 0 and eng.resting == 60
    assert int(E[MK.E_XN]) == 60  # moved to the overflow part, where lookups still find them
    out = _out(eng, cancel(30), cancel(1), cancel(60), cancel(99_999))
    assert [int(r["type"]) for r in out.reports] == [sc.R_CANCELLED] * 3 + [sc.R_REJECT]
    assert int(E[MK.E_XN]) == 57 and eng.resting == 57
    assert [int(o[0]) for o in eng.orders(0, BUY)][:3] == [59, 58, 57]


@pytest.mark.timeout(300)
def test_fok_checks_of_an_account_with_many_resting_orders_stay_fast_and_exact():
    """issue 13: the FOK check walked every resting order of the requesting account at
    each level in reach (its own do not count), on every FOK.  Own quantity per
    (account, price) is kept, so a check is O(levels)."""
    import time

    n_own = 200_000
    eng = engine(capacity=n_own + 100, max_batch=4096)
    own = requests(n_own)
    own["type"], own["side"], own["ord_type"], own["qty"], own["px_tick"], own["account"] = (
        sc.OE_NEW, SELL, LIMIT, 1, 1000, 1)
    eng.process(own)
    run(eng, new_order(SELL, 5, 1000, account=2), new_order(SELL, 7, 1001, account=2),
        new_order(SELL, 3, 1001, account=1))
    fok = requests(20_000)
    fok["type"], fok["side"], fok["ord_type"], fok["tif"], fok["qty"], fok["px_tick"], fok["account"] = (
        sc.OE_NEW, BUY, LIMIT, FOK, 6, 1000, 1)  # only 5 of another account at 1000: rejected
    t0 = time.perf_counter()
    out = eng.process(fok)
    dt = time.perf_counter() - t0
    assert (out.reports["reason"] == sc.RS_FOK_UNFILLABLE).all() and len(out.reports) == len(fok)
    assert dt < 1.0, f"20,000 FOK checks took {dt:.2f} s"  # (walking the own orders: 4e9 steps)
    assert int(eng.E[MK.E_TN]) == 1  # the first check skipped > 64 own orders: account 1 is tracked
    assert eng.resting == n_own + 3
    # exact at the edges: 12 of others within 1001 (not the own 200,003)
    reps, _, _ = run(eng, new_order(BUY, 13, 1001, tif=FOK, account=1))
    assert [r[2] for r in reps] == [sc.RS_FOK_UNFILLABLE]
    reps, trades, _ = run(eng, new_order(BUY, 12, 1001, tif=FOK, account=1))
    oid = eng.next_order_id - 1
    assert trades == [(oid, n_own + 1, 1000, 5, BUY), (oid, n_own + 2, 1001, 7, BUY)]
    assert sum(r[2] == sc.RS_SELF_TRADE for r in reps) == n_own  # the own ones it met were cancelled
    assert eng.book()["asks"] == [[n_own + 3, 1001, 3, 1]]  # the own one behind the last fill stays
