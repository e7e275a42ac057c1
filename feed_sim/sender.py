"""Send market data over UDP in the wire format, with exact seeded fault injection.

``UdpSender`` encodes batches of ``MD_DTYPE`` messages into packets (kernel), decides
each packet's fault up front (``wire.plan``), paces to a message rate, and ends a
bounded feed with a heartbeat so a lost last packet is still a counted gap.  Python
runs once per datagram (``sendto``), never per message.
"""
from __future__ import annotations

import socket
import time

import numpy as np

from ring import schema

from .wire import ACTION_NAMES, SEND, Faults, PacketBuffer, datagrams, expected_counts, plan


class UdpSender:
    def __init__(self, addr: tuple[str, int], session: int = 1, per_packet: int = schema.WIRE_MAX_MSGS,
                 faults: Faults | None = None, rate: float = 0.0, max_batch: int = 45 * 1024):
        self.addr = addr
        self.session = session
        self.per_packet = per_packet
        self.faults = faults or Faults()
        self.rate = rate  # messages/s; 0: as fast as possible
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.buf = PacketBuffer(-(-max_batch // per_packet))
        self.max_batch = max_batch
        self.next_seq = 1
        self.packets_made = 0
        self.datagrams_sent = 0
        self.msgs = 0
        self.injected = {name: 0 for name in ACTION_NAMES.values()}
        self.send_errors = 0
        self.expected = {}  # what an in-order receiver must count (wire.expected_counts, summed)
        self.actions = []  # each batch's fault plan, for tests
        self._t0 = None

    def send(self, md: np.ndarray) -> None:
        """Send ``md`` (MD_DTYPE), in batches of ``max_batch`` messages."""
        for start in range(0, len(md), self.max_batch):
            self._send_batch(md[start:start + self.max_batch])

    def _send_batch(self, md: np.ndarray) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        n = self.buf.encode(np.ascontiguousarray(md), self.session, self.next_seq, self.per_packet)
        actions = plan(n, self.faults, first_packet_no=self.packets_made)
        for a, name in ACTION_NAMES.items():
            self.injected[name] += int((actions[:n] == a).sum())
        for k, v in expected_counts(self.buf, actions).items():
            self.expected[k] = self.expected.get(k, 0) + v
        self.actions.append(actions[:n].copy())
        sendto = self.sock.sendto
        addr = self.addr
        pace = self.rate > 0
        sent_msgs = self.msgs
        k = 0
        for d in datagrams(self.buf, actions):
            try:
                sendto(d, addr)
                self.datagrams_sent += 1
            except OSError:
                self.send_errors += 1
            k += 1
            if pace and k % 16 == 0:
                self._pace(sent_msgs + k * self.per_packet)
        self.packets_made += n
        self.next_seq += len(md)
        self.msgs += len(md)
        if pace:
            self._pace(self.msgs)

    def _pace(self, msgs_done: int) -> None:
        due = self._t0 + msgs_done / self.rate
        while True:
            now = time.perf_counter()
            if now >= due:
                return
            if due - now > 0.0005:
                time.sleep(due - now - 0.0003)

    def finish(self) -> None:
        """The closing heartbeat: announces the next sequence number."""
        self.sock.sendto(self.buf.heartbeat(self.session, self.next_seq), self.addr)
        self.datagrams_sent += 1

    def close(self) -> None:
        self.sock.close()

    def counters(self) -> dict[str, int]:
        return {"packets": self.packets_made, "datagrams": self.datagrams_sent, "messages": self.msgs,
                "send_errors": self.send_errors, **{f"injected_{k}": v for k, v in self.injected.items()}}


__all__ = ["UdpSender", "Faults", "SEND"]
