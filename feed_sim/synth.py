"""Seeded, deterministic synthetic order flow as ``schema.MD_DTYPE`` records.

The checked Python face of ``_synth_kernels``: parameters, state allocation and
validation here; all generation runs in one compiled kernel (about 5-10 million
messages per second on one core; the first call compiles it, ~10 s, cached after).

    >>> msgs = generate(1_000_000, SynthParams(n_symbols=8, seed=7))

A long-running feed generates chunk after chunk; the concatenation of the chunks is
byte-identical to one ``generate`` of the total length with the same parameters::

    state = None
    while running:
        state = generate_into(buf, params, state)   # fills all of buf
        push(buf)

The stream is *valid* for an aggregated price-level book: every cancel / delete /
execute removes at most what rests at its level (a delete is exactly one resting
order's remaining qty, a cancel part of one order, an execute part or all of the oldest
order at the best level), executes only hit the best of the resting side, and the book
is never crossed after any message (an add at or through the opposite best is either
repriced one tick behind it, or emitted as the executions it causes followed by the add
of its remainder, if any).

What the messages look like: see ``_synth_kernels`` (model) and ``SynthParams``.  Units:
prices in integer ticks, quantities in integer lots, times in integer ns.  ``seq`` runs
1, 2, 3, ... (``first_seq`` on) over the whole stream; ``ts_exch_ns`` never decreases
(all messages of one event - e.g. the executes of a sweep - share a stamp);
``ts_recv_ns`` is 0 (not stamped: the receiver stamps it).  Every resting order of a
symbol is within ``ladder_ticks / 2 - 1`` ticks of that symbol's latent fair value
(orders left further behind by a move are deleted, and those deletes are in the
stream); the fair value random-walks without an upper bound and is reflected so that
every price stays >= 1 tick.  A consumer whose ladder is narrower than the range the
price wanders over must re-centre (the engine's book does).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema

from obpipe.feed_sim import _synth_kernels as SK

#: ``final_books`` row: the generator's own top of book per symbol (NO_PX / 0 if empty).
BBO_DTYPE = np.dtype([("bid_px_tick", "<i8"), ("bid_qty", "<i8"), ("ask_px_tick", "<i8"), ("ask_qty", "<i8")])

_QTY_TABLE_BITS = 14

#: 2026-01-02 14:30:00 UTC (09:30 in New York): the default start of a stream's clock.
DEFAULT_START_NS = 1_767_364_200_000_000_000


@dataclass(frozen=True)
class SynthParams:
    """Parameters of one synthetic stream.  Same parameters (seed included) -> same bytes.

    Probabilities are per *event*; an event is one action on one symbol and emits one
    message, or several (a sweep, a marketable add, deletes of orders that fell out of
    the tracked band).
    """

    # --- universe / stream ---
    n_symbols: int = 8  # symbols 0..n_symbols-1 (<= 65536)
    seed: int = 1  # any int; the only source of randomness
    base_px_tick: int = 10_000  # initial fair value of symbol 0, ticks
    base_px_step: int = 1_000  # symbol s starts at base_px_tick + s * base_px_step ticks
    # clock before the first event, UTC epoch ns (a fixed day: the stream depends only on
    # its parameters; the feed gives its wall-clock start, ``FeedSpec.start_ns``)
    start_ts_ns: int = DEFAULT_START_NS
    first_seq: int = 1  # seq of the first message
    activity_skew: float = 0.8  # symbol s is picked with weight 1 / (s + 1) ** activity_skew

    # --- action mix (must sum to 1); early on / with a side empty every event adds ---
    p_add: float = 0.50  # new limit order (at / through the opposite best: see p_marketable)
    p_cancel: float = 0.04  # partial cancel of a live order (a 1-lot order is deleted instead)
    p_delete: float = 0.42  # delete a live order (uniformly random, or see p_fade)
    p_execute: float = 0.025  # marketable order against the best (one execute per order hit)
    p_trade: float = 0.015  # hidden trade, inside the spread or at the passive best
    p_fade: float = 0.7  # P(a cancel / delete takes the newest order of a best that fv has
    #                      moved through - stale quotes fade - instead of a random order)

    # --- add placement ---
    half_spread_ticks: int = 1  # adds are anchored at fv -/+ this many ticks
    depth_mean_ticks: float = 2.0  # mean geometric distance behind the anchor, ticks
    p_deep: float = 0.03  # P(add lands uniformly 0..max_depth_ticks behind the anchor)
    max_depth_ticks: int = 200  # cap of the distance behind the anchor, ticks
    p_improve: float = 0.10  # P(add goes strictly inside a spread of >= 2 ticks)
    p_marketable: float = 0.1  # P(an add at / through the opposite best executes against it
    #                            (the remainder rests); otherwise it is repriced one tick
    #                            behind the opposite best, as a post-only order)

    # --- marketable flow ---
    p_sweep: float = 0.03  # P(a marketable order takes 2..max_sweep_levels whole levels)
    max_sweep_levels: int = 4  # never empties the side: at most (levels on that side - 1)
    aggressor_tilt: float = 0.2  # P(buy) = 0.5 + tilt if fv > book mid, 0.5 - tilt if below

    # --- fair value ---
    p_tick: float = 0.02  # P(fv moves +-1 tick) per event
    p_jump: float = 2e-4  # P(fv jumps) per event
    jump_mean_ticks: float = 5.0  # mean |jump|, ticks (1 + geometric)
    jump_max_ticks: int = 64  # cap of |jump|, ticks (<= ladder_ticks / 4)

    # --- time and bursts ---
    gap_mean_ns: float = 10_000.0  # mean exponential gap before a non-burst event, ns
    p_pause: float = 2e-4  # P(a non-burst gap also gets a pause)
    pause_mean_ns: float = 5_000_000.0  # mean exponential pause, ns
    p_burst: float = 0.01  # P(a non-burst event starts a burst on its symbol)
    burst_mean_len: float = 40.0  # mean events per burst (1 + geometric)
    burst_gap_mean_ns: float = 300.0  # mean exponential gap inside a burst, ns
    burst_vol_mult: float = 3.0  # fv move / jump probabilities multiplied by this in a burst

    # --- sizes ---
    qty_max: int = 1000  # largest order, lots
    qty_alpha: float = 1.3  # P(qty = q) ~ q ** -alpha (skewed small) ...
    qty_round_boost: float = 4.0  # ... times this for multiples of 10 (squared for 100)

    # --- generator capacity (memory ~ n_symbols * (64 * ladder_ticks + 56 * max_orders) B) ---
    ladder_ticks: int = 4096  # tracked ladder per symbol and side (power of two, >= 64)
    max_orders: int = 4096  # order pool per symbol (live orders never exceed it)
    target_orders: int = 400  # live orders per symbol the flow steers towards: above it adds
    #                           turn into deletes, below it deletes into adds, smoothly
    min_orders: int = 16  # below this many live orders every event adds

    def base_px(self, symbol: int) -> int:
        """Initial fair value of ``symbol``, ticks."""
        return self.base_px_tick + symbol * self.base_px_step

    def validate(self) -> None:
        """Raise ValueError on an inconsistent parameter set."""
        probs = ("p_add", "p_cancel", "p_delete", "p_execute", "p_trade", "p_deep", "p_improve", "p_sweep",
                 "p_tick", "p_jump", "p_pause", "p_burst", "p_marketable", "p_fade")
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability, got {v}")
        mix = self.p_add + self.p_cancel + self.p_delete + self.p_execute + self.p_trade
        if abs(mix - 1.0) > 1e-9:
            raise ValueError(f"p_add + p_cancel + p_delete + p_execute + p_trade must be 1, got {mix}")
        if self.p_add <= 0:
            raise ValueError("p_add must be > 0")
        if not 1 <= self.n_symbols <= 1 << 16:
            raise ValueError(f"n_symbols must be 1..65536, got {self.n_symbols}")
        w = self.ladder_ticks
        if w < 64 or w & (w - 1):
            raise ValueError(f"ladder_ticks must be a power of two >= 64, got {w}")
        h = w // 2 - 1
        if not 0 <= self.max_depth_ticks or self.half_spread_ticks < 1 \
                or self.half_spread_ticks + self.max_depth_ticks > h:
            raise ValueError(f"need half_spread_ticks >= 1 and half_spread_ticks + max_depth_ticks <= "
                             f"ladder_ticks / 2 - 1 = {h}")
        if not 1 <= self.jump_max_ticks <= w // 4:
            raise ValueError(f"jump_max_ticks must be 1..ladder_ticks / 4 = {w // 4}, got {self.jump_max_ticks}")
        if self.jump_mean_ticks < 1 or self.burst_mean_len < 1 or self.depth_mean_ticks < 0:
            raise ValueError("jump_mean_ticks and burst_mean_len must be >= 1, depth_mean_ticks >= 0")
        if self.max_sweep_levels < 2:
            raise ValueError(f"max_sweep_levels must be >= 2, got {self.max_sweep_levels}")
        if not 0 <= self.aggressor_tilt <= 0.5:
            raise ValueError(f"aggressor_tilt must be in [0, 0.5], got {self.aggressor_tilt}")
        for name in ("gap_mean_ns", "pause_mean_ns", "burst_gap_mean_ns", "burst_vol_mult", "activity_skew"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and >= 0")
        if self.burst_vol_mult * (self.p_tick + self.p_jump) > 1:
            raise ValueError("burst_vol_mult * (p_tick + p_jump) must be <= 1")
        lo = min(self.base_px(0), self.base_px(self.n_symbols - 1))
        hi = max(self.base_px(0), self.base_px(self.n_symbols - 1))
        if lo < h + 1 or hi > 1 << 60:
            raise ValueError(f"base prices must be in [ladder_ticks / 2, 2**60], got {lo}..{hi}")
        if not 1 <= self.qty_max < 1 << 31 or self.qty_alpha < 0 or self.qty_round_boost <= 0:
            raise ValueError("need 1 <= qty_max < 2**31, qty_alpha >= 0, qty_round_boost > 0")
        if not 1 <= self.min_orders <= self.target_orders < self.max_orders - 1:
            raise ValueError("need 1 <= min_orders <= target_orders < max_orders - 1")
        if self.start_ts_ns < 0 or self.first_seq < 0:
            raise ValueError("start_ts_ns and first_seq must be >= 0")


def _inv_log_geom(mean: float) -> float:
    """``1 / log(1 - p)`` of the geometric on 0, 1, ... with the given mean (0 if mean 0)."""
    return 0.0 if mean <= 0 else 1.0 / math.log(mean / (1.0 + mean))


def qty_table(p: SynthParams) -> np.ndarray:
    """Inverse-CDF table of order sizes (lots): entry i is the quantile (i + 0.5) / len."""
    q = np.arange(1, p.qty_max + 1, dtype=np.float64)
    w = q ** -p.qty_alpha
    w[q % 10 == 0] *= p.qty_round_boost
    w[q % 100 == 0] *= p.qty_round_boost
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    n = 1 << _QTY_TABLE_BITS
    u = (np.arange(n) + 0.5) / n
    return (np.minimum(np.searchsorted(cdf, u, side="left"), p.qty_max - 1) + 1).astype(np.int64)


def _packed(p: SynthParams):
    """(pi, pf, qty_tab, sym_cum): the parameters as the kernel reads them."""
    pi = np.zeros(SK.NPI, np.int64)
    pi[SK.PI_W] = p.ladder_ticks
    pi[SK.PI_H] = p.ladder_ticks // 2 - 1
    pi[SK.PI_M] = p.max_orders
    pi[SK.PI_TARGET] = p.target_orders
    pi[SK.PI_MIN] = p.min_orders
    pi[SK.PI_HALF_SPREAD] = p.half_spread_ticks
    pi[SK.PI_MAX_DEPTH] = p.max_depth_ticks
    pi[SK.PI_MAX_SWEEP] = p.max_sweep_levels
    pi[SK.PI_JUMP_MAX] = p.jump_max_ticks
    pi[SK.PI_QTY_SHIFT] = 64 - _QTY_TABLE_BITS
    pf = np.zeros(SK.NPF, np.float64)
    c = np.cumsum([p.p_add, p.p_cancel, p.p_delete, p.p_execute])
    pf[SK.PF_C_ADD:SK.PF_C_EXECUTE + 1] = c
    pf[SK.PF_P_IMPROVE] = p.p_improve
    pf[SK.PF_INV_LOG_DEPTH] = _inv_log_geom(p.depth_mean_ticks)
    pf[SK.PF_P_DEEP] = p.p_deep
    pf[SK.PF_P_SWEEP] = p.p_sweep
    pf[SK.PF_TILT] = p.aggressor_tilt
    pf[SK.PF_P_TICK] = p.p_tick
    pf[SK.PF_P_JUMP] = p.p_jump
    pf[SK.PF_INV_LOG_JUMP] = _inv_log_geom(p.jump_mean_ticks - 1)
    pf[SK.PF_P_BURST] = p.p_burst
    pf[SK.PF_INV_LOG_BURST] = _inv_log_geom(p.burst_mean_len - 1)
    pf[SK.PF_GAP_NS] = p.gap_mean_ns
    pf[SK.PF_BURST_GAP_NS] = p.burst_gap_mean_ns
    pf[SK.PF_P_PAUSE] = p.p_pause
    pf[SK.PF_PAUSE_NS] = p.pause_mean_ns
    pf[SK.PF_BURST_VOL] = p.burst_vol_mult
    pf[SK.PF_P_MARKETABLE] = p.p_marketable
    pf[SK.PF_P_FADE] = p.p_fade
    wts = 1.0 / (np.arange(1, p.n_symbols + 1, dtype=np.float64) ** p.activity_skew)
    sym_cum = np.cumsum(wts)
    sym_cum /= sym_cum[-1]
    return pi, pf, qty_table(p), sym_cum


@dataclass
class SynthState:
    """Everything needed to continue a stream: generator book, order pool, clock,
    sequence, random state and the not-yet-emitted messages of the current event.
    ``generate_into`` advances it in place; ``copy()`` forks a stream."""

    params: SynthParams
    G: np.ndarray
    rng: np.ndarray
    ss: np.ndarray
    lv: np.ndarray
    od: np.ndarray
    perm: np.ndarray
    pend: np.ndarray
    pi: np.ndarray
    pf: np.ndarray
    qty_tab: np.ndarray
    sym_cum: np.ndarray

    @property
    def n_emitted(self) -> int:
        """Messages handed out so far."""
        return int(self.G[SK.G_EMITTED])

    @property
    def n_events(self) -> int:
        """Events generated so far (an event emits one or more messages)."""
        return int(self.G[SK.G_EVENTS])

    @property
    def next_seq(self) -> int:
        """``seq`` of the next message to be handed out."""
        return int(self.G[SK.G_SEQ] - (self.G[SK.G_PEND_N] - self.G[SK.G_PEND_POS]))

    def fair_value(self) -> np.ndarray:
        """Latent fair value per symbol, ticks (after the pending messages' event)."""
        return self.ss[:, SK.S_FV].copy()

    def copy(self) -> SynthState:
        arrays = {k: v.copy() for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        return SynthState(params=self.params, **arrays)


def new_state(params: SynthParams) -> SynthState:
    """A fresh stream: empty books, fair values at the base prices, clock at
    ``start_ts_ns``, next seq ``first_seq``."""
    params.validate()
    pi, pf, qtab, sym_cum = _packed(params)
    G = np.zeros(SK.NG, np.int64)
    G[SK.G_T] = params.start_ts_ns
    G[SK.G_SEQ] = params.first_seq
    rng, ss, lv, od, perm = new_books(params, SK.NSS, SK.NO)
    pend = np.zeros((params.max_orders + 8, SK.MD_WORDS), np.int64)  # an event emits <= live orders + 2 messages
    return SynthState(params, G, rng, ss, lv, od, perm, pend, pi, pf, qtab, sym_cum)


def new_books(params, n_ss: int, n_od: int):
    """The generator's own books, for this flow and the per-order one (``l3_synth``):
    ``(rng, ss, lv, od, perm)``: the random state from ``params.seed``, ``n_ss`` words
    per symbol (fair value at its base price, no best price), the price levels' FIFO
    heads and tails, an order pool of ``max_orders`` rows of ``n_od`` words per
    symbol and each symbol's free-row permutation."""
    n, m, w = params.n_symbols, params.max_orders, params.ladder_ticks
    rng = np.array([params.seed % (1 << 64)], dtype=np.uint64)
    ss = np.zeros((n, n_ss), np.int64)
    ss[:, SK.S_FV] = [params.base_px(s) for s in range(n)]
    ss[:, SK.S_BEST] = schema.NO_PX
    ss[:, SK.S_BEST + 1] = schema.NO_PX
    lv = np.zeros((n, 2, w, SK.LV_N), np.int64)
    lv[:, :, :, SK.LV_HEAD] = -1
    lv[:, :, :, SK.LV_TAIL] = -1
    od = np.zeros((n * m, n_od), np.int64)
    perm = np.tile(np.arange(m, dtype=np.int64), (n, 1))
    return rng, ss, lv, od, perm


def _words(out: np.ndarray) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != schema.MD_DTYPE or out.ndim != 1:
        raise TypeError("out must be a 1-D MD_DTYPE array")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out.view(np.int64).reshape(len(out), SK.MD_WORDS)


def generate_into(out: np.ndarray, params: SynthParams, state: SynthState | None = None) -> SynthState:
    """Fill all of ``out`` (1-D ``MD_DTYPE``, C-contiguous) with the next ``len(out)``
    messages of the stream ``state`` (a new stream of ``params`` when ``None``).

    ``state`` is advanced in place and returned; pass it to the next call to continue.
    Chunk sizes do not matter: the concatenation of the chunks is byte-identical to one
    ``generate`` of the same total length.
    """
    if sys.byteorder != "little":  # the kernel packs record words little-endian
        raise RuntimeError("obpipe.feed_sim.synth needs a little-endian machine")
    words = _words(out)
    if state is None:
        state = new_state(params)
    elif state.params != params:
        raise ValueError("state belongs to a stream with different parameters")
    st = state
    SK.generate_words(words, len(out), st.pi, st.pf, st.qty_tab, st.sym_cum, st.G, st.rng, st.ss, st.lv, st.od,
                      st.perm, st.pend)
    return state


def generate(n_msgs: int, params: SynthParams | None = None) -> np.ndarray:
    """The first ``n_msgs`` messages of the stream of ``params`` (default parameters if
    ``None``), as a new ``MD_DTYPE`` array."""
    if n_msgs < 0:
        raise ValueError(f"n_msgs must be >= 0, got {n_msgs}")
    params = SynthParams() if params is None else params
    out = np.empty(int(n_msgs), schema.MD_DTYPE)
    generate_into(out, params)
    return out


# --- the generator's own view of the books (tests, tools; not the hot path) ------------


def book_levels(state: SynthState, symbol: int) -> tuple[dict[int, int], dict[int, int]]:
    """(bids, asks) as ``{px_tick: lots}`` of ``symbol`` after the last message handed
    out (the generator may already hold the effect of messages it has not handed out
    yet; those are undone here)."""
    p = state.params
    if not 0 <= symbol < p.n_symbols:
        raise IndexError(f"symbol {symbol} outside 0..{p.n_symbols - 1}")
    w = p.ladder_ticks
    lo = int(state.ss[symbol, SK.S_FV]) - (w // 2 - 1)
    books: list[dict[int, int]] = []
    for k in (schema.SIDE_BID, schema.SIDE_ASK):
        qty = state.lv[symbol, k, :, SK.LV_QTY]
        slots = np.flatnonzero(qty)
        px = lo + ((slots - lo) & (w - 1))
        books.append(dict(zip(px.tolist(), qty[slots].tolist())))
    pos, cnt = int(state.G[SK.G_PEND_POS]), int(state.G[SK.G_PEND_N])
    pending = state.pend[pos:cnt].copy().view(schema.MD_DTYPE).reshape(-1)
    for m in pending[pending["symbol"] == symbol]:
        kind, book, px, q = int(m["kind"]), books[int(m["side"])], int(m["px_tick"]), int(m["qty"])
        if kind == schema.K_ADD:
            q = -q
        elif kind not in (schema.K_CANCEL, schema.K_DELETE, schema.K_EXECUTE):
            continue
        left = book.get(px, 0) + q
        if left:
            book[px] = left
        else:
            book.pop(px, None)
    return books[0], books[1]


def final_books(state: SynthState) -> np.ndarray:
    """Top of book per symbol (``BBO_DTYPE`` rows) after the last message handed out,
    as the generator sees it; NO_PX / 0 for an empty side."""
    out = np.zeros(state.params.n_symbols, BBO_DTYPE)
    for s in range(len(out)):
        bids, asks = book_levels(state, s)
        bp = max(bids) if bids else schema.NO_PX
        ap = min(asks) if asks else schema.NO_PX
        out[s] = (bp, bids.get(bp, 0), ap, asks.get(ap, 0))
    return out


def message_mix(msgs: np.ndarray) -> dict[str, float]:
    """Fraction of messages of each kind (``schema.KIND_NAMES``), for reports and tests."""
    counts = np.bincount(msgs["kind"], minlength=max(schema.KIND_NAMES) + 1)
    n = max(len(msgs), 1)
    return {name: counts[k] / n for k, name in schema.KIND_NAMES.items()}
