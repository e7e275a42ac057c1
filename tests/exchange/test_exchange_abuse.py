"""The exchange under abuse, really started: who may act for an account, limits,
cancel-on-disconnect, idle and half-open connections, connection floods."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from obpipe.exchange import accounts as accmod
from obpipe.exchange.client import handshake, probe
from obpipe.ring import schema
from tests.helpers import REPO, ExchangeSession

OUT = schema.ORDER_OUT_DTYPE


def _raw(port: int) -> tuple[socket.socket, np.ndarray]:
    """A connection and its hello + challenge."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = b""
    while len(buf) < 64:
        part = s.recv(64 - len(buf))
        assert part, "closed before the hello"
        buf += part
    return s, np.frombuffer(buf, OUT)


def _until_closed(s: socket.socket, timeout_s: float = 10) -> bytes:
    """Everything the exchange sends until it closes ``s`` (fails after ``timeout_s``)."""
    s.settimeout(timeout_s)
    got = b""
    while True:
        part = s.recv(1 << 16)
        if not part:
            return got
        got += part


def _orders(n: int, side: int = schema.BUY, px: int = 100, tif: int = schema.TIF_GTC) -> np.ndarray:
    q = np.zeros(n, schema.ORDER_IN_DTYPE)
    q["type"], q["side"], q["qty"], q["px_tick"], q["tif"] = schema.OE_NEW, side, 1, px, tif
    return q


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_only_a_login_proving_the_accounts_key_acts_for_it_and_anonymous_trading_is_off_by_default(
        exchanges, tmp_path):
    x = exchanges.start(anonymous=False, accounts={7: {}})
    key = x.keys[7]
    owner = ExchangeSession(x, 7)  # the real account 7: one resting order
    owner.s.sendall(_orders(1).tobytes())
    assert owner.read(1)[0]["type"] == schema.R_ACK
    owner.s.close()
    time.sleep(0.3)

    for name, msg in (
            ("no proof", lambda n: accmod.login_message(7, bytes(32), n)[:16] + bytes(16)),
            ("a wrong key", lambda n: accmod.login_message(7, bytes(32), n)),
            ("a proof for another nonce (replayed)", lambda n: accmod.login_message(7, key, os.urandom(24))),
            ("an account not in the file", lambda n: accmod.login_message(8, key, n))):
        s, first = _raw(x.port)
        assert first["type"].tolist() == [schema.R_HELLO, schema.R_CHALLENGE]
        s.sendall(msg(first[1].tobytes()[8:]))
        got = np.frombuffer(_until_closed(s), OUT)  # refused, then closed
        assert got["type"].tolist() == [schema.R_REJECT] and got["reason"][0] == schema.RS_AUTH, name
        s.close()

    s, first = _raw(x.port)  # no login, anonymous trading off: refused before anything is done
    s.sendall(_orders(1).tobytes())
    got = np.frombuffer(_until_closed(s), OUT)
    assert got["type"].tolist() == [schema.R_REJECT] and got["reason"][0] == schema.RS_LOGIN_REQUIRED
    s.close()

    s, first = _raw(x.port)  # the right key logs in; neither it nor the secret crosses the wire
    login = accmod.login_message(7, key, first[1].tobytes()[8:])
    assert key[:16] not in login and key[16:] not in login and b"secret-7" not in login
    s.sendall(login)
    s.settimeout(30)  # (its answer, before the close: a stop right after the close could beat the login)
    ans = b""
    while len(ans) < OUT.itemsize:
        part = s.recv(OUT.itemsize - len(ans))
        assert part, "closed instead of answering the login"
        ans += part
    assert np.frombuffer(ans, OUT)["type"][0] == schema.R_HELLO
    s.close()
    summary = x.stop()
    assert summary["bad_logins"] == 4 and summary["closed_login_required"] == 1 and summary["logins"] == 2
    assert summary["engine_requests"] == 1  # the refused connections did nothing
    assert x.book()["books"][0]["bids"] == [[1, 100, 1, 7]]  # account 7's order untouched


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_exchange_account_add_stores_only_a_salted_scrypt_key_0600_and_its_credential_logs_in(exchanges, tmp_path):
    path = tmp_path / "accounts.json"
    creds = []
    for name in ("alice", "bob"):
        p = subprocess.run([sys.executable, "-m", "obpipe", "exchange-account", "add", name, "--file", str(path)],
                           input=b"same secret for both\n", capture_output=True, cwd=REPO, timeout=120)
        assert p.returncode == 0, p.stderr
        creds.append(json.loads(p.stdout))
        (tmp_path / f"{name}.cred").write_bytes(p.stdout)
    assert [c["account"] for c in creds] == [1, 2]
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "same secret" not in text
    doc = json.loads(text)["accounts"]
    assert doc[0]["salt"] != doc[1]["salt"] and doc[0]["key"] != doc[1]["key"]  # a salt per account
    assert bytes.fromhex(doc[0]["key"]) == accmod.derive_key(b"same secret for both", bytes.fromhex(doc[0]["salt"]))
    p = subprocess.run([sys.executable, "-m", "obpipe", "exchange-account", "add", "alice", "--file", str(path),
                        "--generate"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2 and "exists" in p.stderr

    x = exchanges.start(anonymous=False)  # (its accounts file is this one)
    p = subprocess.run([sys.executable, "-m", "obpipe", "exchange-client", "--port", str(x.port), "--orders", "50",
                        "--credential", str(tmp_path / "bob.cred"), "--json"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["responses"] == 50
    p = subprocess.run([sys.executable, "-m", "obpipe", "exchange-client", "--port", str(x.port), "--orders", "5",
                        "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    # anonymous: refused (the client may see the reset of the closed connection before the
    # reject it was sent, when its own orders are still unread: seen once in CI)
    assert p.returncode == 1 and ("login required" in p.stderr or "Connection reset by peer" in p.stderr)
    assert x.stop()["logins"] == 1


def _md_socket() -> socket.socket:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    u.settimeout(0.5)
    return u


def _md_messages(u: socket.socket) -> np.ndarray:
    out = []
    while True:
        try:
            d = u.recv(2048)
        except socket.timeout:
            break
        h = np.frombuffer(d[:schema.WIRE_HEADER_BYTES], schema.WIRE_HEADER_DTYPE)[0]
        out.append(np.frombuffer(d[schema.WIRE_HEADER_BYTES:], schema.WIRE_MSG_DTYPE)[:int(h["count"])])
    return np.concatenate(out) if out else np.zeros(0, schema.WIRE_MSG_DTYPE)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_one_client_cannot_fill_the_order_pool_and_its_orders_leave_when_it_disconnects(exchanges, tmp_path):
    u = _md_socket()
    journal = tmp_path / "j"
    extra = (f'capacity = 1000\nmax_open_orders = 100\nmd_port = {u.getsockname()[1]}\n')
    x = exchanges.start(extra=extra, journal=journal, accounts={7: {}, 8: {"max_open_orders": 5}})
    s, _ = _raw(x.port)  # anonymous: posts capacity far-from-market GTC orders
    s.sendall(_orders(1000, px=10).tobytes())
    s.sendall(_orders(10, px=11, tif=schema.TIF_IOC).tobytes())  # orders that cannot rest are not limited
    got = b""
    while len(got) < 32 * 1020:
        got += s.recv(1 << 16)
    r = np.frombuffer(got, OUT)
    acks = r[r["type"] == schema.R_ACK]
    rej = r[r["type"] == schema.R_REJECT]
    assert len(acks) == 110 and len(rej) == 900 and (rej["reason"] == schema.RS_OPEN_LIMIT).all()
    assert (r["type"][:100] == schema.R_ACK).all()  # the first 100, in order; then the rest refused
    sess = ExchangeSession(x, 8)  # an account's own limit from the accounts file
    sess.s.sendall(_orders(7, px=12).tobytes())
    assert sess.read(7)["reason"].tolist() == [0] * 5 + [schema.RS_OPEN_LIMIT] * 2
    s.close()  # anonymous: its 100 resting orders are cancelled on disconnect
    time.sleep(0.5)
    other = ExchangeSession(x, 7)
    other.s.sendall(_orders(91, px=20).tobytes())
    assert (other.read(91)["type"] == schema.R_ACK).all()
    for c in (sess, other):
        c.s.close()
    summary = x.stop()
    assert summary["disconnect_cancels"] == 100 and summary["open_limited"] == 902
    md = _md_messages(u)
    deletes = md[md["kind"] == schema.K_DELETE]
    assert sorted(deletes["order_id"].tolist()) == list(range(1, 101))  # as market data, like any cancel
    # journaled: a restart on the same journal rebuilds the book without them
    x2 = exchanges.start(extra=extra.replace(f"md_port = {u.getsockname()[1]}\n", ""),
                         journal=journal, tag="again")
    x2.stop()
    book = x2.book()["books"][0]
    assert not any(row[3] >= schema.OE_AUTO_ACCOUNT for row in book["bids"] + book["asks"])
    assert len(book["bids"]) == 5 + 91


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_requests_past_the_rate_limit_are_each_answered_rate_limit_and_do_nothing(exchanges, tmp_path):
    x = exchanges.start(extra='max_msgs_per_s = 500\n', journal=tmp_path / "j", accounts={7: {}})
    sess = ExchangeSession(x, 7)
    sess.s.sendall(_orders(2000, px=50).tobytes())
    r = sess.read(2000)  # one answer per request, in order
    ok = r["type"] == schema.R_ACK
    limited = (r["type"] == schema.R_REJECT) & (r["reason"] == schema.RS_RATE_LIMIT)
    assert (ok | limited).all()
    assert 500 <= ok.sum() < 1000 and r["order_id"][limited].max() == 0  # a limited request takes no id
    assert np.array_equal(r["order_id"][ok], np.arange(1, ok.sum() + 1))
    time.sleep(1.1)  # a second later: a full bucket again
    sess.s.sendall(_orders(10, px=50).tobytes())
    assert (sess.read(10)["type"] == schema.R_ACK).all()
    sess.s.close()
    summary = x.stop()
    assert summary["rate_limited"] == limited.sum()
    assert x.book()["books"][0]["bids"][0][3] == 7 and len(x.book()["books"][0]["bids"]) == ok.sum() + 10


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_cancel_on_disconnect_is_per_account_and_a_reconnect_gets_the_cancels(exchanges, tmp_path):
    x = exchanges.start(accounts={7: {"cancel_on_disconnect": True}, 8: {}})
    for acct in (7, 8):
        sess = ExchangeSession(x, acct)
        sess.s.sendall(_orders(3, px=40 + acct).tobytes())
        assert (sess.read(3)["type"] == schema.R_ACK).all()
        sess.s.close()
    time.sleep(0.5)
    again = ExchangeSession(x, 7)  # after the cancels: nothing of its old orders remains
    again.s.sendall(_orders(1, px=60).tobytes())
    assert again.read(1)[0]["type"] == schema.R_ACK
    again.s.close()
    summary = x.stop()
    assert summary["disconnect_cancels"] == 4  # 7's three, then 7's one at the stop; 8's stay
    bids = x.book()["books"][0]["bids"]
    assert [b[3] for b in bids] == [8, 8, 8]


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_an_idle_or_half_open_connection_is_closed_and_frees_its_account_heartbeats_keep_one_open(
        exchanges, tmp_path):
    x = exchanges.start(extra="idle_timeout_s = 1.0\nmax_clients_per_address = 3\n", accounts={7: {}, 8: {}})
    idle = ExchangeSession(x, 7)  # says nothing more (as a peer that vanished would)
    alive = ExchangeSession(x, 8)
    hb = np.zeros(1, schema.ORDER_IN_DTYPE)
    hb["type"] = schema.OE_HEARTBEAT
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        alive.s.sendall(hb.tobytes())
        r = alive.read(1)[0]
        assert r["type"] == schema.R_HEARTBEAT
        time.sleep(0.3)
    assert _until_closed(idle.s, 5) == b""  # closed by the exchange
    again = ExchangeSession(x, 7)  # the account is free again (no restart needed)
    extra = [socket.create_connection(("127.0.0.1", x.port), timeout=10) for _ in range(2)]
    assert _until_closed(extra[-1], 5) == b""  # the fourth from this address is refused at once
    alive.s.sendall(_orders(1).tobytes())
    assert alive.read(1)[0]["type"] == schema.R_ACK
    for c in (again.s, alive.s, *extra):
        c.close()
    summary = x.stop()
    assert summary["closed_idle"] >= 1 and summary["refused_per_address"] == 1 and summary["heartbeats"] >= 5
    assert "idle_timeout_s 1.0" in x.stderr()


@pytest.mark.timeout(60)
def test_keepalive_is_on_for_accepted_connections():
    from obpipe import config as cfgmod
    from obpipe.exchange.server import Exchange

    cfg = cfgmod.replace(cfgmod.Config(), exchange={"port": 0, "allow_anonymous": True, "capacity": 64},
                         book={"symbols": ["A"], "ladder_width_by_symbol": {}})
    ex = Exchange(cfg.exchange, len(cfg.book.symbols))
    ex.start()
    try:
        c = socket.create_connection(("127.0.0.1", ex.port), timeout=5)
        deadline = time.monotonic() + 5
        while not ex.conns and time.monotonic() < deadline:
            ex._accept()
            time.sleep(0.01)
        (conn,) = ex.conns.values()
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        c.close()
    finally:
        ex.close()
