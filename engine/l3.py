"""The per-order (L3) book: the checked Python face of ``_l3_kernels``.

``L3Book`` is a ``Book`` (ladders, events, snapshots, ``bbo``/``top``/``level``) fed
with ``schema.MD_L3_DTYPE`` records: an order table resolves each message's order
reference to the symbol, side, price and shares it means and drives the same ladder
kernels, so everything downstream of the book is unchanged.  The book writer drives
``_l3_kernels.drain_l3`` from the md ring the same way.  Design: docs/L3BOOK.md.

    >>> book = L3Book([4096] * 8, capacity=1_000_000)
    >>> book.apply(msgs)                   # MD_L3_DTYPE records
    >>> book.order(ref)                    # (symbol, side, px_tick, qty, priority) or None
    >>> book.queue_position(ref)           # (shares ahead, orders ahead) or None
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from obpipe.ring import schema
from obpipe.ring.atomics import monotonic_ns
from obpipe.ring.snapshot import SnapshotRegion

from obpipe.engine import _book_kernels as BK
from obpipe.engine import _l3_kernels as LK
from obpipe.engine.book import DEFAULT_DEPTH_TICKS, Book

class Order(NamedTuple):
    """A live order as the table holds it."""

    symbol: int
    side: int  # SIDE_BID / SIDE_ASK
    px_tick: int
    qty: int  # remaining shares
    priority: int  # arrival order within the book (smaller: earlier)


class L3Book(Book):
    """Per-order books of ``len(widths)`` symbols.

    Args:
        widths, n_levels, events, snapshots, depth_ticks: as ``Book``'s.
        uncross: ignored (accepted as ``Book`` takes it): a per-order book has no stale
            levels, so it never uncrosses.
        capacity: live orders the table holds (``[book] l3_orders``); an add beyond
            it is counted (``l3_table_full``) and skipped.  Memory: 48-64 bytes per
            order of capacity (docs/L3BOOK.md "Sizing").
    """

    def __init__(self, widths: Sequence[int], capacity: int, n_levels: int = schema.DEFAULT_SNAPSHOT_LEVELS,
                 events=None, snapshots: SnapshotRegion | None = None, depth_ticks: int = DEFAULT_DEPTH_TICKS,
                 uncross: bool = False):
        super().__init__(widths, n_levels, events=events, snapshots=snapshots, depth_ticks=depth_ticks,
                         uncross=uncross)
        self.O, self.Hd, self.Hx, self.E = LK.new_table(capacity)
        self.C[schema.ST_BOOK_L3_CAPACITY] = capacity

    @property
    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(O, Hd, Hx, E)``: the order table arrays, the kernels' last arguments."""
        return self.O, self.Hd, self.Hx, self.E

    def apply(self, msgs: np.ndarray, start: int = 0, n: int | None = None) -> int:
        """Apply ``msgs[start:start+n]`` (``MD_L3_DTYPE``) as one batch, then publish one
        snapshot per touched symbol.  Returns the number applied."""
        if msgs.dtype != schema.MD_L3_DTYPE:
            raise TypeError(f"messages must be MD_L3_DTYPE records, got {msgs.dtype}")
        if n is None:
            n = len(msgs) - start
        if start < 0 or n < 0 or start + n > len(msgs):
            raise IndexError(f"batch [{start}, {start + n}) outside {len(msgs)} messages")
        ts = monotonic_ns()
        LK.apply_batch_l3(msgs, start, n, -1, self.lad, self.S, self.C, self.ev, self.ev_ctrl, self.dirty,
                          self.O, self.Hd, self.Hx, self.E)
        self.publish(ts)
        return n

    # --- inspection (tests, CLIs; not the hot path) ----------------------------------

    @property
    def capacity(self) -> int:
        return int(self.E[LK.E_CAP])

    @property
    def occupancy(self) -> int:
        """Live orders in the table now."""
        return int(self.E[LK.E_LIVE])

    def order(self, ref: int) -> Order | None:
        """The live order ``ref`` (an ITCH order reference number), or None."""
        row = int(LK.lookup(self.O, self.Hd, self.Hx, self.E, _ref(ref)))
        if row < 0:
            return None
        px, w, prio = (int(x) for x in self.O[row, LK.O_PX:LK.O_PRIO + 1])
        return Order(symbol=(w >> 32) & 0xFFFF, side=w >> 48, px_tick=px, qty=w & 0xFFFFFFFF, priority=prio)

    def queue_position(self, ref: int) -> tuple[int, int] | None:
        """(shares ahead, orders ahead) of live order ``ref`` at its price level, by
        arrival priority; None if ``ref`` is not live.  Scans the table (milliseconds
        for millions of orders: docs/L3BOOK.md)."""
        shares, orders = LK.queue_position(self.O, self.Hd, self.Hx, self.E, _ref(ref))
        return None if orders < 0 else (int(shares), int(orders))

    def orders(self, symbol: int | None = None) -> dict[int, Order]:
        """Every live order (of ``symbol``), by reference: a copy, for tests and tools."""
        hwm = int(self.E[LK.E_HWM])
        rows = self.O[:hwm]
        live = rows[:, LK.O_QSS] != 0
        if symbol is not None:
            live &= ((rows[:, LK.O_QSS] >> 32) & 0xFFFF) == symbol
        out = {}
        for ref, px, w, prio in rows[live].tolist():
            out[ref & 0xFFFFFFFFFFFFFFFF] = Order((w >> 32) & 0xFFFF, w >> 48, px, w & 0xFFFFFFFF, prio)
        return out

    def counters(self) -> dict[str, int]:
        c = super().counters()
        c["l3_live_orders"] = int(self.E[LK.E_LIVE])
        c["l3_peak_orders"] = int(self.E[LK.E_PEAK])
        return c

    def clear(self, symbol: int) -> None:
        """Forget the symbol's orders and empty its ladders (not counted as a message)."""
        self._check(symbol)
        LK._forget_symbol(self.O, self.Hd, self.Hx, self.E, symbol)
        BK.clear_symbol(self.lad, self.S, symbol)


