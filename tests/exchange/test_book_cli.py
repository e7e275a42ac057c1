"""`obpipe book` as a user runs it: CSV commands in, trades and books out, through the
command line's ``main`` (in this process, with stdin/stdout/stderr swapped; one test
runs the real `python -m obpipe book` child process)."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def book(*args: str, stdin: str = "", child: bool = False, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``obpipe book ARGS`` with ``stdin``: through ``obpipe.cli.main`` here, or
    (``child``) as a child process (the generous timeout covers a first compile)."""
    if child:
        return subprocess.run([sys.executable, "-m", "obpipe", "book", *args], input=stdin, capture_output=True,
                              text=True, cwd=REPO, env=ENV, timeout=timeout)
    from obpipe.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        rc = main(["book", *args])
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return subprocess.CompletedProcess(["obpipe", "book", *args], rc, out.getvalue(), err.getvalue())


def lines(*rows: str) -> str:
    return "".join(r + "\n" for r in rows)


def printed(asks=(), bids=()) -> list[str]:
    """The PRINT block for ``asks`` (lowest first) and ``bids`` (highest first): rows of
    (price text, qty, order count)."""
    row = "{:>10}  |{:>10}  ({} orders)"
    return (["=== ORDER BOOK ===", "--- ASKS (lowest first) ---"] + [row.format(*a) for a in asks]
            + ["--- SPREAD ---", "--- BIDS (highest first) ---"] + [row.format(*b) for b in bids]
            + ["=================="])


# --- the README's worked examples (../shared/seeds/003_*.txt) ---------------------------

