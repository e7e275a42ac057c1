"""``obpipe exchange``: the order-entry server around the matching engine.

One process, one event loop (``selectors``: epoll on Linux), many clients:

* Binary TCP protocol, fixed 32-byte messages (docs/PROTOCOL.md "Order entry"):
  ``schema.ORDER_IN_DTYPE`` in, ``schema.ORDER_OUT_DTYPE`` out.  On connect a client
  gets an R_HELLO (next order id, next market-data sequence, its account); an optional
  OE_LOGIN as its first message makes it act for a fixed account (so its orders stay
  its own across reconnects and restarts).
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
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import selectors
import signal
import socket
import sys
import time

import numpy as np

from obpipe import config as cfgmod
from ring import schema

from .journal import Journal, JournalError
from .matching import MatchingEngine

REQ = schema.ORDER_IN_DTYPE.itemsize
_RECOVER_CHUNK = 1 << 16
ACCEPT_PAUSE_S = 0.1
#: A client whose queued reports exceed ``out_buffer_max`` is disconnected once it has
#: taken nothing for this long (a burst bigger than the bound is fine while it reads),
#: and at once past HARD_FACTOR x ``out_buffer_max``.
SLOW_GRACE_S = 1.0
HARD_FACTOR = 16


class _Conn:
    __slots__ = ("sock", "account", "inbuf", "out", "writing", "first", "peer", "progress")

    def __init__(self, sock, account, peer):
        self.sock = sock
        self.account = account
        self.inbuf = bytearray()
        self.out = bytearray()
        self.writing = False
        self.first = True
        self.peer = peer
        self.progress = time.monotonic()  # when it last took bytes


class Exchange:
    """The exchange of config ``cfg`` (its ``[exchange]`` and ``[book] symbols``).

    ``start()`` recovers the journal and binds; ``serve(stop)`` runs until ``stop[0]``
    is true; ``close()`` shuts down.  ``port`` is the bound TCP port."""

    def __init__(self, cfg: cfgmod.Config, log=None):
        self.cfg = cfg
        self.x = cfg.exchange
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.n_symbols = len(cfg.book.symbols)
        self.eng = MatchingEngine(self.n_symbols, self.x.band_ticks, self.x.capacity, max_batch=self.x.max_batch)
        self.journal: Journal | None = None
        self.recovery: dict = {}
        self.sender = None
        self.session = 0
        self.sel = selectors.DefaultSelector()
        self.lsock: socket.socket | None = None
        self.port = 0
        self.conns: dict[int, _Conn] = {}  # fd -> connection
        self.by_account: dict[int, _Conn] = {}
        self.next_account = schema.OE_AUTO_ACCOUNT
        self._accept_paused_until = 0.0
        self._accept_logged = 0.0
        self.c = dict(connections=0, disconnects=0, slow_disconnects=0, refused=0, accept_errors=0, logins=0,
                      bad_logins=0,
                      requests=0, batches=0, reports_sent=0, reports_undeliverable=0, partial_at_close=0,
                      md_messages=0, md_datagrams=0)

    # --- start ---------------------------------------------------------------------
    def start(self) -> None:
        x = self.x
        if x.journal:
            self.journal, reqs, self.recovery = Journal.open(x.journal, self.n_symbols, x.band_ticks, x.capacity,
                                                             x.fsync, x.fsync_interval_ms)
            for i in range(0, len(reqs), _RECOVER_CHUNK):
                self.eng.process(reqs[i:i + _RECOVER_CHUNK])
            auto = reqs["account"][reqs["account"] >= schema.OE_AUTO_ACCOUNT]
            if len(auto):
                self.next_account = int(auto.max()) + 1
            self.session = self.journal.session
        else:
            self.session = int.from_bytes(os.urandom(4), "little") or 1
        if x.md_port:
            from feed_sim.sender import UdpSender

            self.sender = UdpSender((x.md_host, x.md_port), session=self.session, src_port=x.md_src_port)
            self.sender.first_seq = self.sender.next_seq = self.eng.md_messages + 1
            self.sender.warm()
        self.eng.process(np.zeros(0, schema.ORDER_IN_DTYPE))  # compile / load the kernel before clients come
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((x.host, x.port))
        ls.listen(1024)
        ls.setblocking(False)
        self.lsock = ls
        self.port = ls.getsockname()[1]
        self.sel.register(ls, selectors.EVENT_READ, None)

    def banner(self) -> str:
        x = self.x
        j = "no journal"
        if self.journal:
            r = self.recovery
            j = (f"journal {x.journal} (fsync {x.fsync}): {'created' if r['created'] else 'recovered'} "
                 f"{r['requests']} requests in {r['batches']} batches"
                 + (f", dropped {r['truncated_bytes']} bytes of an unacknowledged last write"
                    if r.get("truncated_bytes") else ""))
        md = (f"market data -> udp {x.md_host}:{x.md_port} session {self.session} seq {self.eng.md_messages + 1}"
              if self.sender else "no market data")
        return (f"exchange listening on {x.host}:{self.port}; {self.n_symbols} symbols; next order id "
                f"{self.eng.next_order_id}; {self.eng.resting} resting; {j}; {md}")

    # --- loop ------------------------------------------------------------------------
    def serve(self, stop: list, tick=None, tick_s: float = 0.1) -> None:
        """Serve until ``stop[0]`` is true; ``tick()`` is called about every ``tick_s``."""
        sel = self.sel
        next_tick = time.monotonic() + tick_s  # (also paces the slow-client sweep)
        raw = bytearray()  # this turn's whole messages, every client's, in arrival order
        runs: list[tuple[int, int]] = []  # (messages, account) per client read this turn
        while not stop[0]:
            for key, mask in sel.select(timeout=0.05):
                conn = key.data
                if conn is None:
                    self._accept()
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
                if mask & selectors.EVENT_READ and conn.sock.fileno() in self.conns:
                    self._read(conn, raw, runs)
            if runs:
                reqs = np.frombuffer(bytes(raw), schema.ORDER_IN_DTYPE).copy()
                if len(runs) == 1:  # (one client this turn: no per-message account array)
                    reqs["account"] = runs[0][1]
                else:
                    counts, accounts = zip(*runs)
                    reqs["account"] = np.repeat(np.array(accounts, np.int64), counts)
                raw.clear()
                runs.clear()
                self._batch(reqs)
            now = time.monotonic()
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self.sel.register(self.lsock, selectors.EVENT_READ, None)
            if self.journal is not None:
                self.journal.tick()  # fsync = "interval": sync what waits, even when no new batch comes
            if now >= next_tick:
                for conn in [c for c in self.conns.values() if c.out]:
                    self._check_slow(conn)
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
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(s, self.next_account, peer)
            self.next_account += 1
            self.conns[s.fileno()] = conn
            self.by_account[conn.account] = conn
            self.sel.register(s, selectors.EVENT_READ, conn)
            self.c["connections"] += 1
            conn.out += self._hello(conn.account)
            self._flush(conn)

    def _hello(self, account: int) -> bytes:
        h = np.zeros(1, schema.ORDER_OUT_DTYPE)
        h["type"], h["qty"], h["leaves"] = schema.R_HELLO, schema.OE_VERSION, account
        h["order_id"], h["px_tick"] = self.eng.next_order_id, self.eng.md_messages + 1
        return h.tobytes()

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
        buf = conn.inbuf
        buf += data
        n = len(buf) // REQ
        if n == 0:
            return
        skip = 0
        if conn.first:
            conn.first = False
            if buf[0] == schema.OE_LOGIN:
                self._login(conn, int.from_bytes(buf[12:16], "little"))
                skip = 1
        if n > skip:
            raw += buf[skip * REQ:n * REQ]
            runs.append((n - skip, conn.account))
        del buf[:n * REQ]

    def _login(self, conn: _Conn, account: int) -> None:
        other = self.by_account.get(account)
        if not 1 <= account < schema.OE_AUTO_ACCOUNT or (other is not None and other is not conn):
            self.c["bad_logins"] += 1
            r = np.zeros(1, schema.ORDER_OUT_DTYPE)
            r["type"], r["reason"] = schema.R_REJECT, schema.RS_NOT_OWNER if other is not None else schema.RS_BAD_TYPE
            conn.out += r.tobytes()
        else:
            self.c["logins"] += 1
            del self.by_account[conn.account]
            conn.account = account
            self.by_account[account] = conn
            conn.out += self._hello(account)
        self._flush(conn)

    def _batch(self, reqs: np.ndarray) -> None:
        mb = self.x.max_batch
        for i in range(0, len(reqs), mb):
            chunk = reqs[i:i + mb]
            ts = time.time_ns()
            out = self.eng.process(chunk, ts)
            if self.journal is not None:
                self.journal.append(chunk, ts)  # before any acknowledgement leaves
            self.c["requests"] += len(chunk)
            self.c["batches"] += 1
            if self.sender is not None and len(out.md):
                self.sender.send(out.md)
                self.c["md_messages"] += len(out.md)
            self._route(out.reports, out.accounts)

    def _route(self, reports: np.ndarray, accounts: np.ndarray) -> None:
        if len(reports) == 0:
            return
        if _one_account(accounts):
            groups = [(int(accounts[0]), reports.tobytes())]
        else:
            order = np.argsort(accounts, kind="stable")
            acc = accounts[order]
            raw = reports[order].tobytes()
            cut = np.flatnonzero(acc[1:] != acc[:-1]) + 1
            starts = np.concatenate(([0], cut))
            ends = np.concatenate((cut, [len(acc)]))
            groups = [(int(acc[a]), raw[a * 32:b * 32]) for a, b in zip(starts.tolist(), ends.tolist())]
        for account, blob in groups:
            conn = self.by_account.get(account)
            if conn is None:
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

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd not in self.conns:
            return
        del self.conns[fd]
        if self.by_account.get(conn.account) is conn:
            del self.by_account[conn.account]
        if conn.inbuf:
            self.c["partial_at_close"] += 1
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.c["disconnects"] += 1

    # --- stop -------------------------------------------------------------------------
    def close(self, flush_s: float = 1.0) -> None:
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and any(c.out for c in self.conns.values()):
            for c in list(self.conns.values()):
                self._flush(c)
            time.sleep(0.005)
        for c in list(self.conns.values()):
            self._close(c)
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


def feed_main(spec, stop_event) -> None:
    """``obpipe run --source exchange``: the pipeline's feed process.  Runs the exchange
    (market data to the pipeline's receiver, counters in the feed's stats row) and the
    simulated traders (``obpipe exchange-client``) as its own child, until the
    supervisor's ``stop_event``, the duration or ``count`` market-data messages."""
    import subprocess

    from feed_sim.feed import _Row

    x = dataclasses.replace(spec.exchange, md_host=spec.host, md_port=spec.port, md_src_port=spec.src_port)
    n_sym = max(1, spec.n_symbols)
    cfg = cfgmod.replace(cfgmod.Config(), exchange=dataclasses.asdict(x),
                         book={"symbols": [f"S{i}" for i in range(n_sym)]})
    ex = Exchange(cfg)
    ex.start()
    print(ex.banner(), file=sys.stderr, flush=True)
    t = spec.traders
    rate = spec.rate if spec.rate else t.rate
    traders = subprocess.Popen(
        [sys.executable, "-m", "obpipe", "exchange-client", "--port", str(ex.port), "--clients", str(t.clients),
         "--window", str(t.window), "--rate", str(rate), "--orders", "0", "--seed", str(t.seed),
         "--symbols", str(n_sym), "--duration", str(spec.duration_s if spec.duration_s > 0 else 1e9)],
        stdout=subprocess.DEVNULL)
    row = _Row(spec.instance)
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
        row.publish(sender, sender.msgs, schema.STATE_STOPPED)
        row.close()
        print("exchange feed stopped: " + ", ".join(f"{k} {v}" for k, v in ex.summary().items()),
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="obpipe exchange", description="the order-entry exchange: 32-byte binary "
                                "TCP messages in, reports out, market data over UDP, journal before acknowledgement")
    p.add_argument("--config", help="TOML config ([exchange], [book] symbols)")
    p.add_argument("--host", help="bind address (default [exchange] host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (0: any free port)")
    p.add_argument("--md", metavar="HOST:PORT", help="send market data over UDP here")
    p.add_argument("--journal", help="journal file (created, or recovered on start)")
    p.add_argument("--fsync", choices=("batch", "interval", "none"))
    p.add_argument("--symbols", type=int, help="number of symbols (default: [book] symbols)")
    p.add_argument("--cores", help="pin to these cores, e.g. 1 or 0,1")
    p.add_argument("--json", action="store_true", help="final counters as JSON on stdout")
    p.add_argument("--dump-book", metavar="FILE", help="at exit, write every symbol's resting orders in priority "
                   "order as JSON (bids/asks rows: id, px_tick, open qty, account)")
    a = p.parse_args(argv)
    try:
        cfg = cfgmod.load(a.config)
        over = {}
        for k in ("host", "port", "journal", "fsync"):
            if getattr(a, k) is not None:
                over[k] = getattr(a, k)
        if a.md:
            host, _, port = a.md.rpartition(":")
            if not host or not port.isdigit():
                p.error(f"--md must be HOST:PORT, got {a.md!r}")
            over["md_host"], over["md_port"] = host, int(port)
        sections = {"exchange": over}
        if a.symbols is not None:
            if a.symbols < 1:
                p.error("--symbols must be >= 1")
            sections["book"] = {"symbols": [f"S{i}" for i in range(a.symbols)], "ladder_width_by_symbol": {}}
        cfg = cfgmod.replace(cfg, **sections)
    except cfgmod.ConfigError as e:
        print(f"obpipe exchange: {e}", file=sys.stderr)
        return 2
    if a.cores:
        import psutil

        psutil.Process().cpu_affinity([int(c) for c in a.cores.split(",")])
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ex = Exchange(cfg)
    try:
        ex.start()
    except (JournalError, OSError) as e:
        print(f"obpipe exchange: {e}", file=sys.stderr)
        return 2
    print(ex.banner(), file=sys.stderr, flush=True)
    try:
        ex.serve(stop)
    finally:
        ex.close()
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


if __name__ == "__main__":
    raise SystemExit(main())
