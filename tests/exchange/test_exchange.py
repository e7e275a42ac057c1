"""The order-entry exchange, really started: TCP clients on 127.0.0.1, the journal, kill -9."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from obpipe.exchange.client import Traders, probe, probe_requests
from obpipe.exchange.journal import Journal, JournalError
from obpipe.exchange.matching import MatchingEngine
from obpipe.ring import schema
from tests.helpers import REPO, ExchangeSession

OUT = schema.ORDER_OUT_DTYPE


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_fifty_clients_each_request_answered_once_and_fills_balance(exchanges, tmp_path):
    x = exchanges.start(extra='fsync = "none"\n', journal=tmp_path / "j")
    tr = Traders("127.0.0.1", x.port, clients=50, orders=1000, window=4, seed=3, symbols=2, timeout_s=240)
    res = tr.run()
    summary = x.stop()

    for t in tr.traders:  # the client raises on a response nobody asked for; none may be missing
        assert (t.sent, t.responses) == (1000, 1000), (t.i, t.sent, t.responses)
    # (the engine also counts the cancels of their resting orders when they disconnected: anonymous accounts)
    assert res["requests"] == res["responses"] == 50_000 == summary["engine_requests"] - summary["disconnect_cancels"]
    # every lot taken by an aggressor was given by a resting order, and the exchange agrees
    assert res["filled_aggressor_qty"] == res["filled_resting_qty"] == summary["engine_traded_qty"] > 0
    assert summary["reports_undeliverable"] == 0
    # no trader starved: the slowest trader's mean round trip is within 5x the median trader's
    means = sorted(np.mean(t.rtt) for t in tr.traders)
    assert means[-1] < 5 * means[len(means) // 2], (means[0], means[len(means) // 2], means[-1])


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_client_that_never_reads_is_disconnected_and_does_not_slow_the_rest(exchanges, tmp_path):
    x = exchanges.start(extra='fsync = "none"\nout_buffer_max = 65536\n')
    base = Traders("127.0.0.1", x.port, clients=4, orders=1500, window=2, seed=5).run()
    with_silent = Traders("127.0.0.1", x.port, clients=4, orders=1500, window=2, seed=6, silent=1).run()
    summary = x.stop()

    assert with_silent["responses"] == with_silent["requests"] == 6000
    assert summary["slow_disconnects"] == 1
    assert "bytes unread" in x.stderr()
    assert with_silent["elapsed_s"] < 4 * base["elapsed_s"] + 2.0, (base["elapsed_s"], with_silent["elapsed_s"])


def _requests(n: int, seed: int, account: int) -> np.ndarray:
    """New orders only (each takes an id): limit GTC around 10,000, some IOC and market."""
    r = np.random.default_rng(seed)
    c = np.zeros(n, schema.ORDER_IN_DTYPE)
    c["type"] = schema.OE_NEW
    c["side"] = r.integers(0, 2, n)
    c["symbol"] = r.integers(0, 2, n)
    c["qty"] = r.integers(1, 50, n)
    c["account"] = account
    off = r.integers(-4, 20, n)
    c["px_tick"] = np.where(c["side"] == schema.BUY, 10_000 - off, 10_000 + off)
    u = r.random(n)
    c["ord_type"][u < 0.08] = schema.OT_MARKET
    c["px_tick"][u < 0.08] = 0
    c["tif"][(u >= 0.08) & (u < 0.15)] = schema.TIF_IOC
    return c


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_kill_9_loses_no_acknowledged_order_and_restart_rebuilds_the_same_book(exchanges, tmp_path):
    reqs = _requests(3000, seed=11, account=7)
    reqs["account"][1::2] = 8  # two traders, strictly alternating: the order of arrival is known
    journal = tmp_path / "ex.journal"
    x1 = exchanges.start(journal=journal, tag="first", accounts={7: {}, 8: {}})
    sess = {7: ExchangeSession(x1, 7), 8: ExchangeSession(x1, 8)}
    for i in range(1200):  # each request acknowledged before the next is sent
        sess[int(reqs[i]["account"])].s.sendall(reqs[i:i + 1].tobytes())
        sess[int(reqs[i]["account"])].responses(1)
    sess[int(reqs[1200]["account"])].s.sendall(reqs[1200:1201].tobytes())  # in flight when the kill comes
    x1.kill()  # SIGKILL
    for t in sess.values():
        t.s.close()

    x2 = exchanges.start(journal=journal, tag="second", accounts={7: {}, 8: {}})
    sess = {7: ExchangeSession(x2, 7), 8: ExchangeSession(x2, 8)}
    journaled = sess[7].hello["next_order_id"] - 1  # every request is a new order: ids 1..journaled are in
    assert journaled in (1200, 1201)  # all 1,200 acknowledged ones survived; the 1,201st may have
    ref = MatchingEngine(2, capacity=1 << 20)
    ref.process(reqs[:journaled])
    assert sess[7].hello["next_md_seq"] == ref.md_messages + 1  # the market-data sequence continues
    for i in range(journaled, len(reqs)):
        sess[int(reqs[i]["account"])].s.sendall(reqs[i:i + 1].tobytes())
        sess[int(reqs[i]["account"])].responses(1)
    for t in sess.values():
        t.s.close()
    summary = x2.stop()

    ref.process(reqs[journaled:])
    dump = x2.book()
    assert dump["next_order_id"] == ref.next_order_id == len(reqs) + 1
    for sym in (0, 1):
        assert dump["books"][sym] == ref.book(sym), f"symbol {sym} differs from the uninterrupted run"
    assert sum(len(b["bids"]) + len(b["asks"]) for b in dump["books"]) > 200
    assert summary["engine_trades"] > 100
    assert "recovered 1" in x2.stderr()


@pytest.mark.timeout(60)
def test_journal_drops_a_cut_last_batch_and_refuses_corruption_and_other_settings(tmp_path):
    p = str(tmp_path / "j")
    j, reqs, rec = Journal.open(p, 2, 1000, 64)
    assert rec["created"] and len(reqs) == 0
    a = _requests(10, 1, 3)
    j.append(a[:6], 111)
    j.append(a[6:], 222)
    j.close()
    size = os.path.getsize(p)
    with open(p, "ab") as f:  # a third batch cut short by a crash
        f.write(struct.pack("<IIqI12x", 0x48435442, 5, 333, 0) + a[:2].tobytes())

    j, reqs, rec = Journal.open(p, 2, 1000, 64)
    j.close()
    assert rec["batches"] == 2 and rec["truncated_bytes"] == 32 + 64
    assert reqs.tobytes() == a.tobytes()
    assert os.path.getsize(p) == size  # truncated back to the last whole batch

    with pytest.raises(JournalError, match="band_ticks = 1000"):
        Journal.open(p, 2, 2000, 64)
    data = bytearray(open(p, "rb").read())
    data[64 + 32 + 5] ^= 0xFF  # corrupt the first batch; the second follows it
    open(p, "wb").write(bytes(data))
    with pytest.raises(JournalError, match="corrupt"):
        Journal.open(p, 2, 1000, 64)
    open(p, "wb").write(b"not a journal at all, no" * 4)
    with pytest.raises(JournalError, match="not an obpipe journal"):
        Journal.open(p, 2, 1000, 64)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_run_with_the_exchange_as_feed_source_delivers_its_market_data_to_the_book(tmp_path, instance):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[instance]\nname = "{instance}"\n[book]\nsymbols = ["A", "B"]\n[exchange]\nport = 0\n'
                   f'[traders]\nclients = 4\nrate = 5000\n[kafka]\nenabled = false\n[ticks]\nenabled = false\n')
    p = subprocess.run([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--source", "exchange",
                        "--duration", "3", "--json", "--quiet"], cwd=REPO, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert "exchange listening on" in p.stderr and "exchange feed stopped" in p.stderr
    assert d["feed"]["sent"] > 3000
    assert d["rx"]["delivered"] == d["book"]["msgs"] == d["feed"]["sent"]  # every message, none lost
    assert d["gap_messages"] == d["malformed"] == d["book"]["bad_msgs"] == 0
    # the exchange's book is never crossed, so the book built from its market data is not either
    assert d["book"]["crossed"] == 0 and d["book"]["qty_underflow"] == 0
    assert d["book"]["trades"] > 100
    engine = dict(kv.rsplit(" ", 1) for kv in p.stderr.split("exchange feed stopped: ")[1].splitlines()[0].split(", "))
    assert int(engine["engine_trades"]) == d["book"]["trades"]
    assert int(engine["engine_md_messages"]) == d["feed"]["sent"]
    # ... and its orders, fills and positions are in the store of the instance's run (docs/STORE.md)
    def query(*args):
        q = subprocess.run([sys.executable, "-m", "obpipe", *args, "--config", str(cfg), "--json"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert q.returncode == 0, q.stderr
        return json.loads(q.stdout)

    fills = query("fills")
    assert len(fills) == d["book"]["trades"] and [f["exec_id"] for f in fills] == list(range(1, len(fills) + 1))
    assert sum(f["qty"] for f in fills) == int(engine["engine_traded_qty"])
    orders = query("orders")
    assert len(orders) == int(engine["engine_accepted"]) and not query("orders", "--status", "open")
    assert {o["reason"] for o in orders if o["status"] == "cancelled"} >= {"disconnect"}  # (anonymous traders)
    net = {}
    for r in query("positions"):
        net[r["symbol"]] = net.get(r["symbol"], 0) + r["qty"]
    assert net and set(net.values()) == {0}  # every lot bought was sold to someone
    from obpipe.config import run_exchange_dir

    assert (run_exchange_dir(instance) / "exchange.journal").stat().st_size > 64


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_bad_fields_get_a_reject_and_an_unreadable_message_is_answered_then_closes_the_connection(exchanges, tmp_path):
    x = exchanges.start(extra='fsync = "none"\n', accounts={5: {}})
    s = ExchangeSession(x, 5)
    bad = np.zeros(2, schema.ORDER_IN_DTYPE)
    bad[0]["type"], bad[0]["side"], bad[0]["qty"], bad[0]["px_tick"] = schema.OE_NEW, 9, 5, 100  # no such side
    bad[1]["type"], bad[1]["side"], bad[1]["qty"], bad[1]["px_tick"] = schema.OE_NEW, 0, 5, 100
    bad[1]["tif"] = 7  # no such time in force
    good = np.zeros(1, schema.ORDER_IN_DTYPE)
    good["type"], good["side"], good["qty"], good["px_tick"] = schema.OE_NEW, schema.BUY, 5, 100
    s.s.sendall(bad.tobytes() + good.tobytes())
    r = s.read(3)
    assert r["type"].tolist() == [schema.R_REJECT, schema.R_REJECT, schema.R_ACK]  # well-formed: it goes on
    assert r["reason"].tolist()[:2] == [schema.RS_BAD_SIDE, schema.RS_BAD_TYPE]

    unreadable = np.zeros(3, schema.ORDER_IN_DTYPE)
    unreadable[0] = good[0]
    unreadable[1]["type"] = 99  # no such request: the stream is misaligned or garbage
    unreadable[2] = good[0]  # (after it: not read)
    s.s.sendall(unreadable.tobytes())
    r = s.read(2)
    assert r["type"].tolist() == [schema.R_ACK, schema.R_REJECT] and r["reason"][1] == schema.RS_BAD_TYPE
    s.s.settimeout(10)
    assert s.s.recv(100) == b""  # then closed

    t = ExchangeSession(x, 5)  # the account is free again; reserved bytes set close a connection too
    msg = good.copy()
    msg["_reserved"] = 7
    t.s.sendall(msg.tobytes() + b"\x01\x02\x03")
    r = t.read(1)[0]
    assert r["type"] == schema.R_REJECT and r["reason"] == schema.RS_MALFORMED
    t.s.settimeout(10)
    assert t.s.recv(100) == b""
    summary = x.stop()
    assert summary["closed_malformed"] == 2 and summary["engine_rejected"] == 4
    assert "unreadable message (type 99" in x.stderr()


@pytest.mark.timeout(60)
def test_journal_corrupt_count_mid_file_is_refused_and_a_cut_tail_with_batch_bytes_inside_is_dropped(tmp_path):
    p = str(tmp_path / "j")
    j, _, _ = Journal.open(p, 2, 1000, 64)
    a = _requests(9, 2, 3)
    a["px_tick"] = 0x48435442  # the batch magic's bytes inside the requests
    for k in range(3):
        j.append(a[3 * k:3 * k + 3], k)
    j.close()
    good = bytearray(open(p, "rb").read())

    bad = bytearray(good)
    bad[64 + 4:64 + 8] = struct.pack("<I", 0xFFFFFFFF)  # first batch's count
    open(p, "wb").write(bytes(bad))
    with pytest.raises(JournalError, match="corrupt"):
        Journal.open(p, 2, 1000, 64)

    cut = bytearray(good)
    cut[-1] ^= 0xFF  # the last batch damaged by a crash mid-write: its requests hold "BTCH"
    open(p, "wb").write(bytes(cut))
    j, reqs, rec = Journal.open(p, 2, 1000, 64)
    j.close()
    assert rec["batches"] == 2 and len(reqs) == 6 and rec["truncated_bytes"] == 32 + 3 * 32


@pytest.mark.timeout(60)
def test_journal_completes_a_short_write_and_interval_fsync_catches_up_when_idle(tmp_path, monkeypatch):
    p = str(tmp_path / "j")
    j, _, _ = Journal.open(p, 2, 1000, 64, fsync="interval", interval_ms=20)
    real_write = os.write
    calls = []

    def short_write(fd, data):  # the kernel may write less than asked (disk nearly full)
        calls.append(len(data))
        return real_write(fd, bytes(data[:max(1, len(data) // 3)]))

    monkeypatch.setattr(os, "write", short_write)
    j.append(_requests(5, 3, 1), 7)
    monkeypatch.setattr(os, "write", real_write)
    assert len(calls) > 1 and os.path.getsize(p) == 64 + 32 + 5 * 32
    syncs = j.syncs
    time.sleep(0.05)
    j.tick()  # no new batch: the loop's tick still syncs what was written
    assert j.syncs == syncs + 1
    j.close()
    j, reqs, rec = Journal.open(p, 2, 1000, 64)
    j.close()
    assert rec["batches"] == 1 and len(reqs) == 5


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_the_compiled_client_gets_one_answer_per_request_and_the_book_is_exactly_its_orders(exchanges, tmp_path):
    x = exchanges.start(accounts={3: {}})  # (logged in: its orders outlive the connection)
    n = 3000
    res = probe("127.0.0.1", x.port, orders=n, seed=5, credential=(3, x.keys[3]))
    assert res["responses"] == res["acks"] == n and res["rejects"] == 0
    assert 0 < res["rtt_us"]["p50"] <= res["rtt_us"]["p99"] <= res["rtt_us"]["p99_9"]
    assert res["other_reports"] > 100  # crossing orders met the client's own (self-trade prevention)
    x.stop()
    ref = MatchingEngine(2, capacity=1 << 20)  # the same requests, once each, in order, from its account
    reqs = probe_requests(n, seed=5)
    reqs["account"] = 3
    ref.process(reqs)
    dump = x.book()
    assert dump["next_order_id"] == n + 1
    # (one account: a crossing order cancels the resting ones it meets, so few orders rest)
    assert dump["books"][0] == ref.book(0) and sum(len(v) for v in ref.book(0).values()) > 5


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_the_compiled_client_reports_a_silent_or_vanished_exchange_instead_of_hanging(exchanges, tmp_path):
    x = exchanges.start()
    probe("127.0.0.1", x.port, orders=10)  # loads the kernel
    os.kill(x.p.pid, signal.SIGSTOP)  # accepts (the kernel completes the handshake) but never answers
    try:
        t = time.monotonic()
        with pytest.raises((ConnectionError, OSError)):
            probe("127.0.0.1", x.port, orders=100, timeout_s=1.0)
        assert time.monotonic() - t < 10
    finally:
        os.kill(x.p.pid, signal.SIGCONT)
    x.kill()
    with pytest.raises(OSError):  # nobody listens any more
        probe("127.0.0.1", x.port, orders=100, timeout_s=1.0)


@pytest.mark.timeout(60)
def test_a_second_writer_on_a_journal_is_refused_and_a_new_journal_is_private(tmp_path):
    p = str(tmp_path / "j")
    old = os.umask(0o022)
    try:
        j, _, rec = Journal.open(p, 2, 1000, 64)
    finally:
        os.umask(old)
    assert rec["created"] and os.stat(p).st_mode & 0o777 == 0o600
    j.append(_requests(3, 1, 3), 1)
    with pytest.raises(JournalError, match="locked by another writer"):
        Journal.open(p, 2, 1000, 64)  # (flock locks are per open file: same process, same refusal)
    assert os.path.getsize(p) == 64 + 32 + 3 * 32  # the refused open wrote nothing
    j.close()
    j, reqs, rec = Journal.open(p, 2, 1000, 64)  # the lock goes with the writer
    j.close()
    assert len(reqs) == 3 and not rec["created"]


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_second_exchange_on_a_running_exchanges_journal_exits_with_a_clear_error(exchanges, tmp_path):
    journal = tmp_path / "ex.journal"
    exchanges.start(journal=journal, tag="first")
    cfg = tmp_path / "second.toml"
    cfg.write_text(f'[book]\nsymbols = ["A", "B"]\n[exchange]\nport = 0\njournal = "{journal}"\n'
                   f'allow_anonymous = true\n')
    p = subprocess.run([sys.executable, "-m", "obpipe", "exchange", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "locked by another writer" in p.stderr, p.stderr
