"""Fuzz/abuse campaign against a running exchange: 50 connections at once sending random
byte streams and random valid-looking request sequences (seeded, bounded, scaled by
``fuzz_scale``)."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from obpipe.exchange.client import handshake
from obpipe.exchange.journal import Journal
from obpipe.exchange.matching import MatchingEngine
from obpipe.ring import schema

OUT = schema.ORDER_OUT_DTYPE
IN = schema.ORDER_IN_DTYPE
TRADERS, HIT_AND_RUN, GARBAGE = 35, 5, 10  # 50 connections at a time
SYMBOLS = 2
R_ANSWER = {schema.OE_NEW: (schema.R_ACK, schema.R_REJECT), schema.OE_CANCEL: (schema.R_CANCELLED, schema.R_REJECT),
            schema.OE_MODIFY: (schema.R_MODIFIED, schema.R_REJECT), schema.OE_HEARTBEAT: (schema.R_HEARTBEAT,)}


def _is_answer(r) -> bool:
    t = int(r["type"])
    return t in (schema.R_ACK, schema.R_REJECT, schema.R_MODIFIED, schema.R_HEARTBEAT) or (
        t == schema.R_CANCELLED and int(r["reason"]) == schema.RS_USER)


def _requests(rng, n: int, known: list[int], next_id: int) -> np.ndarray:
    """Valid-looking requests: every field drawn near (and sometimes past) its valid range."""
    q = np.zeros(n, IN)
    u = rng.random(n)
    q["type"] = np.select([u < 0.6, u < 0.75, u < 0.95], [schema.OE_NEW, schema.OE_CANCEL, schema.OE_MODIFY],
                          schema.OE_HEARTBEAT)
    q["side"] = rng.choice([0, 1, 0, 1, 2], n)
    q["ord_type"] = rng.choice([0, 0, 0, 1, 2], n)
    q["tif"] = rng.choice([0, 0, 0, 1, 2, 3], n)
    q["symbol"] = rng.choice([0, 1, 0, 1, SYMBOLS], n)
    q["qty"] = rng.choice([0, 1, 5, 20, 50, 100, 2**32 - 1], n, p=[.02, .3, .3, .2, .1, .07, .01])
    q["account"] = rng.integers(0, 2**32, n, dtype=np.uint64)  # (the exchange overwrites it)
    q["px_tick"] = 10_000 + rng.integers(-30, 31, n)
    q["px_tick"][rng.random(n) < 0.02] = -5
    pick = rng.random(n)
    ids = np.array(known[-64:] or [1], np.uint64)
    q["order_id"] = np.where(pick < 0.75, ids[rng.integers(0, len(ids), n)],
                             rng.integers(0, next_id + 5, n, dtype=np.uint64))
    q["order_id"][q["type"] == schema.OE_NEW] = 0
    return q


class _Trader(threading.Thread):
    """A logged-in account sending random valid-looking requests, a window at a time;
    checks that each gets one answer, in order, of the right kind, and keeps what its
    orders did (submitted, filled, cancelled, open)."""

    def __init__(self, port, account, key, seed, rounds):
        super().__init__(daemon=True)
        self.port, self.account, self.key, self.seed, self.rounds = port, account, key, seed, rounds
        self.sent = self.answered = 0
        self.orders: dict[int, list[int]] = {}  # id -> [submitted, filled, cancelled, open]
        self.error = None
        self.buf = b""

    def _take(self, r) -> None:
        t, oid, qty = int(r["type"]), int(r["order_id"]), int(r["qty"])
        if t == schema.R_ACK:
            self.orders[oid] = [qty, 0, 0, qty]
        elif t == schema.R_FILL:
            o = self.orders[oid]
            o[1] += qty
            o[3] -= qty
        elif t == schema.R_CANCELLED:
            o = self.orders[oid]
            o[2] += qty
            o[3] -= qty
        elif t == schema.R_MODIFIED:
            o = self.orders[oid]
            o[0] += qty - o[3]
            o[3] = qty

    def read_some(self, timeout: float) -> np.ndarray:
        self.s.settimeout(timeout)
        data = self.s.recv(1 << 16)
        if not data:
            raise ConnectionError(f"account {self.account}: closed by the exchange")
        self.buf += data
        n = len(self.buf) // 32
        out = np.frombuffer(self.buf[:32 * n], OUT).copy()
        self.buf = self.buf[32 * n:]
        for r in out:
            self._take(r)
        return out

    def run(self):
        try:
            self.s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.hello = handshake(self.s, (self.account, self.key))
            rng = np.random.default_rng(self.seed)
            for _ in range(self.rounds):
                q = _requests(rng, int(rng.integers(1, 17)), [o for o, v in self.orders.items() if v[3] > 0],
                              self.hello["next_order_id"] + 50 * self.sent)
                self.s.sendall(q.tobytes())
                self.sent += len(q)
                want = list(q["type"])
                while want:
                    for r in self.read_some(30):
                        if _is_answer(r):
                            kind = want.pop(0)
                            assert int(r["type"]) in R_ANSWER[kind], (self.account, kind, r)
                            self.answered += 1
        except Exception as e:  # noqa: BLE001 (reported by the test)
            self.error = e

    def drain(self) -> None:
        """Read what is still coming (fills of resting orders) until quiet."""
        try:
            while True:
                self.read_some(0.5)
        except socket.timeout:
            pass


def _hit_and_run(port, seed, rounds, stats):
    """Anonymous: post a few GTC orders, vanish (cancel-on-disconnect), again."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        handshake(s)
        q = np.zeros(int(rng.integers(1, 20)), IN)
        q["type"], q["qty"], q["side"] = schema.OE_NEW, rng.integers(1, 9, len(q)), rng.integers(0, 2, len(q))
        q["px_tick"] = np.where(q["side"] == 0, 9_960, 10_040) + rng.integers(-5, 6, len(q))
        q["symbol"] = rng.integers(0, SYMBOLS, len(q))
        s.sendall(q.tobytes())
        if rng.random() < 0.5:
            time.sleep(0.01)
        s.close()
        with stats["lock"]:
            stats["hit_and_run"] += 1


