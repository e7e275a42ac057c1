"""The exchange's Prometheus metrics (``exchange.metrics``), scraped from a real
``obpipe exchange``: every counter equals what was sent and the exchange's own final
``--json`` counters; the text passes ``promtool check metrics`` where promtool is
installed."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from obpipe import config as cfgmod
from obpipe.exchange import server
from obpipe.exchange.accounts import login_message
from obpipe.exchange.client import handshake
from obpipe.exchange.config import ExchangeConfig
from obpipe.publisher.broker import free_port
from obpipe.ring import schema

OUT = schema.ORDER_OUT_DTYPE
#: the one report that answers each request (fills and the like come besides)
ANSWERS = (schema.R_ACK, schema.R_REJECT, schema.R_MODIFIED, schema.R_CANCELLED, schema.R_HEARTBEAT)


def _req(kind: int, side: int = 0, qty: int = 0, px: int = 0, order_id: int = 0) -> np.ndarray:
    q = np.zeros(1, schema.ORDER_IN_DTYPE)
    q["type"], q["side"], q["qty"], q["px_tick"], q["order_id"] = kind, side, qty, px, order_id
    return q


class _Client:
    """One anonymous order-entry connection that reads until its requests are answered."""

    def __init__(self, port: int):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        handshake(self.s)
        self.buf = b""

    def ask(self, *reqs: np.ndarray) -> np.ndarray:
        """Send ``reqs`` in one write; their answers (one report each, in order)."""
        self.s.sendall(np.concatenate(reqs).tobytes())
        got = []
        while len(got) < len(reqs):
            while len(self.buf) < 32:
                part = self.s.recv(1 << 16)
                assert part, "the exchange closed the connection"
                self.buf += part
            r = np.frombuffer(self.buf[:32], OUT)[0]
            self.buf = self.buf[32:]
            if r["type"] in ANSWERS:
                got.append(r)
        return np.array(got, OUT)


def _scrape(port: int) -> tuple[str, dict]:
    """The metrics text and {(sample name, ((label, value), ...)): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def _v(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_scraped_metrics_count_what_was_sent_and_equal_the_exchanges_final_counters(exchanges):
    mport = free_port()
    x = exchanges.start(extra=f"metrics_port = {mport}\n", accounts={7: {}})
    assert f"metrics at http://127.0.0.1:{mport}/metrics" in x.stderr()
    a, b = _Client(x.port), _Client(x.port)

    r1 = a.ask(_req(schema.OE_NEW, schema.BUY, 10, 100), _req(schema.OE_NEW, schema.BUY, 10, 99),
               _req(schema.OE_NEW, schema.BUY, 5, 0), _req(schema.OE_NEW, schema.BUY, 0, 100),
               _req(schema.OE_HEARTBEAT))
    assert r1["type"].tolist() == [schema.R_ACK, schema.R_ACK, schema.R_REJECT, schema.R_REJECT, schema.R_HEARTBEAT]
    assert r1["reason"][2:4].tolist() == [schema.RS_BAD_PRICE, schema.RS_BAD_QTY]
    first, second = int(r1["order_id"][0]), int(r1["order_id"][1])
    assert b.ask(_req(schema.OE_NEW, schema.SELL, 4, 100))["type"].tolist() == [schema.R_ACK]  # trades 4 lots
    r2 = a.ask(_req(schema.OE_CANCEL, order_id=10**9), _req(schema.OE_CANCEL, order_id=second),
               _req(schema.OE_MODIFY, qty=3, order_id=first))
    assert r2["type"].tolist() == [schema.R_REJECT, schema.R_CANCELLED, schema.R_MODIFIED]
    assert r2["reason"][0] == schema.RS_UNKNOWN_ORDER
    c = socket.create_connection(("127.0.0.1", x.port), timeout=30)  # a login with the wrong key: refused, closed
    hello = c.recv(64, socket.MSG_WAITALL)
    c.sendall(login_message(7, b"not the key", hello[40:64]))
    refusal = np.frombuffer(c.recv(32, socket.MSG_WAITALL), OUT)[0]
    assert (refusal["type"], refusal["reason"]) == (schema.R_REJECT, schema.RS_AUTH)
    assert c.recv(1) == b""
    c.close()

    text, m = _scrape(mport)  # (a and b still connected)
    sent = {"new": 5, "cancel": 2, "modify": 1}
    requests = sum(sent.values()) + 1  # and the heartbeat
    assert {t: _v(m, "obpipe_exchange_orders_total", type=t) for t in sent} == sent
    assert _v(m, "obpipe_exchange_requests_total") == requests
    assert _v(m, "obpipe_exchange_heartbeats_total") == 1
    rejects = {k[1][0][1]: v for k, v in m.items() if k[0] == "obpipe_exchange_rejects_total" and v}
    assert rejects == {"bad_price": 1, "bad_qty": 1, "unknown_order": 1, "auth": 1}
    assert _v(m, "obpipe_exchange_rejects_total", reason="rate_limit") == 0  # (known reasons are there at 0)
    assert _v(m, "obpipe_exchange_clients") == 2
    assert _v(m, "obpipe_exchange_connections_total") == 3
    assert _v(m, "obpipe_exchange_disconnects_total") == 1
    assert _v(m, "obpipe_exchange_forced_disconnects_total", reason="bad_login") == 1
    assert _v(m, "obpipe_exchange_trades_total") == 1
    assert _v(m, "obpipe_exchange_traded_lots_total") == 4
    assert _v(m, "obpipe_exchange_resting_orders") == 1  # the first, modified to 3 lots
    assert _v(m, "obpipe_exchange_orders_accepted_total") == 3
    # the turn histogram: one observation per request; cumulative buckets; +Inf = count
    assert _v(m, "obpipe_exchange_turn_seconds_count") == requests
    assert 0 < _v(m, "obpipe_exchange_turn_seconds_sum") < requests * 1.0
    les = sorted((float(k[1][0][1]), v) for k, v in m.items() if k[0] == "obpipe_exchange_turn_seconds_bucket")
    counts = [v for _, v in les]
    assert counts == sorted(counts) and les[-1] == (float("inf"), requests)
    if shutil.which("promtool"):  # (Debian's prometheus package; make installs it)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check

    a.s.close()
    b.s.close()
    deadline = time.monotonic() + 30
    while True:  # the anonymous accounts' resting order is cancelled on disconnect
        _, m = _scrape(mport)
        if _v(m, "obpipe_exchange_clients") == 0 and _v(m, "obpipe_exchange_disconnect_cancels_total") == 1:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    final = x.stop()
    plain = {"requests": "requests", "batches": "batches", "connections": "connections",
             "disconnects": "disconnects", "logins": "logins", "heartbeats": "heartbeats",
             "disconnect_cancels": "disconnect_cancels", "reports_sent": "reports",
             "reports_undeliverable": "reports_undeliverable", "md_messages": "md_messages",
             "md_datagrams": "md_datagrams", "engine_accepted": "orders_accepted",
             "engine_cancelled": "orders_cancelled", "engine_modified": "orders_modified",
             "engine_trades": "trades", "engine_traded_qty": "traded_lots"}
    assert {k: _v(m, f"obpipe_exchange_{name}_total") for k, name in plain.items()} == {k: final[k] for k in plain}
    assert _v(m, "obpipe_exchange_resting_orders") == final["engine_resting"] == 0
    assert _v(m, "obpipe_exchange_forced_disconnects_total", reason="bad_login") == final["bad_logins"]
    # the kernel's rejects: the engine's reasons and the requests the exchange answers itself (heartbeats)
    engine_rejects = sum(v for k, v in m.items() if k[0] == "obpipe_exchange_rejects_total"
                         and k[1][0][1] not in ("auth", "not_owner", "login_required"))
    assert engine_rejects + final["heartbeats"] == final["engine_rejected"]
    # every client request is one observation (the disconnect cancels are the exchange's own)
    assert _v(m, "obpipe_exchange_turn_seconds_count") == final["requests"] - final["disconnect_cancels"]


@pytest.mark.timeout(30)
def test_the_metrics_port_is_an_exchange_setting_and_a_flag():
    with pytest.raises(cfgmod.ConfigError, match="exchange.metrics_port"):
        cfgmod.from_dict({"exchange": {"metrics_port": 70000}})
    assert cfgmod.from_dict({"exchange": {"metrics_port": 9464}}).exchange.metrics_port == 9464
    assert ExchangeConfig().metrics_port == 0  # off unless asked for
    a = server.build_parser().parse_args(["--metrics-port", "9465"])
    x, _ = server.sections_with_options(ExchangeConfig(), 2, a)
    assert (x.metrics_port, x.metrics_host) == (9465, "127.0.0.1")
