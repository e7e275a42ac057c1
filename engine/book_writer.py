"""The book-writer process: the only writer of the books.

Reads the md ring, applies each batch to the ladder books, writes one event per
top-of-book change and per trade into the events ring (drops and counts when full),
publishes a seqlock snapshot per touched symbol per batch, and keeps its stats row.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import signal
import time
from dataclasses import dataclass

from ring import schema
from ring.schema import STATE_RUNNING, STATE_STARTING, STATE_STOPPED
from ring._net import set_timer_slack
from ring.snapshot import SnapshotRegion
from ring.spsc import Backoff, Ring
from ring.stats import LATENCY_ROWS, ROW_BOOK, ROW_LATENCY, StatsBlock

from . import _book_kernels as BK
from ._placement import pin
from .book import Book



@dataclass(frozen=True)
class BookWriterSpec:
    """Everything the child needs; picklable for the spawn context."""

    instance: str
    widths: tuple[int, ...]
    n_levels: int
    depth_ticks: int
    max_batch: int
    backoff: Backoff
    cores: tuple[int, ...] = ()
    budget: int = 1 << 16  # messages per kernel call before Python checks the stop flag
    parent_pid: int = 0  # the supervisor; the writer exits if it disappears


def run(spec: BookWriterSpec, stop) -> int:
    """Run until ``stop`` is set, then drain the md ring and return 0."""
    if spec.cores:
        pin(list(spec.cores))
    stats = StatsBlock.attach(spec.instance)
    row = stats.row(ROW_BOOK)
    row[schema.ST_PID] = os.getpid()
    row[schema.ST_STATE] = STATE_STARTING
    md = Ring.attach(spec.instance, "md", schema.MD_DTYPE)
    ev = Ring.attach(spec.instance, "events", schema.EVENT_DTYPE)
    snaps = SnapshotRegion.attach(spec.instance, "snap", spec.n_levels)
    book = Book(spec.widths, spec.n_levels, events=(ev.ctrl, ev.records), snapshots=snaps,
                depth_ticks=spec.depth_ticks)
    b = spec.backoff
    hist = stats.rows[ROW_LATENCY:ROW_LATENCY + LATENCY_ROWS].reshape(-1)
    args = (book.lad, book.S, book.C, book.ev, book.ev_ctrl, book.n_levels, book.dirty, snaps.words,
            snaps.base(0), snaps.slot_words, book.pay, book._lv_px, book._lv_qty, row, hist,
            np.zeros(len(hist), np.int64))
    set_timer_slack()  # idle sleeps of ~50 us wake on time, not 50 us late
    # Compile (or load from cache) before announcing "running".
    BK.drain(md.ctrl, md.records, spec.max_batch, 0, *args, 0, 0)
    row[schema.ST_STATE] = STATE_RUNNING
    while not stop.is_set():
        n = BK.drain(md.ctrl, md.records, spec.max_batch, spec.budget, *args, b.spin_iters, b.yield_iters)
        row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()  # busy or idle: the supervisor watches it
        if n == 0:
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                row[schema.ST_STATE] = STATE_STOPPED
                return 3  # orphaned: the supervisor died without stopping us
            time.sleep(b.sleep_us * 1e-6)
    while BK.drain(md.ctrl, md.records, spec.max_batch, spec.budget, *args, 0, 0):
        pass
    row[schema.ST_STATE] = STATE_STOPPED
    return 0


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a SIGKILLed supervisor
    must not leave a book writer spinning on a core); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the idle-loop parent check still applies
    if parent_pid and os.getppid() != parent_pid:
        os._exit(3)


def main_entry(spec: BookWriterSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    import sys

    die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    sys.exit(run(spec, stop))
