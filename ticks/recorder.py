"""The tick recorder: the book's events and periodic depth into the tick store.

Its own process, neither the book writer nor the analysis.  Events reach it through
the "ticks" ring, which the analysis fills with a copy of every event it consumes
(``analysis._kernels.relay``; docs/DECISIONS.md "The tick recorder's feed"): the book
writer does nothing more, and a recorder that falls behind fills its ring, which drops
and counts (``ticks_dropped`` in the analysis row), never the book.  Depth: every
``depth_interval_ms`` the top levels of each symbol whose snapshot changed, read from
the book's seqlock snapshots.

Every batch taken goes to the spool at once (``ticks/spool.py``: a copy and a write, so
the recorder keeps up at any rate the analysis does).  Rows move from the spool into the
store in chunks (``flush_rows``, or ``flush_ms`` after the oldest) while the events come
slower than ``live_max_events_per_s``, or the spool is over ``spool_max_mb``; faster
than that the inserts (about a core at 0.5M rows/s) would take the CPU the pipeline
needs, so they wait for the flow to slow down or for the stop.  ``pending`` in its stats
row is what the spool holds; a restarted recorder counts what its killed predecessor had
taken but not spooled in ``lost_at_restart`` and says so.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema as sc
from obpipe.ring.runtime import child_setup, claim_row, mark_running
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring
from obpipe.ring.stats import ROW_ANALYSIS, ROW_TICKS
from obpipe.ticks.spool import EVENTS, Spool, depth_dtype, spool_dir, store_leftovers


@dataclass(frozen=True)
class RecorderSpec:
    """Everything the child needs, copied from ``[ticks]`` by the wiring; picklable."""

    instance: str
    symbols: tuple[str, ...]
    where: str  # the store: a directory (embedded ClickHouse) or a server URL
    flush_rows: int = 65_536  # insert when this many rows are pending ...
    flush_ms: float = 1000.0  # ... or when the oldest pending row is this old
    depth_interval_ms: float = 100.0  # top levels per symbol this often (0: no depth)
    retention_days: tuple[tuple[str, int], ...] = ()  # (table, days)
    live_max_events_per_s: float = 200_000.0  # store while running only below this event rate ...
    spool_max_mb: float = 2048.0  # ... or when the spool holds more than this
    cores: tuple[int, ...] = ()
    background: bool = False  # SCHED_IDLE once ready (like the analysis)
    parent_pid: int = 0


class Recorder:
    """Takes events and depth into the spool (``take``) and moves them into the store
    (``store_chunk``)."""

    def __init__(self, spec: RecorderSpec, ring: Ring, snaps: SnapshotRegion | None, store, row, log,
                 spool: Spool, base: tuple[int, int, int], an_row=None):
        self.spec, self.ring, self.snaps, self.store, self.row, self.log = spec, ring, snaps, store, row, log
        self.spool, self.base = spool, base
        self.buf = np.empty(max(spec.flush_rows, 1024), sc.EVENT_DTYPE)
        n_slots = min(snaps.n_slots, len(spec.symbols)) if snaps is not None else 0
        self.dkind = f"depth{snaps.n_levels}" if snaps is not None else ""
        self.dbuf = np.zeros(n_slots, depth_dtype(snaps.n_levels)) if n_slots else None
        self.versions = [-1] * n_slots
        self.next_depth = 0.0
        self.backoff_until = 0.0
        self.lock = threading.Lock()  # (pending, oldest and the row's pending word: both threads)
        self.pending = spool.pending()
        self.oldest = time.monotonic() if self.pending else 0.0  # when the oldest pending row was taken
        self.halt = threading.Event()
        self.inserter: threading.Thread | None = None
        # the events' rate: what the analysis relays to the ring, taken or not (a recorder that
        # gives way takes less than comes), over the last half second or so
        self.an_row = an_row
        self.rate = 0.0
        self._rate_t, self._rate_n = time.monotonic(), self._relayed()

    def take(self, now: float) -> int:
        """Take what the ring has into the spool, and sample depth when due; returns
        events taken."""
        k = self.ring.pop(self.buf)
        if k:
            self.spool.append(EVENTS, self.buf[:k])
            self._taken(now, k)
            self.row[sc.ST_TK_EVENTS] += k
        if self.dbuf is not None and self.spec.depth_interval_ms > 0 and now >= self.next_depth:
            self.sample_depth(now)
            self.next_depth = now + self.spec.depth_interval_ms / 1000
        if now - self._rate_t >= 0.5:
            n = self._relayed()
            self.rate = (n - self._rate_n) / (now - self._rate_t)
            self._rate_t, self._rate_n = now, n
        return k

    def _relayed(self) -> int:
        r = self.an_row
        return 0 if r is None else int(r[sc.ST_AN_RELAYED] + r[sc.ST_AN_RELAY_DROPS])

    def _taken(self, now: float, n: int) -> None:
        self.row[sc.ST_TK_SPOOLED] += n
        with self.lock:
            if not self.pending:
                self.oldest = now
            self.pending += n
            self.row[sc.ST_TK_PENDING] = self.pending

    def sample_depth(self, now: float) -> None:
        ts, m, d = time.time_ns(), 0, self.dbuf
        for i in range(len(self.versions)):
            try:
                r = self.snaps.read(i, max_tries=100_000)
            except TimeoutError:
                continue
            v = int(r["version"])
            if v == self.versions[i] or int(r["msgs_applied"]) == 0:
                continue
            self.versions[i] = v
            d[m] = (int(r["ts_exch_ns"]) or ts, i, r["bid_px"], r["bid_lvl_qty"], r["ask_px"], r["ask_lvl_qty"])
            m += 1
        if m:
            self.spool.append(self.dkind, d[:m])
            self.row[sc.ST_TK_DEPTH_TAKEN] += m
            self._taken(now, m)

    def due(self, now: float, stopping: bool = False) -> bool:
        """Whether to store a chunk now: something pending, no back-off, a bound reached,
        and (unless stopping) the flow slow enough or the spool too full."""
        if not self.pending or now < self.backoff_until:
            return False
        if stopping:
            return True
        if not (self.pending >= self.spec.flush_rows or now - self.oldest >= self.spec.flush_ms / 1000):
            return False
        if len(self.ring) > self.ring.capacity // 8:  # (catch up first)
            return False
        return (self.rate <= self.spec.live_max_events_per_s
                or self.pending * sc.EVENT_DTYPE.itemsize > self.spec.spool_max_mb * 1e6)

    def store_chunk(self) -> int:
        """Move one chunk from the spool into the store; returns rows moved (0 after a
        failure: the chunk stays in the spool, retried after a back-off)."""
        row = self.row
        try:
            n = self.spool.store_chunk(self.store, self.spec.flush_rows)
            self.count_stored()
        except Exception as e:  # (the store's own errors: disk full, a server down)
            row[sc.ST_TK_ERRORS] += 1
            self.backoff_until = time.monotonic() + 1.0
            self.log(f"insert failed ({type(e).__name__}: {e}); {self.pending} rows kept in the spool, retrying")
            return 0
        if n:
            row[sc.ST_TK_FLUSHES] += 1
            with self.lock:
                self.pending = max(0, self.pending - n)
                row[sc.ST_TK_PENDING] = self.pending
                if self.pending:
                    self.oldest = time.monotonic()
        return n

    def start_inserter(self, events: Ring) -> None:
        """Store chunks from a thread of its own while the run goes on, so the taking never
        waits for an insert (chdb releases the GIL while it works).  It gives way while the
        analysis is behind (its events ring over a quarter full): no insert then, so the
        book never drops events for the recorder's sake."""
        def loop():
            while not self.halt.is_set():
                if self.due(time.monotonic()) and len(events) <= events.capacity // 4:
                    self.store_chunk()
                else:
                    self.halt.wait(0.02)

        self.inserter = threading.Thread(target=loop, name="tick-inserter", daemon=True)
        self.inserter.start()

    def stop_inserter(self) -> None:
        self.halt.set()
        if self.inserter is not None:
            self.inserter.join()

    def count_stored(self) -> None:
        """Rows stored this run: the store's counts over the run's first recorder's (exact
        even when a retried chunk was deduplicated)."""
        counts = self.store.counts()
        for (t, w), b in zip(_TABLES, self.base):
            self.row[w] = counts[t] - b


