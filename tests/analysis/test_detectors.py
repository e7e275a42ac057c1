"""Each detector on a crafted event stream that must fire and one that must not;
summaries; determinism.  Kernels run in-process over local rings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from obpipe.analysis.process import Analyzer, params
from obpipe import config
from obpipe.ring import schema as sc

MS = 1_000_000
T0 = 34_200_000_000_000  # 09:30 in ns after midnight, as LOBSTER stamps


def _analyzer(n_symbols=1, cap=1 << 12, **sections):
    """An Analyzer over local rings, with the default thresholds except ``sections``
    (e.g. ``spread={"ratio": 2.0}``); every detector not named stays as configured."""
    a = config.load().analysis
    for name, over in sections.items():
        a = dataclasses.replace(a, **{name: dataclasses.replace(getattr(a, name), **over)})
    ev = (np.zeros(sc.RING_DATA_OFFSET // 8, np.int64), np.zeros(cap, sc.EVENT_DTYPE))
    out = (np.zeros(sc.RING_DATA_OFFSET // 8, np.int64), np.zeros(cap, sc.SIGNAL_DTYPE))
    return Analyzer(n_symbols, params(a), ev, out)


class Stream:
    """Builds events: the book state is carried from one event to the next."""

    def __init__(self, bid=10_000, ask=10_001, bq=100, aq=100, bd=500, ad=500, symbol=0, t0=T0):
        self.st = dict(bid_px_tick=bid, ask_px_tick=ask, bid_qty=bq, ask_qty=aq, bid_depth_qty=bd, ask_depth_qty=ad)
        self.symbol, self.seq, self.msgs, self.rows, self.t0 = symbol, 0, 0, [], t0

    def bbo(self, t_ns, **changes):
        self.st.update(changes)
        return self._add(t_ns, sc.EV_BBO, 0, 0, sc.NO_PX)

    def trade(self, t_ns, aggressor, px, qty, **changes):
        self.st.update(changes)
        return self._add(t_ns, sc.EV_TRADE, aggressor, qty, px)

    def _add(self, t_ns, kind, side, qty, px):
        self.seq += 1
        self.msgs += 1
        self.rows.append(dict(kind=kind, side=side, symbol=self.symbol, trade_qty=qty, seq=self.seq,
                              ts_exch_ns=self.t0 + t_ns, trade_px_tick=px, sym_msgs=self.msgs, **self.st))
        return self


def run(an, *streams):
    """Push every stream's events (merged by time) through ``an``; return the outputs."""
    rows = sorted((r for s in streams for r in s.rows), key=lambda r: r["ts_exch_ns"])
    ev_ctrl, ev = an.ev_ctrl, an.ev
    got = []
    for i in range(0, len(rows), ev.shape[0] // 2):
        chunk = rows[i:i + ev.shape[0] // 2]
        head = int(ev_ctrl[sc.RING_W_HEAD])
        for j, r in enumerate(chunk):
            rec = ev[(head + j) % ev.shape[0]]
            ev[(head + j) % ev.shape[0]] = np.zeros(1, sc.EVENT_DTYPE)[0]
            for k, v in r.items():
                rec[k] = v
        ev_ctrl[sc.RING_W_HEAD] = head + len(chunk)
        an.drain()
        got.append(_take(an))
    return np.concatenate(got) if got else np.zeros(0, sc.SIGNAL_DTYPE)


def _take(an):
    ctrl, out = an.out_ctrl, an.out
    head, tail = int(ctrl[sc.RING_W_HEAD]), int(ctrl[sc.RING_W_TAIL])
    recs = np.array([out[i % out.shape[0]] for i in range(tail, head)], sc.SIGNAL_DTYPE)
    ctrl[sc.RING_W_TAIL] = head
    return recs


def signals(recs, kind=None):
    s = recs[recs["rtype"] == sc.OUT_SIGNAL]
    return s if kind is None else s[s["kind"] == kind]


def _quiet(s, n=60, step_ms=1):
    """``n`` uneventful events (1-tick spread, balanced book) to warm detectors up."""
    for i in range(n):
        s.bbo(i * step_ms * MS, bid_qty=100 + i % 3, ask_qty=100 + (i + 1) % 3)
    return (n - 1) * step_ms


# --- 1. spread widening ---------------------------------------------------------------


def test_spread_widening_fires_once_per_episode():
    an, s = _analyzer(), Stream()
    t = _quiet(s)
    s.bbo((t + 1) * MS, ask_px_tick=10_005)  # spread 1 -> 5 ticks: 5x the baseline
    s.bbo((t + 2) * MS, ask_px_tick=10_006)  # still wide: same episode, no new signal
    s.bbo((t + 3) * MS, ask_px_tick=10_001)  # back to normal: re-armed
    s.bbo((t + 4) * MS, ask_px_tick=10_004)  # wide again: a second signal
    sig = signals(run(an, s), sc.SIG_SPREAD)
    assert len(sig) == 2
    first = sig[0]
    assert first["iv"][0] == 5 and first["seq"] == 61
    assert first["fv"][0] == pytest.approx(1.0, abs=0.01) and first["fv"][1] == pytest.approx(5.0, rel=0.01)
    assert first["side"] == sc.SIDE_NONE and first["ts_detect_ns"] > 0
    assert an.C[sc.ST_AN_BY_KIND + sc.SIG_SPREAD - 1] == 2


def test_spread_widening_silent_below_ratio_or_min_ticks():
    an, s = _analyzer(), Stream(ask=10_002)  # baseline 2 ticks
    t = _quiet(s)
    s.bbo((t + 1) * MS, ask_px_tick=10_005)  # 5 ticks = 2.5x < ratio 3
    an2, s2 = _analyzer(spread={"min_ticks": 6}), Stream()
    t2 = _quiet(s2)
    s2.bbo((t2 + 1) * MS, ask_px_tick=10_005)  # 5x but under min_ticks 6
    assert len(signals(run(an, s), sc.SIG_SPREAD)) == 0
    assert len(signals(run(an2, s2), sc.SIG_SPREAD)) == 0


def test_spread_needs_warmup():
    an, s = _analyzer(), Stream()
    _quiet(s, n=10)
    s.bbo(20 * MS, ask_px_tick=10_008)
    assert len(signals(run(an, s), sc.SIG_SPREAD)) == 0


# --- 2. imbalance ---------------------------------------------------------------------


def test_imbalance_fires_on_heavy_side():
    an, s = _analyzer(), Stream()
    t = _quiet(s)
    s.bbo((t + 1) * MS, bid_qty=450, ask_qty=50, bid_depth_qty=1800, ask_depth_qty=200)
    s.bbo((t + 2) * MS, bid_qty=460)  # same episode
    sig = signals(run(an, s), sc.SIG_IMBALANCE)
    assert len(sig) == 1
    assert sig[0]["side"] == sc.SIDE_BID
    assert sig[0]["fv"][0] == pytest.approx(0.8) and sig[0]["fv"][1] == pytest.approx(0.8)
    assert list(sig[0]["iv"][:2]) == [1800, 200]


def test_imbalance_silent_when_sides_disagree_or_book_thin():
    an, s = _analyzer(), Stream()
    t = _quiet(s)
    # depth heavy on the bid, but the best ask is the bigger one
    s.bbo((t + 1) * MS, bid_qty=50, ask_qty=450, bid_depth_qty=1800, ask_depth_qty=200)
    # both agree but the bands hold only 100 lots (< min_depth_qty 500)
    s.bbo((t + 2) * MS, bid_qty=90, ask_qty=10, bid_depth_qty=90, ask_depth_qty=10)
    assert len(signals(run(an, s), sc.SIG_IMBALANCE)) == 0


# --- 3. microprice shift --------------------------------------------------------------


def test_microprice_shift_fires_up_within_window():
    an, s = _analyzer(microprice={"shift_ticks": 3.0}), Stream()
    t = _quiet(s)
    for k in range(1, 5):  # the book moves up 4 ticks in 4 ms
        s.bbo((t + k) * MS, bid_px_tick=10_000 + k, ask_px_tick=10_001 + k, bid_qty=100, ask_qty=100)
    sig = signals(run(an, s), sc.SIG_MICROPRICE)
    assert len(sig) == 1
    assert sig[0]["side"] == sc.SIDE_BID  # upward
    assert sig[0]["fv"][0] >= 3.0 and sig[0]["fv"][2] > sig[0]["fv"][1]
    assert 0 < sig[0]["iv"][0] <= 6 * MS  # from the window's low (a quiet event) to the move


def test_microprice_drift_slower_than_window_is_silent():
    an, s = _analyzer(microprice={"shift_ticks": 3.0}), Stream()
    t = _quiet(s)
    for k in range(1, 8):  # one tick every 30 ms: never 3 ticks within 50 ms
        s.bbo(t * MS + k * 30 * MS, bid_px_tick=10_000 + k, ask_px_tick=10_001 + k, bid_qty=100, ask_qty=100)
    assert len(signals(run(an, s), sc.SIG_MICROPRICE)) == 0


# --- 4. sweep / aggressive burst ------------------------------------------------------


def test_sweep_through_three_levels():
    an, s = _analyzer(sweep={"levels": 3}), Stream()
    t = _quiet(s)
    for k, px in enumerate((10_001, 10_002, 10_003, 10_004)):  # a buyer lifts 4 levels in 0.3 ms
        s.trade((t + 1) * MS + k * 100_000, sc.SIDE_BID, px, 50)
    sig = signals(run(an, s), sc.SIG_SWEEP)
    assert len(sig) == 1  # fires once per burst, at the third level
    assert sig[0]["side"] == sc.SIDE_BID
    assert list(sig[0]["iv"][:5]) == [3, 150, 3, 10_001, 10_003]
    assert sig[0]["iv"][5] == 200_000


def test_sweep_silent_when_slow_or_sides_alternate():
    an, s = _analyzer(sweep={"levels": 3}), Stream()
    t = _quiet(s)
    for k, px in enumerate((10_001, 10_002, 10_003)):  # 10 ms apart: outside the 5 ms window
        s.trade((t + 1 + 10 * k) * MS, sc.SIDE_BID, px, 50)
    for k, px in enumerate((10_005, 10_004, 10_006, 10_003)):  # buyer, seller, buyer, seller
        s.trade((t + 100) * MS + k * 1000, k % 2, px, 50)
    assert len(signals(run(an, s), sc.SIG_SWEEP)) == 0


def test_burst_volume_rule():
    an, s = _analyzer(sweep={"burst_qty": 1000}), Stream()
    t = _quiet(s)
    for k in range(5):  # 5 x 250 lots at one price within 1 ms: volume, not levels
        s.trade((t + 1) * MS + k * 200_000, sc.SIDE_ASK, 10_000, 250)
    sig = signals(run(an, s), sc.SIG_SWEEP)
    assert len(sig) == 1 and sig[0]["side"] == sc.SIDE_ASK and sig[0]["iv"][1] == 1000 and sig[0]["iv"][0] == 1


# --- 5. liquidity withdrawal ----------------------------------------------------------


def test_withdrawal_by_cancels_fires():
    an, s = _analyzer(), Stream(bd=1000, ad=1000)
    t = _quiet(s)
    for k, d in enumerate((800, 500, 200)):  # bid band 1000 -> 200 lots in 3 ms, no trades
        s.bbo((t + 1 + k) * MS, bid_depth_qty=d, bid_qty=min(100, d))
    sig = signals(run(an, s), sc.SIG_WITHDRAWAL)
    assert len(sig) == 1
    assert sig[0]["side"] == sc.SIDE_BID
    assert list(sig[0]["iv"][:2]) == [1000, 200] and sig[0]["fv"][0] == pytest.approx(0.8)
    assert sig[0]["iv"][3] == 10_000  # the touch


def test_withdrawal_silent_when_trades_take_the_depth_or_slowly():
    an, s = _analyzer(), Stream(bd=1000, ad=1000)
    t = _quiet(s)
    for k, d in enumerate((800, 500, 200)):  # sellers hit the bid: depth goes to trades, not cancels
        s.trade((t + 1 + k) * MS, sc.SIDE_ASK, 10_000, [200, 300, 300][k], bid_depth_qty=d)
    an2, s2 = _analyzer(), Stream(bd=1000, ad=1000)
    t2 = _quiet(s2)
    for k in range(1, 9):  # 100 lots cancelled every 40 ms: never 70% within 50 ms
        s2.bbo(t2 * MS + k * 40 * MS, bid_depth_qty=1000 - 100 * k)
    assert len(signals(run(an, s), sc.SIG_WITHDRAWAL)) == 0
    assert len(signals(run(an2, s2), sc.SIG_WITHDRAWAL)) == 0


def test_disabled_detector_never_fires():
    an, s = _analyzer(sweep={"enabled": False, "levels": 3}), Stream()
    t = _quiet(s)
    for k, px in enumerate((10_001, 10_002, 10_003, 10_004)):
        s.trade((t + 1) * MS + k * 1000, sc.SIDE_BID, px, 50)
    assert len(signals(run(an, s), sc.SIG_SWEEP)) == 0


# --- summaries ------------------------------------------------------------------------


def test_summaries_every_interval_in_feed_time():
    an = _analyzer(n_symbols=2)
    a, b = Stream(symbol=0), Stream(symbol=1, bid=500, ask=502)
    a.bbo(0)  # spread 1 from t=0
    a.bbo(50 * MS, ask_px_tick=10_003)  # spread 3 from 50 ms: time-weighted mean 2.0
    a.trade(60 * MS, sc.SIDE_BID, 10_003, 7)
    a.trade(70 * MS, sc.SIDE_ASK, 10_000, 5)
    b.bbo(10 * MS)
    a.bbo(130 * MS)  # closes [0, 100 ms)
    a.bbo(450 * MS)  # closes [100, 200 ms); 200..400 had no event: no summaries
    out = run(an, a, b)
    summ = out[out["rtype"] == sc.OUT_SUMMARY]
    assert len(summ) == 4  # 2 intervals x 2 symbols
    s0 = summ[(summ["symbol"] == 0)][0]
    assert s0["ts_exch_ns"] == T0 and s0["iv"][0] == T0 + 100 * MS
    assert s0["fv"][0] == 1 and s0["fv"][2] == 3 and s0["fv"][1] == pytest.approx(2.0)
    assert list(s0["iv"][1:6]) == [7, 5, 2, 4, 4]  # buy vol, sell vol, trades, msgs, events
    assert s0["fv"][5] == pytest.approx(10_001.5) and s0["seq"] == 4
    s1 = summ[(summ["symbol"] == 1)][0]
    assert s1["fv"][1] == pytest.approx(2.0) and s1["iv"][4] == 1
    second = summ[(summ["symbol"] == 0)][1]
    assert second["ts_exch_ns"] == T0 + 100 * MS and second["iv"][4] == 1 and second["fv"][0] == 3
    assert an.flush() == 2  # the open interval [400, 500 ms) for both symbols
    assert an.C[sc.ST_AN_SUMMARIES] == 6


def test_full_signals_ring_drops_and_counts():
    an, s = _analyzer(cap=4), Stream()
    for k in range(12):  # every event closes an interval: 1 summary each, ring of 4
        s.bbo(k * 100 * MS)
    ev_ctrl, ev = an.ev_ctrl, an.ev
    for j, r in enumerate(s.rows[:4]):
        for key, v in r.items():
            ev[j][key] = v
    ev_ctrl[sc.RING_W_HEAD] = 4
    an.drain()  # 3 summaries fit... then the consumer reads nothing
    for j, r in enumerate(s.rows[4:8]):
        for key, v in r.items():
            ev[(4 + j) % 4][key] = v
    ev_ctrl[sc.RING_W_HEAD] = 8
    an.drain()
    assert an.C[sc.ST_AN_SUMMARIES] == 7  # 7 intervals closed (counted whether or not they fit)
    assert an.C[sc.ST_AN_SUMMARY_DROPS] == 3  # the ring holds 4
    assert an.out_ctrl[sc.RING_W_HEAD] == 4
    assert an.C[sc.ST_AN_EVENTS] == 8


def test_same_events_same_outputs():
    a, b = _random_outputs(), _random_outputs()
    assert len(signals(a)) > 10 and set(signals(a)["kind"]) == {1, 2, 3, 4, 5}
    assert a.tobytes() == b.tobytes()


def test_epoch_feed_time_gives_the_same_signals_and_intervals_as_time_of_day():
    """Feed time is UTC epoch ns (issue 13): interval and window arithmetic on ~1.3e18
    values gives exactly what it gave on ns after midnight, shifted by the day."""
    day = 1_340_251_200_000_000_000  # 2012-06-21 00:00 New York, a whole number of intervals
    a, b = _random_outputs(), _random_outputs(T0 + day)
    assert len(a) == len(b) and len(signals(a)) > 10
    assert (b["ts_exch_ns"] - a["ts_exch_ns"] == day).all()
    summ = b["rtype"] == sc.OUT_SUMMARY
    assert summ.sum() >= 9 and (b["iv"][summ, 0] - a["iv"][summ, 0] == day).all()  # interval ends
    b["ts_exch_ns"] -= day
    b["iv"][summ, 0] -= day
    assert a.tobytes() == b.tobytes()


def _random_outputs(t0=T0):
    an, s = _analyzer(n_symbols=1), Stream(t0=t0)
    rng = np.random.default_rng(7)
    bid = 10_000
    for k in range(3000):
        bid += int(rng.integers(-1, 2))
        if rng.random() < 0.2:
            s.trade(k * 300_000, int(rng.integers(0, 2)), bid + int(rng.integers(0, 3)), int(rng.integers(1, 400)))
        else:
            s.bbo(k * 300_000, bid_px_tick=bid, ask_px_tick=bid + (15 if rng.random() < 0.01 else int(rng.integers(1, 4))),
                  bid_qty=int(rng.integers(1, 500)), ask_qty=int(rng.integers(1, 500)),
                  bid_depth_qty=int(rng.integers(1, 3000)), ask_depth_qty=int(rng.integers(1, 3000)))
    out = run(an, s)
    an.flush()
    out = np.concatenate([out, _take(an)])
    out["ts_detect_ns"] = 0
    return out


# --- the published values -------------------------------------------------------------


def test_every_output_published_by_the_tables_names_validates_and_means_what_the_slots_did():
    """The kernel writes each value into the slot ring.schema's table names and the
    encoder reads it from there: every output of a stream that fires all five kinds is a
    valid message, and a sweep and a summary carry their numbers under their names."""
    from obpipe.publisher.encode import encode, records_to_rows
    from obpipe.publisher.schema import SIGNAL_KINDS, validate

    out = _random_outputs()
    kinds = set()
    for row in records_to_rows(out):
        is_signal, _, msg = encode(row, ("AMZN",), 0.01)
        validate(msg)
        kinds.add(msg["kind"] if is_signal else "summary")
    assert kinds == {*SIGNAL_KINDS, "summary"}

    an, s = _analyzer(sweep={"levels": 3}), Stream()
    t = _quiet(s)
    for k, px in enumerate((10_001, 10_002, 10_003, 10_004)):
        s.trade((t + 1) * MS + k * 100_000, sc.SIDE_BID, px, 50)
    msg = encode(records_to_rows(signals(run(an, s), sc.SIG_SWEEP))[0], ("AMZN",), 0.01)[2]
    assert msg["values"] == {"levels": 3, "volume": 150, "trades": 3, "first_tick": 10_001, "last_tick": 10_003,
                             "elapsed_ns": 200_000}

    an, a = _analyzer(), Stream()
    a.bbo(0)
    a.bbo(50 * MS, ask_px_tick=10_003)
    a.trade(60 * MS, sc.SIDE_BID, 10_003, 7)
    a.trade(70 * MS, sc.SIDE_ASK, 10_000, 5)
    a.bbo(130 * MS)
    out = run(an, a)
    msg = encode(records_to_rows(out[out["rtype"] == sc.OUT_SUMMARY])[0], ("AMZN",), 0.01)[2]
    assert (msg["start_ns"], msg["end_ns"], msg["volume"], msg["trades"], msg["messages"], msg["events"]) == (
        T0, T0 + 100 * MS, {"buy": 7, "sell": 5}, 2, 4, 4)
    assert msg["spread_ticks"] == {"min": 1.0, "mean": pytest.approx(2.0), "max": 3.0}
    assert msg["mid_tick"] == pytest.approx(10_001.5)
