"""A slow, obviously correct receiver (plain Python) with the same admission and
sequence rules as ``feed_sim.wire_kernels.rx_packet`` - the oracle for rx fuzzing.
It sees the datagrams of the admitted source in arrival order and says, per datagram,
which messages the book must get."""
from __future__ import annotations

import struct

from obpipe.feed_sim import wire_kernels as WK
from obpipe.ring import schema as sc

_M64 = 1 << 64


def _s64(x: int) -> int:
    """``x`` wrapped to a signed 64-bit integer (the kernel's int64 arithmetic)."""
    x %= _M64
    return x - _M64 if x >= 1 << 63 else x


class RefRx:
    def __init__(self, window: int = WK.DEFAULT_WINDOW, resync: int = WK.DEFAULT_RESYNC, session: int = 0,
                 accept_new_session: bool = False, max_missing: int = WK.MAX_MISSING):
        self.window, self.resync, self.accept_new = window, resync, accept_new_session
        self.session, self.next = session, 0
        self.miss: list[list[int]] = []
        self.max_missing = max_missing
        self.jump_next = self.jump_run = 0
        self.c = {name: 0 for name in WK.TRACKER_NAMES.values()}

    # --- missing ranges, exactly as the kernel keeps them (order matters for forgetting) ---
    def _remember(self, lo, hi):
        if len(self.miss) == self.max_missing:
            self.miss.pop(0)
            self.c["missing_ranges_forgotten"] += 1
        self.miss.append([lo, hi])

    def _fill(self, a, b) -> bool:
        for i, (lo, hi) in enumerate(self.miss):
            if lo <= a and b <= hi:
                if lo == a and b == hi:
                    self.miss[i] = self.miss[-1]
                    self.miss.pop()
                elif lo == a:
                    self.miss[i][0] = b
                elif b == hi:
                    self.miss[i][1] = a
                else:
                    self.miss[i][1] = a
                    self._remember(b, hi)
                return True
        return False

    def foreign_source(self) -> None:
        self.c["packets"] += 1
        self.c["foreign_source"] += 1

    def receive(self, d: bytes) -> list[tuple[int, int, int, int]]:
        """One admitted-source datagram; the (w0, px_tick, seq, ts_exch_ns) of each message delivered."""
        c = self.c
        c["packets"] += 1
        n = len(d)
        if n < sc.WIRE_HEADER_BYTES:
            c["malformed_length"] += 1
            return []
        h0, a, h2 = struct.unpack_from("<qqq", d)
        if h0 & 0xFFFF != sc.WIRE_MAGIC:
            c["malformed_magic"] += 1
            return []
        if (h0 >> 16) & 0xFF != sc.WIRE_VERSION:
            c["malformed_version"] += 1
            return []
        count = h2 & 0xFFFF
        if (h2 >> 16) & 0xFFFF != sc.WIRE_MSG_BYTES or count > sc.WIRE_MAX_MSGS \
                or n != sc.WIRE_HEADER_BYTES + count * sc.WIRE_MSG_BYTES:
            c["malformed_length"] += 1
            return []
        w = struct.unpack_from(f"<{4 * count}q", d, sc.WIRE_HEADER_BYTES)
        chk = 0
        for x in w:
            chk ^= x
        if ((chk >> 32) ^ chk) & 0xFFFFFFFF != (h2 >> 32) & 0xFFFFFFFF:
            c["malformed_check"] += 1
            return []
        session = (h0 >> 32) & 0xFFFFFFFF
        if session != self.session or self.next == 0:
            if session != 0 and (self.session == 0 or session == self.session):
                self._adopt(session)
            elif session != 0 and self.accept_new and a == 1 and count > 0:
                self._adopt(session)
            else:
                c["foreign_session"] += 1
                return []
        nxt = self.next
        if _s64(a - nxt) > self.window:
            if count > 0 and a == self.jump_next:
                self.jump_run += 1
            else:
                self.jump_run = 1 if count > 0 else 0
            self.jump_next = _s64(a + count)
            if self.resync == 0 or self.jump_run < self.resync:
                c["implausible_seq"] += 1
                return []
            self.jump_run = 0
        if count == 0:
            c["heartbeats"] += 1
        c["messages"] += count
        b = a + count
        first = 0
        if a > nxt:
            self._remember(nxt, a)
            c["gap_messages"] += a - nxt
            c["gap_events"] += 1
        elif a < nxt:
            if b <= nxt:
                if count == 0:
                    return []
                if self._fill(a, b):
                    c["out_of_order"] += 1
                    c["late_messages"] += count
                    c["gap_messages"] -= count
                else:
                    c["duplicates"] += 1
                    c["duplicate_messages"] += count
                return []
            first = nxt - a
            c["duplicate_messages"] += first
        if b > self.next:
            self.next = b
        if count - first <= 0:
            return []
        c["accepted"] += 1
        c["delivered"] += count - first
        return [(w[4 * j], w[4 * j + 2], a + j, w[4 * j + 3]) for j in range(first, count)]

    def _adopt(self, session):
        self.session = session
        self.c["sessions"] += 1
        self.next = 1
        self.miss = []
