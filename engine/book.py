"""The aggregated price-level book: the checked Python face of ``_book_kernels``.

``Book`` owns the ladder state of every symbol of one shard and, optionally, the
events ring it emits into and the snapshot region it publishes.  ``apply`` takes a
batch of ``schema.MD_DTYPE`` records; the book writer process drives the same kernels
straight from the md ring (``engine.book_writer``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from obpipe.ring import schema
from obpipe.ring.atomics import monotonic_ns
from obpipe.ring.snapshot import SnapshotRegion

from obpipe.engine import _book_kernels as BK


DEFAULT_DEPTH_TICKS = 10


def _local_ring(dtype: np.dtype, capacity: int):
    """(ctrl, records) of an in-process ring nobody consumes: events are dropped and
    counted once it fills.  Used when a Book runs without a real events ring."""
    ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    return ctrl, np.zeros(capacity, dtype)


class Book:
    """Books of ``len(widths)`` symbols on fixed ladders.

    Args:
        widths: ladder width in ticks per symbol (TOML ``[book] ladder_width`` or
            per-symbol overrides).
        n_levels: levels per side in snapshots (default 10).
        depth_ticks: events carry the quantity within this many ticks of each best.
        uncross: an add that crosses the other side removes the levels it crosses, as
            stale (``[book] uncross``; on for LOBSTER replays).
        events: ``(ctrl, records)`` of the events ring (``Ring.ctrl``, ``Ring.records``);
            ``None`` gives a private 2-slot ring nobody drains: events are counted as dropped.
        snapshots: the ``SnapshotRegion`` to publish into (``None``: no publishing).
    """

    def __init__(self, widths: Sequence[int], n_levels: int = schema.DEFAULT_SNAPSHOT_LEVELS,
                 events=None, snapshots: SnapshotRegion | None = None, depth_ticks: int = DEFAULT_DEPTH_TICKS,
                 uncross: bool = False):
        if depth_ticks < 1:
            raise ValueError(f"depth_ticks must be >= 1, got {depth_ticks}")
        self.n_symbols = len(widths)
        self.n_levels = n_levels
        self.depth_ticks = depth_ticks
        self.lad, self.S, self.C = BK.new_state(widths, n_levels, depth_ticks, uncross)
        self.ev_ctrl, self.ev = events if events is not None else _local_ring(schema.EVENT_DTYPE, 2)
        self.snapshots = snapshots
        if snapshots is not None:
            if snapshots.n_slots < self.n_symbols or snapshots.n_levels != n_levels:
                raise ValueError(f"snapshot region has {snapshots.n_slots} slots x {snapshots.n_levels} levels, "
                                 f"book needs {self.n_symbols} x {n_levels}")
            self._snap_base0 = snapshots.base(0)
            self._snap_words = snapshots.words
            self._slot_words = snapshots.slot_words
        else:
            self._snap_base0, self._slot_words = 0, 0
            self._snap_words = np.zeros(1, np.int64)
        self.dirty = np.zeros(self.n_symbols + 1, np.int64)
        self.pay = np.zeros(schema.snapshot_dtype(n_levels).itemsize // 8, np.int64)
        self._lv_px = np.zeros(n_levels, np.int64)
        self._lv_qty = np.zeros(n_levels, np.int64)

    def apply(self, msgs: np.ndarray, start: int = 0, n: int | None = None) -> int:
        """Apply ``msgs[start:start+n]`` (``MD_DTYPE``) as one batch, then publish one
        snapshot per touched symbol.  Returns the number applied."""
        if msgs.dtype != schema.MD_DTYPE:
            raise TypeError(f"messages must be MD_DTYPE records, got {msgs.dtype}")
        if n is None:
            n = len(msgs) - start
        if start < 0 or n < 0 or start + n > len(msgs):
            raise IndexError(f"batch [{start}, {start + n}) outside {len(msgs)} messages")
        ts = monotonic_ns()
        BK.apply_batch(msgs, start, n, -1, self.lad, self.S, self.C, self.ev, self.ev_ctrl, self.dirty)
        self.publish(ts)
        return n

    def publish(self, ts_apply_ns: int) -> int:
        """Publish snapshots of the symbols touched since the last publish."""
        if self.snapshots is None:
            self.dirty[0] = 0
            self.S[:, BK.B_DIRTY] = 0
            return 0
        return int(BK.publish_snapshots(self.lad, self.S, self.C, self.dirty, self.n_levels, self._snap_words,
                                        self._snap_base0, self._slot_words, self.pay, self._lv_px, self._lv_qty,
                                        ts_apply_ns))

    # --- inspection (tests, CLIs; not the hot path) ----------------------------------

    def _check(self, symbol: int, side: int = 0) -> None:
        if not 0 <= symbol < self.n_symbols:
            raise IndexError(f"symbol {symbol} out of range 0..{self.n_symbols - 1}")
        if side not in (0, 1):
            raise ValueError(f"side must be 0 (bid) or 1 (ask), got {side}")

    def bbo(self, symbol: int) -> tuple[int, int, int, int]:
        """(bid_px_tick, bid_qty, ask_px_tick, ask_qty); NO_PX/0 for an empty side."""
        self._check(symbol)
        S, lad = self.S, self.lad
        return (int(BK.best_px(S, symbol, 0)), int(BK.best_qty(lad, S, symbol, 0)),
                int(BK.best_px(S, symbol, 1)), int(BK.best_qty(lad, S, symbol, 1)))

    def top(self, symbol: int, side: int, n: int) -> list[tuple[int, int]]:
        """Top ``n`` (px_tick, qty) levels of a side, best first."""
        self._check(symbol, side)
        px = np.zeros(max(n, 0), np.int64)
        qty = np.zeros(n, np.int64)
        k = BK.top_levels(self.lad, self.S, symbol, side, n, px, qty)
        return list(zip(px[:k].tolist(), qty[:k].tolist()))

    def level(self, symbol: int, side: int, px_tick: int) -> int:
        """Quantity resting at a price (0 if empty or outside the ladder)."""
        self._check(symbol, side)
        base = int(self.S[symbol, BK.B_BASE])
        w = int(self.S[symbol, BK.B_WIDTH])
        if base == schema.NO_PX or not 0 <= px_tick - base < w:
            return 0
        return int(self.lad[int(self.S[symbol, BK.B_OFF + side]) + px_tick - base])

    def window(self, symbol: int) -> tuple[int, int]:
        """[lo, hi) prices currently held by the ladder (NO_PX, NO_PX before any price)."""
        self._check(symbol)
        base = int(self.S[symbol, BK.B_BASE])
        return (base, base + int(self.S[symbol, BK.B_WIDTH])) if base != schema.NO_PX else (base, base)

    def counters(self) -> dict[str, int]:
        return {name: int(self.C[i]) for i, name in schema.BOOK_STAT_NAMES.items()}

    def clear(self, symbol: int) -> None:
        self._check(symbol)
        BK.clear_symbol(self.lad, self.S, symbol)
