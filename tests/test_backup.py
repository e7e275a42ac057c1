"""obpipe backup / restore (obpipe/backup.py): a tick store, an exchange store (written
to while it is backed up) and a story db go into a backup and come back equal, table
for table, row for row (compared here by their own sorted rows, not by the manifest's
digests); a non-empty target is refused; a damaged or missing file in the backup is
found by its checksum before anything is restored; a tick store held by another process
(a running recorder) is refused with its pid and what to do.

chdb runs one engine per process bound to one directory: every store is closed before
another directory is opened (backup/restore start and stop the engine themselves)."""
from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from obpipe import backup as B
from obpipe import config as cfgmod
from obpipe.exchange import store as xstore
from obpipe.ring import schema
from obpipe.story.store import Store as StoryStore
from obpipe.ticks import TickStore, unavailable
from tests.helpers import ENV, REPO, new_instance, obpipe, stop_process

if unavailable():
    pytest.skip(f"backup tests need chdb and pyarrow: {unavailable()}", allow_module_level=True)

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")
S = 1_000_000_000
T0 = 1_700_000_000 * S - 2 * S  # two seconds before a UTC midnight: two daily partitions
NO_PX = schema.NO_PX


def _fill_ticks(where, n=4000, seed=1) -> None:
    """``n`` synthetic book events (80 % quotes, some with an empty side; 20 % trades) in
    three inserts, and depth snapshots of five levels (some absent)."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, schema.EVENT_DTYPE)
    ev["ts_exch_ns"] = T0 + np.cumsum(rng.integers(1, 2_000_000, n))
    ev["seq"] = np.arange(1, n + 1)
    ev["symbol"] = rng.integers(0, len(SYMBOLS), n)
    ev["kind"] = np.where(rng.random(n) < 0.8, schema.EV_BBO, schema.EV_TRADE)
    px = 1000 + np.cumsum(rng.integers(-1, 2, n))
    ev["bid_px_tick"] = np.where(rng.random(n) < 0.05, NO_PX, px)
    ev["ask_px_tick"] = px + 1
    ev["bid_qty"], ev["ask_qty"] = rng.integers(1, 100, n), rng.integers(1, 100, n)
    ev["trade_px_tick"], ev["trade_qty"], ev["side"] = px, rng.integers(1, 50, n), rng.integers(0, 2, n)
    m = 300
    lv = 1000 - np.arange(5)[None, :] + rng.integers(-3, 4, (m, 1))
    bid_px = np.where(rng.random((m, 5)) < 0.1, NO_PX, lv)
    with TickStore.open(str(where)) as st:
        for part in np.array_split(ev, 3):
            st.insert_events(part, SYMBOLS)
        st.insert_depth(T0 + np.sort(rng.integers(0, 4 * S, m)), rng.integers(0, len(SYMBOLS), m), bid_px,
                        rng.integers(1, 9, (m, 5)), lv + 6, rng.integers(1, 9, (m, 5)), SYMBOLS)
        assert st.skipped == {"bad_symbol": 0, "bad_kind": 0, "bad_side": 0}


def _ticks_content(where) -> dict:
    """Rows and a hash of the sorted rows of every table (all stored columns), and of the
    1 s / 1 min bars of every symbol, read through the store's own API."""
    out = {}
    with TickStore.open(str(where)) as st:
        for t in ("quotes", "trades", "depth"):
            rows = sorted(repr(sorted(r.items())) for r in st.sql(f"SELECT * FROM {t}").to_pylist())
            out[t] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
        for w in ("1s", "1m"):
            rows = [repr(r) for s in SYMBOLS for r in st.bars(s, 0, 2 * T0, w).to_pylist()]
            out[f"bars_{w}"] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out


