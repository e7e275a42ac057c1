"""The relational store (exchange/store.py), against a really started exchange that
served several logged-in and anonymous ``obpipe exchange-client`` traders."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from obpipe.exchange import store
from tests.helpers import REPO, ExchangeProc, stop_process

TABLES = {"orders": "id", "fills": "exec_id", "positions": "account, symbol", "position_lots": "account, symbol, seq",
          "rejects": "seq", "cancels": "seq", "store_meta": "key"}


def _client(port: int, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "obpipe", "exchange-client", "--port", str(port), "--symbols", "2",
                          "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One exchange run: 4 logged-in traders (their orders outlive the connection) and 3
    anonymous ones (cancelled on disconnect), then stopped: journal, summary, book dump."""
    tmp = tmp_path_factory.mktemp("store")
    x = ExchangeProc(tmp, journal=tmp / "j", extra='fsync = "none"\n', accounts={a: {} for a in (1, 2, 3, 4)})
    try:
        creds = []
        for a in (1, 2, 3, 4):
            f = tmp / f"cred{a}.json"
            f.write_text(json.dumps({"account": a, "key": x.keys[a].hex()}))
            creds += ["--credential", str(f)]
        _client(x.port, "--clients", "4", "--orders", "1500", "--window", "8", "--seed", "7", *creds)
        _client(x.port, "--clients", "3", "--orders", "800", "--window", "8", "--seed", "8")
        summary = x.stop()
    finally:
        stop_process(x.p)
        x.err.close()
    return {"journal": str(tmp / "j"), "summary": summary, "book": x.book(), "tmp": tmp}


