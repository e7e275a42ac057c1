"""``obpipe exchange-client``: simulated traders over the order-entry protocol.

``Traders`` opens N TCP connections to an exchange and drives them from one event
loop: each trader sends random orders (limit GTC around a drifting mid, some IOC,
market and FOK orders, cancels and modifies of its own resting orders), keeps at most
``window`` requests in flight, optionally paced to a total ``rate``, and measures each
request's round trip: from just before its bytes are sent to when its response (ACK,
REJECT, MODIFIED, or CANCELLED by the user) is read.  Every request gets exactly one
response and they come back in order, so the i-th response answers the i-th request.

It checks what it can see: one response per request, fills per order never above the
order's quantity.  ``run()`` returns per-trader results for tests; ``main`` prints
RTT percentiles (us) and throughput, as JSON with ``--json``.

Each connection reads the exchange's hello and login challenge first
(``handshake``) and, given a credential (``obpipe exchange-account add``), logs in
with a proof of its key; without one it trades anonymously (the exchange must allow it).

This is a load generator in Python: its own per-message work is in every RTT it
reports (the exchange's share is measured by ``bench/matching.py``).
"""
from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import time
from collections import deque

import numpy as np

from obpipe.ring import schema

OUT = schema.ORDER_OUT_DTYPE
REQ = schema.ORDER_IN_DTYPE.itemsize


class Trader:
    __slots__ = ("i", "sock", "rng", "inbuf", "sent_t", "rtt", "sent", "responses", "acks", "rejects", "fills",
                 "fill_qty", "filled", "ordered", "live", "account", "hello", "next_due", "done", "pending",
                 "taken", "mid", "k", "u", "sym", "drift", "pick", "qty", "side", "off", "last_reject")

    def __init__(self, i: int, sock, seed: int, mid: int):
        self.i = i
        self.sock = sock
        self.rng = np.random.default_rng(seed)
        self.inbuf = bytearray()
        self.sent_t = deque()  # send time of each request without a response yet
        self.pending = deque()  # (kind, order qty) of each request without a response yet
        self.rtt: list[int] = []
        self.sent = self.responses = self.acks = self.rejects = self.fills = self.fill_qty = 0
        self.taken = 0  # lots filled as the aggressor (fill_qty - taken: as the resting side)
        self.filled: dict[int, int] = {}  # order id -> lots filled
        self.ordered: dict[int, int] = {}  # order id -> lots ordered (acked)
        self.live: list[int] = []  # ids believed resting
        self.account = 0
        self.last_reject = -1
        self.hello = None
        self.next_due = 0
        self.done = False
        self.mid = mid
        self.u = []
        self.k = 0

    def refill(self, n: int = 4096) -> None:
        """The next ``n`` requests' random draws, as Python lists (cheap to index)."""
        r = self.rng
        self.u = r.random(n).tolist()
        self.sym, self.pick = r.integers(0, 1 << 30, n).tolist(), r.integers(0, 1 << 30, n).tolist()
        self.drift, self.side = r.integers(-1, 2, n).tolist(), r.integers(0, 2, n).tolist()
        self.qty, self.off = r.integers(1, 100, n).tolist(), r.integers(0, 20, n).tolist()
        self.k = 0


