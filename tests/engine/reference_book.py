"""A slow, obviously correct aggregated book (plain dicts) with the same ladder policy
as engine/_book_kernels.py - the oracle for randomized tests."""
from __future__ import annotations

from obpipe.ring import schema as sc

NO_PX = sc.NO_PX


class RefBook:
    def __init__(self, width: int):
        self.w = width
        self.base = None
        self.lv = [{}, {}]  # side -> {px: qty}
        self.c = dict(out_of_ladder=0, recentres=0, evicted_levels=0, qty_underflow=0, trades=0,
                      clears=0, heartbeats=0, crossed=0)
        self.last = (NO_PX, 0, -1)
        self.prev_bbo = (NO_PX, 0, NO_PX, 0)

    def best(self, side):
        d = self.lv[side]
        if not d:
            return NO_PX, 0
        p = max(d) if side == 0 else min(d)
        return p, d[p]

    def bbo(self):
        return self.best(0) + self.best(1)

    def top(self, side, n):
        d = self.lv[side]
        ps = sorted(d, reverse=(side == 0))[:n]
        return [(p, d[p]) for p in ps]

    def _inside(self, px):
        return self.base is not None and self.base <= px < self.base + self.w

    def _locate(self, px, grow):
        if self.base is None:
            if not grow:
                return False
            self.base = px - self.w // 2
            return True
        if self._inside(px):
            return True
        if not grow:
            return False
        (bb, _), (ba, _) = self.best(0), self.best(1)
        if bb != NO_PX and ba != NO_PX:
            c = (bb + ba) // 2
        elif bb != NO_PX:
            c = bb
        elif ba != NO_PX:
            c = ba
        else:
            c = px
        nb = c - self.w // 2
        if not nb <= px < nb + self.w:
            return False
        self.c["recentres"] += 1
        for d in self.lv:
            for p in [p for p in d if not nb <= p < nb + self.w]:
                del d[p]
                self.c["evicted_levels"] += 1
        self.base = nb
        return True

    def apply(self, kind, side, px, qty):
        """Returns True if the message was valid (not counted as bad)."""
        if kind < sc.K_ADD or kind > sc.K_HEARTBEAT:
            return False
        if kind < sc.K_CLEAR and (side > 1 or (qty <= 0 and kind != sc.K_SET_LEVEL)):
            return False
        d = self.lv[side] if side <= 1 else None
        if kind == sc.K_ADD:
            if self._locate(px, True):
                d[px] = d.get(px, 0) + qty
            else:
                self.c["out_of_ladder"] += 1
        elif kind in (sc.K_CANCEL, sc.K_DELETE, sc.K_EXECUTE):
            if self._locate(px, False):
                old = d.get(px, 0)
                if qty > old:
                    self.c["qty_underflow"] += 1
                    d.pop(px, None)
                elif old - qty == 0:
                    del d[px]
                else:
                    d[px] = old - qty
            else:
                self.c["out_of_ladder"] += 1
            if kind == sc.K_EXECUTE:
                self.c["trades"] += 1
                self.last = (px, qty, 1 - side)
        elif kind == sc.K_TRADE:
            self.c["trades"] += 1
            self.last = (px, qty, 1 - side)
        elif kind == sc.K_SET_LEVEL:
            if self._locate(px, qty > 0):
                if qty > 0:
                    d[px] = qty
                else:
                    d.pop(px, None)
            else:
                self.c["out_of_ladder"] += 1
        elif kind == sc.K_CLEAR:
            self.lv = [{}, {}]
            self.c["clears"] += 1
        else:
            self.c["heartbeats"] += 1
        bbo = self.bbo()
        if bbo != self.prev_bbo:
            self.prev_bbo = bbo
            if bbo[0] != NO_PX and bbo[2] != NO_PX and bbo[0] >= bbo[2]:
                self.c["crossed"] += 1
        return True

    def band_depth(self, side, d):
        p, _ = self.best(side)
        if p == NO_PX:
            return 0
        lo, hi = (p - d + 1, p) if side == 0 else (p, p + d - 1)
        return sum(q for px, q in self.lv[side].items() if lo <= px <= hi)
