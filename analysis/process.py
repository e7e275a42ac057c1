"""The analysis process: events ring -> detectors and summaries -> signals ring.

Single reader of the "events" ring and single writer of the "signals" ring and of its
stats row (``ROW_ANALYSIS``, counters written in place by the kernel).  It never waits
for anyone: a full signals ring drops and counts; a slow analysis leaves events in its
ring and the book writer drops and counts those.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring.runtime import background_priority, child_setup, claim_row, mark_running
from obpipe.ring import schema
from obpipe.ring.schema import STATE_STOPPED
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.stats import ROW_ANALYSIS

from obpipe.analysis import _kernels as K


def params(acfg) -> tuple[float, ...]:
    """The kernel's parameter vector (times in ns) from the ``[analysis]`` section
    (``obpipe.config.AnalysisConfig``, read by attribute: this package imports no config)."""
    P = np.zeros(K.N_PARAMS, np.float64)
    ms = 1e6
    P[K.P_INTERVAL_NS] = round(acfg.summary_interval_ms * ms)
    sp, im, mp, sw, wd = acfg.spread, acfg.imbalance, acfg.microprice, acfg.sweep, acfg.withdrawal
    P[K.P_SPREAD_ON] = sp.enabled
    P[K.P_SPREAD_RATIO] = sp.ratio
    P[K.P_SPREAD_MIN_TICKS] = sp.min_ticks
    P[K.P_SPREAD_TAU_NS] = sp.baseline_ms * ms
    P[K.P_SPREAD_WARMUP] = sp.warmup_events
    P[K.P_SPREAD_REARM] = sp.rearm_ratio
    P[K.P_IMB_ON] = im.enabled
    P[K.P_IMB_TOB] = im.tob_threshold
    P[K.P_IMB_DEPTH] = im.depth_threshold
    P[K.P_IMB_MIN_DEPTH] = im.min_depth_qty
    P[K.P_IMB_REARM] = im.rearm_below
    P[K.P_MP_ON] = mp.enabled
    P[K.P_MP_TICKS] = mp.shift_ticks
    P[K.P_MP_WINDOW_NS] = round(mp.window_ms * ms)
    P[K.P_SWEEP_ON] = sw.enabled
    P[K.P_SWEEP_LEVELS] = sw.levels
    P[K.P_SWEEP_QTY] = sw.burst_qty
    P[K.P_SWEEP_WINDOW_NS] = round(sw.window_ms * ms)
    P[K.P_WD_ON] = wd.enabled
    P[K.P_WD_FRACTION] = wd.drop_fraction
    P[K.P_WD_MIN_DEPTH] = wd.min_depth_qty
    P[K.P_WD_WINDOW_NS] = round(wd.window_ms * ms)
    return tuple(float(x) for x in P)


class Analyzer:
    """Detector state plus the two rings; ``step`` runs the compiled loop once.

    Usable in-process (tests, benchmarks) with any (ctrl, records) pair of rings."""

    def __init__(self, n_symbols: int, params_: tuple[float, ...], ev, out, counters=None, max_batch: int = 4096,
                 relay_to=None, ev_words=None):
        self.P = np.array(params_, np.float64)
        if self.P.shape != (K.N_PARAMS,):
            raise ValueError(f"expected {K.N_PARAMS} parameters, got {self.P.shape}")
        self.A, self.F, self.G, self.QT, self.QV, self.QX = K.new_state(n_symbols)
        self.ev_ctrl, self.ev = ev
        self.out_ctrl, self.out = out
        self.C = counters if counters is not None else np.zeros(schema.STATS_WORDS, np.int64)
        self.max_batch = max_batch
        # the tick recorder's ring ((ctrl, slots as int64 words); ``ev_words``: the events
        # ring's slots as words): every event is copied on to it before it is consumed
        if relay_to is not None:
            self.rec_ctrl, self.recw = relay_to
            self.evw = ev_words
        else:
            self.rec_ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
            self.recw = np.zeros((0, schema.words_of(schema.EVENT_DTYPE)), np.int64)
            self.evw = self.recw

    def _args(self):
        return (self.ev_ctrl, self.ev, self.out_ctrl, self.out, self.A, self.F, self.G, self.P,
                self.QT, self.QV, self.QX, self.C)

    def step(self, budget: int = 1 << 16, spin_iters: int = 0, yield_iters: int = 0) -> int:
        """Process up to ``budget`` events (spinning/yielding while idle); returns how many."""
        return K.run_loop(*self._args(), self.max_batch, budget, spin_iters, yield_iters, self.evw, self.rec_ctrl,
                          self.recw)

    def drain(self) -> int:
        """Process every event available now."""
        total = 0
        while True:
            n = self.step(self.max_batch)
            total += n
            if n == 0:
                return total

    def flush(self) -> int:
        """End of stream: emit the open interval's summaries."""
        return K.flush_summaries(self.out_ctrl, self.out, self.A, self.F, self.G, self.P, self.C)


@dataclass(frozen=True)
class AnalysisSpec:
    """Everything the child needs, copied from ``[analysis]`` by the wiring
    (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    instance: str
    n_symbols: int
    params: tuple[float, ...]
    max_batch: int
    backoff: Backoff
    cores: tuple[int, ...] = ()
    background: bool = False  # SCHED_IDLE: only CPU the book writer and rx leave
    parent_pid: int = 0
    relay_ticks: bool = False  # copy every event on to the "ticks" ring (the tick recorder's, [ticks] enabled)


def run(spec: AnalysisSpec, stop) -> int:
    """Run until ``stop`` is set, then drain the events ring, flush the open summaries
    and return 0."""
    _, row = claim_row(spec.instance, ROW_ANALYSIS)
    ev = Ring.attach(spec.instance, "events", schema.EVENT_DTYPE)
    out = Ring.attach(spec.instance, "signals", schema.SIGNAL_DTYPE)
    rec = Ring.attach(spec.instance, "ticks", schema.EVENT_DTYPE) if spec.relay_ticks else None
    an = Analyzer(spec.n_symbols, spec.params, (ev.ctrl, ev.records), (out.ctrl, out.records), counters=row,
                  max_batch=spec.max_batch, relay_to=None if rec is None else (rec.ctrl, rec.slots),
                  ev_words=ev.slots)
    b = spec.backoff
    an.step(0)  # compile (or load from cache) before announcing "running"
    an.flush()
    mark_running(row)
    if spec.background:
        background_priority()
    next_cpu = 0.0
    while not stop.is_set():
        n = an.step(1 << 16, b.spin_iters, b.yield_iters)
        now = time.monotonic()
        row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()
        if now >= next_cpu:
            t = os.times()
            row[schema.ST_AN_CPU_NS] = int((t.user + t.system) * 1e9)
            next_cpu = now + 0.5
        if n == 0:
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                row[schema.ST_STATE] = STATE_STOPPED
                return 3  # orphaned
            time.sleep(b.sleep_us * 1e-6)
    an.drain()
    an.flush()
    t = os.times()
    row[schema.ST_AN_CPU_NS] = int((t.user + t.system) * 1e9)
    row[schema.ST_STATE] = STATE_STOPPED
    return 0


def main_entry(spec: AnalysisSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "analysis")
    sys.exit(run(spec, stop))