def _dump(db: str) -> dict:
    """Every row of every table, in key order (a SQLite file or a postgresql:// URL)."""
    con = store.connect(db)
    try:
        return {t: [tuple(r) for r in con.query(f"SELECT * FROM {t} ORDER BY {k}")[1]] for t, k in TABLES.items()}
    finally:
        con.close()


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_catch_up_gives_the_exchanges_open_orders_trades_and_cancels(session, tmp_path):
    db = str(tmp_path / "s.db")
    got = store.catch_up(session["journal"], db, batch_requests=1000)
    s = session["summary"]
    assert got["transactions"] > 5  # (batched: many transactions, so resuming is exercised below)
    assert got["requests"] == s["engine_requests"]
    assert got["fills"] == s["engine_trades"] > 100
    assert got["orders"] == s["engine_accepted"]
    assert got["cancels"] == s["engine_cancelled"] > 0
    # the open orders are exactly the exchange's resting book at exit (id, price, open qty, account)
    open_rows = {(o["id"], o["price_tick"], o["leaves"], o["account"])
                 for o in store.query_orders(db, status="open")}
    book = {tuple(r) for b in session["book"]["books"] for side in ("bids", "asks") for r in b[side]}
    assert open_rows == book and len(book) > 20
    # every lot of every fill, and filled + cancelled orders agree with the fills
    fills = store.query_fills(db)
    assert sum(f["qty"] for f in fills) == s["engine_traded_qty"]
    filled = defaultdict(int)
    for f in fills:
        filled[f["buy_order"]] += f["qty"]
        filled[f["sell_order"]] += f["qty"]
    orders = store.query_orders(db)
    assert {o["id"]: o["filled"] for o in orders if o["filled"]} == dict(filled)
    assert all(o["leaves"] == 0 for o in orders if o["status"] != "open")
    assert {o["status"] for o in orders} == {"open", "filled", "cancelled"}
    # the anonymous traders' orders were cancelled when they disconnected, logged-in ones were not
    anon = [o for o in orders if o["account"] >= 1 << 31]
    assert anon and all(o["status"] != "open" for o in anon)
    # ... and the store says why: the exchange journals its own cancels with their reason
    con = store.connect(db)
    reasons = dict(con.query("SELECT reason, COUNT(*) FROM cancels GROUP BY reason")[1])
    by_acct = con.query("SELECT DISTINCT account >= 2147483648 FROM cancels WHERE reason = 'disconnect'")[1]
    con.close()
    assert reasons.get("disconnect", 0) > 0 and reasons.get("user", 0) > 0, reasons
    assert [tuple(r) for r in by_acct] == [(1,)]  # (only the anonymous accounts were cancelled on disconnect)
    assert {o["reason"] for o in anon if o["status"] == "cancelled"} >= {"disconnect"}
    # queries filter
    assert all(o["account"] == 2 and o["symbol"] == 1 for o in store.query_orders(db, account=2, symbol=1))
    assert {f["exec_id"] for f in store.query_fills(db, account=3)} == {
        f["exec_id"] for f in fills if 3 in (f["buy_account"], f["sell_account"])}
    assert store.query_fills(db, since_ns=time.time_ns()) == []


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_positions_equal_a_recomputation_from_the_fills(session, tmp_path):
    db = str(tmp_path / "s.db")
    store.catch_up(session["journal"], db)
    lots, realized = defaultdict(list), defaultdict(int)  # FIFO, one lot per fill (independent of store.fifo)
    for f in store.query_fills(db):
        for acct, q in ((f["buy_account"], f["qty"]), (f["sell_account"], -f["qty"])):
            key = (acct, f["symbol"])
            book = lots[key]
            while q and book and (book[0][1] > 0) != (q > 0):
                k = min(abs(book[0][1]), abs(q))
                sign = 1 if book[0][1] > 0 else -1
                realized[key] += sign * (f["price_tick"] - book[0][0]) * k
                book[0][1] -= sign * k
                q += sign * k
                if book[0][1] == 0:
                    book.pop(0)
            if q:
                book.append([f["price_tick"], q])
    pos = {(p["account"], p["symbol"]): p for p in store.query_positions(db)}
    assert set(pos) == set(lots) and len(pos) >= 6
    for key, book in lots.items():
        p = pos[key]
        assert p["qty"] == sum(q for _, q in book), key
        assert p["open_cost"] == sum(px * abs(q) for px, q in book), key
        assert p["realized_pnl"] == realized[key], key
    assert any(p["realized_pnl"] for p in pos.values()) and any(p["qty"] for p in pos.values())
    for sym in (0, 1):  # every lot bought was sold: positions net to zero per symbol
        assert sum(p["qty"] for (a, s), p in pos.items() if s == sym) == 0


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_catch_up_twice_adds_nothing(session, tmp_path):
    db = str(tmp_path / "s.db")
    first = store.catch_up(session["journal"], db, batch_requests=3000)
    before = _dump(db)
    again = store.catch_up(session["journal"], db)
    assert first["fills"] > 0 and again == dict.fromkeys(again, 0)
    assert _dump(db) == before


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_a_catch_up_killed_9_mid_way_then_resumed_gives_the_same_database(session, tmp_path):
    ref = str(tmp_path / "ref.db")
    store.catch_up(session["journal"], ref)
    total = session["summary"]["engine_requests"]
    db = str(tmp_path / "s.db")
    kills = []
    for attempt in range(3):  # kill -9 a writer mid-way, three times, each resuming the last
        p = subprocess.Popen([sys.executable, "-m", "obpipe", "store", "--journal", session["journal"], "--store", db,
                              "--batch", str(20 + 7 * attempt)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        try:
            start = _applied(db)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and p.poll() is None and _applied(db) <= start:
                time.sleep(0.002)
            time.sleep(0.01 * attempt)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        finally:
            stop_process(p)
        kills.append(_applied(db))
    assert any(0 < k < total for k in kills), (kills, total)  # really killed with part of the journal applied
    resumed = store.catch_up(session["journal"], db)
    assert resumed["requests"] == total - kills[-1]
    assert _dump(db) == _dump(ref)


def _applied(db: str) -> int:
    """Requests a store has committed (0: none yet, or no store yet)."""
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute("SELECT value FROM store_meta WHERE key = 'requests'").fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:  # (the tables are being created)
        return 0
    finally:
        con.close()


@pytest.mark.timeout(120)
def test_a_store_refuses_another_journal(session, tmp_path):
    db = str(tmp_path / "s.db")
    store.catch_up(session["journal"], db)
    from obpipe.exchange.journal import Journal

    j, _, _ = Journal.open(str(tmp_path / "other"), 2, 1 << 16, 1 << 20)
    j.close()
    with pytest.raises(store.StoreError, match="another journal"):
        store.catch_up(str(tmp_path / "other"), db)


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_obpipe_exchange_writes_its_store_beside_the_journal_unless_off(tmp_path):
    runs = {}
    for tag, extra in (("on", ""), ("off", 'store = "off"\n')):
        x = ExchangeProc(tmp_path, journal=tmp_path / f"{tag}.j", extra=extra, tag=tag)
        try:
            _client(x.port, "--clients", "3", "--orders", "600", "--window", "4", "--seed", "9")
            runs[tag] = x.stop()
        finally:
            stop_process(x.p)
            x.err.close()
    assert not os.path.exists(tmp_path / "off.j.db")
    live = str(tmp_path / "on.j.db")  # written by the writer while the exchange ran, drained at its stop
    ref = str(tmp_path / "ref.db")
    assert store.catch_up(str(tmp_path / "on.j"), ref)["fills"] == runs["on"]["engine_trades"] > 0
    assert _dump(live) == _dump(ref)
    q = subprocess.run([sys.executable, "-m", "obpipe", "fills", "--config", str(tmp_path / "on.toml"), "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    assert len(json.loads(q.stdout)) == runs["on"]["engine_trades"]


@pytest.mark.timeout(300)
def test_a_second_writer_on_the_same_store_stops_instead_of_applying_twice(session, tmp_path):
    db = str(tmp_path / "s.db")
    a = store.StoreWriter(session["journal"], db, batch_requests=500)
    b = store.StoreWriter(session["journal"], db, batch_requests=500)
    try:
        assert a.step(max_transactions=1)["transactions"] == 1
        with pytest.raises(store.StoreError, match="another store writer"):
            b.step()
        assert a.step()["requests"] > 0  # the first goes on; the store is one clean copy
    finally:
        a.db.close()
        b.db.close()
    ref = str(tmp_path / "ref.db")
    store.catch_up(session["journal"], ref)
    assert _dump(db) == _dump(ref)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_postgresql_store_resumes_refuses_a_second_writer_and_equals_the_sqlite_one(session, tmp_path, pg_url):
    ref = str(tmp_path / "ref.db")
    store.catch_up(session["journal"], ref)
    a = store.StoreWriter(session["journal"], pg_url, batch_requests=400)
    b = store.StoreWriter(session["journal"], pg_url, batch_requests=400)
    try:
        first = a.step(max_transactions=2)
        assert first["transactions"] == 2 and 0 < first["requests"] < session["summary"]["engine_requests"]
        with pytest.raises(store.StoreError, match="another store writer"):
            b.step()
    finally:
        a.db.close()
        b.db.close()
    rest = store.catch_up(session["journal"], pg_url)  # a new writer resumes where the first committed
    assert first["requests"] + rest["requests"] == session["summary"]["engine_requests"]
    assert store.catch_up(session["journal"], pg_url)["requests"] == 0
    assert _dump(pg_url) == _dump(ref)
    for q in (lambda db: store.query_orders(db, status="open"), lambda db: store.query_fills(db, account=1),
              store.query_positions):
        assert q(pg_url) == q(ref) and len(q(ref)) > 0
    out = subprocess.run([sys.executable, "-m", "obpipe", "positions", "--store", pg_url, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert all(r.pop("symbol_name") in ("AAA", "BBB") for r in cli)  # (the CLI names the symbols)
    assert cli == json.loads(json.dumps(store.query_positions(ref)))


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_the_store_writer_rides_out_a_postgresql_outage(session, tmp_path, pg_server):
    """``obpipe store --follow`` on PostgreSQL: the server stops while the journal grows;
    the writer counts the failures, retries, and once the server is back applies the rest
    exactly once."""
    from obpipe.exchange import journal as J

    ref = str(tmp_path / "ref.db")
    store.catch_up(session["journal"], ref)
    data = open(session["journal"], "rb").read()
    ends = [b[0] for b in store._batches(data[J.HEADER.size:], J.HEADER.size)]
    half = ends[len(ends) // 2]
    j = tmp_path / "grow.j"
    j.write_bytes(data[:half])
    p = subprocess.Popen([sys.executable, "-m", "obpipe", "store", "--follow", "--journal", str(j), "--store",
                          pg_server.url, "--batch", "300"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        def offset():
            try:
                return dict(store.connect(pg_server.url).query("SELECT key, value FROM store_meta")[1])["offset"]
            except Exception:
                return 0

        deadline = time.monotonic() + 120
        while offset() != half:
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.05)
        pg_server.stop()
        with open(j, "ab") as f:
            f.write(data[half:])
        time.sleep(3.0)  # the writer finds the new batches, fails (no connection within 2 s), retries
        assert p.poll() is None  # (an outage does not end it)
        pg_server.start()
        while offset() != len(data):
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        stop_process(p)
    assert p.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["errors"] >= 1 and "retrying" in err
    assert _dump(pg_server.url) == _dump(ref)
