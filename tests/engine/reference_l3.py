"""A slow, obviously correct per-order (L3) book: a dict of live orders in front of the
aggregated reference book (``reference_book.RefBook``, the ladder policy's oracle) - the
oracle for engine/_l3_kernels.py.  The rules are docs/L3BOOK.md's, written plainly."""
from __future__ import annotations

from obpipe.ring import schema as sc

from .reference_book import NO_PX, RefBook

_PX_LIMIT = 1 << 60


class RefL3:
    def __init__(self, widths, capacity: int, depth_ticks: int = 10):
        self.books = [RefBook(w) for w in widths]
        self.capacity = capacity
        self.orders: dict[int, list[int]] = {}  # ref -> [symbol, side, px_tick, qty, priority]
        self.prio = 0
        self.peak = 0
        self.last = [(NO_PX, 0, -1) for _ in widths]  # per symbol: last trade px, qty, aggressor side
        self.msgs = [0 for _ in widths]  # messages applied per symbol
        self.prev_bbo = [(NO_PX, 0, NO_PX, 0) for _ in widths]  # as last reported by an EV_BBO
        self.depth_ticks = depth_ticks
        self.events: list[tuple] = []  # every event the book writer must emit, in order
        self.crossed = 0
        self.stale = [False for _ in widths]
        self.c = dict(bad_msgs=0, l3_unknown_refs=0, l3_duplicate_refs=0, l3_table_full=0, l3_overfills=0,
                      cross_trades=0)

    # --- the rules ---------------------------------------------------------------------

    def _enter(self, ref, s, side, px, q):
        self.orders[ref] = [s, side, px, q, self.prio]
        self.prio += 1
        self.peak = max(self.peak, len(self.orders))

    def _ladder(self, s, kind, side, px, q):
        """One K_* on symbol s's reference ladders; if it moved the window, the ladders
        become the sum of the symbol's live orders inside the new window."""
        b = self.books[s]
        base, n = b.base, b.c["recentres"]
        b.apply(kind, side, px, q)
        if b.c["recentres"] != n and base is not None:
            b.lv = [{}, {}]
            for o in self.orders.values():
                if o[0] == s and b.base <= o[2] < b.base + b.w:
                    b.lv[o[1]][o[2]] = b.lv[o[1]].get(o[2], 0) + o[3]

    def _event(self, s, kind, side, tpx, tq):
        b = self.books[s]
        self.events.append((kind, side, s, tq, *b.bbo(), tpx, b.band_depth(0, self.depth_ticks),
                            b.band_depth(1, self.depth_ticks), self.msgs[s]))

    def _applied(self, s, trade=None):
        """After one applied message of symbol s: its trade print ``(px, qty, resting
        side)``, if any, then an EV_BBO if its top of book changed."""
        if trade is not None:
            px, q, side = trade
            self.last[s] = (px, q, 1 - side)
            self._event(s, sc.EV_TRADE, 1 - side, px, q)
        bbo = self.books[s].bbo()
        if bbo != self.prev_bbo[s]:
            self.prev_bbo[s] = bbo
            if bbo[0] != NO_PX and bbo[2] != NO_PX and bbo[0] >= bbo[2]:
                self.crossed += 1
            self._event(s, sc.EV_BBO, 0, NO_PX, 0)

    def apply(self, kind, side, symbol, qty, px, ref, new_ref):
        """One MD_L3 message (fields as Python ints, refs as u64)."""
        n_sym = len(self.books)
        bad_px = not -_PX_LIMIT < px < _PX_LIMIT
        if kind == sc.L3_ADD:
            if symbol >= n_sym or side > 1 or qty <= 0 or bad_px:
                self.c["bad_msgs"] += 1
            elif ref in self.orders:
                self.c["l3_duplicate_refs"] += 1
            elif len(self.orders) >= self.capacity:
                self.c["l3_table_full"] += 1
            else:
                self._enter(ref, symbol, side, px, qty)
                self.msgs[symbol] += 1
                self._ladder(symbol, sc.K_ADD, side, px, qty)
                self._applied(symbol)
        elif sc.L3_EXEC <= kind <= sc.L3_REPLACE:
            if (kind != sc.L3_DELETE and qty <= 0) or (kind in (sc.L3_EXEC_PX, sc.L3_REPLACE) and bad_px):
                self.c["bad_msgs"] += 1
                return
            if ref not in self.orders:
                self.c["l3_unknown_refs"] += 1
                return
            s, oside, opx, rem, _ = self.orders[ref]
            self.msgs[s] += 1
            if kind == sc.L3_REPLACE:  # the old order leaves, the new one enters: new priority
                del self.orders[ref]
                self._ladder(s, sc.K_DELETE, oside, opx, rem)
                if new_ref in self.orders:
                    self.c["l3_duplicate_refs"] += 1
                else:
                    self._enter(new_ref, s, oside, px, qty)
                    self._ladder(s, sc.K_ADD, oside, px, qty)
                self._applied(s)
                return
            q = rem if kind == sc.L3_DELETE else qty
            if q > rem:
                self.c["l3_overfills"] += 1
                q = rem
            if q == rem:
                del self.orders[ref]
            else:
                self.orders[ref][3] = rem - q
            if kind == sc.L3_EXEC or (kind == sc.L3_EXEC_PX and side != 0):  # printed at px for EXEC_PX
                self._ladder(s, sc.K_EXECUTE, oside, opx, q)
                self._applied(s, (opx if kind == sc.L3_EXEC else px, q, oside))
            else:  # cancel, delete, non-printable execution: shares leave, nothing printed
                self._ladder(s, sc.K_DELETE, oside, opx, q)
                self._applied(s)
        elif kind in (sc.L3_TRADE, sc.L3_CROSS):
            if symbol >= n_sym or bad_px or (kind == sc.L3_TRADE and (side > 1 or qty <= 0)):
                self.c["bad_msgs"] += 1
                return
            self.msgs[symbol] += 1
            if kind == sc.L3_TRADE:  # hidden order: printed, the book unchanged
                self.books[symbol].c["trades"] += 1
                self._applied(symbol, (px, qty, side))
            else:  # cross: a trade with no aggressor, no event
                if qty > 0:
                    self.c["cross_trades"] += 1
                    self.last[symbol] = (px, qty, -1)
                self._applied(symbol)
        elif kind == sc.L3_STALE:  # messages were lost: shown in snapshots until a clear
            if symbol == sc.SYMBOL_ALL:
                self.stale = [True] * n_sym
            elif symbol < n_sym:
                self.stale[symbol] = True
            else:
                self.c["bad_msgs"] += 1
        elif kind == sc.L3_CLEAR:
            if symbol >= n_sym:
                self.c["bad_msgs"] += 1
                return
            for r in [r for r, o in self.orders.items() if o[0] == symbol]:
                del self.orders[r]
            self.msgs[symbol] += 1
            self._ladder(symbol, sc.K_CLEAR, 0, 0, 0)
            self.stale[symbol] = False
            self._applied(symbol)
        else:
            self.c["bad_msgs"] += 1

    # --- queries -------------------------------------------------------------------------

    def order(self, ref):
        o = self.orders.get(ref)
        return None if o is None else tuple(o)

    def queue_position(self, ref):
        o = self.orders.get(ref)
        if o is None:
            return None
        ahead = [x for x in self.orders.values() if x[:3] == o[:3] and x[4] < o[4]]
        return sum(x[3] for x in ahead), len(ahead)

    def counters(self) -> dict[str, int]:
        """The book-row counters the kernel keeps, as this book counts them."""
        c = {k: v for k, v in self.c.items() if k != "cross_trades"}
        for key in ("out_of_ladder", "recentres", "evicted_levels", "qty_underflow", "clears"):
            c[key] = sum(b.c[key] for b in self.books)
        # RefBook counts an execute as a trade; a hidden trade is counted above
        c["trades"] = sum(b.c["trades"] for b in self.books) + self.c["cross_trades"]
        c["crossed"] = self.crossed
        c["l3_live_orders"] = len(self.orders)
        c["l3_peak_orders"] = self.peak
        return c
