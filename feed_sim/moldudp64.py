"""MoldUDP64 (Nasdaq's framing for ITCH): the sender's packer and retransmission
window, the request server a feed polls, and the receiver that heals gaps.

Three pieces, each a thin owner of preallocated arrays around the kernels of
``_mold_kernels`` (the packet layouts, the receiver's state machine and its bounds are
described there and in docs/MOLDUDP64.md):

* ``MoldPacker`` - the feed's side: length-prefixed messages (an ITCH file's framing,
  length[2] + message) -> downstream packets (a datagram list ``buf``/``dg_off``/
  ``dg_len`` that ``_send_kernels.send_paced`` sends as is), numbered and kept in a
  window of the last ``window`` messages; heartbeats, end of session, answers.
* ``RequestServer`` - a UDP socket on the request port that the feed polls once per
  loop turn (non-blocking): reads at most ``max_requests`` requests and sends at most
  ``max_packets`` answer packets per turn, so a flood of requests costs the feed a
  bounded slice of each turn.
* ``MoldRx`` - the receiver's state machine, in memory (tests, benchmarks, and any
  compiled loop that brings its own sockets: ``state`` is the argument tuple of the
  kernels).  ``MoldReceiver`` adds the socket pair: the data socket (bound, the feed
  sends to it) and the request socket (connected to the feed's request port: requests
  leave from it, answers arrive on it and only from there).

Compiled callers in other packages import the kernels from here (``rx_turn``,
``rx_datagram``, ``drain``, ``due_requests``, ``pack``, ``serve``, ...), never from the
private module.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring.net import VLEN, MsgVec

from obpipe.feed_sim import _mold_kernels as MK
from obpipe.feed_sim._mold_kernels import (DEFAULT_MTU, EOS, HDR, MAX_COUNT, REQ_BYTES, STRIDE, answer, drain,
                                           due_requests, empty_packet, fault_datagrams, pack, rx_datagram, rx_list,
                                           rx_turn, serve, window_range)
from obpipe.feed_sim.wire import allow_list

RCVBUF_BYTES = 8 << 20

# The kernels' word indices (receiver S_*, C_*, G_*; sender X_*, XC_*), for compiled
# callers in other packages: e.g. rx resets S_OUT_BYTES, S_OUT_MSGS, S_NLOST after
# consuming OUT.
globals().update({k: v for k, v in vars(MK).items() if k.split("_")[0] in ("S", "C", "G", "X", "XC", "NS", "NC", "NG",
                                                                           "NX", "NXC") and isinstance(v, int)})


class MoldError(ValueError):
    """Raised by the constructors here for settings that cannot work (a window smaller
    than a packet, a hold size not a power of two, a session longer than 10 bytes)."""


def session_bytes(session: str | bytes | int) -> bytes:
    """The 10-byte session field: an int as 10 decimal digits, text left-justified and
    space-padded (Nasdaq's alphanumeric fields)."""
    if isinstance(session, int):
        if not 0 <= session < 10 ** 10:
            raise MoldError(f"session {session} does not fit 10 digits")
        return b"%010d" % session
    raw = session.encode("ascii") if isinstance(session, str) else bytes(session)
    if len(raw) > 10:
        raise MoldError(f"session {raw!r} is longer than 10 bytes")
    return raw.ljust(10, b" ")


def _session_words(raw: bytes) -> tuple[int, int]:
    return int.from_bytes(raw[:8], "little", signed=True), int.from_bytes(raw[8:10], "little")


def _words_session(s0: int, s1: int) -> bytes:
    return int(s0).to_bytes(8, "little", signed=True) + int(s1).to_bytes(2, "little")


def _pow2(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise MoldError(f"{what} must be a power of two, got {n}")
    return n


def request_packet(session: str | bytes | int, seq: int, count: int) -> bytes:
    """A request for messages [seq, seq+count) (tests and tools; the receiver's kernel
    writes its own)."""
    return session_bytes(session) + seq.to_bytes(8, "big") + count.to_bytes(2, "big")


# --------------------------------------------------------------------------- sender
class MoldPacker:
    """Downstream packets from length-prefixed messages, and the retransmission window.

    Args:
        session: the 10-byte session (``session_bytes``).
        window: messages kept for retransmission (a power of two).
        window_bytes: bytes kept (default ``window`` x 48: ITCH messages average ~30).
        mtu: the largest packet, bytes (UDP payload; at most 2,048).
        max_msgs: most messages per packet.
        max_packets: packets one ``pack`` call may make (its buffer).
        answer_packets: most packets answering one request.
        first_seq: the sequence number of the first message.
    """

    def __init__(self, session: str | bytes | int, *, window: int = 1 << 20, window_bytes: int | None = None,
                 mtu: int = DEFAULT_MTU, max_msgs: int = MAX_COUNT, max_packets: int = 1024,
                 answer_packets: int = 64, first_seq: int = 1):
        if not HDR + 3 <= mtu <= STRIDE:
            raise MoldError(f"mtu must be {HDR + 3}..{STRIDE}, got {mtu}")
        window_bytes = window * 48 if window_bytes is None else window_bytes
        if window_bytes < mtu:
            raise MoldError(f"window_bytes ({window_bytes}) must hold at least one packet ({mtu})")
        self.session = session_bytes(session)
        self.X = np.zeros(MK.NX, np.int64)
        self.X[MK.X_SESS0], self.X[MK.X_SESS1] = _session_words(self.session)
        self.X[MK.X_NEXT] = first_seq
        self.XC = np.zeros(MK.NXC, np.int64)
        self.XC[MK.XC_MTU] = mtu
        self.XC[MK.XC_MAX_MSGS] = max(1, min(max_msgs, MAX_COUNT))
        self.XC[MK.XC_ANSWER_PACKETS] = answer_packets
        self.win = np.zeros(_pow2(window, "window"), np.int64)
        self.arena = np.zeros(window_bytes, np.uint8)
        self.mtu = mtu
        self.max_packets = max_packets
        self.buf = np.zeros(max_packets * mtu, np.uint8)
        self.dg_off, self.dg_len, self.pk_seq, self.pk_cnt = (np.zeros(max_packets, np.int64) for _ in range(4))
        self.n = 0  # packets made by the last pack()

    @property
    def next_seq(self) -> int:
        """The sequence number the next message gets."""
        return int(self.X[MK.X_NEXT])

    def pack(self, stream: np.ndarray, start: int = 0, end: int | None = None) -> tuple[int, int]:
        """Pack the length-prefixed messages of ``stream[start:end]`` (uint8) into
        packets ``0 .. n-1`` of the datagram list (``buf``, ``dg_off``, ``dg_len``;
        ``pk_seq``, ``pk_cnt``).  Returns (n, position reached): short of ``end`` when
        the last block is incomplete or ``max_packets`` are full (call again from there
        after sending these)."""
        end = len(stream) if end is None else end
        n, pos = pack(stream, start, end, self.X, self.XC, self.win, self.arena, self.buf, self.dg_off, self.dg_len,
                      self.pk_seq, self.pk_cnt, self.max_packets)
        self.n = int(n)
        return self.n, int(pos)

    def packet(self, i: int) -> memoryview:
        """Packet ``i`` of the last ``pack``."""
        o = int(self.dg_off[i])
        return memoryview(self.buf[o:o + int(self.dg_len[i])])

    def packets(self) -> list[bytes]:
        """The last ``pack``'s packets as bytes (tests)."""
        return [bytes(self.packet(i)) for i in range(self.n)]

    def heartbeat(self) -> bytes:
        """A heartbeat announcing the next sequence number."""
        return self._empty(0)

    def end_of_session(self) -> bytes:
        """An end-of-session packet (count 0xFFFF) announcing the next sequence number."""
        return self._empty(EOS)

    def _empty(self, count: int) -> bytes:
        b = np.zeros(HDR, np.uint8)
        empty_packet(self.X, count, b, 0)
        return b.tobytes()

    def window_range(self) -> tuple[int, int]:
        """The sequences the window still holds: [first, end)."""
        lo, hi = window_range(self.X, self.win, self.arena)
        return int(lo), int(hi)

    def answer(self, seq: int, count: int, max_packets: int | None = None) -> list[bytes]:
        """The packets answering a request for [seq, seq+count): what the window still
        holds of it (nothing for a range wholly outside it)."""
        k = int(self.XC[MK.XC_ANSWER_PACKETS]) if max_packets is None else max_packets
        out = np.zeros(k * self.mtu, np.uint8)
        off, ln = np.zeros(k, np.int64), np.zeros(k, np.int64)
        n, _, _, _ = answer(self.X, self.XC, self.win, self.arena, seq, count, out, 0, off, ln, 0, k)
        return [out[off[i]:off[i] + ln[i]].tobytes() for i in range(n)]

    def apply_faults(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The datagram list of the last ``pack``'s packets under fault ``actions``
        (``feed_sim.wire.plan``; byte faults applied to ``buf``): (offsets, lengths)."""
        off, ln = np.zeros(2 * self.n + 1, np.int64), np.zeros(2 * self.n + 1, np.int64)
        k = int(fault_datagrams(actions, self.n, self.buf, self.dg_off, self.dg_len, off, ln))
        return off[:k], ln[:k]

    def counters(self) -> dict[str, int]:
        return {name: int(self.X[i]) for i, name in _SENDER_NAMES.items()}

    def warm(self) -> None:
        """Compile (or load) the sender's kernels."""
        MoldPacker(self.session, window=2, window_bytes=self.mtu, mtu=self.mtu, max_packets=2).pack(
            np.array([0, 1, 65], np.uint8))


_SENDER_NAMES = {
    MK.X_NEXT: "next_seq", MK.X_PACKETS: "packets", MK.X_MESSAGES: "messages", MK.X_BYTES: "bytes",
    MK.X_OVERSIZE: "oversize", MK.X_REQUESTS: "requests", MK.X_ANSWERED: "answered", MK.X_CLIPPED: "clipped",
    MK.X_REFUSED: "refused", MK.X_REQ_MALFORMED: "malformed", MK.X_REQ_SESSION: "wrong_session",
    MK.X_OVER_BUDGET: "over_budget", MK.X_ANSWER_PACKETS: "answer_packets", MK.X_ANSWER_MSGS: "answer_messages",
    MK.X_SEND_ERRORS: "send_errors",
}


class RequestServer:
    """Answers MoldUDP64 requests from a ``MoldPacker``'s window on a UDP port of
    127.0.0.1; ``poll()`` once per feed loop turn (never blocks).

    Args:
        packer: whose window answers.
        port: the request port (0: a free one, see ``port``).
        max_requests: requests read per ``poll``; the rest wait in the socket.
        max_packets: answer packets sent per ``poll``; a request that finds the budget
            spent is counted ``over_budget`` and not answered (the receiver asks again).
    """

    def __init__(self, packer: MoldPacker, host: str = "127.0.0.1", port: int = 0, max_requests: int = 16,
                 max_packets: int = 64):
        self.packer = packer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
            self.sock.setblocking(False)
            self.rmv = MsgVec(max_requests)
            self.raw = np.zeros((max_requests, STRIDE), np.uint8)
            self.rmv.point_at(self.raw, STRIDE)
            self.names = self.rmv.record_senders()
            self.smv = MsgVec(max_packets)
            self.out = np.zeros(max_packets * packer.mtu, np.uint8)
            self.dg_off, self.dg_len = np.zeros(max_packets, np.int64), np.zeros(max_packets, np.int64)
            self.max_packets = max_packets
        except BaseException:
            self.sock.close()
            raise

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def poll(self) -> int:
        """Answer the requests waiting (up to the per-turn bounds); returns requests read."""
        p = self.packer
        return int(serve(self.sock.fileno(), self.rmv.mvec, self.raw, self.names, p.X, p.XC, p.win, p.arena,
                         self.out, self.dg_off, self.dg_len, self.smv.mvec, self.smv.iov, self.max_packets))

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.packer.counters().items()
                if k in ("requests", "answered", "clipped", "refused", "malformed", "wrong_session", "over_budget",
                         "answer_packets", "answer_messages", "send_errors")}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------- receiver
@dataclass(frozen=True)
class Delivery:
    """What a receiver delivered since the last ``take``: ``data`` holds the messages in
    sequence order with their framing (length[2] + message, an ITCH file's layout),
    ``seq`` their sequence numbers, ``lost`` rows (lo, hi, k): sequences [lo, hi) were
    declared lost after the first k messages of ``data``."""

    data: np.ndarray
    seq: np.ndarray
    lost: np.ndarray


_RX_NAMES = {
    MK.S_NEXT: "next_seq", MK.S_PACKETS: "packets", MK.S_ANSWER_PKTS: "answer_packets",
    MK.S_HEARTBEATS: "heartbeats", MK.S_EOS: "end_of_session", MK.S_MESSAGES: "messages",
    MK.S_DELIVERED: "delivered", MK.S_GAPS_SEEN: "gaps_seen", MK.S_GAPS_SPLIT: "gaps_split",
    MK.S_GAPS_HEALED: "gaps_healed", MK.S_GAPS_LOST: "gaps_lost", MK.S_RECOVERED: "recovered",
    MK.S_LATE: "late", MK.S_MSGS_LOST: "messages_lost", MK.S_REQUESTS: "requests",
    MK.S_REQ_MSGS: "requested_messages", MK.S_DUP_PKTS: "duplicates", MK.S_DUP_MSGS: "duplicate_messages",
    MK.S_MAL_SHORT: "malformed_short", MK.S_MAL_COUNT: "malformed_count", MK.S_WRONG_SESSION: "wrong_session",
    MK.S_IMPLAUSIBLE: "implausible_seq", MK.S_HOLD_DROPS: "hold_drops", MK.S_HELD: "held",
    MK.S_MAX_HELD: "max_held", MK.S_NGAPS: "open_gaps", MK.S_RTT_N: "round_trips",
    MK.S_RTT_MAX_NS: "round_trip_max_ns", MK.S_HEALED_UNREQ: "healed_unrequested",
    MK.S_LOST_RETRY: "lost_retries", MK.S_LOST_HOLD: "lost_hold_full", MK.S_LOST_TABLE: "lost_table_full",
    MK.S_LOST_MERGED: "lost_merged", MK.S_FOREIGN_SOURCE: "foreign_source", MK.S_ENDED: "ended",
    MK.S_TRUNCATED: "truncated", MK.S_SESSIONS: "sessions",
}


def rx_counters(S: np.ndarray) -> dict[str, int]:
    """A receiver's state words as named counters (plus ``malformed``, their sum, and
    ``round_trip_mean_ns``)."""
    d = {name: int(S[i]) for i, name in _RX_NAMES.items()}
    d["malformed"] = d["malformed_short"] + d["malformed_count"]
    d["round_trip_mean_ns"] = int(S[MK.S_RTT_SUM_NS] // S[MK.S_RTT_N]) if S[MK.S_RTT_N] else 0
    return d


class MoldRx:
    """The receiver's gap-healing state machine over preallocated arrays (no sockets).

    Args:
        session: follow this session only (None: the first seen in a well-formed packet).
        start_seq: the first sequence expected (1: a late joiner asks for everything; 0:
            start at the first packet's sequence, e.g. a restarted receiver).
        next_session: after an end of session (and nothing missing), follow a new
            session whose first packet (sequence 1) arrives.
        hold: messages that may wait for a gap (a power of two): the hold index size.
        pool: packet buffers for the held messages (default ``hold // 32``).
        max_gaps: gap rows; more open gaps declare the oldest lost.
        timeout_ns: ask again after this long without an answer.
        delay_ns: first request this long after a gap is seen (0: at once).
        retries: requests after the first before a gap is declared lost.
        max_jump: a packet ending more than this many messages past the next expected one
            is implausible (a forged sequence number cannot flush the hold).
        out_bytes, out_msgs: room for delivered messages between two ``take``.
        max_lost: rows for lost ranges between two ``take`` (more merge into the last).
    """

    def __init__(self, session: str | bytes | int | None = None, *, start_seq: int = 1, hold: int = 1 << 17,
                 pool: int | None = None, max_gaps: int = 256, timeout_ns: int = 25_000_000, delay_ns: int = 0,
                 retries: int = 8, max_jump: int = 1 << 24, out_bytes: int = 1 << 22, out_msgs: int = 1 << 18,
                 max_lost: int = 1024, max_requests: int = 64, next_session: bool = True):
        _pow2(hold, "hold")
        pool = max(2, hold // 32) if pool is None else pool
        if pool < 1 or max_gaps < 2 or max_lost < 1 or start_seq < 0:
            raise MoldError("pool >= 1, max_gaps >= 2, max_lost >= 1 and start_seq >= 0 are needed")
        if out_bytes < STRIDE or out_msgs < STRIDE // 2:
            raise MoldError(f"out_bytes must be >= {STRIDE} and out_msgs >= {STRIDE // 2} (one datagram)")
        self.S = np.zeros(MK.NS, np.int64)
        self.S[MK.S_NEXT] = self.S[MK.S_FRONT] = start_seq
        if session is not None:
            self.S[MK.S_SESS0], self.S[MK.S_SESS1] = _session_words(session_bytes(session))
            self.S[MK.S_SESS_SET] = 1
        self.C = np.zeros(MK.NC, np.int64)
        self.C[MK.C_HMASK] = hold - 1
        self.C[MK.C_TIMEOUT_NS] = timeout_ns
        self.C[MK.C_DELAY_NS] = delay_ns
        self.C[MK.C_RETRIES] = retries
        self.C[MK.C_MAX_JUMP] = max_jump
        self.C[MK.C_REQ_MAX] = MAX_COUNT
        self.C[MK.C_NEXT_SESSION] = int(next_session)
        self.G = np.zeros((max_gaps, MK.NG), np.int64)
        self.HB = np.full((hold, 2), -1, np.int64)
        self.POOL = np.zeros((pool, STRIDE), np.uint8)
        self.REF = np.zeros(pool, np.int64)
        self.FREE = np.arange(pool, dtype=np.int64)
        self.S[MK.S_NFREE] = pool
        self.OUT = np.zeros(out_bytes, np.uint8)
        self.OSEQ = np.zeros(out_msgs, np.int64)
        self.LOST = np.zeros((max_lost, 3), np.int64)
        self.req = np.zeros((max_requests, REQ_BYTES), np.uint8)

    @property
    def state(self) -> tuple:
        """The kernels' state arguments, in order: S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST."""
        return self.S, self.C, self.G, self.HB, self.POOL, self.REF, self.FREE, self.OUT, self.OSEQ, self.LOST

    @property
    def next_seq(self) -> int:
        return int(self.S[MK.S_NEXT])

    @property
    def session(self) -> bytes | None:
        return _words_session(self.S[MK.S_SESS0], self.S[MK.S_SESS1]) if self.S[MK.S_SESS_SET] else None

    @property
    def complete(self) -> bool:
        """An end of session was seen and every message before it delivered or lost."""
        return bool(self.S[MK.S_ENDED]) and self.S[MK.S_NEXT] >= self.S[MK.S_END_SEQ]

    def ingest(self, datagram, now_ns: int = 0, from_answer: bool = False) -> int:
        """Handle one datagram (bytes-like); returns messages delivered."""
        b = np.frombuffer(datagram, np.uint8)
        return int(rx_datagram(b, len(b), int(from_answer), now_ns, *self.state))

    def ingest_list(self, base: np.ndarray, dg_off: np.ndarray, dg_len: np.ndarray, n: int | None = None,
                    now_ns: int = 0, from_answer: bool = False) -> int:
        """Handle datagrams ``base[dg_off[i]:][:dg_len[i]]``, i < n; returns messages delivered."""
        n = len(dg_off) if n is None else n
        return int(rx_list(base, dg_off, dg_len, n, int(from_answer), now_ns, *self.state))

    def requests(self, now_ns: int) -> list[bytes]:
        """The request packets due at ``now_ns`` (gaps out of retries are flagged lost)."""
        k = int(due_requests(now_ns, *self.state, self.req, len(self.req)))
        return [self.req[i].tobytes() for i in range(k)]

    def take(self) -> Delivery:
        """What was delivered (copied out) since the last take; OUT, OSEQ, LOST start over."""
        S = self.S
        d = Delivery(self.OUT[:S[MK.S_OUT_BYTES]].copy(), self.OSEQ[:S[MK.S_OUT_MSGS]].copy(),
                     self.LOST[:S[MK.S_NLOST]].copy())
        S[MK.S_OUT_BYTES] = S[MK.S_OUT_MSGS] = S[MK.S_NLOST] = 0
        drain(*self.state)
        return d

    def counters(self) -> dict[str, int]:
        return rx_counters(self.S)


def _big_rcvbuf(s: socket.socket) -> None:
    try:  # SO_RCVBUFFORCE when allowed: plain SO_RCVBUF is capped by net.core.rmem_max
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), RCVBUF_BYTES)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)


def open_data_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Non-blocking UDP socket bound to (host, port) with a large receive buffer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _big_rcvbuf(s)
        s.bind((host, port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def open_request_socket(request_addr: tuple[str, int]) -> socket.socket:
    """Non-blocking UDP socket connected to the feed's request port: requests leave from
    it, and (connected) it receives only that port's datagrams, the answers, which come
    in bursts (hence its large receive buffer too)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        _big_rcvbuf(s)
        s.connect(request_addr)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class MoldReceiver(MoldRx):
    """``MoldRx`` with its sockets: the data socket bound to ``(host, port)`` and the
    request socket connected to the feed's ``request_addr``.  ``poll()`` runs one
    compiled turn (answers, data, requests due); ``take()`` after each poll.

    Args:
        request_addr: the feed's request port, (host, port).
        allow: data sources admitted, (host, port) pairs (port 0: any; empty: any).
        vlen: datagrams per ``recvmmsg``.
        Others: as ``MoldRx``; OUT is sized so one poll can never fill it (everything
        held plus two receive batches).
    """

    def __init__(self, request_addr: tuple[str, int], host: str = "127.0.0.1", port: int = 0, *,
                 allow: tuple[tuple[str, int], ...] = (), vlen: int = VLEN, **kw):
        hold = kw.get("hold", 1 << 17)
        pool = kw.get("pool") or max(2, hold // 32)
        kw.setdefault("out_bytes", (pool + 2 * vlen) * STRIDE)
        kw.setdefault("out_msgs", hold + 2 * vlen * (STRIDE // 2))
        super().__init__(**kw)
        self.allow = allow_list(allow)
        self.sock = open_data_socket(host, port)
        try:
            self.req_sock = open_request_socket(request_addr)
        except BaseException:
            self.sock.close()
            raise
        self.dmv = MsgVec(vlen)
        self.draw = np.zeros((vlen, STRIDE), np.uint8)
        self.dmv.point_at(self.draw, STRIDE)
        self.dnames = self.dmv.record_senders()
        self.amv = MsgVec(vlen)
        self.araw = np.zeros((vlen, STRIDE), np.uint8)
        self.amv.point_at(self.araw, STRIDE)
        self.rmv = MsgVec(len(self.req))

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def turn_args(self) -> tuple:
        """``rx_turn``'s arguments before ``now``: for a compiled loop that calls it."""
        return (self.sock.fileno(), self.dmv.mvec, self.draw, self.dnames, self.allow, self.req_sock.fileno(),
                self.amv.mvec, self.araw, self.rmv.mvec, self.rmv.iov, self.req)

    def poll(self, now_ns: int | None = None) -> int:
        """One receive turn; returns datagrams handled."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        return int(rx_turn(*self.turn_args, now, *self.state))

    def close(self) -> None:
        self.sock.close()
        self.req_sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["MoldPacker", "RequestServer", "MoldRx", "MoldReceiver", "Delivery", "MoldError", "session_bytes",
           "request_packet", "rx_counters", "open_data_socket", "open_request_socket", "pack", "answer", "serve",
           "empty_packet",
           "window_range", "fault_datagrams", "rx_datagram", "rx_list", "rx_turn", "drain", "due_requests",
           "HDR", "REQ_BYTES", "EOS", "MAX_COUNT", "STRIDE", "DEFAULT_MTU"]
