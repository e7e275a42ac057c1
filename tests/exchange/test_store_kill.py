"""The kill test of issue 15: kill -9 of the exchange, of its store writer, or of both, at
seeded random points while 20 clients trade; the store converges to exactly the
exchange's state.

One journal and one SQLite store live through seven exchange lifetimes:

* rounds 1-4: the exchange runs with ``store = "off"`` and the test runs the writer
  (``obpipe store --follow``) itself, so it holds the writer's pid; each round SIGKILLs
  the exchange, the writer or both (each at least once, seeded order) 0.3-1.5 s into
  the round's trading (a writer: that long after it has committed something, since a
  writer takes seconds to start on a busy machine), then restarts what it killed on the
  same journal and store: the exchange recovers its book from the journal (and cancels
  the dead connections' orders), the writer resumes from the store's offset;
* rounds 5-6: the exchange's own writer child (``[exchange] store``, ``--parent``):
  round 5 SIGKILLs the exchange alone, and the child must exit by itself with every
  whole journaled batch applied; round 6 SIGKILLs the child and the exchange together,
  and the next exchange's child resumes;
* round 7: trading without a kill, a clean stop (book dump, counters), then a one-shot
  ``obpipe store`` which must find nothing left to apply.

The 20 clients are ``exchange.client.Traders`` in a thread of the test, in sessions of
SESSION_S (not the ``obpipe exchange-client`` command: a client cut off by a killed
exchange exits without a report, and the test needs what each client was acknowledged).

What it proves at the end:

1. the store applied the journal to its last byte (``store_meta`` offset = file size),
   and no writer ever hit a failure it retried;
2. the store equals a from-scratch ``catch_up`` of the same journal into a fresh
   database, table for table (no duplicate, no gap left by any kill);
3. an independent replay of the journal through ``MatchingEngine`` (journal layout
   and engine only, nothing of store.py) gives the store's orders (ids, accounts,
   symbols, sides, quantities, filled lots, status, cancel reason), its open orders
   (= the engine's resting orders = the exchange's own book at its clean stop), its
   fills one for one (exec ids 1..N, every field), its cancels with their reasons
   (``disconnect`` ones included), its rejects and its positions' quantities;
4. every order a client read an ACK for is in the store under the client's account,
   and every lot a client read a fill of is in the store's fills;
5. positions net the store's own fills (per account and symbol).
"""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
import pytest

from obpipe.exchange import journal as J
from obpipe.exchange import store
from obpipe.exchange.client import Traders
from obpipe.exchange.matching import MatchingEngine
from obpipe.ring import schema
from tests.helpers import ExchangeProc, obpipe, popen_obpipe, stop_process

SEED = 15
CLIENTS = 20
RATE = 4000  # requests/s, all clients together (the clients are Python in the test's process)
SESSION_S = 1.0  # a client session (connect, trade, all answered, disconnect)
WRITER_BATCH = "300"  # requests per store transaction: many commits, many places to be killed between
TABLES = {"orders": "id", "fills": "exec_id", "positions": "account, symbol", "position_lots": "account, symbol, seq",
          "rejects": "seq", "cancels": "seq", "store_meta": "key"}


class Clients:
    """20 traders against one exchange lifetime, in a thread, until ``finish`` or a
    dead exchange: sessions of SESSION_S (20 fresh connections each, so a round can end
    at any time); keeps what each client was told."""

    def __init__(self, port: int, seed: int):
        self.port, self.seed = port, seed
        self.sessions: list[Traders] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                t = Traders("127.0.0.1", self.port, clients=CLIENTS, orders=0, window=4, rate=RATE,
                            seed=self.seed + len(self.sessions), symbols=2, duration_s=SESSION_S, timeout_s=60)
                self.sessions.append(t)
                t.run()
        except BaseException as e:  # (a killed exchange: ConnectionError / OSError)
            self.error = e
        finally:
            for s in self.sessions:
                for t in s.traders:
                    t.sock.close()

    def finish(self) -> None:
        """Let the current session end (all its requests answered) and stop."""
        self.stop.set()
        self.join()

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "clients still running 60 s after their round"

    def traders(self):
        return [t for s in self.sessions for t in s.traders]

    def acked(self) -> dict[int, int]:
        """Order id -> account of every ACK a client read."""
        return {oid: t.account for t in self.traders() for oid in t.ordered}

    def seen_filled(self) -> dict[int, int]:
        """Order id -> lots a client read fills of."""
        out = defaultdict(int)
        for t in self.traders():
            for oid, q in t.filled.items():
                out[oid] += q
        return out


