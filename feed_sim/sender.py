"""Send market data over UDP in the wire format, paced, with exact seeded faults.

``UdpSender`` encodes batches of ``MD_DTYPE`` messages into packets (kernel), decides
each packet's fault up front (``wire.plan``), turns the packets into a datagram list
(``plan_datagrams``) and sends it with ``sendmmsg`` from a compiled loop that paces
every datagram to its due time (``send_paced``): no Python runs per datagram.  Pacing:
a fixed message rate (a packet is due when its first message is), the recorded pace
(``ts_exch_ns``) times a speed factor, or as fast as possible.  Optionally every
datagram sent is also written to a capture file (``feed_sim.capture``).  A bounded feed
ends with a heartbeat (``finish``) so a lost last packet is still a counted gap.
"""
from __future__ import annotations

import socket
import time

import numpy as np

from obpipe.ring import schema
from obpipe.ring.net import VLEN, MsgVec

from obpipe.feed_sim import _send_kernels as SK
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.capture import CaptureWriter
from obpipe.feed_sim.wire import ACTION_NAMES, SEND, Faults, PacketBuffer, expected_counts, plan


class UdpSender:
    """``rate`` messages/s (0: no rate pacing); ``speed``: pace by the messages'
    ``ts_exch_ns`` times this factor instead (replays); neither: as fast as possible."""

    def __init__(self, addr: tuple[str, int], session: int = 1, per_packet: int = schema.WIRE_MAX_MSGS,
                 faults: Faults | None = None, rate: float = 0.0, max_batch: int = 45 * 1024,
                 speed: float | None = None, capture: str | None = None, src_port: int = 0):
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.addr = addr
        self.session = session
        self.per_packet = per_packet
        self.faults = faults or Faults()
        self.rate = rate
        self.speed = speed
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if src_port:  # a source port reserved for us (SO_REUSEPORT: same user only): rx allows only it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind(("127.0.0.1" if addr[0] in ("127.0.0.1", "localhost") else "0.0.0.0", src_port))
        self.mv = MsgVec(VLEN, addr)
        npk = -(-max_batch // per_packet)
        self.buf = PacketBuffer(npk)
        self._flat = self.buf.bytes_.reshape(-1)
        self.max_batch = max_batch
        nd = 2 * npk + 1
        self.dg_off, self.dg_len, self.dg_due, self.sent_ts = (np.zeros(nd, np.int64) for _ in range(4))
        self.out = np.zeros(2, np.int64)  # datagrams sent, send errors
        self.capture = CaptureWriter(capture) if capture else None
        self._cap_buf = np.zeros(0, np.uint8)
        self.first_seq = self.next_seq = 1
        self.packets_made = 0
        self.msgs = 0
        self.injected = {name: 0 for name in ACTION_NAMES.values()}
        self.expected = {}  # what an in-order receiver must count (wire.expected_counts, summed)
        self.actions = []  # each batch's fault plan, for tests
        self.t0_ns = None
        self._ts0_exch = None

    @property
    def datagrams_sent(self) -> int:
        return int(self.out[0])

    @property
    def send_errors(self) -> int:
        return int(self.out[1])

    def warm(self) -> None:
        """Compile (or load) every kernel the send path uses, so pacing does not start
        with a compile-time backlog."""
        md = np.zeros(1, schema.MD_DTYPE)
        z = np.zeros(1, np.int64)
        self.buf.encode(md, self.session, 1, self.per_packet)
        SK.plan_datagrams(self.buf.words, self.buf.nbytes, np.zeros(1, np.int8), 0, self.dg_off, self.dg_len)
        SK.send_paced(self.sock.fileno(), self.mv.mvec, self.mv.iov, self._flat.ctypes.data, z, z, z, 0, 0, 0,
                      self.sent_ts, np.zeros(2, np.int64))
        SK.capture_pack(self._flat, z, z, z, 0, np.zeros(8, np.uint8))
        WK.encode_heartbeat(self.session, 1, np.zeros((1, schema.WIRE_PACKET_WORDS), np.int64))

    def start_clock(self, t0_ns: int | None = None) -> None:
        """Pacing starts now (or at ``t0_ns``); the first send starts it otherwise."""
        self.t0_ns = time.monotonic_ns() if t0_ns is None else t0_ns

    def send(self, md: np.ndarray) -> None:
        """Send ``md`` (MD_DTYPE), in batches of ``max_batch`` messages."""
        for start in range(0, len(md), self.max_batch):
            self._send_batch(md[start:start + self.max_batch])

    def _send_batch(self, md: np.ndarray) -> None:
        if self.t0_ns is None:
            self.start_clock()
        md = np.ascontiguousarray(md)
        n = self.buf.encode(md, self.session, self.next_seq, self.per_packet)
        actions = plan(n, self.faults, first_packet_no=self.packets_made)
        for a, name in ACTION_NAMES.items():
            self.injected[name] += int((actions[:n] == a).sum())
        for k, v in expected_counts(self.buf, actions).items():
            self.expected[k] = self.expected.get(k, 0) + v
        self.actions.append(actions[:n].copy())
        nd = int(SK.plan_datagrams(self.buf.words, self.buf.nbytes, actions, n, self.dg_off, self.dg_len))
        pkt = self.dg_off[:nd] // SK.PACKET_BYTES
        if self.speed is not None:
            ts = md["ts_exch_ns"][pkt * self.per_packet]
            if self._ts0_exch is None:
                self._ts0_exch = int(md["ts_exch_ns"][0]) if len(md) else 0
            self.dg_due[:nd] = ((ts - self._ts0_exch) / self.speed).astype(np.int64)
        elif self.rate > 0:
            first = self.next_seq - self.first_seq + pkt * self.per_packet
            self.dg_due[:nd] = (first * (1e9 / self.rate)).astype(np.int64)
        else:
            self.dg_due[:nd] = 0
        self._send_list(self._flat, self.dg_off, self.dg_len, self.dg_due, nd)
        self.packets_made += n
        self.next_seq += len(md)
        self.msgs += len(md)

    def _send_list(self, base: np.ndarray, off, ln, due, nd: int) -> None:
        if self.t0_ns is None:
            self.start_clock()
        if nd > len(self.sent_ts):
            self.sent_ts = np.zeros(nd, np.int64)
        SK.send_paced(self.sock.fileno(), self.mv.mvec, self.mv.iov, base.ctypes.data, off, ln, due, 0, nd,
                      self.t0_ns, self.sent_ts, self.out)
        if self.capture is not None:
            need = int(ln[:nd].sum()) + nd * (SK.REC_HDR + 8)
            if need > len(self._cap_buf):
                self._cap_buf = np.zeros(need, np.uint8)
            nb = int(SK.capture_pack(base, off, ln, self.sent_ts, nd, self._cap_buf))
            self.capture.write(self._cap_buf[:nb], nd)

    def send_datagrams(self, base: np.ndarray, off, ln, due, start: int, stop: int) -> None:
        """Send datagrams ``start .. stop-1`` of a ready datagram list over ``base``
        (uint8), e.g. a capture's (``due``: ns after the clock's start)."""
        sl = slice(start, stop)
        self._send_list(base, off[sl], ln[sl], due[sl], stop - start)

    def finish(self) -> None:
        """The closing heartbeat: announces the next sequence number."""
        hb = np.zeros((1, schema.WIRE_PACKET_WORDS), np.int64)
        nb = int(WK.encode_heartbeat(self.session, self.next_seq, hb))
        z = np.zeros(1, np.int64)
        self._send_list(hb.view(np.uint8).reshape(-1), z, np.array([nb], np.int64), z, 1)

    def close(self) -> None:
        self.sock.close()
        if self.capture is not None:
            self.capture.close()

    def counters(self) -> dict[str, int]:
        return {"packets": self.packets_made, "datagrams": self.datagrams_sent, "messages": self.msgs,
                "send_errors": self.send_errors, **{f"injected_{k}": v for k, v in self.injected.items()}}


__all__ = ["UdpSender", "Faults", "SEND"]
