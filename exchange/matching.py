"""The matching engine: the checked Python face of ``_match_kernels``.

``MatchingEngine`` owns the order pool, the price ladders, the id table and the output
buffers of one exchange (every symbol); ``process`` takes a batch of
``schema.ORDER_IN_DTYPE`` requests and returns what they produced.  The CSV command
line (``exchange.csv_cli``), the TCP exchange (``exchange.server``), journal recovery
and the benchmark all drive the same kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema

from obpipe.exchange import _match_kernels as MK

DEFAULT_BAND_TICKS = 1 << 16
DEFAULT_CAPACITY = 1 << 20


@dataclass
class Output:
    """What one ``process`` call produced.  Arrays are views into the engine's buffers
    (valid until the next call) unless the call needed more than one kernel round."""

    reports: np.ndarray  # ORDER_OUT_DTYPE
    accounts: np.ndarray  # int64: the account each report goes to
    md: np.ndarray  # WIRE_MSG_DTYPE: the market data (add, cancel, delete, execute)

    @property
    def trades(self) -> np.ndarray:
        """int64 (n, 5): buy id, sell id, px_tick, qty, aggressor side; one row per
        trade, in order (from the fill-report pairs: aggressor's, then the resting order's)."""
        return trades_of(self.reports)


def trades_of(reports: np.ndarray) -> np.ndarray:
    agg = np.flatnonzero((reports["type"] == schema.R_FILL) & ((reports["flags"] & schema.RF_AGGRESSOR) != 0))
    a, r = reports[agg], reports[agg + 1]
    a_buys = a["side"] == schema.BUY
    out = np.empty((len(agg), 5), np.int64)
    out[:, 0] = np.where(a_buys, a["order_id"], r["order_id"])
    out[:, 1] = np.where(a_buys, r["order_id"], a["order_id"])
    out[:, 2] = a["px_tick"]
    out[:, 3] = a["qty"]
    out[:, 4] = a["side"]
    return out


def requests(n: int) -> np.ndarray:
    """A zeroed array of ``n`` requests."""
    return np.zeros(n, schema.ORDER_IN_DTYPE)


class MatchingEngine:
    """Price-time-priority books for ``n_symbols`` symbols.

    Args:
        n_symbols: symbols 0 .. n_symbols-1.
        band_ticks: width of each side's price ladder (window) in ticks: prices within
            it are one array index away; an order priced outside it is parked, or moves
            the window when it is the side's best (every price 1 .. 2^62 is accepted).
        capacity: resting orders the pool holds (all symbols); beyond it an order's
            rest is cancelled (``RS_BOOK_FULL``).
        bases: lowest price of each symbol's first window in ticks; None centres each
            side's window on its first resting order's price.
        max_batch: requests per kernel round the output buffers are sized for (more
            are fine: the kernel stops early and the engine drains).
    """

    def __init__(self, n_symbols: int = 1, band_ticks: int = DEFAULT_BAND_TICKS, capacity: int = DEFAULT_CAPACITY,
                 bases=None, max_batch: int = 4096):
        if n_symbols < 1 or n_symbols > 65535:
            raise ValueError(f"n_symbols must be 1..65535, got {n_symbols}")
        if band_ticks < 2:
            raise ValueError(f"band_ticks must be >= 2, got {band_ticks}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if bases is not None and len(bases) != n_symbols:
            raise ValueError(f"bases has {len(bases)} entries for {n_symbols} symbols")
        self.n_symbols = n_symbols
        self.band_ticks = band_ticks
        self.capacity = capacity
        self.E, self.S, self.L, self.O, self.H = MK.new_state(n_symbols, band_ticks, capacity, bases)
        # Worst case of one request: every resting order filled (2 reports and 1 md
        # each).  np.zeros is lazily committed, so the bound costs address space only.
        per = 6 * max_batch
        self.rep = np.zeros(2 * capacity + per, schema.ORDER_OUT_DTYPE)
        self.racct = np.zeros(len(self.rep), np.int64)
        self.md = np.zeros(capacity + per, schema.WIRE_MSG_DTYPE)
        self.repw = self.rep.view(np.int64).reshape(-1, 4)  # the kernel writes whole words
        self.mdw = self.md.view(np.int64).reshape(-1, 4)
        self.N = np.zeros(3, np.int64)
        self._no_lat = np.zeros(0, np.int64)

    # --- state --------------------------------------------------------------------
    @property
    def next_order_id(self) -> int:
        return int(self.E[MK.E_NEXT_ID])

    @property
    def md_messages(self) -> int:
        """Market-data messages emitted so far (the next feed sequence is this + 1)."""
        return int(self.E[MK.E_MD])

    @property
    def resting(self) -> int:
        return int(self.E[MK.E_LIVE])

    def counters(self) -> dict[str, int]:
        return {name: int(self.E[i]) for i, name in MK.E_NAMES.items()}

    def levels(self, symbol: int, side: int, depth: int = 1 << 30) -> list[tuple[int, int, int]]:
        """(px_tick, total qty, order count) of each non-empty level, best first."""
        self._check_symbol(symbol)
        m = min(depth, int(self.S[symbol, MK.S_NLEV + side]))
        px, qty, cnt = (np.zeros(m, np.int64) for _ in range(3))
        k = MK.levels(self.E, self.S, self.L, symbol, side, px, qty, cnt)
        out = list(zip(px[:k].tolist(), qty[:k].tolist(), cnt[:k].tolist()))
        if len(out) < depth:  # then the parked orders' levels (all worse than the ladder's)
            far = self._parked(symbol, side)
            if len(far):
                p, start, n = np.unique(far[:, 1], return_index=True, return_counts=True)
                q = np.add.reduceat(far[:, 2], start)
                rows = list(zip(p.tolist(), q.tolist(), n.tolist()))
                out += rows[::-1] if side == schema.BUY else rows
        return out[:depth]

    def orders(self, symbol: int, side: int) -> np.ndarray:
        """Resting orders of one side in priority order: int64 rows (id, px_tick, open
        qty, account)."""
        self._check_symbol(symbol)
        n_park = self.n_parked(symbol, side)
        out = np.zeros((int(self.S[symbol, MK.S_NORD + side]) - n_park, 4), np.int64)
        k = MK.orders(self.E, self.S, self.L, self.O, symbol, side, out)
        return np.concatenate((out[:k], self._parked(symbol, side, priority=True)))

    def n_parked(self, symbol: int, side: int) -> int:
        """Orders of one side parked outside its ladder window (docs/DECISIONS.md)."""
        self._check_symbol(symbol)
        return int(MK.n_parked(self.E, self.L, symbol, side))

    def _parked(self, symbol: int, side: int, priority: bool = False) -> np.ndarray:
        """Parked orders (outside their side's ladder window) sorted by price, ascending
        (``priority``: best first), time order kept within a price."""
        out = np.zeros((self.n_parked(symbol, side), 4), np.int64)
        out = out[:MK.parked(self.E, self.L, self.O, symbol, side, out)]
        key = -out[:, 1] if (priority and side == schema.BUY) else out[:, 1]
        return out[np.argsort(key, kind="stable")]

    def book(self, symbol: int = 0) -> dict:
        """The whole book of one symbol, every order in priority order (for comparing
        two engines: equal dicts = same resting orders with the same priorities)."""
        return {"bids": self.orders(symbol, schema.SIDE_BID).tolist(),
                "asks": self.orders(symbol, schema.SIDE_ASK).tolist()}

    def _check_symbol(self, symbol: int) -> None:
        if not 0 <= symbol < self.n_symbols:
            raise IndexError(f"symbol {symbol} outside 0..{self.n_symbols - 1}")

    # --- processing -----------------------------------------------------------------
    def process(self, cmds: np.ndarray, ts_ns: int = 0) -> Output:
        """Process ``cmds`` (ORDER_IN_DTYPE) in order, all stamped ``ts_ns``."""
        if cmds.dtype != schema.ORDER_IN_DTYPE:
            raise TypeError(f"requests must be ORDER_IN_DTYPE records, got {cmds.dtype}")
        cmds = np.ascontiguousarray(cmds)
        n = len(cmds)
        self.N[:] = 0
        done = MK.process(cmds, 0, n, ts_ns, self.E, self.S, self.L, self.O, self.H, self.repw, self.racct,
                          self.mdw, self.N, self._no_lat)
        if done == n:
            return self._views()
        parts = []
        while True:
            parts.append(self._copies())
            if done == n:
                break
            self.N[:] = 0
            k = MK.process(cmds, done, n - done, ts_ns, self.E, self.S, self.L, self.O, self.H, self.repw,
                           self.racct, self.mdw, self.N, self._no_lat)
            if k == 0:  # cannot happen: the buffers hold the worst case of any request
                raise RuntimeError("matching engine output buffers too small for one request")
            done += k
        return Output(*(np.concatenate([p[i] for p in parts]) for i in range(3)))

    def _views(self) -> Output:
        r, m = int(self.N[MK.N_REP]), int(self.N[MK.N_MD])
        return Output(self.rep[:r], self.racct[:r], self.md[:m])

    def _copies(self):
        v = self._views()
        return v.reports.copy(), v.accounts.copy(), v.md.copy()


def new_order(side: int, qty: int, px_tick: int = 0, ord_type: int = schema.OT_LIMIT, tif: int = schema.TIF_GTC,
              symbol: int = 0, account: int = 0) -> np.ndarray:
    """One new-order request (a 1-element ORDER_IN_DTYPE array)."""
    c = requests(1)
    c["type"], c["side"], c["ord_type"], c["tif"] = schema.OE_NEW, side, ord_type, tif
    c["symbol"], c["qty"], c["account"], c["px_tick"] = symbol, qty, account, px_tick
    return c


def cancel(order_id: int, account: int = 0) -> np.ndarray:
    c = requests(1)
    c["type"], c["order_id"], c["account"] = schema.OE_CANCEL, order_id, account
    return c


def modify(order_id: int, qty: int, px_tick: int = 0, account: int = 0) -> np.ndarray:
    """Modify: new open quantity ``qty``; ``px_tick`` <= 0 keeps the price."""
    c = requests(1)
    c["type"], c["order_id"], c["qty"], c["px_tick"], c["account"] = schema.OE_MODIFY, order_id, qty, px_tick, account
    return c
