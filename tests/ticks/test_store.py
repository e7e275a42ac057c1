"""The tick store (ticks/store.py) on embedded ClickHouse: what goes in comes back, field
for field; bars equal bars recomputed here from the trades; Parquet export equals the
query; sql() is read-only; a reopened store keeps its rows and its TTLs; a second
process is refused with the holder's pid.

chdb runs one engine per process bound to one data directory, so every test closes its
store (``with``) before the next opens another directory."""
from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from obpipe.ring import schema
from obpipe.ticks import StoreError, TickStore, unavailable
from tests.helpers import ENV, REPO, stop_process

if unavailable():
    pytest.skip(f"tick store tests need chdb and pyarrow: {unavailable()}", allow_module_level=True)

import pyarrow.parquet as pq  # noqa: E402  (after the skip: an optional dependency)

NO_PX = schema.NO_PX
SYMBOLS = ("AAA", "BBB", "CCC")
S = 1_000_000_000
#: 2012-06-21 23:59:58 UTC: a replayed day (older than every retention) crossing midnight.
T0 = 1340323198 * S


def _events(rows: list[dict]) -> np.ndarray:
    ev = np.zeros(len(rows), schema.EVENT_DTYPE)
    for i, r in enumerate(rows):
        for k, v in r.items():
            ev[i][k] = v
    return ev


def _quote(ts, sym, seq, bid, bq, ask, aq):
    return dict(kind=schema.EV_BBO, ts_exch_ns=ts, symbol=sym, seq=seq, bid_px_tick=bid, bid_qty=bq,
                ask_px_tick=ask, ask_qty=aq, trade_px_tick=NO_PX)


def _trade(ts, sym, seq, px, qty, side, bid=100, ask=101):
    return dict(kind=schema.EV_TRADE, ts_exch_ns=ts, symbol=sym, seq=seq, trade_px_tick=px, trade_qty=qty,
                side=side, bid_px_tick=bid, ask_px_tick=ask, bid_qty=1, ask_qty=1)


