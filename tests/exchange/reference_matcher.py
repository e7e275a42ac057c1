"""A slow, obviously correct matching engine in plain Python - the oracle that
tests/engine/test_matching.py runs ``exchange.matching.MatchingEngine`` against.

Each side of each symbol is a dict ``price -> list of orders`` (FIFO: index 0 is the
oldest); the best price is ``max``/``min`` of the keys and an emptied level is deleted.
Nothing is incremental or clever, so the rules below can be read straight off the code.
The rules are the ones ``exchange/_match_kernels.py`` documents:

* a request whose reserved field is not 0 is rejected ``RS_MALFORMED``, whatever it is;
  an unknown request type ``RS_BAD_TYPE``;
* new order: ids 1, 2, 3, ... for every new order, accepted or not; checks in the order
  side, type/TIF, symbol, quantity, price (limit only: 1 .. 2^62 ticks; every such price
  is accepted, however far from the others: issue 13, item 10); a FOK
  that cannot fill completely now (own-account orders do not count) is rejected; else
  one ACK, then matching;
* matching walks the other side best price first, FIFO within a level; trades at the
  resting price; a resting order of the incoming order's (non-zero) account is
  cancelled (self-trade prevention) and matching goes on;
* the rest of a GTC limit order rests (or, pool full, is cancelled ``RS_BOOK_FULL``);
  the rest of a market or IOC order is cancelled ``RS_UNFILLED``;
* cancel: unknown id -> reject ``RS_UNKNOWN_ORDER``; other account -> ``RS_NOT_OWNER``;
* modify: same checks, then quantity (``RS_BAD_QTY``), then price (``RS_BAD_PRICE``;
  ``px_tick <= 0`` keeps the price, above 2^62 is bad).  Same price and quantity not higher keeps the
  order's place (a partial cancel on the feed); anything else takes it out (delete)
  and it comes back as a new arrival that may trade.

Outputs are plain tuples, the same shape ``as_tuples`` gives for an engine ``Output``:

* report: (type, side, reason, flags, symbol, qty, leaves, px_tick, order_id, account)
* trade: (buy id, sell id, px_tick, qty, aggressor side)
* md: (kind, side, symbol, qty, order_id, px_tick, ts_exch_ns)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema as sc

#: The report fields ``as_tuples`` reads, in tuple order (the account comes last).
REPORT_FIELDS = ("type", "side", "reason", "flags", "symbol", "qty", "leaves", "px_tick", "order_id")
MD_FIELDS = ("kind", "side", "symbol", "qty", "order_id", "px_tick", "ts_exch_ns")


def as_tuples(out) -> tuple[list, list, list]:
    """(reports, trades, md) of an engine ``Output`` as lists of plain-int tuples."""
    rep = out.reports
    cols = [rep[f].tolist() for f in REPORT_FIELDS] + [out.accounts.tolist()]
    reports = list(zip(*cols)) if len(rep) else []
    trades = [tuple(t) for t in out.trades.tolist()]
    mcols = [out.md[f].tolist() for f in MD_FIELDS]
    md = list(zip(*mcols)) if len(out.md) else []
    return reports, trades, md


@dataclass
class RefOrder:
    id: int
    px: int
    qty: int  # open quantity
    acct: int
    side: int
    sym: int


class RefMatcher:
    """Same constructor arguments and read-outs as ``MatchingEngine`` (the ones the
    tests use); ``process`` returns ``(reports, trades, md)`` tuple lists."""

    def __init__(self, n_symbols: int = 1, band_ticks: int = 1 << 16, capacity: int = 1 << 20, bases=None):
        # band_ticks and bases size and place the engine's price ladders: invisible in its
        # results (taken for the same constructor arguments, and ignored)
        self.n_symbols = n_symbols
        self.capacity = capacity
        self.sides = [[{}, {}] for _ in range(n_symbols)]  # [sym][side] -> {px: [RefOrder, ...]}
        self.by_id: dict[int, RefOrder] = {}
        self.next_order_id = 1
        self.md_messages = 0

    # --- read-outs ------------------------------------------------------------------
    @property
    def resting(self) -> int:
        return len(self.by_id)

    def levels(self, symbol: int, side: int) -> list[tuple[int, int, int]]:
        d = self.sides[symbol][side]
        return [(px, sum(o.qty for o in d[px]), len(d[px])) for px in sorted(d, reverse=(side == sc.BUY))]

    def best(self, symbol: int, side: int):
        """(px_tick, total qty, order count) of the best level, or None when the side is empty."""
        d = self.sides[symbol][side]
        if not d:
            return None
        px = max(d) if side == sc.BUY else min(d)
        return px, sum(o.qty for o in d[px]), len(d[px])

    def book(self, symbol: int = 0) -> dict:
        out = {}
        for name, side in (("bids", sc.BUY), ("asks", sc.SELL)):
            d = self.sides[symbol][side]
            out[name] = [[o.id, o.px, o.qty, o.acct] for px in sorted(d, reverse=(side == sc.BUY)) for o in d[px]]
        return out

    # --- processing -----------------------------------------------------------------
    def process(self, cmds: np.ndarray, ts_ns: int = 0):
        self._rep, self._trd, self._md, self._ts = [], [], [], ts_ns
        for c in cmds:
            t = int(c["type"])
            if int(c["_reserved"]) != 0:  # checked before anything else: no id is taken
                self._report(sc.R_REJECT, int(c["side"]), sc.RS_MALFORMED, 0, int(c["symbol"]), 0, 0, 0,
                             int(c["order_id"]), int(c["account"]))
            elif t == sc.OE_NEW:
                self._new(c)
            elif t == sc.OE_CANCEL:
                self._cancel(c)
            elif t == sc.OE_MODIFY:
                self._modify(c)
            else:
                self._report(sc.R_REJECT, int(c["side"]), sc.RS_BAD_TYPE, 0, int(c["symbol"]), 0, 0, 0,
                             int(c["order_id"]), int(c["account"]))
        return self._rep, self._trd, self._md

    def _report(self, typ, side, reason, flags, sym, qty, leaves, px, oid, acct):
        self._rep.append((typ, side, reason, flags, sym, qty, leaves, px, oid, acct))

    def _reject(self, side, reason, sym, oid, acct):
        self._report(sc.R_REJECT, side, reason, 0, sym, 0, 0, 0, oid, acct)

    def _emit(self, kind, side, sym, qty, oid, px):
        self._md.append((kind, side, sym, qty, oid, px, self._ts))
        self.md_messages += 1

    @staticmethod
    def _sane(px):
        return 0 < px <= 1 << 62

    @staticmethod
    def _crosses(side, limit, px, resting_px):
        if not limit:
            return True
        return resting_px <= px if side == sc.BUY else resting_px >= px

    def _opposite_in_priority(self, sym, side):
        """Resting orders of the side an order of ``side`` trades with, best first."""
        d = self.sides[sym][1 - side]
        for px in sorted(d, reverse=(side == sc.SELL)):
            yield from list(d[px])

    def _remove(self, o):
        level = self.sides[o.sym][o.side][o.px]
        level.remove(o)
        if not level:
            del self.sides[o.sym][o.side][o.px]
        del self.by_id[o.id]

    def _rest(self, o):
        self.sides[o.sym][o.side].setdefault(o.px, []).append(o)
        self.by_id[o.id] = o

    def _new(self, c):
        oid = self.next_order_id
        self.next_order_id += 1
        side, sym, acct = int(c["side"]), int(c["symbol"]), int(c["account"])
        qty, ot, tif, px = int(c["qty"]), int(c["ord_type"]), int(c["tif"]), int(c["px_tick"])
        if side not in (sc.BUY, sc.SELL):
            return self._reject(side, sc.RS_BAD_SIDE, sym, oid, acct)
        if ot not in (sc.OT_LIMIT, sc.OT_MARKET) or tif not in (sc.TIF_GTC, sc.TIF_IOC, sc.TIF_FOK):
            return self._reject(side, sc.RS_BAD_TYPE, sym, oid, acct)
        if sym >= self.n_symbols:
            return self._reject(side, sc.RS_BAD_SYMBOL, sym, oid, acct)
        if qty <= 0:
            return self._reject(side, sc.RS_BAD_QTY, sym, oid, acct)
        limit = ot == sc.OT_LIMIT
        if limit:
            if not self._sane(px):
                return self._reject(side, sc.RS_BAD_PRICE, sym, oid, acct)
        else:
            px = 0
        if tif == sc.TIF_FOK:
            available = sum(o.qty for o in self._opposite_in_priority(sym, side)
                            if self._crosses(side, limit, px, o.px) and (acct == 0 or o.acct != acct))
            if available < qty:
                return self._reject(side, sc.RS_FOK_UNFILLABLE, sym, oid, acct)
        self._report(sc.R_ACK, side, 0, 0, sym, qty, qty, px, oid, acct)
        self._match(oid, acct, side, sym, limit, px, qty, rest=limit and tif == sc.TIF_GTC)

    def _match(self, oid, acct, side, sym, limit, px, qty, rest):
        opp = 1 - side
        left = qty
        for o in self._opposite_in_priority(sym, side):
            if left == 0 or not self._crosses(side, limit, px, o.px):
                break
            if acct != 0 and o.acct == acct:  # self-trade prevention: the resting order goes
                self._report(sc.R_CANCELLED, opp, sc.RS_SELF_TRADE, 0, sym, o.qty, 0, o.px, o.id, acct)
                self._emit(sc.K_DELETE, opp, sym, o.qty, o.id, o.px)
                self._remove(o)
                continue
            f = min(left, o.qty)
            left -= f
            o.qty -= f
            buy, sell = (oid, o.id) if side == sc.BUY else (o.id, oid)
            self._trd.append((buy, sell, o.px, f, side))
            self._report(sc.R_FILL, side, 0, sc.RF_AGGRESSOR | (sc.RF_DONE if left == 0 else 0), sym, f, left,
                         o.px, oid, acct)
            self._report(sc.R_FILL, opp, 0, sc.RF_DONE if o.qty == 0 else 0, sym, f, o.qty, o.px, o.id, o.acct)
            self._emit(sc.K_EXECUTE, opp, sym, f, o.id, o.px)
            if o.qty == 0:
                self._remove(o)
        if left == 0:
            return
        if rest and self.resting < self.capacity:
            self._rest(RefOrder(oid, px, left, acct, side, sym))
            self._emit(sc.K_ADD, side, sym, left, oid, px)
            return
        reason = sc.RS_BOOK_FULL if rest else sc.RS_UNFILLED
        self._report(sc.R_CANCELLED, side, reason, 0, sym, left, 0, px, oid, acct)

    def _owned(self, c):
        """The order a cancel/modify names, or None after rejecting it (unknown order,
        or another account's)."""
        o, acct = self.by_id.get(int(c["order_id"])), int(c["account"])
        if o is None:
            self._reject(int(c["side"]), sc.RS_UNKNOWN_ORDER, int(c["symbol"]), int(c["order_id"]), acct)
        elif o.acct != acct:
            self._reject(o.side, sc.RS_NOT_OWNER, o.sym, o.id, acct)
        else:
            return o
        return None

    def _cancel(self, c):
        o, acct = self._owned(c), int(c["account"])
        if o is None:
            return
        self._report(sc.R_CANCELLED, o.side, sc.RS_USER, 0, o.sym, o.qty, 0, o.px, o.id, acct)
        self._emit(sc.K_DELETE, o.side, o.sym, o.qty, o.id, o.px)
        self._remove(o)

    def _modify(self, c):
        o, acct = self._owned(c), int(c["account"])
        if o is None:
            return
        qty, px = int(c["qty"]), int(c["px_tick"])
        if qty <= 0:
            return self._reject(o.side, sc.RS_BAD_QTY, o.sym, o.id, acct)
        if px <= 0:
            px = o.px
        elif not self._sane(px):
            return self._reject(o.side, sc.RS_BAD_PRICE, o.sym, o.id, acct)
        self._report(sc.R_MODIFIED, o.side, 0, 0, o.sym, qty, qty, px, o.id, acct)
        if px == o.px and qty <= o.qty:  # keeps its place
            if qty < o.qty:
                self._emit(sc.K_CANCEL, o.side, o.sym, o.qty - qty, o.id, o.px)
                o.qty = qty
            return
        self._emit(sc.K_DELETE, o.side, o.sym, o.qty, o.id, o.px)
        self._remove(o)
        self._match(o.id, acct, o.side, o.sym, True, px, qty, rest=True)