def _garbage(port, seed, rounds, stats):
    """Random byte streams: each must get its connection closed (or, under 32 bytes, nothing)."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        n = int(rng.choice([7, 31, 32, 100, 2000, 40_000]))
        data = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if data[0] in (schema.OE_NEW, schema.OE_CANCEL, schema.OE_MODIFY, schema.OE_HEARTBEAT):
            data[0] = 0xFF  # (so its first whole message is surely unreadable; a login byte stays: a bad login)
        if rng.random() < 0.3:  # a well-formed start, then garbage
            ok = np.zeros(2, IN)
            ok["type"], ok["qty"], ok["px_tick"] = schema.OE_NEW, 1, 9_000
            data[0] = 0xFF
            data = ok.tobytes() + data
        data = bytes(data)
        try:
            s.sendall(data)
        except OSError:  # (closed while we were still sending: that is the point)
            pass
        s.settimeout(10)
        closed = False
        if n >= 32:
            try:
                while s.recv(1 << 16):
                    pass
                closed = True
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                pass
        s.close()
        if n >= 32:
            with stats["lock"]:
                stats["garbage"] += 1
                stats["garbage_closed"] += closed


@pytest.mark.fuzz
@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_fifty_connections_of_random_bytes_and_requests_crash_nothing_and_every_request_is_answered_once(
        exchanges, tmp_path, fuzz_scale):
    journal = tmp_path / "j"
    x = exchanges.start(journal=journal, extra='fsync = "none"\nmax_open_orders = 8\n'
                        'max_msgs_per_s = 20000\ncapacity = 4096\nmax_clients_per_address = 1000\n', accounts={a: {} for a in range(1, TRADERS + 1)})
    rounds = 150 * fuzz_scale
    traders = [_Trader(x.port, a, x.keys[a], 1000 + a, rounds) for a in range(1, TRADERS + 1)]
    stats = {"hit_and_run": 0, "garbage": 0, "garbage_closed": 0, "lock": threading.Lock()}
    others = [threading.Thread(target=_hit_and_run, args=(x.port, 2000 + i, 20 * fuzz_scale, stats), daemon=True)
              for i in range(HIT_AND_RUN)]
    others += [threading.Thread(target=_garbage, args=(x.port, 3000 + i, 12 * fuzz_scale, stats), daemon=True)
               for i in range(GARBAGE)]
    t0 = time.monotonic()
    for t in traders + others:
        t.start()
    for t in traders + others:
        t.join(timeout=400)
        assert not t.is_alive(), "a campaign thread hung"
    for t in traders:
        assert t.error is None, t.error
        t.drain()
    elapsed = time.monotonic() - t0
    summary = x.stop()  # exits 0: no crash

    # every well-formed request answered exactly once (checked in order, by kind, per connection)
    assert all(t.sent == t.answered > 0 for t in traders)
    sent = sum(t.sent for t in traders)
    assert summary["open_limited"] > 0  # (the limit was exercised)
    # every random stream of a whole message or more got its connection closed, with a counted reason
    assert stats["garbage"] > 0 and stats["garbage_closed"] == stats["garbage"]
    assert summary["closed_malformed"] + summary["bad_logins"] == stats["garbage"]
    assert summary["heartbeats"] > 0 and summary["disconnect_cancels"] > 0

    # the book is never crossed, and every order's quantity is accounted for
    dump = x.book()
    resting = {}
    for sym, b in enumerate(dump["books"]):
        if b["bids"] and b["asks"]:
            assert max(r[1] for r in b["bids"]) < min(r[1] for r in b["asks"]), f"symbol {sym} crossed"
        for oid, _px, q, acct in b["bids"] + b["asks"]:
            assert acct <= TRADERS  # (anonymous orders left with their connections)
            resting[oid] = (q, acct)
    for t in traders:
        for oid, (submitted, filled, cancelled, open_) in t.orders.items():
            assert open_ == resting.get(oid, (0, 0))[0], (t.account, oid, open_, resting.get(oid))
            assert submitted == open_ + filled + cancelled and min(open_, filled, cancelled) >= 0
    assert sum(1 for t in traders for v in t.orders.values() if v[3] > 0) == len(resting)

    # the journal (gated requests left out, disconnect cancels in) replays into the same books
    j, reqs, _ = Journal.open(str(journal), SYMBOLS, 1 << 16, 4096)
    j.close()
    ref = MatchingEngine(SYMBOLS, 1 << 16, 4096)
    for i in range(0, len(reqs), 4096):
        ref.process(reqs[i:i + 4096])
    assert [ref.book(s) for s in range(SYMBOLS)] == dump["books"]
    del stats["lock"]
    print(f"fuzz: {sent} requests from {TRADERS} accounts, {stats}, {elapsed:.1f} s, "
          f"{ {k: summary[k] for k in ('rate_limited', 'open_limited', 'closed_malformed', 'bad_logins')} }")