def _ref(ref: int) -> int:
    """An order reference (u64) as the kernels hold it (int64 bits)."""
    ref = int(ref)
    if not 0 <= ref < 1 << 64:
        raise ValueError(f"order reference must be a u64, got {ref}")
    return ref - (1 << 64) if ref >= 1 << 63 else ref


# --- the order query of a running book (not the hot path) ---------------------------------


class OrderAnswer(NamedTuple):
    """A running book writer's answer about one live order (``query_order``)."""

    ref: int
    symbol: int
    side: int  # SIDE_BID / SIDE_ASK
    px_tick: int
    qty: int  # remaining shares
    priority: int  # arrival order within the book (smaller: earlier)
    shares_ahead: int  # shares of earlier orders at the same symbol, side and price
    orders_ahead: int
    seq: int  # the symbol's last applied message: the answer holds as of it
    ts_exch_ns: int  # that message's exchange timestamp, UTC epoch ns


def answer_query(book: L3Book, q: np.ndarray) -> bool:
    """The book writer's side: answer the pending request in the query row ``q``, if any.
    One word compared per call when none is pending."""
    req = int(q[schema.Q_REQ])
    if req == int(q[schema.Q_ANS]):
        return False
    ref = int(q[schema.Q_REF])
    words = np.zeros(schema.Q_TS_EXCH_NS - schema.Q_FOUND + 1, np.int64)
    row = int(LK.lookup(book.O, book.Hd, book.Hx, book.E, ref))
    if row >= 0:
        shares, orders = LK.queue_position(book.O, book.Hd, book.Hx, book.E, ref)
        px, w, prio = (int(x) for x in book.O[row, LK.O_PX:LK.O_PRIO + 1])
        s = (w >> 32) & 0xFFFF
        words[:] = (1, s, w >> 48, px, w & 0xFFFFFFFF, prio, shares, orders, book.S[s, BK.B_SEQ],
                    book.S[s, BK.B_TS_EXCH])
    q[schema.Q_FOUND:schema.Q_TS_EXCH_NS + 1] = words
    q[schema.Q_ANS] = req  # last: the reader polls it (x86 keeps stores in program order)
    return True


def query_order(instance: str, ref: int, timeout_s: float = 2.0) -> OrderAnswer | None:
    """Ask the book writer of running ``instance`` about live order ``ref`` (an ITCH
    order reference number): its price, remaining shares and queue position now.  None
    when the order is not live.  Raises ``RuntimeError`` when the instance's book is not
    per-order, ``TimeoutError`` when the writer does not answer within ``timeout_s``
    (stopped, or stuck).  Readers take turns (an exclusive ``flock`` on the stats
    segment's file); the writer answers between kernel calls, so within one batch."""
    import fcntl
    import time

    from obpipe.ring.shm import SHM_DIR, seg_name
    from obpipe.ring.stats import ROW_BOOK, ROW_QUERY, StatsBlock

    stats = StatsBlock.attach(instance)
    try:
        book_row = stats.rows[ROW_BOOK]
        if int(book_row[schema.ST_BOOK_L3_CAPACITY]) <= 0:
            raise RuntimeError(f"instance {instance!r} keeps an aggregated book, not a per-order one "
                               "(order-by-order input: [rx] protocol = \"moldudp64\" and [book] l3_orders)")
        q = stats.rows[ROW_QUERY]
        with open(f"{SHM_DIR}{seg_name(instance, 'stats')}", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            req = max(int(q[schema.Q_REQ]), int(q[schema.Q_ANS])) + 1  # (past one a timed-out reader left)
            q[schema.Q_REF] = _ref(ref)
            q[schema.Q_REQ] = req
            deadline = time.monotonic() + timeout_s
            while int(q[schema.Q_ANS]) != req:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the book writer of {instance!r} did not answer within {timeout_s:g} s")
                time.sleep(0.0005)
            w = [int(x) for x in q[schema.Q_FOUND:schema.Q_TS_EXCH_NS + 1]]
        if not w[0]:
            return None
        return OrderAnswer(ref & 0xFFFFFFFFFFFFFFFF, *w[1:])
    finally:
        stats.close()