def _sqlite_content(path) -> dict:
    """Every table's rows, sorted."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in names}
    finally:
        con.close()


def _exchange_store(path, orders=2000, fills=1500) -> None:
    """An exchange store (its own schema, exchange/store.py) with synthetic rows."""
    db = xstore.connect(str(path))
    try:
        xstore.create_schema(db)
        db.con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, 'limit', 'gtc', ?, ?, 0, ?, 'open', NULL, ?, ?)",
                           [(i, i % 7, i % 3, "buy" if i % 2 else "sell", 1000 + i % 11, 10, 10, T0 + i, T0 + i)
                            for i in range(orders)])
        db.con.executemany("INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'buy', ?)",
                           [(i, i % 3, i, i + 1, i % 7, (i + 1) % 7, 1000 + i % 5, 1 + i % 9, T0 + i)
                            for i in range(fills)])
    finally:
        db.close()


def _story_db(path, n=300) -> None:
    st = StoryStore.open(str(path))
    try:
        for i in range(n):
            st.execute("INSERT INTO summaries (symbol, start_ns, end_ns, seq, tick_size, bid_tick, ask_tick, mid_tick,"
                       " spread_min, spread_mean, spread_max, imb_tob, imb_depth, volume_buy, volume_sell, trades,"
                       " messages, stored_ns) VALUES (?, ?, ?, ?, 0.01, 1000, 1001, 1000.5, 1, 1.25, 2, 0.1, -0.2,"
                       " ?, ?, ?, ?, ?)", (SYMBOLS[i % 4], T0 + i * 10**8, T0 + (i + 1) * 10**8, i, i, 2 * i, i % 5,
                                           7 * i, T0))
        st.conn().commit()
    finally:
        st.close()


class _Writer(threading.Thread):
    """Keeps committing transactions of 50 fills (ids counting up) into a WAL store."""

    def __init__(self, path, first_id):
        super().__init__(daemon=True)
        self.path, self.next, self.commits, self.stop = path, first_id, 0, threading.Event()

    def run(self):
        con = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        try:
            while not self.stop.is_set():
                con.execute("BEGIN IMMEDIATE")
                con.executemany("INSERT INTO fills VALUES (?, 0, 1, 2, 3, 4, 1000, 1, 'sell', ?)",
                                [(i, T0 + i) for i in range(self.next, self.next + 50)])
                con.execute("COMMIT")
                self.next += 50
                self.commits += 1
        finally:
            con.close()


@pytest.mark.timeout(90)
def test_round_trip_into_empty_targets_equals_the_originals(tmp_path):
    ticks, xdb, sdb, bk = tmp_path / "ticks", tmp_path / "x.db", tmp_path / "story.db", tmp_path / "bk"
    _fill_ticks(ticks)
    _exchange_store(xdb, fills=1500)
    _story_db(sdb)
    ticks_before = _ticks_content(ticks)
    story_before = _sqlite_content(sdb)
    assert ticks_before["quotes"][0] > 3000 and ticks_before["depth"][0] == 300 and ticks_before["bars_1s"][0] > 10

    writer = _Writer(str(xdb), first_id=1500)  # the exchange store is written to all through its backup
    writer.start()
    try:
        while writer.commits < 5:
            time.sleep(0.005)
        said = []
        m = B.backup(bk, str(ticks), [str(xdb)], [str(sdb)], say=said.append)
        commits_after = writer.commits
    finally:
        writer.stop.set()
        writer.join(10)
    assert [it["kind"] for it in m["items"]] == ["ticks", "store", "story"] and len(said) == 3
    assert json.loads((bk / B.MANIFEST).read_text()) == m
    t = m["items"][0]["tables"]
    assert {k: v["rows"] for k, v in t.items()} == {k: v[0] for k, v in ticks_before.items()}
    assert m["items"][0]["files"] and all(len(f["sha256"]) == 64 for f in m["items"][0]["files"].values())
    snap = _sqlite_content(bk / m["items"][1]["path"])  # the exchange store as the backup took it
    ids = sorted(r[0] for r in snap["fills"])
    # a consistent snapshot: whole transactions only, taken while the writer ran
    assert ids == list(range(len(ids))) and len(ids) % 50 == 0 and 1500 + 5 * 50 <= len(ids)
    assert commits_after > 5 and m["items"][1]["tables"]["fills"]["rows"] == len(ids)

    rt, rx, rs = tmp_path / "r" / "ticks", tmp_path / "r" / "x.db", tmp_path / "r" / "story.db"
    got = B.restore(bk, str(rt), [str(rx)], [str(rs)], say=said.append)
    assert got["ok"] and all(it["ok"] for it in got["items"]), got
    assert _ticks_content(rt) == ticks_before
    assert _sqlite_content(rx) == snap
    assert _sqlite_content(rs) == story_before
    assert {t: len(r) for t, r in _sqlite_content(rx).items()} == {
        t: v["rows"] for t, v in m["items"][1]["tables"].items()}

    # the same targets again: refused, every one named, nothing touched
    before = {p: p.stat().st_mtime_ns for p in (rx, rs)}
    with pytest.raises(B.BackupError) as e:
        B.restore(bk, str(rt), [str(rx)], [str(rs)])
    msg = str(e.value)
    assert "nothing restored" in msg and all(str(p) in msg for p in (rt, rx, rs)) and "--force" in msg
    assert {p: p.stat().st_mtime_ns for p in (rx, rs)} == before
    # by default a restore goes where the backup came from: the originals are there, so refused
    with pytest.raises(B.BackupError, match="not empty"):
        B.restore(bk, only={"ticks"})
    # --force replaces a store of the same kind, never something else
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(B.BackupError, match="not a SQLite database"):
        B.restore(bk, to_stores=[str(tmp_path / "notes.txt")], only={"store"}, force=True)
    with sqlite3.connect(rx) as con:
        con.execute("DELETE FROM fills")
    assert B.restore(bk, to_stores=[str(rx)], only={"store"}, force=True, say=said.append)["ok"]
    assert _sqlite_content(rx) == snap


@pytest.mark.timeout(60)
def test_damaged_or_missing_backup_files_are_found_before_restoring(tmp_path):
    ticks, xdb, bk = tmp_path / "ticks", tmp_path / "x.db", tmp_path / "bk"
    _fill_ticks(ticks, n=1000)
    _exchange_store(xdb, orders=100, fills=50)
    m = B.backup(bk, str(ticks), [str(xdb)], say=lambda s: None)
    assert B.check(bk) == m
    part = next(p for p in sorted((bk / "ticks").rglob("data.bin")) if "quotes" in p.parts)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit flipped: same size, other contents
    part.write_bytes(bytes(data))
    copy = bk / m["items"][1]["path"]
    copy.write_bytes(copy.read_bytes()[:-4096] + b"\0" * 4096)
    with pytest.raises(B.BackupError) as e:
        B.restore(bk, str(tmp_path / "r"), [str(tmp_path / "r.db")])
    msg = str(e.value)
    assert "damaged (2 problem(s))" in msg and part.relative_to(bk).as_posix() in msg and copy.name in msg
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.db").exists()  # nothing restored
    (bk / "ticks" / ".backup").unlink()
    with pytest.raises(B.BackupError, match=r"ticks/\.backup: missing"):
        B.check(bk)
    (bk / B.MANIFEST).unlink()
    with pytest.raises(B.BackupError, match="no manifest.json"):
        B.check(bk)


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_cli_backs_up_the_instance_and_refuses_a_store_in_use(tmp_path):
    inst = new_instance()
    state = cfgmod.state_dir(inst)  # (under the tests' own XDG_STATE_HOME)
    ticks, xdb = state / "ticks", cfgmod.run_exchange_dir(inst) / "exchange.journal.db"
    try:
        xdb.parent.mkdir(parents=True)
        _fill_ticks(ticks, n=1000)
        _exchange_store(xdb, orders=100, fills=50)
        ticks_before, x_before = _ticks_content(ticks), _sqlite_content(xdb)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from obpipe.ticks import TickStore; s = TickStore.open(sys.argv[1]); "
             "print('ready', flush=True); sys.stdin.read()", str(ticks)],
            cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ready"
            out = obpipe("backup", "--to", str(tmp_path / "bk"), "--instance", inst, timeout=60)
            assert out.returncode == 2, out.stderr
            assert f"in use by process {holder.pid}" in out.stderr and "Stop the run" in out.stderr, out.stderr
            assert not (tmp_path / "bk").exists()  # nothing written
        finally:
            stop_process(holder)
        out = obpipe("backup", "--to", str(tmp_path / "bk"), "--instance", inst, "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        m = json.loads(out.stdout)
        assert [(it["kind"], it["source"]) for it in m["items"]] == [("ticks", str(ticks)), ("store", str(xdb))]
        assert m["instance"] == inst and m["created_ns"] <= m["items"][0]["taken_ns"] <= m["finished_ns"]
        # restored where it came from: the originals are still there, so refused
        out = obpipe("restore", "--from", str(tmp_path / "bk"), timeout=60)
        assert out.returncode == 2 and "restore refused, nothing restored" in out.stderr and str(ticks) in out.stderr
        out = obpipe("restore", "--from", str(tmp_path / "bk"), "--to-ticks", str(tmp_path / "rt"), "--to-store",
                     str(tmp_path / "rx.db"), timeout=60)
        assert out.returncode == 0, out.stderr
        assert "every table equals the backup" in out.stdout
        assert _ticks_content(tmp_path / "rt") == ticks_before and _sqlite_content(tmp_path / "rx.db") == x_before
        f = tmp_path / "bk" / m["items"][1]["path"]
        f.write_bytes(f.read_bytes().replace(b"sell", b"SELL", 1))
        out = obpipe("restore", "--from", str(tmp_path / "bk"), "--check", timeout=60)
        assert out.returncode == 2 and "damaged" in out.stderr and f.name in out.stderr, out.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)
