"""The book-writer process: the only writer of the books.

Reads the md ring, applies each batch to the ladder books, writes one event per
top-of-book change and per trade into the events ring (drops and counts when full),
publishes a seqlock snapshot per touched symbol per batch, and keeps its stats row.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from dataclasses import dataclass

from obpipe.ring import schema
from obpipe.ring.schema import STATE_STOPPED
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.stats import LATENCY_ROWS, ROW_BOOK, ROW_LATENCY, ROW_QUERY

from obpipe.engine import _book_kernels as BK
from obpipe.ring.runtime import child_setup, claim_row, go_realtime, mark_running

from obpipe.engine import _l3_kernels as LK
from obpipe.engine.book import Book
from obpipe.engine.l3 import L3Book, answer_query

#: The longest an idle book writer blocks on the md ring's doorbell before it looks at
#: its stop flag and refreshes its heartbeat (rx rings it as soon as there is data).
DOZE_NS = 5_000_000


@dataclass(frozen=True)
class BookWriterSpec:
    """Everything the child needs, copied from ``[book]`` and ``[backoff]`` by the wiring
    (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    instance: str
    widths: tuple[int, ...]
    n_levels: int
    depth_ticks: int
    max_batch: int
    backoff: Backoff
    uncross: bool = False  # [book] uncross, or a LOBSTER replay
    cores: tuple[int, ...] = ()
    budget: int = 1 << 16  # messages per kernel call before Python checks the stop flag
    parent_pid: int = 0  # the supervisor; the writer exits if it disappears
    l3_orders: int = 0  # > 0: the md ring carries per-order records (MD_L3) into a per-order book this big
    realtime: int = 0  # > 0: run SCHED_FIFO at this priority once compiled ([pinning] realtime)


def run(spec: BookWriterSpec, stop) -> int:
    """Run until ``stop`` is set, then drain the md ring and return 0.  With
    ``l3_orders`` the md ring carries per-order records and the book keeps every live
    order (``engine.l3``); the ladders, events and snapshots are the same."""
    stats, row = claim_row(spec.instance, ROW_BOOK)
    l3 = spec.l3_orders > 0
    md = Ring.attach(spec.instance, "md", schema.MD_L3_DTYPE if l3 else schema.MD_DTYPE)
    ev = Ring.attach(spec.instance, "events", schema.EVENT_DTYPE)
    snaps = SnapshotRegion.attach(spec.instance, "snap", spec.n_levels)
    kw = dict(events=(ev.ctrl, ev.records), snapshots=snaps, depth_ticks=spec.depth_ticks, uncross=spec.uncross)
    book = L3Book(spec.widths, spec.l3_orders, spec.n_levels, **kw) if l3 else Book(spec.widths, spec.n_levels, **kw)
    b = spec.backoff
    hist = stats.rows[ROW_LATENCY:ROW_LATENCY + LATENCY_ROWS].reshape(-1)
    args = (book.lad, book.S, book.C, book.ev, book.ev_ctrl, book.n_levels, book.dirty, snaps.words,
            snaps.base(0), snaps.slot_words, book.pay, book._lv_px, book._lv_qty, row, hist,
            np.zeros(len(hist), np.int64))
    q = stats.rows[ROW_QUERY]
    if l3:
        table = book.table
        row[schema.ST_BOOK_L3_CAPACITY] = book.C[schema.ST_BOOK_L3_CAPACITY]

        def drain(budget, spin, yld, doze):
            return LK.drain_l3(md.ctrl, md.records, spec.max_batch, budget, *args, spin, yld, *table, doze)
    else:
        def drain(budget, spin, yld, doze):
            return BK.drain(md.ctrl, md.records, spec.max_batch, budget, *args, spin, yld, doze)
    doze = DOZE_NS if b.doorbell else 0
    # Compile (or load from cache) before announcing "running".
    drain(0, 0, 0, doze)
    go_realtime(spec.realtime)
    mark_running(row)
    while not stop.is_set():
        n = drain(spec.budget, b.spin_iters, b.yield_iters, doze)
        row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()  # busy or idle: the supervisor watches it
        if l3 and q[schema.Q_REQ] != q[schema.Q_ANS]:
            answer_query(book, q)  # an order's queue position, asked by engine.l3.query_order
        if n == 0:
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                row[schema.ST_STATE] = STATE_STOPPED
                return 3  # orphaned: the supervisor died without stopping us
            if not doze:
                time.sleep(b.sleep_us * 1e-6)
    while drain(spec.budget, 0, 0, 0):
        pass
    row[schema.ST_STATE] = STATE_STOPPED
    return 0


def main_entry(spec: BookWriterSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "book")
    sys.exit(run(spec, stop))
