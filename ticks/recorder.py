"""The tick recorder: the book's events and periodic depth into the tick store.

Its own process, neither the book writer nor the analysis.  Events reach it through
the "ticks" ring, which the analysis fills with a copy of every event it consumes
(``analysis._kernels.relay``; docs/DECISIONS.md "The tick recorder's feed"): the book
writer does nothing more, and a recorder that falls behind fills its ring, which drops
and counts (``ticks_dropped`` in the analysis row), never the book.  Depth: every
``depth_interval_ms`` the top levels of each symbol whose snapshot changed, read from
the book's seqlock snapshots.

Rows are buffered and inserted in batches (``flush_rows`` or ``flush_ms``, and at
stop).  ``pending`` in its stats row is what a kill would lose; a restarted recorder
adds what its predecessor had pending to ``lost_at_restart`` and says so.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema as sc
from obpipe.ring.runtime import child_setup, claim_row, mark_running
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring
from obpipe.ring.stats import ROW_TICKS


@dataclass(frozen=True)
class RecorderSpec:
    """Everything the child needs, copied from ``[ticks]`` by the wiring; picklable."""

    instance: str
    symbols: tuple[str, ...]
    where: str  # the store: a directory (embedded ClickHouse) or a server URL
    flush_rows: int = 65_536  # insert when this many rows are buffered ...
    flush_ms: float = 1000.0  # ... or when the oldest buffered row is this old
    depth_interval_ms: float = 100.0  # top levels per symbol this often (0: no depth)
    retention_days: tuple[tuple[str, int], ...] = ()  # (table, days)
    cores: tuple[int, ...] = ()
    background: bool = False  # SCHED_IDLE once ready (like the analysis)
    parent_pid: int = 0


class Recorder:
    """Buffers events and depth rows and inserts them; ``poll`` does one turn."""

    def __init__(self, spec: RecorderSpec, ring: Ring, snaps: SnapshotRegion | None, store, row, log):
        self.spec, self.ring, self.snaps, self.store, self.row, self.log = spec, ring, snaps, store, row, log
        self.buf = np.empty(max(spec.flush_rows, 1024), sc.EVENT_DTYPE)
        self.n = 0
        self.oldest = 0.0  # monotonic time of the oldest buffered row
        self.depth_rows: list[tuple] = []
        self.versions = [-1] * (snaps.n_slots if snaps is not None else 0)
        self.next_depth = 0.0
        self.backoff_until = 0.0

    def poll(self, now: float) -> int:
        """Take what the ring has (up to the buffer's room), sample depth when due,
        insert when a bound is reached; returns events taken."""
        k = self.ring.pop(self.buf[self.n:]) if self.n < len(self.buf) else 0
        if k:
            if self.n == 0:
                self.oldest = now
            self.n += k
            self.row[sc.ST_TK_EVENTS] += k
        if self.snaps is not None and self.spec.depth_interval_ms > 0 and now >= self.next_depth:
            self._sample_depth()
            self.next_depth = now + self.spec.depth_interval_ms / 1000
        pending = self.n + len(self.depth_rows)
        self.row[sc.ST_TK_PENDING] = pending
        if pending and now >= self.backoff_until and (
                self.n >= self.spec.flush_rows or now - self.oldest >= self.spec.flush_ms / 1000
                or len(self.depth_rows) >= self.spec.flush_rows):
            self.flush()
        return k

    def _sample_depth(self) -> None:
        ts = time.time_ns()
        for i in range(min(self.snaps.n_slots, len(self.spec.symbols))):
            try:
                r = self.snaps.read(i, max_tries=100_000)
            except TimeoutError:
                continue
            v = int(r["version"])
            if v == self.versions[i] or int(r["msgs_applied"]) == 0:
                continue
            self.versions[i] = v
            n = int(r["n_levels"])
            self.row[sc.ST_TK_DEPTH_TAKEN] += 1
            self.depth_rows.append((int(r["ts_exch_ns"]) or ts, i, r["bid_px"][:n].copy(), r["bid_lvl_qty"][:n].copy(),
                                    r["ask_px"][:n].copy(), r["ask_lvl_qty"][:n].copy()))
            if self.n == 0 and len(self.depth_rows) == 1:
                self.oldest = time.monotonic()

    def flush(self) -> bool:
        """Insert everything buffered; False (rows kept, retried after a back-off) if
        the store failed."""
        row = self.row
        try:
            if self.n:
                ev = self.buf[:self.n]
                ok = ev["symbol"] < len(self.spec.symbols)
                if not ok.all():
                    row[sc.ST_TK_BAD_SYMBOL] += int((~ok).sum())
                    ev = ev[ok]
                q, t = self.store.insert_events(ev, self.spec.symbols)
                row[sc.ST_TK_QUOTES] += q
                row[sc.ST_TK_TRADES] += t
                self.n = 0
            if self.depth_rows:
                d = self.depth_rows
                cols = list(zip(*d))
                n = self.store.insert_depth(np.array(cols[0], np.int64), np.array(cols[1], np.int64),
                                            np.stack(cols[2]), np.stack(cols[3]), np.stack(cols[4]),
                                            np.stack(cols[5]), self.spec.symbols)
                row[sc.ST_TK_DEPTH] += n
                self.depth_rows = []
        except Exception as e:  # (the store's own errors: disk full, a server down)
            row[sc.ST_TK_ERRORS] += 1
            self.backoff_until = time.monotonic() + 1.0
            self.log(f"insert failed ({type(e).__name__}: {e}); {self.n + len(self.depth_rows)} rows kept, retrying")
            return False
        row[sc.ST_TK_FLUSHES] += 1
        row[sc.ST_TK_PENDING] = 0
        return True


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


def _reconcile(store, row, log) -> None:
    """First recorder of a run: note the store's row counts.  A restarted one (its
    predecessor killed): the rows the store gained beyond what was counted are the
    predecessor's last insert, which landed (counted as stored now); the rest of what it
    had pending is lost, counted in ``lost_at_restart`` and said."""
    counts = store.counts()
    b = sc.ST_TK_BASE
    if not row[b + 3]:
        for i, (t, _w) in enumerate(_TABLES):
            row[b + i] = counts[t]
        row[b + 3] = 1
        return
    landed = 0
    for i, (t, w) in enumerate(_TABLES):
        extra = counts[t] - int(row[b + i]) - int(row[w])
        if extra > 0:
            row[w] += extra
            landed += extra
    pending = int(row[sc.ST_TK_PENDING])
    row[sc.ST_TK_PENDING] = 0
    lost = max(0, pending - landed)
    if lost:
        row[sc.ST_TK_LOST] += lost
        log(f"the previous recorder was killed with {lost} rows not stored: lost (counted in lost_at_restart)"
            + (f"; {landed} more of its rows had been stored" if landed else ""))
    elif pending:
        log(f"the previous recorder was killed; its last {landed} rows had been stored (none lost)")


def run(spec: RecorderSpec, stop) -> int:
    """Record until ``stop`` is set, then take what is left in the ring, insert it and
    return 0."""
    from obpipe.ticks.store import TickStore

    stats, row = claim_row(spec.instance, ROW_TICKS)

    def log(msg):  # (losses and failures: said even with --quiet)
        print(f"obpipe tick recorder: {msg}", file=sys.stderr, flush=True)

    ring = Ring.attach(spec.instance, "ticks", sc.EVENT_DTYPE)
    events = Ring.attach(spec.instance, "events", sc.EVENT_DTYPE)  # (only its fill is read: see below)
    snaps = SnapshotRegion.attach(spec.instance, "snap")
    store = TickStore.open(spec.where, dict(spec.retention_days) or None, lean=True)
    _reconcile(store, row, log)
    rec = Recorder(spec, ring, snaps, store, row, log)
    mark_running(row)
    next_idle = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if spec.background and now >= next_idle:  # (ClickHouse starts threads as it goes)
                _all_threads(True)
                next_idle = now + 1.0
            if len(events) > events.capacity // 4:
                # the analysis is behind (its events ring fills): give way, so the book never
                # drops events for it; the recorder's own ring fills instead and drops, counted
                row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
                time.sleep(0.002)
                continue
            k = rec.poll(now)
            row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                break  # orphaned
            if k == 0:
                time.sleep(0.005)
        _all_threads(False)  # (draining: the book writer has stopped)
        while rec.poll(time.monotonic()):  # what the analysis relayed before it stopped
            pass
        if spec.depth_interval_ms > 0:
            rec._sample_depth()  # the final books
        while (rec.n or rec.depth_rows) and not rec.flush():
            time.sleep(0.2)
            if stop.is_set() and row[sc.ST_TK_ERRORS] > 20:
                break
    finally:
        store.close()
        events.close()
        row[sc.ST_STATE] = sc.STATE_STOPPED
    return 0


def main_entry(spec: RecorderSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores)
    sys.exit(run(spec, stop))
