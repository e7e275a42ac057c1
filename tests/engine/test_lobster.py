"""engine.lobster: LOBSTER loader and the compiled book checker.

The AMZN sample is real, fixed data (../shared/data/lobster, read-only, relative to the
repo root where the tests run), so its counts are asserted exactly.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from obpipe.engine import lobster as L
from obpipe.ring import schema
from tests.helpers import LOBSTER_MSG

DATA = Path("../shared/data/lobster")
AMZN_MSG = DATA / "AMZN_2012-06-21_34200000_57600000_message_1.csv"
AMZN_OB = DATA / "AMZN_2012-06-21_34200000_57600000_orderbook_1.csv"

# Measured on the sample (docs/DECISIONS.md, "The LOBSTER check on the AMZN sample"): 57,515 rows, row 1 seeds the book.
AMZN_ROWS = 57_514
AMZN_PREDICTABLE = 43_561
AMZN_UNPREDICTABLE = 13_953
AMZN_RESYNCED = 8_167  # the other 5,786 unpredictable rows: the book's deeper level was right

NONE_ASK = (L.DUMMY_ASK_PX, 0)
NONE_BID = (L.DUMMY_BID_PX, 0)

# A hand-made level-1 pair: (message, order-book row after it).  Prices USD x 1e4.
# message: time, type, order id, size, price, direction; row: ask px, ask qty, bid px, bid qty.
TINY = [
    (("34200.000000001", 1, 11, 100, 1000000, 1), (*NONE_ASK, 1000000, 100)),  # 1 seed: ask side empty
    (("34200.5", 1, 12, 50, 1000500, -1), (1000500, 50, 1000000, 100)),  # 2 ask appears
    (("34201.25", 1, 13, 30, 1000100, 1), (1000500, 50, 1000100, 30)),  # 3 bid improves
    (("34201.25", 1, 14, 20, 1000400, -1), (1000400, 20, 1000100, 30)),  # 4 ask improves
    (("34202", 4, 14, 5, 1000400, -1), (1000400, 15, 1000100, 30)),  # 5 execution
    (("34202.1", 5, 0, 10, 1000250, 1), (1000400, 15, 1000100, 30)),  # 6 hidden, half-cent price
    (("34203", 2, 13, 10, 1000100, 1), (1000400, 15, 1000100, 20)),  # 7 partial cancel
    (("34204", 3, 13, 20, 1000100, 1), (1000400, 15, 1000000, 100)),  # 8 empties bid, known level
    (("34205", 3, 14, 15, 1000400, -1), (1000500, 70, 1000000, 100)),  # 9 empties ask, size moved
    (("34206", 6, 0, 100, 1000300, -1), (1000500, 70, 1000000, 100)),  # 10 cross trade
    (("34207", 7, 0, 0, -1, -1), (1000500, 70, 1000000, 100)),  # 11 halt
    (("34208", 1, 15, 10, 1000500, -1), (1000500, 80, 1000000, 100)),  # 12 add at the ask
    (("34209", 3, 11, 100, 1000000, 1), (1000500, 80, 999900, 7)),  # 13 empties bid, new level
    (("57599.999999999", 1, 16, 3, 999900, 1), (1000500, 80, 999900, 10)),  # 14 add at the bid
]
TINY_UNPREDICTABLE_ROWS = {8, 9, 13}
TINY_RESYNCED_ROWS = {9, 13}  # row 8's level 1000000 x 100 was still in the book


def _write_pair(tmp_path, rows, name="T"):
    msg = tmp_path / f"{name}_message_1.csv"
    ob = tmp_path / f"{name}_orderbook_1.csv"
    msg.write_text("".join(",".join(str(x) for x in m) + "\n" for m, _ in rows))
    ob.write_text("".join(",".join(str(x) for x in r) + "\n" for _, r in rows))
    return msg, ob


@pytest.fixture(scope="module")
def amzn():
    assert AMZN_MSG.exists() and AMZN_OB.exists(), f"LOBSTER sample not found under {DATA.resolve()}"
    return L.check(AMZN_MSG, AMZN_OB)


# --- the AMZN sample -------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_amzn_every_predictable_row_matches(amzn):
    assert amzn["rows"] == AMZN_ROWS
    assert amzn["predictable"] == AMZN_PREDICTABLE
    assert amzn["matched"] == AMZN_PREDICTABLE
    assert amzn["unpredictable"] == AMZN_UNPREDICTABLE
    assert amzn["resynced"] == AMZN_RESYNCED
    assert amzn["resynced"] <= amzn["unpredictable"]  # no predictable row needed a resync
    assert amzn["first_mismatch_row"] == -1
    assert amzn["tick_divisor"] == 50  # 63 hidden executions at half-cent prices
    assert amzn["out_of_ladder"] == 0 and amzn["qty_underflow"] == 0 and amzn["evicted_levels"] == 0
    assert amzn["msgs_per_s"] > 1e5


@pytest.mark.timeout(300)
def test_amzn_same_through_apply_batch_and_other_ticks_and_widths(amzn):
    keys = ("rows", "predictable", "matched", "unpredictable", "first_mismatch_row")
    want = {k: amzn[k] for k in keys}
    for kw in (dict(via_batch=True), dict(tick_divisor=1), dict(width=512)):
        r = L.check(AMZN_MSG, AMZN_OB, **kw)
        assert {k: r[k] for k in keys} == want, kw
    assert L.check(AMZN_MSG, AMZN_OB, via_batch=True)["resynced"] == AMZN_RESYNCED
    narrow = L.check(AMZN_MSG, AMZN_OB, width=512)  # re-centres during the day
    assert narrow["recentres"] > 0 and narrow["out_of_ladder"] == 0


@pytest.mark.timeout(120)
def test_amzn_classification_rule_holds_in_the_data():
    md, d = L.load_messages(AMZN_MSG, return_tick=True)
    ob = L.load_orderbook(AMZN_OB, tick_divisor=d)
    (rows, pred, matched, resynced, first), status, _, _ = L.run_check(md, ob, 4096)
    assert (rows, pred, matched, resynced, first) == (AMZN_ROWS, AMZN_PREDICTABLE, AMZN_PREDICTABLE,
                                                      AMZN_RESYNCED, -1)
    unp = np.flatnonzero((status & L.ST_PREDICTABLE) == 0)[1:]  # [0] is the seed row
    assert len(unp) == AMZN_UNPREDICTABLE
    # each unpredictable row shows a worse best level on the side whose best emptied
    side = md["side"][unp].astype(np.int64)
    col = np.where(side == schema.SIDE_BID, 2, 0)
    before, after = ob[unp - 1, col], ob[unp, col]
    assert np.all(np.where(side == schema.SIDE_BID, after < before, after > before))
    # every predictable row matched without a resync
    p = np.flatnonzero(status & L.ST_PREDICTABLE)
    assert np.all(status[p] == L.ST_PREDICTABLE | L.ST_MATCHED)


@pytest.mark.timeout(60)
def test_amzn_loader():
    md, d = L.load_messages(AMZN_MSG, return_tick=True)
    assert d == 50 and len(md) == 57_515 and md.dtype == schema.MD_DTYPE
    assert md["seq"][0] == 1 and md["seq"][-1] == 57_515
    # "34200.18960767,1,11885113,21,2238100,1": 8 decimal digits, buy submit
    m = md[1]
    assert (m["kind"], m["side"], m["qty"], m["px_tick"]) == (schema.K_ADD, schema.SIDE_BID, 21, 2238100 // 50)
    day = 1_340_251_200_000_000_000  # 2012-06-21 00:00 New York (04:00 UTC), from the file name
    assert m["ts_exch_ns"] == day + 34_200_189_607_670
    assert md["ts_exch_ns"][0] == day + 34_200_017_459_617
    kinds = {int(k): int(n) for k, n in zip(*np.unique(md["kind"], return_counts=True))}
    assert kinds == {schema.K_ADD: 27_845, schema.K_CANCEL: 16, schema.K_DELETE: 18_235,
                     schema.K_EXECUTE: 8_974, schema.K_TRADE: 2_445}
    assert np.all(np.diff(md["ts_exch_ns"]) >= 0)
    ob, dob = L.load_orderbook(AMZN_OB, return_tick=True)
    assert dob == 100  # the order-book file alone is all whole cents
    assert ob.shape == (57_515, 4) and ob[0].tolist() == [22395, 100, 22318, 100]


# --- the hand-made pair ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_tiny_pair_known_answer(tmp_path):
    msg, ob = _write_pair(tmp_path, TINY)
    r = L.check(msg, ob)
    assert r["tick_divisor"] == 50  # the hidden execution at 100.025
    n = len(TINY) - 1
    assert (r["rows"], r["predictable"], r["matched"], r["unpredictable"], r["resynced"],
            r["first_mismatch_row"]) == (n, n - 3, n - 3, 3, 2, -1)
    md, d = L.load_messages(msg, return_tick=True)
    top = L.load_orderbook(ob, tick_divisor=d)
    _, status, _, _ = L.run_check(md, top, 64)
    for row in range(2, len(TINY) + 1):
        st = int(status[row - 1])
        assert bool(st & L.ST_PREDICTABLE) == (row not in TINY_UNPREDICTABLE_ROWS), row
        assert bool(st & L.ST_RESYNCED) == (row in TINY_RESYNCED_ROWS), row


@pytest.mark.timeout(120)
def test_tiny_pair_mapping(tmp_path):
    msg, ob = _write_pair(tmp_path, TINY)
    md, d = L.load_messages(msg, symbol=3, return_tick=True)
    assert d == 50
    assert md["kind"].tolist() == [1, 1, 1, 1, 4, 5, 2, 3, 3, 5, 8, 1, 3, 1]
    assert md["side"].tolist() == [0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0]
    assert md["px_tick"][5] == 1000250 // 50 and md["px_tick"][10] == -1  # halt keeps its code
    assert md["qty"][10] == 0 and np.all(md["symbol"] == 3)
    assert md["ts_exch_ns"][1] == 34_200_500_000_000 and md["ts_exch_ns"][4] == 34_202_000_000_000
    assert md["ts_exch_ns"][-1] == 57_599_999_999_999
    top = L.load_orderbook(ob, tick_divisor=100)
    assert top[0].tolist() == [schema.NO_PX, 0, 10000, 100]
    assert L.load_orderbook(ob, return_tick=True)[1] == 100
    with pytest.raises(ValueError, match="does not divide"):
        L.load_messages(msg, tick_divisor=100)


@pytest.mark.timeout(120)
def test_tiny_pair_predictable_mismatch_is_reported_and_resynced(tmp_path):
    rows = list(TINY)
    m, r = rows[4]
    rows[4] = (m, (r[0], 14, r[2], r[3]))  # row 5: the book says 15 after the execution
    msg, ob = _write_pair(tmp_path, rows)
    r = L.check(msg, ob)
    assert r["matched"] == r["predictable"] - 2  # row 5, and row 6 (the book resynced to 14)
    assert r["first_mismatch_row"] == 5
    assert r["resynced"] == 4  # row 5 (to 14), row 6 (back to 15), then rows 9 and 13 as before
    assert L.main([str(msg), str(ob), "--json"]) == 1


def test_tick_divisor_detection():
    assert L.detect_tick_divisor(np.array([2238100, 2237500])) == 100
    assert L.detect_tick_divisor(np.array([2238100]), np.array([2237950])) == 50
    assert L.detect_tick_divisor(np.array([2238101, 2237500])) == 1
    assert L.detect_tick_divisor(np.array([], np.int64)) == 100


# --- errors ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad, why", [
    ("34200.3,1,5,10,1000000", "fields"),  # a field missing
    ("34200.3,1,5,10,1000000,1,9", "fields"),  # one too many
    ("34200.3,1,5,ten,1000000,1", "size"),
    ("34200.x,1,5,10,1000000,1", "time"),
    ("34200.1234567891,1,5,10,1000000,1", "time"),  # finer than ns
    ("34200.3,9,5,10,1000000,1", "type"),
    ("34200.3,1,5,10,1000000,0", "direction"),
    ("34200.3,1,5,0,1000000,1", "size"),
    ("34200.3,1,5,10,-1000000,1", "price"),
    ("34200.3,1,5,10,99999999999999999999,1", "price"),  # beyond int64
    ("3420\u00b2.3,1,5,10,1000000,1", "time"),  # a non-ASCII digit
    ("", "empty line"),
])
def test_malformed_message_line_names_file_and_line(tmp_path, bad, why):
    lines = ["34200.1,1,1,10,1000000,1", "34200.2,1,2,10,1000100,-1", bad, "34200.4,1,3,10,1000000,1"]
    p = tmp_path / "bad_message.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"bad_message\.csv: line 3: .*{why}"):
        L.load_messages(p)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad, why", [
    ("1000500,50,1000000", "fields"),
    ("1000500,50,1000000,x", "bid size"),
    ("1000500,0,1000000,100", "ask level"),
])
def test_malformed_orderbook_line_names_file_and_line(tmp_path, bad, why):
    p = tmp_path / "bad_orderbook.csv"
    p.write_text("\n".join(["1000500,50,1000000,100", bad]) + "\n")
    with pytest.raises(ValueError, match=rf"bad_orderbook\.csv: line 2: .*{why}"):
        L.load_orderbook(p)


def test_orderbook_dummy_prices_are_empty_sides(tmp_path):
    p = tmp_path / "ob.csv"
    p.write_text(f"{L.DUMMY_ASK_PX},0,{L.DUMMY_BID_PX},0\n1000500,5,{L.DUMMY_BID_PX},0\n")
    top = L.load_orderbook(p)
    assert top.tolist() == [[schema.NO_PX, 0, schema.NO_PX, 0], [10005, 5, schema.NO_PX, 0]]


# --- CLI -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_cli_json_amzn(capsys):
    assert L.main([str(AMZN_MSG), str(AMZN_OB), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rows", "predictable", "matched", "resynced"} <= out.keys()
    assert (out["rows"], out["predictable"], out["matched"], out["resynced"]) == (
        AMZN_ROWS, AMZN_PREDICTABLE, AMZN_PREDICTABLE, AMZN_RESYNCED)


@pytest.mark.timeout(120)
def test_cli_table_and_width(tmp_path, capsys):
    msg, ob = _write_pair(tmp_path, TINY)
    assert L.main([str(msg), str(ob), "--width", "256"]) == 0
    out = capsys.readouterr().out
    assert "predictable" in out and "OK" in out and "256" in out


@pytest.mark.timeout(120)
def test_cli_bad_files_exit_2_with_one_line(tmp_path):
    msg, ob = _write_pair(tmp_path, TINY)
    bad = tmp_path / "bad.csv"
    bad.write_text("34200.1,1,1,10,1000000,1\n34200.2,1,oops,10,1000000,1\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    for args in ([str(tmp_path / "missing.csv"), str(ob)], [str(bad), str(ob)], [str(msg), str(bad)],
                 [str(msg), str(ob), "--width", "1"]):
        p = subprocess.run([sys.executable, "-m", "obpipe.engine.lobster", *args], capture_output=True, text=True,
                           env=env, timeout=100)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stdout == "" and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("lobster-check: error:")
    # rows that do not pair up
    short = tmp_path / "short_orderbook.csv"
    short.write_text(ob.read_text().split("\n", 1)[1])
    assert L.main([str(msg), str(short)]) == 2


# --- outliers (issue 13, item 9: one far price made a 2^54-tick ladder: MemoryError) -------------


_OUTLIER = 4_000_000_000_000_000  # USD x 1e4: 4e11 dollars, below the parser's 2^52 limit


@pytest.mark.timeout(120)
def test_an_outlier_price_is_refused_naming_the_file_and_line_not_a_memory_error(tmp_path):
    from obpipe.feed_sim import feed

    rows = list(TINY)
    (t, typ, oid, q, _px, side), ob = rows[5]
    rows[5] = ((t, typ, oid, q, _OUTLIER, side), ob)  # line 6: a hidden execution far away
    msg, ob = _write_pair(tmp_path, rows, name="AMZN_2012-06-21_34200000_57600000")
    why = rf"_message_1\.csv: line 6: outlier price {_OUTLIER}"
    with pytest.raises(ValueError, match=why):
        L.load_messages(msg)
    with pytest.raises(ValueError, match=why):
        L.check(msg, ob)
    with pytest.raises(feed.FeedError, match=why):  # what `obpipe run --replay` loads
        L.load_lobster(str(msg))
    rows = list(TINY)
    m, (apx, aq, bpx, bq) = rows[9]
    rows[9] = (m, (_OUTLIER, aq, bpx, bq))  # order-book line 10: a far ask
    msg, ob = _write_pair(tmp_path, rows, name="B")
    with pytest.raises(ValueError, match=rf"B_orderbook_1\.csv: line 10: outlier price {_OUTLIER}"):
        L.load_orderbook(ob)
    with pytest.raises(ValueError, match=rf"B_orderbook_1\.csv: line 10: outlier price {_OUTLIER}"):
        L.check(msg, ob)


@pytest.mark.timeout(120)
def test_ladder_width_is_bounded_whatever_the_prices_or_the_option():
    assert L.auto_width(np.array([1000, 1000 + L.MAX_WIDTH // 4])) <= L.MAX_WIDTH
    with pytest.raises(ValueError, match="more than"):
        L.auto_width(np.array([1, 1 << 52]))
    with pytest.raises(ValueError, match="ladder width must be 2..8,388,608"):
        L.check(AMZN_MSG, AMZN_OB, width=1 << 40)
def test_a_lobster_files_times_are_utc_epoch_ns_of_the_day_its_name_carries(tmp_path):
    """09:30 New York is 13:30 UTC in June (EDT) and 14:30 UTC in January (EST)."""
    from datetime import datetime, timezone

    assert L.file_info(AMZN_MSG) == ("AMZN", 1_340_251_200_000_000_000)
    md = L.load_messages(AMZN_MSG)
    first = datetime.fromtimestamp(int(md["ts_exch_ns"][0]) // 10**9, timezone.utc)
    assert first.isoformat() == "2012-06-21T13:30:00+00:00"
    rows = ["34200.5,1,5,10,1000000,1"]
    winter = tmp_path / "MSFT_2013-01-03_34200000_57600000_message_5.csv"
    winter.write_text("\n".join(rows) + "\n")
    ts = int(L.load_messages(winter)["ts_exch_ns"][0])
    assert datetime.fromtimestamp(ts / 1e9, timezone.utc).isoformat() == "2013-01-03T14:30:00.500000+00:00"
    assert L.file_info(winter)[0] == "MSFT"
    for name in ("T_message_1.csv", "AMZN_2012-13-45_1_2_message_1.csv", "AMZN_2012-06-21_message_1.csv"):
        assert L.file_info(tmp_path / name) == (None, None)


def test_the_model_book_applies_through_the_books_own_rules_not_its_private_helpers():
    """The checker and the replay apply messages with ``_book_kernels.apply_msg`` /
    ``set_level``, the rules the book writer follows; they reach none of the book's
    private names (a second copy of the per-kind switch once lived here, and could drift)."""
    src = Path(L.__file__).read_text()
    assert re.findall(r"\bBK\._\w+", src) == []
    assert "BK.apply_msg(" in src and "BK.set_level(" in src


@pytest.mark.timeout(180)
def test_a_lobster_replay_starts_from_the_order_book_file_sends_every_message_and_keeps_its_top():
    from obpipe.engine.book import Book

    md, d = L.load_messages(LOBSTER_MSG, return_tick=True)
    ob = L.load_orderbook(L.orderbook_beside(str(LOBSTER_MSG)), tick_divisor=d)
    out = L.load_lobster(str(LOBSTER_MSG))
    _, ends = L.replay_stream(md, ob)
    assert len(ends) == len(md) - 1 and ends[-1] == len(out)
    assert out["seq"].tolist() == list(range(1, len(out) + 1))
    levels = ob[0].reshape(-1, 4)
    n_seed = int((levels[:, 1] > 0).sum() + (levels[:, 3] > 0).sum())
    assert n_seed > 0
    # message k+2 opens the part that ends at ends[k]: right after the seeds, then after each part
    starts = np.concatenate(([n_seed], ends[:-1]))
    seeds = out[:n_seed]
    assert (seeds["kind"] == schema.K_SET_LEVEL).all()
    assert sorted(seeds[seeds["side"] == schema.SIDE_ASK]["px_tick"].tolist()) == sorted(
        levels[levels[:, 1] > 0, 0].tolist())
    fields = ["kind", "side", "px_tick", "qty", "ts_exch_ns"]
    assert np.array_equal(out[starts][fields], md[1:][fields])  # every message, in order, unchanged
    extra = np.ones(len(out), bool)
    extra[:n_seed] = False
    extra[starts] = False
    corr = out[extra]
    assert (corr["kind"] == schema.K_SET_LEVEL).all() and 5_000 < len(corr) < 20_000
    assert (corr["ts_exch_ns"] == np.repeat(md[1:]["ts_exch_ns"], np.diff(np.concatenate((starts, [len(out)]))) - 1)).all()
    # a book applying the stream shows every row's best bid and ask (with or without uncrossing),
    # and is never crossed; without the corrections, rows disagree from early in the day on
    fixed = {True: 0, False: 0}
    for uncross in (True, False):
        b, bare = Book([8192], 1, uncross=uncross), Book([8192], 1, uncross=uncross)
        b.apply(out[:n_seed])
        bare.apply(out[:n_seed])
        for k in range(len(ends)):
            b.apply(out, int(starts[k]), int(ends[k] - starts[k]))
            bare.apply(out, int(starts[k]), 1)
            row = ob[k + 1]
            want = (int(row[2]), int(row[3]), int(row[0]), int(row[1]))
            assert b.bbo(0) == want, (uncross, k + 2, b.bbo(0), want)
            fixed[uncross] += bare.bbo(0) != want
        assert b.counters()["crossed"] == 0
    assert fixed[True] > 1000 and fixed[False] > 1000, fixed