class Traders:
    """``clients`` traders against ``host:port``; each sends ``orders`` requests (0:
    until ``duration_s``).  ``rate``: total requests/s (0: as fast as the window
    allows).  ``silent``: how many extra connections send orders but never read (they
    must not slow the others)."""

    def __init__(self, host: str, port: int, clients: int = 1, orders: int = 1000, window: int = 1,
                 rate: float = 0.0, seed: int = 1, symbols: int = 1, duration_s: float = 0.0, mid: int = 10_000,
                 silent: int = 0, mix: str = "mixed", timeout_s: float = 120.0,
                 credentials: list[tuple[int, bytes]] | None = None):
        self.host, self.port = host, port
        self.clients, self.orders, self.window = clients, orders, window
        self.rate, self.seed, self.symbols = rate, seed, symbols
        self.duration_s, self.mid, self.silent, self.mix = duration_s, mid, silent, mix
        self.timeout_s = timeout_s
        if credentials is not None and len(credentials) != clients:
            raise ValueError(f"{len(credentials)} credentials for {clients} clients")
        self.credentials = credentials
        self.traders: list[Trader] = []
        self.quiet: list[socket.socket] = []
        self.elapsed_s = 0.0

    # --- order generation -------------------------------------------------------------
    def _request(self, t: Trader, buf: np.ndarray) -> tuple[int, int]:
        """Fill ``buf`` with the trader's next request; returns (kind, order qty)."""
        if t.k == len(t.u):
            t.refill()
        k = t.k
        t.k += 1
        u = t.u[k]
        buf[0] = 0
        buf["symbol"] = t.sym[k] % self.symbols
        t.mid += t.drift[k] if u < 0.05 else 0
        if self.mix == "mixed" and t.live and u < 0.10:
            oid = t.live.pop(t.pick[k] % len(t.live))
            if u < 0.06:
                buf["type"], buf["order_id"] = schema.OE_CANCEL, oid
                return 2, 0
            buf["type"], buf["order_id"], buf["qty"] = schema.OE_MODIFY, oid, t.qty[k]
            buf["px_tick"] = t.mid + t.off[k] - 10
            t.live.append(oid)
            return 3, 0
        side = t.side[k]
        q = t.qty[k]
        buf["type"], buf["side"], buf["qty"] = schema.OE_NEW, side, q
        if self.mix == "mixed" and u > 0.90:
            buf["ord_type"] = schema.OT_MARKET
        else:
            off = t.off[k]
            buf["px_tick"] = t.mid - off if side == schema.BUY else t.mid + off
            if self.mix == "mixed" and u > 0.85:
                buf["px_tick"] = t.mid + (5 if side == schema.BUY else -5)
                buf["tif"] = schema.TIF_IOC if u < 0.88 else schema.TIF_FOK
        return 1, q

    # --- loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        sel = selectors.DefaultSelector()
        for i in range(self.clients):
            s = socket.create_connection((self.host, self.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(30)  # recv runs only when select says readable; sendall may wait for room
            t = Trader(i, s, self.seed * 1_000_003 + i, self.mid)
            t.hello = handshake(s, self.credentials[i] if self.credentials else None)
            t.account = t.hello["account"]
            self.traders.append(t)
            sel.register(s, selectors.EVENT_READ, t)
        for i in range(self.silent):  # connections that flood and never read
            s = socket.create_connection((self.host, self.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            self.quiet.append(s)
        buf = np.zeros(1, schema.ORDER_IN_DTYPE)
        flood = np.zeros(256, schema.ORDER_IN_DTYPE)
        flood["type"], flood["qty"], flood["px_tick"] = schema.OE_NEW, 1, self.mid - 500
        flood_bytes = flood.tobytes()
        per_trader_gap = (self.clients / self.rate * 1e9) if self.rate > 0 else 0
        t0 = time.monotonic_ns()
        for k, t in enumerate(self.traders):
            t.next_due = t0 + int(per_trader_gap * k / max(1, self.clients))
        end = t0 + int(self.duration_s * 1e9) if self.duration_s > 0 else 0
        deadline = t0 + int(self.timeout_s * 1e9)
        active = len(self.traders)
        while active:
            now = time.monotonic_ns()
            if now > deadline:
                raise TimeoutError(f"traders not done after {self.timeout_s} s: "
                                   f"{[(t.i, t.sent, t.responses) for t in self.traders if not t.done][:5]}")
            for t in self.traders:
                if t.done:
                    continue
                while (len(t.sent_t) < self.window and (self.orders == 0 or t.sent < self.orders)
                       and (end == 0 or now < end) and (per_trader_gap == 0 or now >= t.next_due)):
                    kind, q = self._request(t, buf)
                    t.pending.append((kind, q))
                    t.sent_t.append(time.perf_counter_ns())
                    t.sock.sendall(buf.tobytes())  # (a socket with a timeout: sendall sends it all)
                    t.sent += 1
                    if per_trader_gap:
                        t.next_due += int(per_trader_gap)
                    now = time.monotonic_ns()
                finished = (self.orders and t.sent >= self.orders) or (end and now >= end)
                if finished and not t.sent_t and t.hello is not None:
                    t.done = True
                    active -= 1
            for s in self.quiet:
                try:
                    s.send(flood_bytes)
                except (BlockingIOError, OSError):
                    pass
            wait = 0.0005 if per_trader_gap else 0.05
            for key, _ in sel.select(timeout=wait):
                self._on_read(key.data)
        # every request is answered; fills for resting orders may still be on their way
        # to other traders: read until the exchange has been quiet for a moment
        quiet_until = time.monotonic() + 0.2
        while time.monotonic() < quiet_until:
            for key, _ in sel.select(timeout=0.05):
                self._on_read(key.data)
                quiet_until = time.monotonic() + 0.2
        self.elapsed_s = (time.monotonic_ns() - t0) / 1e9
        for t in self.traders:
            t.sock.close()
        for s in self.quiet:
            s.close()
        sel.close()
        return self.result()

    def _on_read(self, t: Trader) -> None:
        try:
            data = t.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        now = time.perf_counter_ns()
        if not data:
            why = f" after a reject: {schema.REASON_NAMES.get(t.last_reject)}" if t.last_reject >= 0 else ""
            raise ConnectionError(f"trader {t.i}: the exchange closed the connection{why}")
        t.inbuf += data
        n = len(t.inbuf) // 32
        if not n:
            return
        reps = np.frombuffer(bytes(t.inbuf[:n * 32]), OUT)
        del t.inbuf[:n * 32]
        for r in reps.tolist():
            typ, side, reason, flags, sym, _, qty, leaves, px, oid = r
            if typ == schema.R_HELLO:
                t.hello = {"next_order_id": oid, "next_md_seq": px, "account": leaves, "version": qty}
                t.account = leaves
                continue
            if typ == schema.R_FILL:
                t.fills += 1
                t.fill_qty += qty
                if flags & schema.RF_AGGRESSOR:
                    t.taken += qty
                t.filled[oid] = t.filled.get(oid, 0) + qty
                if flags & schema.RF_DONE and oid in t.live:
                    t.live.remove(oid)
                continue
            response = typ in (schema.R_ACK, schema.R_REJECT, schema.R_MODIFIED) or (
                typ == schema.R_CANCELLED and reason == schema.RS_USER)
            if typ == schema.R_CANCELLED:
                if oid in t.live:
                    t.live.remove(oid)
            if not response:
                continue
            if not t.sent_t:
                raise AssertionError(f"trader {t.i}: a response with no request outstanding: {r}")
            t.rtt.append(now - t.sent_t.popleft())
            kind, q = t.pending.popleft()
            t.responses += 1
            if typ == schema.R_ACK:
                t.acks += 1
                t.ordered[oid] = q
                if leaves and px:  # a limit order that may rest
                    t.live.append(oid)
                    if len(t.live) > 200:
                        t.live.pop(0)
            elif typ == schema.R_REJECT:
                t.rejects += 1
                t.last_reject = reason
            elif typ == schema.R_MODIFIED:  # the order may now fill up to what it had filled + qty
                t.ordered[oid] = t.filled.get(oid, 0) + qty

    def check_fills(self) -> None:
        """No order filled beyond what it was given (AssertionError naming it)."""
        for t in self.traders:
            for oid, f in t.filled.items():
                if f > t.ordered.get(oid, f):
                    raise AssertionError(f"trader {t.i}: order {oid} filled {f} > ordered {t.ordered[oid]}")

    def result(self) -> dict:
        self.check_fills()
        rtt = np.array([x for t in self.traders for x in t.rtt], np.int64)
        pct = rtt_percentiles_us(rtt)
        sent = sum(t.sent for t in self.traders)
        return {"clients": self.clients, "requests": sent, "responses": sum(t.responses for t in self.traders),
                "acks": sum(t.acks for t in self.traders), "rejects": sum(t.rejects for t in self.traders),
                "fills": sum(t.fills for t in self.traders),
                "filled_aggressor_qty": sum(t.taken for t in self.traders),
                "filled_resting_qty": sum(t.fill_qty - t.taken for t in self.traders), "elapsed_s": round(self.elapsed_s, 3),
                "requests_per_s": round(sent / self.elapsed_s) if self.elapsed_s else 0, "rtt_us": pct}


def rtt_percentiles_us(rtt_ns: np.ndarray) -> dict:
    pct = {}
    if len(rtt_ns):
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9)):
            pct[name] = round(float(np.percentile(rtt_ns, q)) / 1e3, 2)
        pct["mean"] = round(float(rtt_ns.mean()) / 1e3, 2)
    return pct


def probe_requests(n: int, seed: int = 1, mid: int = 10_000) -> np.ndarray:
    """``n`` new orders for ``probe``: limit orders around ``mid`` (sd 4 ticks, so about
    half cross; one account, so a crossing order meets self-trade prevention), one in
    ten IOC, quantities 1-100."""
    r = np.random.default_rng(seed)
    q = np.zeros(n, schema.ORDER_IN_DTYPE)
    q["type"], q["ord_type"] = schema.OE_NEW, schema.OT_LIMIT
    q["side"] = r.integers(0, 2, n)
    q["tif"] = np.where(r.random(n) < 0.1, schema.TIF_IOC, schema.TIF_GTC)
    q["qty"] = r.integers(1, 101, n)
    q["px_tick"] = mid + np.rint(r.normal(0, 4, n)).astype(np.int64)
    return q


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = s.recv(n - len(data))
        if not part:
            raise ConnectionError("the exchange closed the connection during the handshake")
        data += part
    return data


def handshake(s: socket.socket, credential: tuple[int, bytes] | None = None) -> dict:
    """Read the exchange's hello and challenge on a new connection (blocking socket)
    and, with ``credential`` = (account, key), log in.  Returns the hello that holds
    (next_order_id, next_md_seq, account, version); raises ConnectionError on a refusal."""
    from obpipe.exchange.accounts import login_message

    first = np.frombuffer(_recv_exact(s, 2 * REQ), OUT)
    if first[0]["type"] != schema.R_HELLO or first[1]["type"] != schema.R_CHALLENGE:
        raise ConnectionError(f"expected a hello and a challenge, got report types {first['type'].tolist()}")
    h = first[0]
    if credential is not None:
        account, key = credential
        s.sendall(login_message(account, key, first[1].tobytes()[8:32]))
        h = np.frombuffer(_recv_exact(s, REQ), OUT)[0]
        if h["type"] != schema.R_HELLO:
            raise ConnectionError(f"login as account {account} refused: "
                                  f"{schema.REASON_NAMES.get(int(h['reason']), int(h['reason']))}")
    return {"next_order_id": int(h["order_id"]), "next_md_seq": int(h["px_tick"]), "account": int(h["leaves"]),
            "version": int(h["qty"])}


def probe(host: str, port: int, orders: int = 10_000, seed: int = 1, timeout_s: float = 10.0,
          credential: tuple[int, bytes] | None = None) -> dict:
    """Round trips measured by a compiled client (``_probe_kernels.rtt_probe``): one
    connection, one request in flight, no Python per request.  Raises ``OSError`` when
    the exchange closes, fails or stays silent for ``timeout_s``."""
    from obpipe.exchange import _probe_kernels as PK

    s = socket.create_connection((host, port), timeout=timeout_s)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)  # a blocking fd for the kernel; SO_RCVTIMEO/SO_SNDTIMEO bound each call
        tv = struct.pack("ll", int(timeout_s), int((timeout_s % 1) * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        handshake(s, credential)
        reqs = probe_requests(orders, seed).view(np.uint8).reshape(orders, REQ)
        inbuf = np.zeros(1 << 16, np.uint8)
        rtt = np.zeros(orders, np.int64)
        counts = np.zeros(4, np.int64)
        PK.rtt_probe(s.fileno(), reqs[:0], inbuf, rtt[:0], counts)  # load (or compile) the kernel first
        t = time.perf_counter()
        done = PK.rtt_probe(s.fileno(), reqs, inbuf, rtt, counts)
        elapsed = time.perf_counter() - t
    finally:
        s.close()
    if done < 0:
        raise ConnectionError(f"request {-done} of {orders} got no answer (exchange closed, failed or silent "
                              f"for {timeout_s} s)")
    return {"clients": 1, "requests": orders, "responses": int(counts[0] + counts[1]), "acks": int(counts[0]),
            "rejects": int(counts[1]), "other_reports": int(counts[2]), "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(orders / elapsed) if elapsed else 0, "rtt_us": rtt_percentiles_us(rtt),
            "client": "compiled"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="obpipe exchange-client", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--orders", type=int, default=10_000, help="requests per client (0: until --duration)")
    p.add_argument("--window", type=int, default=1, help="requests in flight per client (1: pure round trips)")
    p.add_argument("--rate", type=float, default=0.0, help="total requests/s (0: as fast as the window allows)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (with --orders 0)")
    p.add_argument("--symbols", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mix", choices=("mixed", "limit"), default="mixed")
    p.add_argument("--compiled", action="store_true",
                   help="round trips from a compiled client loop (1 client, window 1, new orders only): "
                        "the exchange's round trip without Python on the client side")
    p.add_argument("--credential", action="append", metavar="FILE",
                   help="log in with this credential (obpipe exchange-account add's output); once per client. "
                        "Without: anonymous (the exchange must allow it)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.clients < 1 or a.window < 1 or a.orders < 0 or (a.orders == 0 and a.duration <= 0):
        p.error("--clients and --window must be >= 1; --orders 0 needs --duration")
    if a.compiled and (a.clients != 1 or a.window != 1 or a.rate or a.orders == 0):
        p.error("--compiled measures 1 client, window 1, unpaced, --orders N")
    from obpipe.exchange.accounts import AccountsError, read_credential

    try:
        creds = [read_credential(f) for f in a.credential] if a.credential else None
    except AccountsError as e:
        p.error(str(e))
    if creds is not None and len(creds) != a.clients:
        p.error(f"{len(creds)} --credential for {a.clients} clients: give one per client")
    try:
        if a.compiled:
            res = probe(a.host, a.port, a.orders, a.seed, credential=creds[0] if creds else None)
        else:
            res = Traders(a.host, a.port, a.clients, a.orders, a.window, a.rate, a.seed, a.symbols, a.duration,
                          mix=a.mix, timeout_s=max(120.0, a.duration * 2 + 30), credentials=creds).run()
    except (OSError, ConnectionError, TimeoutError) as e:
        print(f"obpipe exchange-client: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res))
    else:
        r = res["rtt_us"]
        print(f"{res['clients']} clients, {res['requests']} requests in {res['elapsed_s']} s "
              f"({res['requests_per_s']}/s), {res['acks']} acks, {res['rejects']} rejects"
              + (f", {res['fills']} fills" if "fills" in res else " (compiled client)"))
        print("round trip (us): " + "  ".join(f"{k} {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