class Writer:
    """``obpipe store --follow`` run by the test (its pid is the test's to kill)."""

    def __init__(self, journal: Path, db: Path, log: Path):
        self.since = _meta(db).get("offset", 0)  # (what the store held when it started)
        self.log = open(log, "a")
        self.p = popen_obpipe("store", "--follow", "--journal", str(journal), "--store", str(db),
                              "--batch", WRITER_BATCH, stdout=subprocess.DEVNULL, stderr=self.log)

    def running(self) -> bool:
        return self.p.poll() is None

    def alive(self) -> None:
        if self.p.poll() is not None:
            self.log.flush()
            raise AssertionError(f"the store writer exited by itself ({self.p.returncode}): "
                                 f"{Path(self.log.name).read_text()[-2000:]}")

    def kill(self) -> None:
        self.alive()
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)

    def close(self) -> None:
        stop_process(self.p)
        self.log.close()


def _meta(db: Path) -> dict:
    if not db.exists():
        return {}
    con = sqlite3.connect(db, timeout=30)
    try:
        return dict(con.execute("SELECT key, value FROM store_meta").fetchall())
    except sqlite3.OperationalError:  # (being created)
        return {}
    finally:
        con.close()


def _dump(db) -> dict:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY {k}").fetchall() for t, k in TABLES.items()}
    finally:
        con.close()


