"""feed_sim.synth: determinism, chunking, validity against a plain-Python book, shape."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.feed_sim import _synth_kernels as SK
from obpipe.feed_sim.synth import (
    BBO_DTYPE,
    SynthParams,
    book_levels,
    final_books,
    generate,
    generate_into,
    message_mix,
    new_state,
)
from obpipe.ring import schema

# The first call compiles the kernel (~10 s cold, cached afterwards): generous timeouts.
N_REPLAY = 300_000

#: A stress configuration: a 128-tick ladder, a jumpy fair value that wanders far more
#: than the ladder width (every slot is reused, orders leave the band and are deleted),
#: a tiny order pool (the pool-full path), aggressive sweeps and marketable adds.
STRESS = SynthParams(
    n_symbols=3, seed=11, base_px_tick=200, base_px_step=-40, ladder_ticks=128, max_depth_ticks=40,
    jump_max_ticks=32, p_jump=0.01, jump_mean_ticks=10, p_tick=0.1, p_deep=0.3, p_sweep=0.3,
    max_sweep_levels=8, p_marketable=0.5, max_orders=64, target_orders=60, min_orders=4,
)


def replay(msgs: np.ndarray, n_symbols: int):
    """Apply ``msgs`` to a slow dict book, checking every message.

    Returns (books, errors, add_distances): ``books[s][side]`` is ``{px: qty}``;
    ``errors`` lists (index, reason) for the first few violations; ``add_distances``
    are the ticks each add lies behind the best of its side before it (negative:
    improves it), for adds to a non-empty side.
    """
    books = [[{}, {}] for _ in range(n_symbols)]
    best = [[None, None] for _ in range(n_symbols)]
    errors = []
    dist = []
    for i, (kind, side, s, q, px, _seq, _ts, _rx) in enumerate(msgs.tolist()):
        if s >= n_symbols or side > 1 or q <= 0:
            errors.append((i, "malformed"))
        elif kind == schema.K_ADD:
            lvl = books[s][side]
            b = best[s][side]
            if b is not None:
                dist.append(b - px if side == schema.SIDE_BID else px - b)
            lvl[px] = lvl.get(px, 0) + q
            if b is None or (px > b if side == schema.SIDE_BID else px < b):
                best[s][side] = px
        elif kind in (schema.K_CANCEL, schema.K_DELETE, schema.K_EXECUTE):
            lvl = books[s][side]
            have = lvl.get(px, 0)
            if have < q:
                errors.append((i, f"kind {kind} removes {q} from a level of {have}"))
            if kind == schema.K_EXECUTE and px != best[s][side]:
                errors.append((i, f"execute at {px}, best is {best[s][side]}"))
            if have > q:
                lvl[px] = have - q
            else:
                lvl.pop(px, None)
                if best[s][side] == px:
                    best[s][side] = (max(lvl) if side == schema.SIDE_BID else min(lvl)) if lvl else None
        elif kind != schema.K_TRADE:
            errors.append((i, f"unexpected kind {kind}"))
        bb, ba = best[s]
        if bb is not None and ba is not None and bb >= ba:
            errors.append((i, f"crossed {bb} >= {ba}"))
        if len(errors) >= 10:
            break
    return books, errors, np.array(dist)


@pytest.fixture(scope="module")
def default_run():
    """(params, msgs, state, replay result) of N_REPLAY default messages."""
    p = SynthParams()
    msgs = np.empty(N_REPLAY, schema.MD_DTYPE)
    st = generate_into(msgs, p)
    return p, msgs, st, replay(msgs, p.n_symbols)


@pytest.mark.timeout(180)
def test_same_seed_same_bytes_different_seed_differs():
    p = SynthParams(seed=42)
    a = generate(200_000, p)
    b = generate(200_000, SynthParams(seed=42))
    assert a.dtype == schema.MD_DTYPE
    assert a.tobytes() == b.tobytes()
    c = generate(200_000, SynthParams(seed=43))
    assert (a["px_tick"] != c["px_tick"]).mean() > 0.5
    assert a.tobytes() != c.tobytes()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("params", [SynthParams(seed=5), STRESS], ids=["default", "stress"])
def test_chunked_equals_one_shot(params):
    n = 150_000
    whole = generate(n, params)
    sizes = [1, 2, 3, 0, 997, 5, 1, 20_011, 64, 7]
    sizes.append(n - sum(sizes))
    out = np.empty(n, schema.MD_DTYPE)
    st = None
    at = 0
    mid_event = 0
    for k in sizes:
        st = generate_into(out[at:at + k], params, st)
        at += k
        mid_event += st.G[SK.G_PEND_POS] < st.G[SK.G_PEND_N]
        assert st.n_emitted == at and st.next_seq == params.first_seq + at
    assert out.tobytes() == whole.tobytes()
    if params is STRESS:
        assert mid_event > 0  # some chunk ended inside a multi-message event

    # a copied state forks the stream: both branches continue identically
    fork = st.copy()
    a = np.empty(10_000, schema.MD_DTYPE)
    b = np.empty(10_000, schema.MD_DTYPE)
    generate_into(a, params, st)
    generate_into(b, params, fork)
    assert a.tobytes() == b.tobytes() == generate(n + 10_000, params)[n:].tobytes()


@pytest.mark.timeout(180)
def test_stream_is_valid_for_a_price_level_book(default_run):
    p, msgs, st, (books, errors, _) = default_run
    assert errors == []
    # the generator's own view after the last message equals the replayed book
    for s in range(p.n_symbols):
        assert book_levels(st, s) == (books[s][0], books[s][1])
    fb = final_books(st)
    assert fb.dtype == BBO_DTYPE and len(fb) == p.n_symbols
    for s in range(p.n_symbols):
        bids, asks = books[s]
        assert fb[s]["bid_px_tick"] == max(bids) and fb[s]["bid_qty"] == bids[max(bids)]
        assert fb[s]["ask_px_tick"] == min(asks) and fb[s]["ask_qty"] == asks[min(asks)]
        assert fb[s]["bid_px_tick"] < fb[s]["ask_px_tick"]


@pytest.mark.timeout(180)
def test_stress_stream_is_valid_and_wraps_the_ladder():
    p = STRESS
    n = 200_000
    msgs = np.empty(n, schema.MD_DTYPE)
    st = None
    for at in range(0, n, 30_011):  # chunked, so final_books also undoes pending messages
        st = generate_into(msgs[at:at + 30_011], p, st)
    books, errors, _ = replay(msgs, p.n_symbols)
    assert errors == []
    for s in range(p.n_symbols):
        assert book_levels(st, s) == (books[s][0], books[s][1])
    fb = final_books(st)
    for s in range(p.n_symbols):
        bids, asks = books[s]
        assert fb[s]["bid_px_tick"] == (max(bids) if bids else schema.NO_PX)
        assert fb[s]["ask_px_tick"] == (min(asks) if asks else schema.NO_PX)
        px = msgs["px_tick"][msgs["symbol"] == s]
        assert px.min() >= 1
        assert px.max() - px.min() > 2 * p.ladder_ticks  # the price wandered past the ladder
    # live orders never exceed the pool, and the books held by the generator are in band
    assert (st.ss[:, SK.S_LIVE] <= p.max_orders).all()


@pytest.mark.timeout(180)
def test_shape(default_run):
    p, msgs, _, (_, _, dist) = default_run
    n = len(msgs)
    mix = message_mix(msgs)
    assert 0.35 <= mix["add"] <= 0.60, mix
    assert 0.25 <= mix["delete"] <= 0.50, mix
    assert 0.03 <= mix["execute"] <= 0.20, mix
    assert 0.005 <= mix["cancel"] <= 0.08, mix
    assert 0.003 <= mix["trade"] <= 0.04, mix
    assert mix["set_level"] == mix["clear"] == mix["heartbeat"] == 0

    # adds concentrate at the touch
    assert len(dist) > 0.3 * n
    assert (dist <= 10).mean() >= 0.8
    assert (dist < 0).mean() > 0.005  # some improve the spread
    assert (dist > 50).mean() > 0.001  # and the book has some depth

    # every symbol trades near its base price
    sym = msgs["symbol"].astype(np.int64)
    counts = np.bincount(sym, minlength=p.n_symbols)
    assert len(counts) == p.n_symbols and (counts > 0.02 * n).all()
    for s in range(p.n_symbols):
        px = msgs["px_tick"][sym == s]
        assert abs(np.median(px) - p.base_px(s)) < 500

    # sequence and time
    assert msgs["seq"][0] == p.first_seq and (np.diff(msgs["seq"]) == 1).all()
    ts = msgs["ts_exch_ns"]
    assert ts[0] >= p.start_ts_ns and (np.diff(ts) >= 0).all()
    assert (msgs["ts_recv_ns"] == 0).all()
    q = msgs["qty"]
    assert q.min() >= 1 and q.max() <= p.qty_max
    add_q = q[msgs["kind"] == schema.K_ADD]
    assert np.median(add_q) <= 20 and add_q.max() > 500  # skewed small, with a tail

    # bursts: long runs of one symbol with sub-microsecond-scale gaps
    change = np.flatnonzero(np.diff(sym) != 0)
    run_len = np.diff(np.concatenate(([-1], change, [n - 1])))
    assert run_len.max() >= 50
    gaps = np.diff(ts)
    assert (gaps < 1_000).mean() > 0.2 and (gaps > 10_000).mean() > 0.1

    # sweeps: same-stamp runs of executes on one symbol/side across several prices
    ex = msgs["kind"] == schema.K_EXECUTE
    key = (sym << 1) | msgs["side"]
    same = ex[1:] & ex[:-1] & (key[1:] == key[:-1]) & (ts[1:] == ts[:-1])
    level_step = same & (msgs["px_tick"][1:] != msgs["px_tick"][:-1])
    assert level_step.sum() > 10


@pytest.mark.timeout(180)
def test_engine_book_agrees_with_the_generator(default_run):
    """The engine's book applies the stream without underflow or crossing and ends with
    the generator's top of book."""
    from obpipe.engine.book import Book

    p, msgs, st, _ = default_run
    book = Book([4096] * p.n_symbols)
    for at in range(0, len(msgs), 8192):
        book.apply(msgs, at, min(8192, len(msgs) - at))
    c = book.counters()
    assert c["msgs"] == len(msgs)
    assert c["bad_msgs"] == c["qty_underflow"] == c["crossed"] == c["out_of_ladder"] == 0
    fb = final_books(st)
    for s in range(p.n_symbols):
        assert book.bbo(s) == tuple(int(x) for x in fb[s])


@pytest.mark.timeout(180)
def test_parameter_and_argument_checks():
    with pytest.raises(ValueError, match="must be 1"):
        SynthParams(p_add=0.6).validate()
    with pytest.raises(ValueError, match="power of two"):
        new_state(SynthParams(ladder_ticks=1000))
    with pytest.raises(ValueError, match="max_depth_ticks"):
        SynthParams(ladder_ticks=64, max_depth_ticks=40).validate()
    with pytest.raises(ValueError, match="n_symbols"):
        SynthParams(n_symbols=0).validate()
    p = SynthParams(n_symbols=2)
    st = generate_into(np.empty(100, schema.MD_DTYPE), p)
    with pytest.raises(ValueError, match="different parameters"):
        generate_into(np.empty(100, schema.MD_DTYPE), SynthParams(n_symbols=2, seed=9), st)
    with pytest.raises(TypeError):
        generate_into(np.empty(100, np.int64), p, st)
    with pytest.raises(ValueError, match="contiguous"):
        generate_into(np.empty(100, schema.MD_DTYPE)[::2], p, st)
    assert st.n_emitted == 100
    assert len(generate(0, p)) == 0