def _random_trades(n: int, seed: int, span_s: int) -> list[dict]:
    """Trades of two symbols over ``span_s`` seconds from T0, unique (time, seq)."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, span_s * S, n))
    return [_trade(int(ts[i]), int(rng.integers(0, 2)), 1000 + i, int(rng.integers(900, 1100)),
                   int(rng.integers(1, 500)), int(rng.integers(0, 2))) for i in range(n)]


def _bars(trades: list[dict], symbol: int, width_ns: int) -> list[dict]:
    """OHLCV bars recomputed from the trades: open/close by (time, seq)."""
    by = defaultdict(list)
    for t in trades:
        if t["symbol"] == symbol:
            by[t["ts_exch_ns"] // width_ns * width_ns].append(t)
    out = []
    for start in sorted(by):
        ts = sorted(by[start], key=lambda t: (t["ts_exch_ns"], t["seq"]))
        px = [t["trade_px_tick"] for t in ts]
        vol = sum(t["trade_qty"] for t in ts)
        turnover = sum(t["trade_px_tick"] * t["trade_qty"] for t in ts)
        out.append(dict(ts_ns=start, symbol=SYMBOLS[symbol], open_tick=px[0], high_tick=max(px), low_tick=min(px),
                        close_tick=px[-1], volume=vol, trades=len(ts), turnover=turnover, vwap_tick=turnover / vol))
    return out


@pytest.mark.timeout(60)
def test_events_in_equal_quotes_and_trades_out(tmp_path):
    rows = [
        _quote(T0, 0, 1, 100, 5, 101, 7),
        _quote(T0 + 1, 1, 2, NO_PX, 0, 205, 3),  # empty bid side
        _trade(T0 + 2, 0, 3, 101, 4, schema.SIDE_BID, bid=100, ask=101),  # buyer lifted the ask
        _quote(T0 + 2, 0, 3, 100, 5, 101, 3),
        _trade(T0 + 3 * S, 0, 4, 100, 5, schema.SIDE_ASK),  # the next UTC day (another partition)
        _quote(T0 + 3 * S, 0, 4, 99, 2, NO_PX, 0),  # empty ask side
        _quote(T0 + 4 * S, 7, 5, 1, 1, 2, 2),  # symbol index outside SYMBOLS: skipped, counted
        dict(kind=9, symbol=0, ts_exch_ns=T0, seq=6),  # unknown kind: skipped, counted
    ]
    with TickStore.open(str(tmp_path / "t")) as st:
        assert st.insert_events(np.zeros(0, schema.EVENT_DTYPE), SYMBOLS) == (0, 0)
        assert st.insert_events(_events(rows), SYMBOLS) == (4, 2)
        assert st.skipped == {"bad_symbol": 1, "bad_kind": 1, "bad_side": 0}
        st.optimize()  # merges apply TTLs: a 2012 day outlives them (TTL counts from recording)
        assert st.counts() == {"quotes": 4, "trades": 2, "depth": 0, "bars_1s": 2, "bars_1m": 2}
        q = st.quotes("AAA", T0, T0 + 10 * S).to_pylist()
        assert q == [
            dict(ts_ns=T0, symbol="AAA", seq=1, bid_px_tick=100, bid_qty=5, ask_px_tick=101, ask_qty=7),
            dict(ts_ns=T0 + 2, symbol="AAA", seq=3, bid_px_tick=100, bid_qty=5, ask_px_tick=101, ask_qty=3),
            dict(ts_ns=T0 + 3 * S, symbol="AAA", seq=4, bid_px_tick=99, bid_qty=2, ask_px_tick=None, ask_qty=0)]
        assert st.quotes("BBB", 0, T0 + 10 * S).to_pylist() == [
            dict(ts_ns=T0 + 1, symbol="BBB", seq=2, bid_px_tick=None, bid_qty=0, ask_px_tick=205, ask_qty=3)]
        assert st.trades("AAA", T0, T0 + 10 * S).to_pylist() == [
            dict(ts_ns=T0 + 2, symbol="AAA", seq=3, px_tick=101, qty=4, aggressor="buy"),
            dict(ts_ns=T0 + 3 * S, symbol="AAA", seq=4, px_tick=100, qty=5, aggressor="sell")]
        # half-open ranges: [from, to)
        assert [r["seq"] for r in st.quotes("AAA", T0 + 2, T0 + 3 * S).to_pylist()] == [3]
        assert st.trades("CCC", 0, T0 + 10 * S).num_rows == 0
        with pytest.raises(StoreError, match="EVENT_DTYPE"):
            st.insert_events(np.zeros(2, schema.MD_DTYPE), SYMBOLS)


@pytest.mark.timeout(60)
def test_depth_levels_round_trip(tmp_path):
    bid_px = np.array([[100, 99, 98], [50, NO_PX, NO_PX], [1, 2, 3]])
    bid_qty = np.array([[1, 2, 3], [4, 0, 0], [1, 1, 1]])
    ask_px = np.array([[101, 102, NO_PX], [NO_PX, NO_PX, NO_PX], [1, 2, 3]])
    ask_qty = np.array([[5, 6, 0], [0, 0, 0], [1, 1, 1]])
    with TickStore.open(str(tmp_path / "t")) as st:
        n = st.insert_depth(np.array([T0, T0 + 100, T0 + 200]), np.array([0, 0, 9]), bid_px, bid_qty, ask_px, ask_qty,
                            SYMBOLS)
        assert n == 2 and st.skipped["bad_symbol"] == 1
        assert st.depth("AAA", T0, T0 + S).to_pylist() == [
            dict(ts_ns=T0, symbol="AAA", bid_px_tick=[100, 99, 98], bid_qty=[1, 2, 3], ask_px_tick=[101, 102],
                 ask_qty=[5, 6]),
            dict(ts_ns=T0 + 100, symbol="AAA", bid_px_tick=[50], bid_qty=[4], ask_px_tick=[], ask_qty=[])]


@pytest.mark.timeout(60)
def test_bars_equal_bars_recomputed_from_trades(tmp_path):
    trades = _random_trades(3000, seed=5, span_s=200)  # ~4 minutes: 1 s and 1 min bars, some empty seconds
    with TickStore.open(str(tmp_path / "t")) as st:
        ev = _events(trades)
        for i in range(0, len(ev), 250):  # many inserts: a bar's rows sit in several parts until merged
            st.insert_events(ev[i:i + 250], SYMBOLS)
        for merged in (False, True):
            if merged:
                st.optimize()
            for sym in (0, 1):
                for width, w_ns in (("1s", S), ("1m", 60 * S), ("2m", 120 * S)):
                    got = st.bars(SYMBOLS[sym], 0, T0 + 10 * 60 * S, width).to_pylist()
                    assert got == _bars(trades, sym, w_ns), (width, merged)
        # a range gives every bar it overlaps, whole
        want = [b for b in _bars(trades, 0, 60 * S) if T0 + 30 * S - 60 * S < b["ts_ns"] < T0 + 90 * S]
        assert st.bars("AAA", T0 + 30 * S, T0 + 90 * S, "1m").to_pylist() == want
        assert st.counts()["bars_1m"] == len(_bars(trades, 0, 60 * S)) + len(_bars(trades, 1, 60 * S))
        with pytest.raises(StoreError, match="bar width"):
            st.bars("AAA", 0, 1, "7x")


@pytest.mark.timeout(60)
def test_parquet_export_equals_the_query(tmp_path):
    rows = _random_trades(500, seed=9, span_s=120)
    rows += [_quote(t["ts_exch_ns"], t["symbol"], t["seq"], t["trade_px_tick"] - 1, 3,
                    NO_PX if i % 7 == 0 else t["trade_px_tick"] + 1, 0 if i % 7 == 0 else 4)
             for i, t in enumerate(rows)]
    with TickStore.open(str(tmp_path / "t")) as st:
        st.insert_events(_events(rows), SYMBOLS)
        lo, hi = T0 + 10 * S, T0 + 100 * S
        st.insert_depth(np.array([lo, lo + 5]), np.array([1, 1]), np.array([[3, 2], [3, NO_PX]]),
                        np.array([[1, 1], [2, 0]]), np.array([[4, 5], [4, 5]]), np.array([[1, 1], [1, 1]]), SYMBOLS)
        for what, query in (("quotes", st.quotes), ("trades", st.trades), ("depth", st.depth), ("bars", st.bars)):
            out = tmp_path / f"{what}.parquet"
            want = query("BBB", lo, hi)
            assert st.export(what, "BBB", lo, hi, str(out)) == want.num_rows > 0
            got = pq.read_table(out)
            assert got.schema.names == want.schema.names and got.equals(want), what
        empty = tmp_path / "empty.parquet"
        assert st.export("quotes", "ZZZ", lo, hi, str(empty)) == 0
        assert pq.read_table(empty).schema.names == st.quotes("ZZZ", lo, hi).schema.names
        assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.timeout(60)
def test_sql_is_read_only(tmp_path):
    with TickStore.open(str(tmp_path / "t")) as st:
        st.insert_events(_events([_quote(T0, 0, 1, 100, 5, 101, 7)]), SYMBOLS)
        assert st.sql("SELECT symbol, bid_px_tick FROM quotes").to_pylist() == [dict(symbol="AAA", bid_px_tick=100)]
        assert st.sql("WITH 2 AS k SELECT count() * k AS n FROM ticks.quotes").to_pylist() == [dict(n=2)]
        assert "quotes" in st.sql("SHOW TABLES").column(0).to_pylist()
        assert "bid_px_tick" in st.sql("DESCRIBE TABLE quotes").column(0).to_pylist()
        assert st.sql("SELECT ';' AS s -- ; DROP TABLE quotes").to_pylist() == [dict(s=";")]
        for bad, why in (("INSERT INTO quotes SELECT * FROM quotes", "not INSERT"),
                         ("DROP TABLE quotes", "not DROP"),
                         ("  drop table quotes", "not DROP"),
                         ("ALTER TABLE quotes DELETE WHERE 1", "not ALTER"),
                         ("SYSTEM STOP MERGES", "not SYSTEM"),
                         ("SELECT 1; DROP TABLE quotes", "one statement"),
                         ("SELECT '\\'' ; DROP TABLE quotes", "one statement"),
                         ("SELECT 1 /* c */ ; TRUNCATE quotes", "one statement"),
                         ("SELECT 1 INTO OUTFILE '/tmp/x.csv'", "INTO OUTFILE"),
                         ("", "empty")):
            with pytest.raises(StoreError, match=why):
                st.sql(bad)
        # the read-only connection is the second line of defence
        with pytest.raises(StoreError, match="(?i)readonly"):
            st._backend().arrow("CREATE TABLE x (a Int64) ENGINE = Memory", readonly=True)
        assert st.counts()["quotes"] == 1


@pytest.mark.timeout(60)
def test_reopen_keeps_rows_and_sets_retention(tmp_path):
    where = str(tmp_path / "t")
    with TickStore.open(where) as st:
        st.insert_events(_events([_quote(T0, 0, 1, 100, 5, 101, 7), _trade(T0, 0, 1, 100, 1, 0)]), SYMBOLS)
        for table, days in (("quotes", 90), ("trades", 365), ("depth", 90), ("bars_1s", 365), ("bars_1m", 365)):
            ddl = st.sql(f"SHOW CREATE TABLE {table}").column(0)[0].as_py()
            assert f"TTL ingested + toIntervalDay({days})" in ddl, ddl
            assert "PARTITION BY toDate(fromUnixTimestamp64Nano(" in ddl
    with TickStore.open(where, {"quotes": 7, "trades": 0}) as st:
        assert st.counts() == {"quotes": 1, "trades": 1, "depth": 0, "bars_1s": 1, "bars_1m": 1}
        assert st.quotes("AAA", 0, T0 + 1).num_rows == 1
        assert "toIntervalDay(7)" in st.sql("SHOW CREATE TABLE quotes").column(0)[0].as_py()
        assert "TTL" not in st.sql("SHOW CREATE TABLE trades").column(0)[0].as_py()
    with pytest.raises(StoreError, match="unknown table"):
        TickStore.open(where, {"quote": 7})
    with pytest.raises(StoreError, match="not supported yet"):
        TickStore.open("http://127.0.0.1:8123")


_HOLDER = """
import sys, time
from obpipe.ticks import TickStore
st = TickStore.open(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


@pytest.mark.multiproc
@pytest.mark.timeout(90)
def test_one_process_per_directory(tmp_path):
    """chdb locks the data directory: another process is refused with the holder's pid; the
    lock dies with a SIGKILLed holder.  In one process, a second directory is refused."""
    where = str(tmp_path / "t")
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, where], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO, env=ENV)
    try:
        assert p.stdout.readline().strip() == "open", p.stderr.read()
        with pytest.raises(StoreError, match=f"in use by process {p.pid}"):
            TickStore.open(where)
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                st = TickStore.open(where)
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with st:
            assert st.counts()["quotes"] == 0
            with TickStore.open(where) as again:  # same directory, same process: one shared engine
                assert again.counts()["quotes"] == 0
            with pytest.raises(StoreError, match="one embedded engine per process"):
                TickStore.open(str(tmp_path / "other"))
    finally:
        stop_process(p)