def _whole_batches_end(path: Path) -> int:
    """The byte after the last whole, intact batch of a journal (what a writer can apply)."""
    data = path.read_bytes()
    pos = J.HEADER.size
    while pos + J.BATCH.size <= len(data):
        magic, count, _ts, crc, _why = J.BATCH.unpack_from(data, pos)
        end = pos + J.BATCH.size + count * J.REQ
        if magic != J.BATCH_MAGIC or end > len(data) or zlib.crc32(data[pos + J.BATCH.size:end]) != crc:
            break
        pos = end
    return pos


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _writer_child(x: ExchangeProc) -> psutil.Process:
    """The store writer ``obpipe exchange`` started beside itself."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for c in psutil.Process(x.p.pid).children():
            try:
                cmd = c.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "store" in cmd and "--follow" in cmd and "--parent" in cmd:
                return c
        time.sleep(0.05)
    raise AssertionError(f"obpipe exchange started no store writer: {x.stderr()}")


def _replay(journal: Path) -> dict:
    """The journal through a fresh ``MatchingEngine`` (journal.py's layout, matching.py's
    engine; nothing of store.py): what the exchange answered, in order."""
    data = journal.read_bytes()
    _m, _v, _h, _sess, nsym, band, cap, _created = J.HEADER.unpack_from(data, 0)
    eng = MatchingEngine(nsym, band, cap)
    acked, filled, cancelled = {}, defaultdict(int), {}
    fills, cancels, rejects, pos = [], [], [], defaultdict(int)
    n_req = 0
    at = J.HEADER.size
    while at < len(data):
        magic, count, ts, crc, why = J.BATCH.unpack_from(data, at)
        body = data[at + J.BATCH.size:at + J.BATCH.size + count * J.REQ]
        assert magic == J.BATCH_MAGIC and len(body) == count * J.REQ and zlib.crc32(body) == crc, at
        at += J.BATCH.size + count * J.REQ
        out = eng.process(np.frombuffer(body, schema.ORDER_IN_DTYPE), ts)
        n_req += count
        rep, acc = out.reports.copy(), out.accounts.copy()
        for i, (r, a) in enumerate(zip(rep.tolist(), acc.tolist())):
            typ, side, reason, flags, sym, _, qty, _leaves, px, oid = r
            if typ == schema.R_ACK:
                acked[oid] = (a, sym, store.SIDE[side], qty)
            elif typ == schema.R_FILL:
                filled[oid] += qty
                pos[(a, sym)] += qty if side == schema.BUY else -qty
                if flags & schema.RF_AGGRESSOR:  # a trade: the aggressor's report, then the resting order's
                    o, oa = rep[i + 1], int(acc[i + 1])
                    buy, sell = (oid, int(o["order_id"])) if side == schema.BUY else (int(o["order_id"]), oid)
                    ba, sa = (a, oa) if side == schema.BUY else (oa, a)
                    fills.append((len(fills) + 1, sym, buy, sell, ba, sa, px, qty, store.SIDE[side], ts))
            elif typ == schema.R_CANCELLED:  # (the exchange's own cancels carry the batch's reason)
                name = schema.REASON_NAMES[why or reason]
                cancelled[oid] = name
                cancels.append((len(cancels) + 1, oid, a, sym, store.SIDE[side], px, qty, name, ts))
            elif typ == schema.R_REJECT:
                rejects.append((oid, a, sym, schema.REASON_NAMES.get(reason, str(reason)), ts))
    resting = {tuple(r) for s in range(nsym) for side in (schema.SIDE_BID, schema.SIDE_ASK)
               for r in eng.orders(s, side).tolist()}
    assert eng.counters()["trades"] == len(fills)
    return {"acked": acked, "filled": filled, "cancelled": cancelled, "fills": fills, "cancels": cancels,
            "rejects": rejects, "positions": pos, "resting": resting, "requests": n_req}


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_kill_9_of_exchange_writer_or_both_while_20_clients_trade_leaves_the_exchanges_state(tmp_path):
    rng = random.Random(SEED)
    journal, db = tmp_path / "j", tmp_path / "j.db"
    plan = ["exchange", "writer", "both", rng.choice(["exchange", "writer", "both"])]
    rng.shuffle(plan)
    exchanges: list[ExchangeProc] = []
    writers: list[Writer] = []
    children: list[psutil.Process] = []
    rounds: list[Clients] = []
    log: list[dict] = []  # what each round did (printed on failure)
    t0 = time.monotonic()

    def note(**kw) -> None:
        log.append({"t_s": round(time.monotonic() - t0, 1), **kw})

    def start_exchange(own_writer: bool) -> ExchangeProc:
        extra = f'store = "{db}"\n' if own_writer else 'store = "off"\n'
        x = ExchangeProc(tmp_path, journal=journal, extra=extra, tag=f"x{len(exchanges)}")
        exchanges.append(x)
        return x

    def start_writer() -> Writer:
        writers.append(Writer(journal, db, tmp_path / "writer.err"))
        return writers[-1]

    def wait_progress(since: int, alive) -> None:
        """Until the store has applied more than ``since`` bytes of journal (``alive()``:
        the writer still runs)."""
        deadline = time.monotonic() + 30
        while _meta(db).get("offset", 0) <= since:
            assert alive(), f"the store writer died before applying past byte {since}"
            assert time.monotonic() < deadline, f"the store writer applied nothing past byte {since} in 30 s"
            time.sleep(0.02)

    def trade(x: ExchangeProc) -> tuple[Clients, float]:
        """Clients trading on ``x``; when to kill (seconds from now)."""
        c = Clients(x.port, rng.randrange(1 << 20))
        rounds.append(c)
        return c, rng.uniform(0.3, 1.5)

    try:
        # --- rounds 1-4: the test's own writer, the exchange at store = "off" -----------------
        x, w = start_exchange(False), start_writer()
        for target in plan:
            clients, kill_at = trade(x)
            if target != "exchange":  # (a writer starts in 1-3 s on a busy machine: kill it once it applies)
                wait_progress(w.since, w.running)
            time.sleep(kill_at)
            w.alive()
            at_kill = {"t_s": round(time.monotonic() - t0, 1), "target": target, "kill_at_s": round(kill_at, 2),
                       "journal_bytes": journal.stat().st_size, "store_offset": _meta(db).get("offset", 0)}
            if target in ("writer", "both"):
                w.kill()
            if target in ("exchange", "both"):
                x.kill()
            if target == "writer":  # restarted while the clients still trade: it resumes under load
                time.sleep(rng.uniform(0.0, 0.3))
                w = start_writer()
                time.sleep(rng.uniform(0.0, 0.5))
                clients.finish()
            clients.join()
            at_kill["client_error"] = repr(clients.error)
            log.append(at_kill)
            if target == "writer":
                assert clients.error is None, log  # (the exchange never waits for its writer)
            else:  # cut off mid-trading by the kill
                assert isinstance(clients.error, OSError), log
                if target == "both":  # (the writer first: it then meets the exchange's recovery)
                    w = start_writer()
                x = start_exchange(False)
        w.alive()
        w.p.send_signal(signal.SIGTERM)  # (it applies what is there and exits: one writer per store)
        assert w.p.wait(timeout=60) == 0
        x.kill()  # (the exchange at store = "off" makes way for one with its own writer)
        note(phase="own writer")

        # --- round 5: the exchange killed, its own writer child must go by itself -----------------
        since = _meta(db)["offset"]
        x = start_exchange(True)
        child = _writer_child(x)
        children.append(child)
        clients, kill_at = trade(x)
        wait_progress(since, lambda: not _gone(child))  # (then it can drain when its parent dies)
        time.sleep(kill_at)
        x.kill()
        clients.join()
        assert isinstance(clients.error, OSError)
        deadline = time.monotonic() + 30
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the exchange's store writer outlived its SIGKILLed parent"
        # it applied every whole batch the dead exchange journaled before it went
        assert _meta(db)["offset"] == _whole_batches_end(journal) > J.HEADER.size
        note(target="exchange", own_writer=True, kill_at_s=round(kill_at, 2))

        # --- round 6: the exchange and its writer child killed together ---------------------------
        since = _meta(db)["offset"]
        x = start_exchange(True)
        child = _writer_child(x)
        children.append(child)
        clients, kill_at = trade(x)
        wait_progress(since, lambda: not _gone(child))
        time.sleep(kill_at)
        note(target="both", own_writer=True, kill_at_s=round(kill_at, 2), journal_bytes=journal.stat().st_size,
             store_offset=_meta(db).get("offset", 0))
        child.kill()
        x.kill()
        clients.join()
        assert isinstance(clients.error, OSError)
        # a writer was behind the journal when killed (it had work to lose) at least once
        assert any(0 < r["store_offset"] < r["journal_bytes"] for r in log if r.get("target") in ("writer", "both"))

        # --- round 7: trade to the end, stop cleanly ------------------------------------------------
        x = start_exchange(True)
        children.append(_writer_child(x))
        clients, until = trade(x)
        time.sleep(until)
        clients.finish()
        assert clients.error is None, clients.error
        note(target="none: clean stop")
        summary = x.stop()  # (its writer child applies what is left, then exits)
        book = x.book()
        note(stopped=True)
        caught = obpipe("store", "--journal", str(journal), "--store", str(db))
        assert caught.returncode == 0, caught.stderr
        assert json.loads(caught.stdout)["requests"] == 0  # (the clean stop's writer left nothing to apply)
    finally:
        for c in rounds:
            c.thread.join(30)
        for x in exchanges:
            stop_process(x.p)
            x.err.close()
        for w in writers:
            w.close()
        for c in children:  # (they exit with their exchange; one that did not is killed by pid)
            if not _gone(c):
                c.kill()
    note(checks=True)
    print("kill rounds:", log)
    for f in [tmp_path / "writer.err", *(x.err.name for x in exchanges)]:  # (the exchanges' writer children's too)
        text = Path(f).read_text()
        assert "Traceback" not in text and "store writer:" not in text, text[-3000:]  # (no failure retried)

    # 1. the store applied the journal to its last byte
    meta = _meta(db)
    assert meta["offset"] == journal.stat().st_size
    # 2. equal to a from-scratch catch-up: no duplicate, no gap left by the kills
    fresh = tmp_path / "fresh.db"
    store.catch_up(str(journal), str(fresh))
    mine = _dump(db)
    assert mine == _dump(fresh)

    # 3. equal to an independent replay of the journal, and to the exchange's own state
    rp = _replay(journal)
    assert meta["requests"] == rp["requests"] == summary["engine_requests"]
    orders = store.query_orders(str(db))
    by_id = {o["id"]: o for o in orders}
    assert len(by_id) == len(orders) == len(rp["acked"]) == summary["engine_accepted"]
    assert {i: (o["account"], o["symbol"], o["side"], o["qty"]) for i, o in by_id.items()} == rp["acked"]
    assert {(o["id"], o["price_tick"], o["leaves"], o["account"]) for o in orders if o["status"] == "open"} \
        == rp["resting"] == {tuple(r) for b in book["books"] for side in ("bids", "asks") for r in b[side]}
    resting_ids = {r[0] for r in rp["resting"]}
    for o in orders:
        want = "open" if o["id"] in resting_ids else "cancelled" if o["id"] in rp["cancelled"] else "filled"
        assert (o["status"], o["filled"], o["reason"]) == (want, rp["filled"].get(o["id"], 0),
                                                           rp["cancelled"].get(o["id"])), o
    fills = [tuple(r[:10]) for r in mine["fills"]]
    assert fills == rp["fills"]  # exec ids 1..N in the engine's trade order, every field
    assert [f[0] for f in fills] == list(range(1, len(fills) + 1))
    assert len(fills) == summary["engine_trades"] > 1000
    assert mine["cancels"] == rp["cancels"]  # every cancel with its reason, cancel-on-disconnect ones too
    assert {c[7] for c in rp["cancels"]} >= {"user", "disconnect"}
    assert [(r[1], r[2], r[3], r[6], r[7]) for r in mine["rejects"]] == rp["rejects"]
    positions = {(p["account"], p["symbol"]): p["qty"] for p in store.query_positions(str(db))}
    assert positions == dict(rp["positions"])
    assert any(positions.values())

    # 4. every acknowledgement a client read is in the store
    acked_total = 0
    for c in rounds:
        acked = c.acked()
        acked_total += len(acked)
        for oid, account in acked.items():
            assert oid in by_id and by_id[oid]["account"] == account, oid
    assert 0 < acked_total <= len(orders)
    in_fills = defaultdict(int)
    for f in fills:
        in_fills[f[2]] += f[7]
        in_fills[f[3]] += f[7]
    for c in rounds:
        for oid, q in c.seen_filled().items():
            assert in_fills[oid] >= q, oid

    # 5. positions net the store's own fills
    net = defaultdict(int)
    for f in fills:
        net[(f[4], f[1])] += f[7]
        net[(f[5], f[1])] -= f[7]
    assert positions == dict(net)
    note(done=True, requests=rp["requests"], orders=len(orders), fills=len(fills), cancels=len(rp["cancels"]),
         client_acks=acked_total)
    print("timeline:", log[-2:])
