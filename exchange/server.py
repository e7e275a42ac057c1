"""``obpipe exchange``: the order-entry server around the matching engine.

One process, one event loop (``selectors``: epoll on Linux), many clients:

* Binary TCP protocol, fixed 32-byte messages (docs/PROTOCOL.md "Order entry"):
  ``schema.ORDER_IN_DTYPE`` in, ``schema.ORDER_OUT_DTYPE`` out.  On connect a client
  gets an R_HELLO (next order id, next market-data sequence, its account) and an
  R_CHALLENGE (a fresh nonce); an OE_LOGIN as its first message, carrying an HMAC of the
  nonce under the account's key (``exchange.accounts``), makes it act for that account.
  Without a login it trades as a fresh anonymous account only if ``allow_anonymous``.
* Abuse limits, all outside the matching kernel and per read, not per message:
  requests per second per connection (a token bucket; the excess of a read is
  rejected ``rate limit``), resting orders per account (tracked from the reports; a GTC
  limit order that could pass the limit is rejected ``open order limit``), an idle
  timeout (heartbeats keep a quiet connection), TCP keepalive, connections per address,
  and cancel-on-disconnect (always for anonymous accounts; its cancels are journaled
  and go out as market data like any cancel).  A gated request or a heartbeat goes
  through the kernel as a request it rejects without effect (``_reserved`` set, a
  sentinel order id) so its answer keeps its place in the connection's stream; the
  exchange rewrites that answer and leaves it out of the journal.
* A message of no known type, or with reserved bytes set, is answered (reject) and
  closes the connection (a stream protocol cannot resynchronise): counted by reason.
* Each loop turn reads at most ``read_max`` bytes per ready client (a fast client cannot
  starve the others), gathers every whole message of every client into one batch,
  matches it in one kernel call, appends it to the journal (fsync per policy), sends
  the market data over UDP and only then queues the reports.  Nothing is acknowledged
  before it is journaled.  No Python runs per message: reports are routed to their
  accounts with a stable argsort, one byte slice per client per turn.
* Writes are non-blocking with a per-client output buffer; a client whose buffer passes
  ``out_buffer_max`` and that has taken nothing for ``SLOW_GRACE_S`` (or whose buffer
  passes 16x the bound) has stopped reading: it is disconnected and counted; the others
  never wait for it.  Its resting orders stay in the book.
* Malformed requests (reserved bytes set, unknown type, bad fields) get an R_REJECT
  from the kernel.  A trailing partial message at disconnect is counted.
* SIGINT/SIGTERM: stop reading, flush what can be flushed, end the feed with a
  heartbeat, sync and close the journal, print the counters.
* With ``metrics_port`` set, Prometheus metrics (``exchange.metrics``) are served from a
  daemon thread that reads the counters at scrape time; the loop adds only O(1) per turn
  (messages by type, the turn's time in a log-bucket histogram) and a ``bincount`` of
  the reject reasons in a batch that has rejects.
"""
from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring import latency, schema

from obpipe.exchange import _match_kernels as MK
from obpipe.exchange import accounts as accmod
from obpipe.exchange.config import ExchangeConfig, TradersConfig
from obpipe.exchange.journal import Journal, JournalError
from obpipe.exchange.matching import MatchingEngine

REQ = schema.ORDER_IN_DTYPE.itemsize
_RECOVER_CHUNK = 1 << 16
ACCEPT_PAUSE_S = 0.1
#: A client whose queued reports exceed ``out_buffer_max`` is disconnected once it has
#: taken nothing for this long (a burst bigger than the bound is fine while it reads),
#: and at once past HARD_FACTOR x ``out_buffer_max``.
SLOW_GRACE_S = 1.0
HARD_FACTOR = 16
#: TCP keepalive on accepted sockets: a peer that vanished without a FIN (power off,
#: cable) is found after KEEPIDLE + KEEPCNT x KEEPINTVL seconds even with the idle
#: timeout off.
KEEPIDLE_S, KEEPINTVL_S, KEEPCNT = 10, 5, 3
#: A request the exchange answers itself goes to the kernel with ``_reserved`` set and
#: ``order_id = SENTINEL + code`` (the kernel rejects it ``malformed``, echoing the id,
#: and changes nothing); the answer is then rewritten by code.
SENTINEL = (1 << 64) - 256
G_HEARTBEAT = 1
_GATE_REASON = np.zeros(256, np.uint8)
_GATE_REASON[schema.RS_RATE_LIMIT] = schema.RS_RATE_LIMIT
_GATE_REASON[schema.RS_OPEN_LIMIT] = schema.RS_OPEN_LIMIT
_KNOWN = bytes([schema.OE_NEW, schema.OE_CANCEL, schema.OE_MODIFY])
NO_LIMIT = float(1 << 62)
E_LIVE = MK.E_LIVE
E_REJECTED = MK.E_REJECTED


