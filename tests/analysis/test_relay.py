"""The analysis copies every event it consumes on to the tick recorder's ring
(``analysis._kernels.relay``): the same records, in order; a full recorder ring drops
and counts, and the analysis still consumes (and detects on) every event."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe import config
from obpipe.analysis.process import Analyzer, params
from obpipe.ring import schema as sc


def _ring(dtype, cap):
    ctrl = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
    rec = np.zeros(cap, dtype)
    return ctrl, rec


def _events(n: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = np.zeros(n, sc.EVENT_DTYPE)
    e["kind"] = rng.choice([sc.EV_BBO, sc.EV_TRADE], n)
    e["symbol"] = rng.integers(0, 2, n)
    e["seq"] = np.arange(1, n + 1)
    e["ts_exch_ns"] = 1_340_270_000_000_000_000 + np.arange(n) * 1000
    e["bid_px_tick"] = 10_000 + rng.integers(-3, 3, n)
    e["ask_px_tick"] = e["bid_px_tick"] + 1 + rng.integers(0, 3, n)
    e["bid_qty"], e["ask_qty"] = rng.integers(1, 500, n), rng.integers(1, 500, n)
    e["trade_px_tick"] = np.where(e["kind"] == sc.EV_TRADE, e["ask_px_tick"], sc.NO_PX)
    e["trade_qty"] = np.where(e["kind"] == sc.EV_TRADE, rng.integers(1, 50, n), 0)
    e["sym_msgs"] = np.arange(1, n + 1)
    return e


def _run(events: np.ndarray, rec_cap: int, take_every: int | None):
    """Push ``events`` through an Analyzer that relays to a ring of ``rec_cap``; a
    consumer takes the relayed records every ``take_every`` events (None: never)."""
    ev_ctrl, ev = _ring(sc.EVENT_DTYPE, 1 << 12)
    out = _ring(sc.SIGNAL_DTYPE, 1 << 14)
    rec_ctrl, rec = _ring(sc.EVENT_DTYPE, rec_cap)
    words = sc.words_of(sc.EVENT_DTYPE)
    an = Analyzer(2, params(config.load().analysis), (ev_ctrl, ev), out, relay_to=(rec_ctrl, rec.view(np.int64)
                  .reshape(rec_cap, words)), ev_words=ev.view(np.int64).reshape(len(ev), words))
    got = []
    step = take_every or 1000
    for i in range(0, len(events), step):
        chunk = events[i:i + step]
        head = int(ev_ctrl[sc.RING_W_HEAD])
        for j in range(len(chunk)):
            ev[(head + j) % len(ev)] = chunk[j]
        ev_ctrl[sc.RING_W_HEAD] = head + len(chunk)
        an.drain()
        out[0][sc.RING_W_TAIL] = out[0][sc.RING_W_HEAD]  # (the signals are not what this test reads)
        if take_every:
            t, h = int(rec_ctrl[sc.RING_W_TAIL]), int(rec_ctrl[sc.RING_W_HEAD])
            got += [rec[k % rec_cap].copy() for k in range(t, h)]
            rec_ctrl[sc.RING_W_TAIL] = h
    return an, np.array(got, sc.EVENT_DTYPE)


@pytest.mark.timeout(120)
def test_every_event_is_relayed_in_order_when_the_recorder_keeps_up():
    events = _events(20_000)
    an, got = _run(events, 1 << 12, take_every=1000)
    assert an.C[sc.ST_AN_EVENTS] == len(events) == an.C[sc.ST_AN_RELAYED]
    assert an.C[sc.ST_AN_RELAY_DROPS] == 0
    assert got.tobytes() == events.tobytes()  # the same records, byte for byte, in order


@pytest.mark.timeout(120)
def test_a_recorder_that_does_not_read_costs_drops_counted_never_the_analysis():
    events = _events(20_000)
    an, _ = _run(events, 1024, take_every=None)
    assert an.C[sc.ST_AN_EVENTS] == len(events)  # the analysis consumed everything
    assert an.C[sc.ST_AN_RELAYED] == 1024 and an.C[sc.ST_AN_RELAY_DROPS] == len(events) - 1024
    _, without = _run_plain(events)
    assert an.C[sc.ST_AN_SIGNALS] == without > 0  # and detected the same as without a recorder


def _run_plain(events):
    ev_ctrl, ev = _ring(sc.EVENT_DTYPE, 1 << 12)
    out = _ring(sc.SIGNAL_DTYPE, 1 << 14)
    an = Analyzer(2, params(config.load().analysis), (ev_ctrl, ev), out)
    for i in range(0, len(events), 1000):
        chunk = events[i:i + 1000]
        head = int(ev_ctrl[sc.RING_W_HEAD])
        for j in range(len(chunk)):
            ev[(head + j) % len(ev)] = chunk[j]
        ev_ctrl[sc.RING_W_HEAD] = head + len(chunk)
        an.drain()
        out[0][sc.RING_W_TAIL] = out[0][sc.RING_W_HEAD]
    return an, an.C[sc.ST_AN_SIGNALS]
