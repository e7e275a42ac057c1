"""The L3 flow generator: deterministic, chunkable, and consistent order by order."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.feed_sim.l3_synth import (L3SynthParams, finish_event, generate_l3, generate_l3_into, message_mix,
                                      new_state)
from obpipe.feed_sim._l3_synth_kernels import BAD_REF_BASE
from obpipe.ring import schema as sc

P = L3SynthParams(n_symbols=40, seed=5, p_bad_ref=0.002, p_cross=1e-3, target_orders=60, max_orders=256,
                  ladder_ticks=128, max_depth_ticks=40)


@pytest.mark.timeout(120)
def test_same_seed_same_bytes_and_chunks_equal_one_shot():
    a = generate_l3(50_000, P)
    assert np.array_equal(a, generate_l3(50_000, P))
    assert not np.array_equal(a, generate_l3(50_000, L3SynthParams(**{**vars(P), "seed": 6})))
    out = np.empty(50_000, sc.MD_L3_DTYPE)
    st = None
    for lo, hi in ((0, 1), (1, 777), (777, 20_000), (20_000, 50_000)):
        st = generate_l3_into(out[lo:hi], P, st)
    assert np.array_equal(a, out) and st.n_emitted == 50_000


def _check_stream(msgs, n_sym):
    """Replay the stream with plain dicts: every reference names a live order with enough
    shares (injected ones aside), executions take the best level's oldest order, the
    book is never crossed or locked.  Returns (live orders, lifetimes in messages of
    the order's symbol, injected references seen)."""
    orders: dict[int, list[int]] = {}  # ref -> [sym, side, px, qty, born]
    levels = [[{}, {}] for _ in range(n_sym)]  # sym -> side -> px -> [refs in arrival order]
    last_ref = 0
    lifetimes = []
    bad = 0
    cols = [msgs[f].tolist() for f in ("kind", "side", "symbol", "qty", "px_tick", "ref", "new_ref", "seq",
                                       "ts_exch_ns")]
    prev_seq = prev_ts = None
    clock = [0] * n_sym  # messages per symbol so far

    def enter(ref, s, side, px, q):
        nonlocal last_ref
        assert ref == last_ref + 1 or last_ref == 0, "references are 1, 2, 3, ... in arrival order"
        last_ref = ref
        orders[ref] = [s, side, px, q, clock[s]]
        levels[s][side].setdefault(px, []).append(ref)
        bid, ask = levels[s][0], levels[s][1]
        assert not bid or not ask or max(bid) < min(ask), "crossed or locked"

    def leave(ref):
        s, side, px, _, born = orders.pop(ref)
        levels[s][side][px].remove(ref)
        if not levels[s][side][px]:
            del levels[s][side][px]
        lifetimes.append(clock[s] - born)

    for kind, side, s, q, px, ref, nref, seq, ts in zip(*cols):
        assert prev_seq is None or (seq == prev_seq + 1 and ts >= prev_ts)
        prev_seq, prev_ts = seq, ts
        assert s < n_sym
        clock[s] += 1
        if kind == sc.L3_ADD:
            enter(ref, s, side, px, q)
        elif kind in (sc.L3_EXEC, sc.L3_EXEC_PX, sc.L3_CANCEL, sc.L3_DELETE, sc.L3_REPLACE):
            if ref >= BAD_REF_BASE:
                bad += 1
                continue
            o = orders[ref]  # a live order
            assert o[0] == s
            if kind == sc.L3_REPLACE:
                leave(ref)
                enter(nref, s, o[1], px, q)
                continue
            if kind in (sc.L3_EXEC, sc.L3_EXEC_PX):
                lv = levels[s][o[1]]
                best = max(lv) if o[1] == 0 else min(lv)
                assert o[2] == best and lv[best][0] == ref, "executions take the best level's oldest order"
            x = o[3] if kind == sc.L3_DELETE else q
            assert 0 < x <= o[3] and (kind != sc.L3_DELETE or q == 0)
            o[3] -= x
            if o[3] == 0:
                leave(ref)
        else:
            assert kind in (sc.L3_TRADE, sc.L3_CROSS)
    return orders, np.array(lifetimes), bad


@pytest.mark.timeout(120)
def test_stream_is_consistent_order_by_order():
    st = new_state(P)
    msgs = np.empty(150_000, sc.MD_L3_DTYPE)
    generate_l3_into(msgs, P, st)
    msgs = np.concatenate([msgs, finish_event(st)])
    orders, life, bad = _check_stream(msgs, P.n_symbols)
    assert bad == st.n_bad_refs > 0
    assert {r: tuple(o[:4]) for r, o in orders.items()} == st.live_orders()
    # day-like: most orders leave soon after they arrive, some rest long
    assert np.median(life) < 30 and (life < 10).mean() > 0.3 and np.quantile(life, 0.99) > 300
    mix = message_mix(msgs)
    assert 0.38 < mix["add"] < 0.5 and 0.3 < mix["delete"] < 0.45 and 0.03 < mix["exec"] < 0.12
    assert mix["replace"] > 0.04 and mix["cancel"] > 0.01 and mix["exec_px"] > 0 and mix["trade"] > 0.01
    assert mix["cross"] > 0
    ex = msgs[msgs["kind"] == sc.L3_EXEC]
    assert (ex["qty"] < 100).any() and len(np.unique(ex["symbol"])) > 20  # partial executions, many symbols
    # steered: live orders per symbol near the target, never above the pool
    per_sym = np.bincount([o[0] for o in orders.values()], minlength=P.n_symbols)
    assert per_sym.max() < P.max_orders and 0.5 * P.target_orders < np.median(per_sym) < 1.5 * P.target_orders


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="must be 1"):
        L3SynthParams(p_add=0.9).validate()
    with pytest.raises(ValueError, match="power of two"):
        L3SynthParams(recent_orders=12).validate()
    with pytest.raises(ValueError, match="ladder_ticks"):
        L3SynthParams(ladder_ticks=100).validate()
    with pytest.raises(TypeError):
        generate_l3_into(np.empty(3, sc.MD_DTYPE), P)