class _Conn:
    __slots__ = ("sock", "account", "inbuf", "out", "writing", "first", "peer", "progress", "nonce", "last_rx",
                 "rate", "tokens", "t_tok", "max_open", "cod", "closing")

    def __init__(self, sock, account, peer, x):
        self.sock = sock
        self.account = account
        self.inbuf = bytearray()
        self.out = bytearray()
        self.writing = False
        self.first = True
        self.peer = peer
        self.progress = self.last_rx = self.t_tok = time.monotonic()  # when it last took / sent bytes
        self.nonce = os.urandom(accmod.NONCE_BYTES)
        self.rate = x.max_msgs_per_s
        self.tokens = float(self.rate) if self.rate else NO_LIMIT  # a full second's burst
        self.max_open = x.max_open_orders or NO_LIMIT
        self.cod = True  # anonymous: always; a login sets its account's choice
        self.closing = ""  # why it is closed once this turn's answers are out

    def limits(self, x, acc) -> None:
        """A logged-in account's limits: its entry's, else the exchange's."""
        self.rate = x.max_msgs_per_s if acc.max_msgs_per_s is None else acc.max_msgs_per_s
        self.tokens = float(self.rate) if self.rate else NO_LIMIT
        self.max_open = (x.max_open_orders if acc.max_open_orders is None else acc.max_open_orders) or NO_LIMIT
        self.cod = x.cancel_on_disconnect if acc.cancel_on_disconnect is None else acc.cancel_on_disconnect