def _all_threads(idle: bool) -> None:
    """SCHED_IDLE (or back to normal) for every thread of this process, not only the
    calling one: the embedded ClickHouse runs its inserts and merges on threads of its
    own (one at nice -20), which would otherwise compete with the book writer and
    starve the SCHED_IDLE analysis (measured: docs/BENCHMARKS.md "Tick store")."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return
    for t in tids:
        try:
            os.sched_setscheduler(int(t), policy, os.sched_param(0))
        except (OSError, ValueError):  # (a thread that ended meanwhile)
            pass


_TABLES = (("quotes", sc.ST_TK_QUOTES), ("trades", sc.ST_TK_TRADES), ("depth", sc.ST_TK_DEPTH))


def _start(spec: RecorderSpec, store, row, log) -> tuple[Spool, tuple[int, int, int]]:
    """The spool and the store's row counts when this run's first recorder started.

    The first recorder of a run first stores what an earlier run left in the spool (its
    recorder killed, or stopped before it had stored everything), then notes the counts.
    A restarted one (its predecessor killed) keeps the spool as it is: the rows its
    predecessor had taken but not spooled are lost, counted in ``lost_at_restart`` and
    said."""
    b = sc.ST_TK_BASE
    path = spool_dir(spec.where)
    if not row[b + 3]:
        left = store_leftovers(spec.where, store, spec.flush_rows)
        if left:
            log(f"stored {left} rows an earlier run had left in the spool")
        counts = store.counts()
        for i, (t, _w) in enumerate(_TABLES):
            row[b + i] = counts[t]
        row[b + 3] = 1
        return Spool(path, spec.symbols), tuple(int(row[b + i]) for i in range(3))
    base = tuple(int(row[b + i]) for i in range(3))
    lost = int(row[sc.ST_TK_EVENTS] + row[sc.ST_TK_DEPTH_TAKEN] - row[sc.ST_TK_SPOOLED])
    if lost > 0:
        row[sc.ST_TK_LOST] += lost
        row[sc.ST_TK_SPOOLED] += lost  # (so a later restart counts only its own)
        log(f"the previous recorder was killed with {lost} rows taken but not spooled: lost (counted in lost_at_restart)")
    else:
        log("the previous recorder was killed; every row it took is in the spool (none lost)")
    sp = Spool(path, spec.symbols)
    if sp.symbols != tuple(spec.symbols):  # (cannot happen within a run: the same config)
        raise RuntimeError(f"spool {path} names symbols {sp.symbols}, this run {spec.symbols}")
    return sp, base


def run(spec: RecorderSpec, stop) -> int:
    """Record until ``stop`` is set, then take what is left in the ring, store all of it
    and return 0."""
    from obpipe.ticks.store import TickStore

    stats, row = claim_row(spec.instance, ROW_TICKS)

    def log(msg):  # (losses and failures: said even with --quiet)
        print(f"obpipe tick recorder: {msg}", file=sys.stderr, flush=True)

    ring = Ring.attach(spec.instance, "ticks", sc.EVENT_DTYPE)
    events = Ring.attach(spec.instance, "events", sc.EVENT_DTYPE)  # (only its fill is read: see below)
    snaps = SnapshotRegion.attach(spec.instance, "snap")
    store = TickStore.open(spec.where, dict(spec.retention_days) or None, lean=True)
    spool = rec = None
    try:
        spool, base = _start(spec, store, row, log)
        rec = Recorder(spec, ring, snaps, store, row, log, spool, base, stats.row(ROW_ANALYSIS))
        rec.count_stored()
        rec.start_inserter(events)
        mark_running(row)
        next_idle = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if spec.background and now >= next_idle:  # (ClickHouse starts threads as it goes)
                _all_threads(True)
                next_idle = now + 1.0
            row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                break  # orphaned
            if len(events) > events.capacity // 4:
                # the analysis is behind (its events ring fills): give way, so the book never drops
                # events for the recorder's sake; the recorder's own ring takes the wait (full: drops,
                # counted as ticks_dropped)
                time.sleep(0.002)
                continue
            if rec.take(now) == 0:
                time.sleep(0.005)
        rec.stop_inserter()
        _all_threads(False)  # (storing: the book writer has stopped)
        while rec.take(time.monotonic()):  # what the analysis relayed before it stopped
            pass
        if rec.dbuf is not None and spec.depth_interval_ms > 0:
            rec.sample_depth(time.monotonic())  # the final books
        if rec.pending > spec.flush_rows:
            log(f"storing {rec.pending} rows from the spool")
        while rec.pending:
            row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
            if rec.due(time.monotonic(), stopping=True):
                if not rec.store_chunk() and row[sc.ST_TK_ERRORS] > 20:
                    log(f"giving up for now: {rec.pending} rows stay in the spool {spool.path}, stored by the "
                        "next run or `obpipe ticks`")
                    break
            else:
                time.sleep(0.1)
        else:
            spool.clear_if_stored()
    finally:
        if rec is not None:
            rec.stop_inserter()
        if spool is not None:
            spool.close()
        store.close()
        events.close()
        row[sc.ST_STATE] = sc.STATE_STOPPED
    return 0


def main_entry(spec: RecorderSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "ticks")
    sys.exit(run(spec, stop))