@pytest.mark.timeout(300)
def test_readme_manual_example_partial_fill_of_the_resting_bid():
    r = book(stdin=lines("LIMIT,BUY,100.00,10", "LIMIT,SELL,100.00,5", "PRINT"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["TRADE 1 2 100.00 5", *printed(bids=[("100.00", 5, 1)])]
    # the PRINT block is byte-exact, leading blanks included
    assert "    100.00  |         5  (1 orders)\n" in r.stdout
    assert r.stderr == ""


@pytest.mark.timeout(300)
def test_readme_sweep_across_two_levels_leaves_ten_on_the_ask():
    r = book(stdin=lines("LIMIT,SELL,101.00,30", "LIMIT,SELL,100.50,20", "LIMIT,BUY,101.00,40", "PRINT"))
    assert r.returncode == 0, r.stderr
    # The README prints an empty book here, which is wrong: the asks held 50 and the
    # buy took 40, so 10 of order 1 are still resting at 101.00.
    assert r.stdout.splitlines() == ["TRADE 3 2 100.50 20", "TRADE 3 1 101.00 20",
                                     *printed(asks=[("101.00", 10, 1)])]
    assert "    101.00  |        10  (1 orders)\n" in r.stdout


@pytest.mark.timeout(300)
def test_readme_market_sell_hits_the_best_bid_first():
    r = book(stdin=lines("LIMIT,BUY,99.00,50", "LIMIT,BUY,100.00,50", "MARKET,SELL,,80", "PRINT"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["TRADE 2 3 100.00 50", "TRADE 1 3 99.00 30",
                                     *printed(bids=[("99.00", 20, 1)])]
    assert "     99.00  |        20  (1 orders)\n" in r.stdout


@pytest.mark.timeout(300)
def test_readme_cancel_empties_the_book():
    r = book(stdin=lines("LIMIT,BUY,100.00,100", "CANCEL,,,,1", "PRINT"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["CANCELLED 1", *printed()]


# --- the rest of the grammar ------------------------------------------------------------

@pytest.mark.timeout(300)
def test_ioc_fok_modify_cancel_account_and_market_lines():
    r = book(stdin=lines(
        "LIMIT,SELL,100.00,10",  # 1
        "LIMIT,SELL,100.50,10",  # 2
        "IOC,BUY,100.25,15",  # 3: takes 10 at 100.00, the other 5 are cancelled
        "FOK,BUY,100.50,25",  # 4: only 10 there: rejected whole
        "PRINT",
        "FOK,BUY,100.50,10",  # 5: takes all of order 2
        "limit,buy,99.00,10",  # 6 (types and sides are case-insensitive)
        "MODIFY,,,4,6",  # quantity down, price kept
        "MODIFY,,99.50,6,6",  # new price
        "LIMIT,BUY,99.50,3,,7",  # 7, account 7, behind order 6
        "CANCEL,,,,7,8",  # account 8 may not cancel it
        "LIMIT,SELL,99.50,8,,7",  # 8, account 7: takes 6 of order 6, cancels its own order 7, rests 2
        "CANCEL,,,,6",  # order 6 was filled: unknown now
        "MARKET,SELL,,4",  # 9: no bids left
        "LIMIT,BUY,0.01,0",  # 10: quantity 0
        "MARKET,BUY,,1",  # 11
        "PRINT",
    ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "TRADE 3 1 100.00 10",
        "CANCELLED 3 unfilled 5",
        "REJECTED 4 FOK unfillable",
        *printed(asks=[("100.50", 10, 1)]),
        "TRADE 5 2 100.50 10",
        "MODIFIED 6 99.00 4",
        "MODIFIED 6 99.50 6",
        "REJECTED 7 not owner",
        "TRADE 6 8 99.50 6",
        "CANCELLED 7 self-trade 3",
        "REJECTED 6 unknown order",
        "CANCELLED 9 unfilled 4",
        "REJECTED 10 bad quantity",
        "TRADE 11 8 99.50 1",
        *printed(asks=[("99.50", 1, 1)]),
    ]
    assert r.stderr == ""


@pytest.mark.timeout(300)
def test_modify_that_crosses_trades_and_a_blank_price_keeps_the_price():
    r = book(stdin=lines("LIMIT,SELL,101.00,5", "LIMIT,BUY,100.00,8", "MODIFY,,101.00,8,2", "MODIFY,,,2,2",
                         "PRINT"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["MODIFIED 2 101.00 8", "TRADE 2 1 101.00 5", "MODIFIED 2 101.00 2",
                                     *printed(bids=[("101.00", 2, 1)])]


# --- bad input, files, exit status ---------------------------------------------------------

@pytest.mark.timeout(300)
def test_bad_lines_are_reported_with_their_number_and_the_rest_still_runs():
    r = book(stdin=lines(
        "LIMIT,BUY,100.00,10",  # line 1, order 1
        "LIMIT,BYE,100.00,10",  # 2: bad side
        "",  # 3: blank, skipped but counted
        "# a comment",  # 4
        "LIMIT,SELL,100.001,5",  # 5: too many decimals
        "SELL,100.00,5",  # 6: no such command
        "MARKET,SELL,99.00,5",  # 7: a market order has no price
        "LIMIT,SELL,abc,5",  # 8
        "CANCEL,,,,",  # 9: no id
        "LIMIT,SELL,100.00,4",  # 10: order 2 (bad lines take no id)
        "PRINT",
    ))
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["TRADE 1 2 100.00 4", *printed(bids=[("100.00", 6, 1)])]
    err = r.stderr.splitlines()
    assert [e.split(":")[0] for e in err[:-1]] == ["line 2", "line 5", "line 6", "line 7", "line 8", "line 9"]
    assert "side 'BYE' is not BUY or SELL" in err[0] and err[0].endswith("LIMIT,BYE,100.00,10")
    assert "more than 2 decimals" in err[1]
    assert "unknown command 'SELL'" in err[2]
    assert "market order takes no price" in err[3]
    assert "'abc' is not a number" in err[4]
    assert "needs an order id" in err[5]
    assert err[-1] == "obpipe book: 6 bad line(s)"


@pytest.mark.timeout(300)
def test_good_input_exits_zero_and_a_bad_one_exits_one():
    good = book(stdin=lines("LIMIT,BUY,1.00,1", "PRINT"))
    assert (good.returncode, good.stderr) == (0, "")
    bad = book(stdin=lines("LIMIT,BUY,1.00,1", "PRINT,1"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("line 2: PRINT takes no fields")


@pytest.mark.timeout(300)
def test_reads_commands_from_a_file_argument(tmp_path):
    f = tmp_path / "orders.csv"
    f.write_text(lines("LIMIT,BUY,99.00,50", "LIMIT,BUY,100.00,50", "MARKET,SELL,,80", "PRINT"))
    r = book(str(f), stdin="LIMIT,SELL,1.00,1000\n", child=True)  # the real command; stdin is not read
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["TRADE 2 3 100.00 50", "TRADE 1 3 99.00 30",
                                     *printed(bids=[("99.00", 20, 1)])]
    missing = book(str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "nope.csv" in missing.stderr


@pytest.mark.timeout(300)
def test_decimals_and_band_options():
    # whole-number prices; a 10-tick ladder: prices outside it are accepted all the same
    r = book("--decimals", "0", "--band-ticks", "10", stdin=lines(
        "LIMIT,BUY,100,1", "LIMIT,SELL,105,1", "LIMIT,SELL,94,1", "LIMIT,SELL,100.5,1", "LIMIT,SELL,100,3", "PRINT"))
    assert r.returncode == 1  # 100.5 has a decimal
    assert r.stdout.splitlines() == ["TRADE 1 3 100 1", *printed(asks=[("100", 3, 1), ("105", 1, 1)])]
    assert r.stderr.startswith("line 4: price '100.5' has more than 0 decimals")


@pytest.mark.timeout(300)
def test_a_buy_above_a_far_resting_sell_trades_not_bad_price():
    """issue 13, item 10: this pair gave `REJECTED 2 bad price` (a fixed 65,536-tick
    band centred on the first price; 10500.00 is 50,000 ticks above it)."""
    r = book(stdin=lines("LIMIT,SELL,10000.00,50", "LIMIT,BUY,10500.00,50", "PRINT"))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == ["TRADE 2 1 10000.00 50", *printed()]


@pytest.mark.timeout(300)
def test_odd_numbers_are_bad_lines_not_crashes_and_earlier_output_survives():
    r = book(stdin=lines("LIMIT,BUY,100.00,10", "LIMIT,SELL,100.00,4", "LIMIT,BUY,99999999999999999999,1",
                         "LIMIT,BUY,1²,1", "LIMIT,BUY,10,1²", "CANCEL,,,,٣", "PRINT"))
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "TRADE 1 2 100.00 4"
    assert [x.split(":")[0] for x in r.stderr.splitlines()[:4]] == ["line 3", "line 4", "line 5", "line 6"]
    assert "too large" in r.stderr and "    100.00  |         6  (1 orders)" in r.stdout


@pytest.mark.timeout(300)
def test_thousands_of_digits_are_bad_lines_not_an_int_limit_traceback():
    big = "9" * 5000
    r = book(stdin=lines("LIMIT,BUY,100.00,10", f"LIMIT,SELL,{big}.00,1", f"LIMIT,SELL,100.00,{big}",
                         f"CANCEL,,,,{big}", f"MODIFY,,{big},5,1", f"LIMIT,SELL,100.00,1,,{big}",
                         f"LIMIT,SELL,{'0' * 5000}100.00,{'0' * 5000}4", "PRINT"))
    assert "Traceback" not in r.stderr and r.returncode == 1
    assert [x.split(":")[0] for x in r.stderr.splitlines()[:5]] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert all(len(x) < 400 for x in r.stderr.splitlines())  # a huge field is not echoed whole
    assert r.stdout.splitlines() == ["TRADE 1 2 100.00 4", *printed(bids=[("100.00", 6, 1)])]


@pytest.mark.timeout(300)
def test_bytes_that_are_not_utf8_are_a_bad_line_of_a_file(tmp_path):
    p = tmp_path / "cmds.csv"
    p.write_bytes(b"LIMIT,BUY,100.00,10\nLIMIT,SELL,1\xff0.00,1\n\xfe\xfe\nLIMIT,SELL,100.00,4\n")
    r = book(str(p), child=True)
    assert "Traceback" not in r.stderr and r.returncode == 1
    assert [x.split(":")[0] for x in r.stderr.splitlines()[:2]] == ["line 2", "line 3"]
    assert r.stdout.splitlines() == ["TRADE 1 2 100.00 4"]