class Exchange:
    """The exchange of one ``[exchange]`` section over symbols 0 .. n-1.

    ``start()`` recovers the journal and binds; ``serve(stop)`` runs until ``stop[0]``
    is true; ``close()`` shuts down.  ``port`` is the bound TCP port."""

    def __init__(self, x: ExchangeConfig, n_symbols: int, log=None):
        """``x``: the ``[exchange]`` section; ``n_symbols``: symbols 0 .. n-1 (the
        wiring gives the number of ``[book] symbols``); ``log``: where start-up and
        connection messages go (default: stderr)."""
        self.x = x
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.n_symbols = n_symbols
        self.eng = MatchingEngine(self.n_symbols, self.x.band_ticks, self.x.capacity, max_batch=self.x.max_batch)
        self.journal: Journal | None = None
        self.recovery: dict = {}
        self.sender = None
        self.session = 0
        self.sel = selectors.DefaultSelector()
        self.now = time.monotonic()
        self._live = 0  # the engine's resting orders after the last batch
        self.lsock: socket.socket | None = None
        self.port = 0
        self.conns: dict[int, _Conn] = {}  # fd -> connection
        self.by_account: dict[int, _Conn] = {}
        self.per_address: dict[str, int] = {}
        if not self.x.accounts_file and not self.x.allow_anonymous:
            raise accmod.AccountsError("[exchange] has no accounts_file and allow_anonymous = false: nobody could "
                                       "trade (add accounts with obpipe exchange-account add, or allow anonymous "
                                       "trading: --anonymous)")
        self.accounts: dict[int, accmod.Account] = accmod.load(self.x.accounts_file) if self.x.accounts_file else {}
        self.open: dict[int, int] = {}  # account -> resting orders (accounts with some)
        self._gates: list[tuple[int, np.ndarray]] = []  # this turn's (first message, codes) of gated reads
        self._closing: list[_Conn] = []  # connections to close once this turn's answers are out
        self._cod: list[int] = []  # accounts whose resting orders to cancel (disconnected)
        self.next_account = schema.OE_AUTO_ACCOUNT
        self._accept_paused_until = 0.0
        self._accept_logged = 0.0
        self.c = dict(connections=0, disconnects=0, slow_disconnects=0, refused=0, refused_per_address=0,
                      accept_errors=0, logins=0, bad_logins=0, closed_login_required=0, closed_malformed=0,
                      closed_idle=0, rate_limited=0, open_limited=0, heartbeats=0, disconnect_cancels=0,
                      requests=0, batches=0, reports_sent=0, reports_undeliverable=0, partial_at_close=0,
                      md_messages=0, md_datagrams=0)
        # Read by the metrics collector's thread at scrape time (exchange.metrics); written by the loop only.
        self.rejects = np.zeros(256, np.int64)  # reject reports sent, by reason (RS_*)
        self._rejected = 0  # the engine's rejected counter after the last batch (a batch without rejects: no count)
        self.orders_by_type = [0] * 256  # order-entry messages read from clients, by type (OE_*)
        # Per client request, ns from its turn's reads to its reports queued: latency.bucket() counts (a list:
        # an element += from Python is ~10x cheaper than a numpy one's) and their sum.
        self.turn_hist = [0] * latency.N_BUCKETS
        self.turn_ns = 0
        self.metrics_url = ""  # where metrics are served (exchange.metrics.serve), "" = not served

    # --- start ---------------------------------------------------------------------
    def start(self) -> None:
        x = self.x
        if x.journal:
            self.journal, reqs, self.recovery = Journal.open(x.journal, self.n_symbols, x.band_ticks, x.capacity,
                                                             x.fsync, x.fsync_interval_ms)
            for i in range(0, len(reqs), _RECOVER_CHUNK):
                self.eng.process(reqs[i:i + _RECOVER_CHUNK])
            self._rejected = int(self.eng.E[E_REJECTED])  # (rejects by reason count this process's reports)
            auto = reqs["account"][reqs["account"] >= schema.OE_AUTO_ACCOUNT]
            if len(auto):
                self.next_account = int(auto.max()) + 1
            self.session = self.journal.session
        else:
            self.session = int.from_bytes(os.urandom(4), "little") or 1
        if x.md_port:
            from obpipe.feed_sim.sender import UdpSender

            self.sender = UdpSender((x.md_host, x.md_port), session=self.session, src_port=x.md_src_port)
            self.sender.first_seq = self.sender.next_seq = self.eng.md_messages + 1
            self.sender.warm()
        self.eng.process(np.zeros(0, schema.ORDER_IN_DTYPE))  # compile / load the kernel before clients come
        latency.bucket(0)  # (and the turn histogram's, called from the loop)
        self._live = self.eng.resting
        live = self.eng.O[:, MK.O_ID] > 0
        acct, n = np.unique(self.eng.O[live, MK.O_ACCT], return_counts=True)
        self.open = dict(zip(acct.tolist(), n.tolist()))
        # orders of connections that cannot come back (anonymous) or asked for it, left by a crash
        self._cod = [a for a in self.open if a >= schema.OE_AUTO_ACCOUNT or self._account_cod(a)]
        self.recovery["disconnect_cancels"] = self._cancel_disconnected()
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((x.host, x.port))
        ls.listen(1024)
        ls.setblocking(False)
        self.lsock = ls
        self.port = ls.getsockname()[1]
        self.sel.register(ls, selectors.EVENT_READ, None)

    def _account_cod(self, account: int) -> bool:
        acc = self.accounts.get(account)
        if acc is None or acc.cancel_on_disconnect is None:
            return self.x.cancel_on_disconnect
        return acc.cancel_on_disconnect

    def banner(self) -> str:
        x = self.x
        j = "no journal"
        if self.journal:
            r = self.recovery
            j = (f"journal {x.journal} (fsync {x.fsync}): {'created' if r['created'] else 'recovered'} "
                 f"{r['requests']} requests in {r['batches']} batches"
                 + (f", dropped {r['truncated_bytes']} bytes of an unacknowledged last write"
                    if r.get("truncated_bytes") else "")
                 + (f", cancelled {r['disconnect_cancels']} orders of disconnected accounts"
                    if r.get("disconnect_cancels") else ""))
        md = (f"market data -> udp {x.md_host}:{x.md_port} session {self.session} seq {self.eng.md_messages + 1}"
              if self.sender else "no market data")
        auth = (f"{len(self.accounts)} accounts from {x.accounts_file}" if x.accounts_file else "no accounts file")
        auth += "; anonymous trading " + ("allowed" if x.allow_anonymous else "off")
        metrics = f"; metrics at {self.metrics_url}" if self.metrics_url else ""
        return (f"exchange listening on {x.host}:{self.port}; {self.n_symbols} symbols; next order id "
                f"{self.eng.next_order_id}; {self.eng.resting} resting; {j}; {md}; {auth}{metrics}")

    def serve_metrics(self):
        """Serve this exchange's Prometheus metrics at ``[exchange] metrics_host:metrics_port``
        (``exchange.metrics``) from a daemon thread, if the port is set; returns what
        ``exchange.metrics.stop`` takes, or None.  Raises OSError when it cannot bind."""
        if not self.x.metrics_port:
            return None
        from obpipe.exchange import metrics

        served = metrics.serve(self, self.x.metrics_port, self.x.metrics_host)
        self.metrics_url = f"http://{self.x.metrics_host}:{served[0].server_port}/metrics"
        return served

    # --- loop ------------------------------------------------------------------------
    def serve(self, stop: list, tick=None, tick_s: float = 0.1) -> None:
        """Serve until ``stop[0]`` is true; ``tick()`` is called about every ``tick_s``."""
        sel = self.sel
        next_tick = time.monotonic() + tick_s  # (also paces the slow-client sweep)
        raw = bytearray()  # this turn's whole messages, every client's, in arrival order
        runs: list[tuple[int, int]] = []  # (messages, account) per client read this turn
        by_type, turn_hist, bucket = self.orders_by_type, self.turn_hist, latency.bucket
        while not stop[0]:
            ready = sel.select(timeout=0.05)
            t_read = time.monotonic_ns()
            for key, mask in ready:
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
                if mask & selectors.EVENT_READ and conn.sock.fileno() in self.conns:
                    self._read(conn, raw, runs)
            if self._cod:  # before this turn's requests: a new login of the account keeps its new orders
                self._cancel_disconnected()
            if runs:
                if len(raw) == REQ:  # (one request: the common turn when the exchange keeps up)
                    by_type[raw[0]] += 1
                else:
                    types = raw[0::REQ]
                    by_type[schema.OE_NEW] += types.count(schema.OE_NEW)
                    by_type[schema.OE_CANCEL] += types.count(schema.OE_CANCEL)
                    by_type[schema.OE_MODIFY] += types.count(schema.OE_MODIFY)
                reqs = np.frombuffer(bytes(raw), schema.ORDER_IN_DTYPE).copy()
                if len(runs) == 1:  # (one client this turn: no per-message account array)
                    reqs["account"] = runs[0][1]
                else:
                    counts, accounts = zip(*runs)
                    reqs["account"] = np.repeat(np.array(accounts, np.int64), counts)
                raw.clear()
                runs.clear()
                gated = None
                if self._gates:
                    gated = self._gate(reqs)
                self._batch(reqs, gated)
                n = len(reqs)
                dt = time.monotonic_ns() - t_read
                turn_hist[bucket(dt)] += n
                self.turn_ns += dt * n
            if self._closing:
                for conn in self._closing:
                    self._flush(conn)
                    self._close(conn, conn.closing)
                self._closing.clear()
            now = self.now = time.monotonic()  # (also the next turn's reads' clock: idle, rate; <= 50 ms old)
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self.sel.register(self.lsock, selectors.EVENT_READ, None)
            if self.journal is not None:
                self.journal.tick()  # fsync = "interval": sync what waits, even when no new batch comes
            if now >= next_tick:
                for conn in [c for c in self.conns.values() if c.out]:
                    self._check_slow(conn)
                idle = self.x.idle_timeout_s
                if idle:
                    for conn in [c for c in self.conns.values() if now - c.last_rx > idle]:
                        self.log(f"exchange: account {conn.account} ({conn.peer[0]}:{conn.peer[1]}) disconnected: "
                                 f"nothing received for {now - conn.last_rx:.1f} s (idle_timeout_s {idle})")
                        self._close(conn, "closed_idle")
                if tick is not None:
                    tick()
                next_tick = now + tick_s

    def _accept(self) -> None:
        while True:
            try:
                s, peer = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: stop listening for a moment (no busy loop, no log flood)
                self.c["accept_errors"] += 1
                if self.c["accept_errors"] == 1 or time.monotonic() - self._accept_logged > 5:
                    self.log(f"exchange: accept failed: {e} (pausing new connections for "
                             f"{ACCEPT_PAUSE_S} s; {self.c['accept_errors']} so far)")
                    self._accept_logged = time.monotonic()
                self.sel.unregister(self.lsock)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                return
            if len(self.conns) >= self.x.max_clients:
                self.c["refused"] += 1
                s.close()
                continue
            if self.per_address.get(peer[0], 0) >= self.x.max_clients_per_address:
                self.c["refused_per_address"] += 1
                s.close()
                continue
            self.per_address[peer[0]] = self.per_address.get(peer[0], 0) + 1
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE_S)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL_S)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
            conn = _Conn(s, self.next_account, peer, self.x)
            self.next_account += 1
            self.conns[s.fileno()] = conn
            self.by_account[conn.account] = conn
            self.sel.register(s, selectors.EVENT_READ, conn)
            self.c["connections"] += 1
            conn.out += self._hello(conn.account) + self._challenge(conn.nonce)
            self._flush(conn)

    def _hello(self, account: int) -> bytes:
        h = np.zeros(1, schema.ORDER_OUT_DTYPE)
        h["type"], h["qty"], h["leaves"] = schema.R_HELLO, schema.OE_VERSION, account
        h["order_id"], h["px_tick"] = self.eng.next_order_id, self.eng.md_messages + 1
        return h.tobytes()

    @staticmethod
    def _challenge(nonce: bytes) -> bytes:
        return bytes([schema.R_CHALLENGE]) + bytes(7) + nonce

    def _reply(self, conn: _Conn, reason: int, close: str) -> None:
        """Reject ``conn``'s login (``reason``) and close it, counted as ``close``."""
        r = np.zeros(1, schema.ORDER_OUT_DTYPE)
        r["type"], r["reason"] = schema.R_REJECT, reason
        self.rejects[reason] += 1
        conn.out += r.tobytes()
        self._flush(conn)
        self._close(conn, close)

    def _read(self, conn: _Conn, raw: bytearray, runs: list) -> None:
        try:
            data = conn.sock.recv(self.x.read_max)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last_rx = self.now
        buf = conn.inbuf
        buf += data
        n = len(buf) // REQ
        if n == 0:
            return
        skip = 0
        if conn.first:
            conn.first = False
            if buf[0] == schema.OE_LOGIN:
                if not self._login(conn, bytes(buf[:REQ])):
                    return
                skip = 1
            elif not self.x.allow_anonymous:
                self._reply(conn, schema.RS_LOGIN_REQUIRED, "closed_login_required")
                return
        m = n - skip
        if m:
            chunk = buf[skip * REQ:n * REQ]
            codes = None
            # anything but new/cancel/modify with zero reserved bytes: heartbeats, malformed
            if (chunk[0] not in _KNOWN or chunk[6] or chunk[7] if m == 1 else
                    chunk[0::REQ].translate(None, _KNOWN) or chunk[6::REQ].count(0) != m
                    or chunk[7::REQ].count(0) != m):
                codes, m = self._special(conn, chunk, m)
                del chunk[m * REQ:]
            if conn.tokens >= m:
                conn.tokens -= m
            else:
                codes = self._rate_limit(conn, m, codes)
            if self.open.get(conn.account, 0) + m > conn.max_open:
                codes = self._open_limit(conn, chunk, m, codes)
            if codes is not None:
                self._gates.append((len(raw) // REQ, codes))
            raw += chunk
            runs.append((m, conn.account))
        del buf[:n * REQ]

    def _special(self, conn: _Conn, chunk: bytearray, m: int) -> tuple[np.ndarray, int]:
        """A read holding heartbeats or unreadable messages (not the hot path): codes
        marking the heartbeats, and how many messages to process: up to and including
        the first unreadable one, after which the connection closes (its stream can
        not be trusted to be aligned)."""
        q = np.frombuffer(bytes(chunk), schema.ORDER_IN_DTYPE)
        t, res = q["type"], q["_reserved"]
        hb = (t == schema.OE_HEARTBEAT) & (res == 0)
        bad = ~hb & ((res != 0) | (t == 0) | (t > schema.OE_MODIFY))
        codes = np.where(hb, G_HEARTBEAT, 0).astype(np.uint8)
        if bad.any():
            k = int(np.argmax(bad))
            m = k + 1
            codes = codes[:m]
            if q["order_id"][k] >= SENTINEL:  # (its reject must not read as a gate's)
                chunk[k * REQ + 24:k * REQ + 32] = bytes(8)
            if not conn.closing:
                conn.closing = "closed_malformed"
                self._closing.append(conn)
                self.log(f"exchange: account {conn.account} ({conn.peer[0]}:{conn.peer[1]}) disconnected: "
                         f"unreadable message (type {int(t[k])}, reserved {int(res[k])})")
        self.c["heartbeats"] += int(hb[:m].sum())
        return codes, m

    def _rate_limit(self, conn: _Conn, m: int, codes):
        """Token bucket (rate per second, a second's burst), refilled when a read needs
        more than it holds (lazily: the same bound, burst + rate x any interval): the
        part of the read past it is refused."""
        now = self.now
        conn.tokens = min(float(conn.rate), conn.tokens + (now - conn.t_tok) * conn.rate)
        conn.t_tok = now
        ok = max(0, int(conn.tokens))
        if ok < m:
            codes = np.zeros(m, np.uint8) if codes is None else codes
            tail = codes[ok:]
            free = tail == 0
            tail[free] = schema.RS_RATE_LIMIT
            self.c["rate_limited"] += int(free.sum())
        conn.tokens -= min(ok, m)
        return codes

    def _open_limit(self, conn: _Conn, chunk: bytearray, m: int, codes):
        """Reject the GTC limit orders of a read that could take the account past its
        resting-order limit (each counted as if it rested)."""
        q = np.frombuffer(bytes(chunk), schema.ORDER_IN_DTYPE)
        rest = ((q["type"] == schema.OE_NEW) & (q["ord_type"] == schema.OT_LIMIT) & (q["tif"] == schema.TIF_GTC)
                & (q["_reserved"] == 0))
        if codes is not None:
            rest &= codes == 0
        over = rest & (np.cumsum(rest) > conn.max_open - self.open.get(conn.account, 0))
        if over.any():
            codes = np.zeros(m, np.uint8) if codes is None else codes
            codes[over] = schema.RS_OPEN_LIMIT
            self.c["open_limited"] += int(over.sum())
        return codes

    def _gate(self, reqs: np.ndarray) -> np.ndarray:
        """Mark this turn's gated requests (see SENTINEL); returns the mask of them."""
        gated = np.zeros(len(reqs), bool)
        for start, codes in self._gates:
            sel = np.flatnonzero(codes) + start
            gated[sel] = True
            reqs["_reserved"][sel] = 1
            reqs["order_id"][sel] = SENTINEL + codes[codes != 0].astype(np.uint64)
        self._gates.clear()
        return gated

    def _login(self, conn: _Conn, msg: bytes) -> bool:
        """A login (the first message): True if ``conn`` now acts for its account."""
        account = int.from_bytes(msg[12:16], "little")
        acc = self.accounts.get(account)
        if (acc is None or any(msg[1:12])
                or not hmac.compare_digest(msg[16:32], accmod.proof(acc.key, conn.nonce, account))):
            self.c["bad_logins"] += 1
            self.log(f"exchange: login as account {account} from {conn.peer[0]}:{conn.peer[1]} refused "
                     f"({'unknown account' if acc is None else 'wrong proof'})")
            self._reply(conn, schema.RS_AUTH, "")
            return False
        other = self.by_account.get(account)
        if other is not None and other is not conn:
            self.c["bad_logins"] += 1
            self._reply(conn, schema.RS_NOT_OWNER, "")
            return False
        self.c["logins"] += 1
        del self.by_account[conn.account]
        conn.account = account
        conn.limits(self.x, acc)
        self.by_account[account] = conn
        conn.out += self._hello(account)
        self._flush(conn)
        return True

    def _batch(self, reqs: np.ndarray, gated: np.ndarray | None = None, reason: int = 0) -> None:
        """Match, journal, send market data, answer.  ``gated``: requests the exchange
        answers itself (left out of the journal); ``reason``: set on every cancel
        report (cancel-on-disconnect)."""
        mb = self.x.max_batch
        E = self.eng.E
        for i in range(0, len(reqs), mb):
            chunk = reqs[i:i + mb]
            ts = time.time_ns()
            out = self.eng.process(chunk, ts)
            live = int(E[E_LIVE])
            live, self._live = live - self._live, live  # resting orders added (one account's if it gets every report)
            g = None if gated is None else gated[i:i + mb]
            if self.journal is not None:  # before any acknowledgement leaves
                if g is None:
                    self.journal.append(chunk, ts, reason)
                elif not g.all():  # (a gated request changes nothing: replay agrees without it)
                    self.journal.append(chunk[~g] if g.any() else chunk, ts)
            self.c["requests"] += len(chunk)
            self.c["batches"] += 1
            if self.sender is not None and len(out.md):
                self.sender.send(out.md)
                self.c["md_messages"] += len(out.md)
            if g is not None:
                _answer_gated(out.reports)
            rej = E.item(E_REJECTED)
            if rej != self._rejected:  # (a batch with rejects: count them by reason, in one numpy call)
                self._rejected = rej
                r = out.reports
                self.rejects += np.bincount(r["reason"][r["type"] == schema.R_REJECT], minlength=256)
            if reason:
                out.reports["reason"][out.reports["type"] == schema.R_CANCELLED] = reason
            self._route(out.reports, out.accounts, live, not reason)

    def _route(self, reports: np.ndarray, accounts: np.ndarray, live: int, count_lost: bool = True) -> None:
        """Queue each account's reports (in order) and track its resting orders:
        ``live`` is how many the batch added in all."""
        if len(reports) == 0:
            return
        op = self.open
        if _one_account(accounts):  # every order that came or went is this account's (each gets a report)
            groups = [(int(accounts[0]), reports.tobytes())]
            if live:
                a = groups[0][0]
                k = op.get(a, 0) + live
                if k > 0:
                    op[a] = k
                else:
                    op.pop(a, None)
        else:
            order = np.argsort(accounts, kind="stable")
            acc = accounts[order]
            raw = reports[order].tobytes()
            cut = np.flatnonzero(acc[1:] != acc[:-1]) + 1
            starts = np.concatenate(([0], cut))
            ends = np.concatenate((cut, [len(acc)]))
            groups = [(int(acc[a]), raw[a * 32:b * 32]) for a, b in zip(starts.tolist(), ends.tolist())]
            for account, blob in groups:
                t = blob[0::32]
                f = blob[3::32]  # (only fills set flags; RF_DONE: the order left the book)
                d = t.count(schema.R_ACK) - t.count(schema.R_CANCELLED) - f.count(1) - f.count(3)
                if d:
                    k = op.get(account, 0) + d
                    if k > 0:
                        op[account] = k
                    else:
                        op.pop(account, None)
        for account, blob in groups:
            conn = self.by_account.get(account)
            if conn is None:
                if count_lost:
                    self.c["reports_undeliverable"] += len(blob) // 32
                continue
            if not conn.out:
                conn.progress = time.monotonic()  # the grace runs from when it has something to take
            conn.out += blob
            self.c["reports_sent"] += len(blob) // 32
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() not in self.conns:
            return
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
                conn.progress = time.monotonic()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if self._check_slow(conn):
            return
        want = bool(conn.out)
        if want != conn.writing:
            conn.writing = want
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(conn.sock, ev, conn)

    def _check_slow(self, conn: _Conn) -> bool:
        """Disconnect ``conn`` if it stopped reading; True if it was."""
        n = len(conn.out)
        limit = self.x.out_buffer_max
        if n <= limit or (n <= HARD_FACTOR * limit and time.monotonic() - conn.progress < SLOW_GRACE_S):
            return False
        self.c["slow_disconnects"] += 1
        self.log(f"exchange: account {conn.account} ({conn.peer[0]}:{conn.peer[1]}) disconnected: "
                 f"{n} bytes unread (out_buffer_max {limit}, nothing taken for "
                 f"{time.monotonic() - conn.progress:.1f} s)")
        self._close(conn)
        return True

    def _close(self, conn: _Conn, why: str = "") -> None:
        """Close ``conn``; ``why``: the counter of the reason, if the exchange closed it."""
        fd = conn.sock.fileno()
        if fd not in self.conns:
            return
        del self.conns[fd]
        if self.by_account.get(conn.account) is conn:
            del self.by_account[conn.account]
            if conn.cod and self.open.get(conn.account):
                self._cod.append(conn.account)
        ip = conn.peer[0]
        k = self.per_address.get(ip, 0) - 1
        if k > 0:
            self.per_address[ip] = k
        else:
            self.per_address.pop(ip, None)
        if conn.inbuf:
            self.c["partial_at_close"] += 1
        if why:
            self.c[why] += 1
        self.c["disconnects"] += 1  # (before the peer can see the close: a scrape then counts it)
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def _cancel_disconnected(self) -> int:
        """Cancel every resting order of the accounts in ``_cod`` (journaled, market
        data, reason ``disconnect``; an account that logged in again meanwhile gets the
        cancels, before any answer to its new requests); how many."""
        accts = self._cod
        self._cod = []
        if not accts:
            return 0
        O = self.eng.O
        rows = np.flatnonzero((O[:, MK.O_ID] > 0) & np.isin(O[:, MK.O_ACCT], accts))
        if len(rows) == 0:
            return 0
        rows = rows[np.argsort(O[rows, MK.O_ID], kind="stable")]  # (oldest first: a deterministic order)
        reqs = np.zeros(len(rows), schema.ORDER_IN_DTYPE)
        reqs["type"] = schema.OE_CANCEL
        reqs["order_id"] = O[rows, MK.O_ID]
        reqs["account"] = O[rows, MK.O_ACCT]
        self._batch(reqs, reason=schema.RS_DISCONNECT)
        self.c["disconnect_cancels"] += len(rows)
        return len(rows)

    # --- stop -------------------------------------------------------------------------
    def close(self, flush_s: float = 1.0) -> None:
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and any(c.out for c in self.conns.values()):
            for c in list(self.conns.values()):
                self._flush(c)
            time.sleep(0.005)
        for c in list(self.conns.values()):
            self._close(c)
        self._cancel_disconnected()  # (the connections are gone: their cancel-on-disconnect holds)
        if self.lsock is not None:
            if not self._accept_paused_until:
                self.sel.unregister(self.lsock)
            self.lsock.close()
            self.lsock = None
        if self.sender is not None:
            self.sender.finish()
            self.c["md_datagrams"] = self.sender.datagrams_sent
            self.sender.close()
            self.sender = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.sel.close()

    def summary(self) -> dict:
        return {**self.c, **{f"engine_{k}": v for k, v in self.eng.counters().items()},
                "next_order_id": self.eng.next_order_id, "port": self.port, "session": self.session}


def _answer_gated(reports: np.ndarray) -> None:
    """Rewrite the kernel's rejects of gated requests (sentinel ids) into their answers."""
    oid = reports["order_id"]
    mine = np.flatnonzero((oid >= SENTINEL) & (reports["reason"] == schema.RS_MALFORMED)
                          & (reports["type"] == schema.R_REJECT))
    if len(mine) == 0:
        return
    code = (oid[mine] - SENTINEL).astype(np.uint8)
    hb = code == G_HEARTBEAT
    r = reports[mine]
    r["type"] = np.where(hb, schema.R_HEARTBEAT, schema.R_REJECT)
    r["reason"] = np.where(hb, 0, code)
    r["order_id"] = 0
    r["side"] = 0
    reports[mine] = r


def _one_account(accounts: np.ndarray) -> bool:
    """Do all of a turn's reports go to one account?  (A list beats numpy on a few.)"""
    if len(accounts) <= 64:
        a = accounts.tolist()
        return a.count(a[0]) == len(a)
    return bool((accounts == accounts[0]).all())


def banner_port(text: str) -> int | None:
    """The TCP port in an exchange's start-up line (``banner``), or None if not there
    yet: how a parent that started ``obpipe exchange --port 0`` learns its port."""
    if "listening on " not in text:
        return None
    return int(text.split("listening on ", 1)[1].split(";", 1)[0].rsplit(":", 1)[1])


@dataclass(frozen=True)
class ExchangeFeedSpec:
    """The feed process of ``obpipe run --source exchange``: the exchange sends its
    market data to the pipeline's rx while simulated traders drive it.  Built by the
    wiring (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    exchange: ExchangeConfig  # the [exchange] section (its md_* fields are set from the fields below)
    traders: TradersConfig  # the [traders] section, ``rate`` already the one to use (--rate, else [traders] rate)
    n_symbols: int  # symbols 0 .. n-1
    host: str = "127.0.0.1"  # rx's address
    port: int = 0  # rx's UDP port (known once rx runs)
    src_port: int = 0  # send market data from this port (reserved by the supervisor: rx admits only it); 0: any
    count: int | None = None  # stop after this many market-data messages
    duration_s: float = 0.0  # the traders stop after this many seconds (0: no limit)
    instance: str | None = None  # publish counters in this instance's feed stats row
    cores: tuple[int, ...] = ()
    store_args: tuple[str, ...] = ()  # the store writer's options (instance, symbols, Redis) when there is a journal
    parent_pid: int = 0

    def source_name(self) -> str:
        return "exchange + simulated traders"


def feed_entry(spec: ExchangeFeedSpec, stop_event) -> None:
    """Process target for the supervisor (spawn) when the exchange is the source."""
    from obpipe.ring.runtime import child_setup

    child_setup(spec.parent_pid, spec.cores, "exchange")
    feed_main(spec, stop_event)
    sys.exit(0)


def feed_main(spec: ExchangeFeedSpec, stop_event) -> None:
    """``obpipe run --source exchange``: the pipeline's feed process.  Runs the exchange
    (market data to the pipeline's receiver, counters in the feed's stats row) and the
    simulated traders (``obpipe exchange-client``) as its own child, until the
    supervisor's ``stop_event``, the duration or ``count`` market-data messages."""
    import subprocess

    from obpipe.feed_sim.feed import FeedRow

    # (its simulated traders are anonymous: its own children on loopback)
    x = dataclasses.replace(spec.exchange, md_host=spec.host, md_port=spec.port, md_src_port=spec.src_port,
                            allow_anonymous=True)
    n_sym = max(1, spec.n_symbols)
    ex = Exchange(x, n_sym)
    ex.start()
    served = ex.serve_metrics()
    print(ex.banner(), file=sys.stderr, flush=True)
    writer = None
    if x.journal and x.store != "off":  # (docs/STORE.md: orders, fills and positions from the journal)
        from obpipe.exchange import store

        writer = store.spawn_writer(x.journal, x.store or store.default_store(x.journal), os.getpid(),
                                    spec.store_args)
    t = spec.traders
    traders = subprocess.Popen(
        [sys.executable, "-m", "obpipe", "exchange-client", "--port", str(ex.port), "--clients", str(t.clients),
         "--window", str(t.window), "--rate", str(t.rate), "--orders", "0", "--seed", str(t.seed),
         "--symbols", str(n_sym), "--duration", str(spec.duration_s if spec.duration_s > 0 else 1e9)],
        stdout=subprocess.DEVNULL)
    row = FeedRow(spec.instance)
    stop = [False]

    def tick():
        row.publish(ex.sender, None, schema.STATE_RUNNING)
        if (stop_event.is_set() or traders.poll() is not None
                or (spec.count and ex.sender.msgs >= spec.count)):
            stop[0] = True

    try:
        ex.serve(stop, tick)
    finally:
        if traders.poll() is None:
            traders.send_signal(signal.SIGTERM)
            try:
                traders.wait(10)
            except subprocess.TimeoutExpired:
                traders.kill()
                traders.wait(10)
        sender = ex.sender
        ex.close()
        if served is not None:
            from obpipe.exchange import metrics

            metrics.stop(served)
        if writer is not None:
            store.stop_writer(writer)  # (it applies what the exchange journaled, then exits)
        row.publish(sender, sender.msgs, schema.STATE_STOPPED)
        row.close()
        print("exchange feed stopped: " + ", ".join(f"{k} {v}" for k, v in ex.summary().items()),
              file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """``obpipe exchange``'s options (the wiring, ``obpipe.cli``, reads the config)."""
    p = argparse.ArgumentParser(prog="obpipe exchange", description="the order-entry exchange: 32-byte binary "
                                "TCP messages in, reports out, market data over UDP, journal before acknowledgement")
    p.add_argument("--config", help="TOML config ([exchange], [book] symbols)")
    p.add_argument("--host", help="bind address (default [exchange] host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (0: any free port)")
    p.add_argument("--metrics-port", dest="metrics_port", type=int, metavar="P",
                   help="serve Prometheus metrics at http://[exchange] metrics_host:P/metrics (0: off)")
    p.add_argument("--md", metavar="HOST:PORT", help="send market data over UDP here")
    p.add_argument("--journal", help="journal file (created, or recovered on start)")
    p.add_argument("--fsync", choices=("batch", "interval", "none"))
    p.add_argument("--accounts", dest="accounts_file", metavar="FILE",
                   help="accounts file (obpipe exchange-account add)")
    p.add_argument("--anonymous", dest="allow_anonymous", action="store_const", const=True,
                   help="let connections that do not log in trade as fresh accounts")
    p.add_argument("--symbols", type=int, help="number of symbols (default: [book] symbols)")
    p.add_argument("--cores", help="pin to these cores, e.g. 1 or 0,1")
    p.add_argument("--json", action="store_true", help="final counters as JSON on stdout")
    p.add_argument("--dump-book", metavar="FILE", help="at exit, write every symbol's resting orders in priority "
                   "order as JSON (bids/asks rows: id, px_tick, open qty, account)")
    return p


def sections_with_options(x, n_symbols: int, a) -> tuple:
    """The ``[exchange]`` section and symbol count with ``obpipe exchange``'s options
    applied (the caller validates the section as a config's)."""
    over = {}
    for k in ("host", "port", "journal", "fsync", "accounts_file", "allow_anonymous", "metrics_port"):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    if a.md:
        host, _, port = a.md.rpartition(":")
        if not host or not port.isdigit():
            build_parser().error(f"--md must be HOST:PORT, got {a.md!r}")
        over["md_host"], over["md_port"] = host, int(port)
    if a.symbols is not None:
        if a.symbols < 1:
            build_parser().error("--symbols must be >= 1")
        n_symbols = a.symbols
    return dataclasses.replace(x, **over), n_symbols


def serve_cli(x, n_symbols: int, a) -> int:
    """``obpipe exchange`` after its config is read: serve until SIGINT/SIGTERM."""
    if a.cores:
        import psutil

        psutil.Process().cpu_affinity([int(c) for c in a.cores.split(",")])
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        ex = Exchange(x, n_symbols)
        ex.start()
    except (JournalError, accmod.AccountsError, OSError) as e:
        print(f"obpipe exchange: {e}", file=sys.stderr)
        return 2
    try:
        served = ex.serve_metrics()
    except OSError as e:
        ex.close()
        print(f"obpipe exchange: metrics on {x.metrics_host}:{x.metrics_port}: {e}", file=sys.stderr)
        return 2
    print(ex.banner(), file=sys.stderr, flush=True)
    try:
        ex.serve(stop)
    finally:
        ex.close()
        if served is not None:
            from obpipe.exchange import metrics

            metrics.stop(served)
    s = ex.summary()
    if a.dump_book:
        with open(a.dump_book, "w") as f:
            json.dump({"next_order_id": ex.eng.next_order_id, "md_messages": ex.eng.md_messages,
                       "books": [ex.eng.book(i) for i in range(ex.n_symbols)]}, f)
    if a.json:
        print(json.dumps(s), flush=True)
    else:
        print("exchange stopped: " + ", ".join(f"{k} {v}" for k, v in s.items()), file=sys.stderr, flush=True)
    return 0

