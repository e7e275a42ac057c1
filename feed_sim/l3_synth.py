"""Seeded, deterministic per-order (L3) flow as ``schema.MD_L3_DTYPE`` records.

The checked Python face of ``_l3_synth_kernels`` (the model is described there): a
day-like order-by-order stream over many symbols, the input of the per-order book's
tests and benchmarks.

    >>> msgs = generate_l3(5_000_000, L3SynthParams(n_symbols=1000, seed=7))

Chunks continue a stream exactly (the concatenation equals one ``generate_l3`` of the
total length)::

    state = None
    while running:
        state = generate_l3_into(buf, params, state)

The stream is consistent: references are 1, 2, 3, ... (``first_ref`` on) in arrival
order across all symbols; every execution, cancel, delete and replace names a live
order and never more shares than it has left (except the ``p_bad_ref`` injections,
which name references from ``1 << 62`` up that are never added); executions take the
best level's oldest order first; the book is never crossed or locked.  ``seq`` runs
``first_seq``, +1, ...; ``ts_exch_ns`` never decreases; ``ts_recv_ns`` is 0.  Every
message carries its symbol.  Deletes carry qty 0 (the order's rest leaves, as ITCH D).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema

from obpipe.feed_sim import _l3_synth_kernels as LS
from obpipe.feed_sim import _synth_kernels as SK
from obpipe.feed_sim.synth import DEFAULT_START_NS, _QTY_TABLE_BITS, new_books, qty_table


@dataclass(frozen=True)
class L3SynthParams:
    """Parameters of one L3 stream.  Same parameters (seed included) -> same bytes.
    Probabilities are per event (one action on one symbol: one message, or several for
    a sweep or for the orders a fair-value move leaves behind)."""

    # --- universe / stream ---
    n_symbols: int = 500  # symbols 0..n_symbols-1 (<= 65536)
    seed: int = 1
    base_px_tick: int = 2_000  # symbol s starts at base_px_tick + (s * base_px_step) % base_px_span
    base_px_step: int = 7_919
    base_px_span: int = 50_000
    start_ts_ns: int = DEFAULT_START_NS
    first_seq: int = 1
    first_ref: int = 1  # reference of the first order
    activity_skew: float = 0.8  # symbol s is picked with weight 1 / (s + 1) ** activity_skew

    # --- action mix (sums to 1); with a side empty or few orders every event adds ---
    p_add: float = 0.45
    p_delete: float = 0.395  # the whole order leaves (ITCH D)
    p_cancel: float = 0.03  # part of it (ITCH X; a 1-share order is deleted instead)
    p_replace: float = 0.08  # new price, size and reference (ITCH U)
    p_execute: float = 0.025  # a marketable order against the best (ITCH E / C per order hit)
    p_hidden: float = 0.02  # a trade against a hidden order (ITCH P)
    p_cross: float = 1e-5  # per event: a cross trade (ITCH Q)
    p_bad_ref: float = 0.0  # per event: an execution / cancel / delete of a never-added reference
    p_recent: float = 0.85  # P(a delete / cancel / replace takes one of the symbol's newest adds)
    recent_orders: int = 8  # ... among this many (power of two)

    # --- prices ---
    half_spread_ticks: int = 1
    depth_mean_ticks: float = 2.0  # mean geometric distance behind the anchor
    p_deep: float = 0.05  # P(uniform 0..max_depth_ticks instead)
    max_depth_ticks: int = 100
    p_tick: float = 0.02  # P(fv moves one tick) per event

    # --- executions ---
    p_sweep: float = 0.03  # P(a marketable order takes 2..max_sweep_levels whole levels)
    max_sweep_levels: int = 4
    p_exec_px: float = 0.03  # P(an execution is reported with a price, ITCH C)
    p_printable: float = 0.8  # ... printable (at one tick of price improvement), else not

    # --- time ---
    gap_mean_ns: float = 20_000.0  # mean gap before a non-burst event
    p_burst: float = 0.01
    burst_mean_len: float = 30.0
    burst_gap_mean_ns: float = 500.0

    # --- sizes (shares; synth.qty_table's law) ---
    qty_max: int = 2000
    qty_alpha: float = 1.2
    qty_round_boost: float = 6.0

    # --- generator capacity (memory ~ n_symbols * (64 * ladder_ticks + 72 * max_orders) bytes) ---
    ladder_ticks: int = 256  # price band per symbol: fv +- (ladder_ticks / 2 - 1)
    max_orders: int = 1024  # live orders per symbol at most
    target_orders: int = 200  # live orders per symbol the flow steers towards
    min_orders: int = 8

    def base_px(self, symbol: int) -> int:
        return self.base_px_tick + (symbol * self.base_px_step) % self.base_px_span

    def validate(self) -> None:
        """Raise ValueError on an inconsistent parameter set."""
        probs = ("p_add", "p_delete", "p_cancel", "p_replace", "p_execute", "p_hidden", "p_cross", "p_bad_ref",
                 "p_recent", "p_deep", "p_tick", "p_sweep", "p_exec_px", "p_printable", "p_burst")
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability, got {v}")
        mix = self.p_add + self.p_delete + self.p_cancel + self.p_replace + self.p_execute + self.p_hidden
        if abs(mix - 1.0) > 1e-9 or self.p_add <= 0:
            raise ValueError(f"p_add + p_delete + p_cancel + p_replace + p_execute + p_hidden must be 1 "
                             f"(p_add > 0), got {mix}")
        if not 1 <= self.n_symbols <= 1 << 16:
            raise ValueError(f"n_symbols must be 1..65536, got {self.n_symbols}")
        w = self.ladder_ticks
        if w < 64 or w & (w - 1):
            raise ValueError(f"ladder_ticks must be a power of two >= 64, got {w}")
        if self.half_spread_ticks < 1 or self.half_spread_ticks + self.max_depth_ticks > w // 2 - 1:
            raise ValueError(f"need half_spread_ticks >= 1 and half_spread_ticks + max_depth_ticks <= "
                             f"ladder_ticks / 2 - 1 = {w // 2 - 1}")
        r = self.recent_orders
        if r < 1 or r & (r - 1):
            raise ValueError(f"recent_orders must be a power of two, got {r}")
        if self.max_sweep_levels < 2 or self.burst_mean_len < 1 or self.depth_mean_ticks < 0:
            raise ValueError("need max_sweep_levels >= 2, burst_mean_len >= 1, depth_mean_ticks >= 0")
        for name in ("gap_mean_ns", "burst_gap_mean_ns", "activity_skew"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be finite and >= 0")
        if self.base_px_tick < w or self.base_px_tick + self.base_px_span > 1 << 40 or self.base_px_span < 1:
            raise ValueError("base prices must be in [ladder_ticks, 2**40]")
        if not 1 <= self.qty_max < 1 << 31 or self.qty_alpha < 0 or self.qty_round_boost <= 0:
            raise ValueError("need 1 <= qty_max < 2**31, qty_alpha >= 0, qty_round_boost > 0")
        if not 1 <= self.min_orders <= self.target_orders < self.max_orders - 1:
            raise ValueError("need 1 <= min_orders <= target_orders < max_orders - 1")
        if self.start_ts_ns < 0 or self.first_seq < 0 or not 0 <= self.first_ref < LS.BAD_REF_BASE // 2:
            raise ValueError("start_ts_ns, first_seq must be >= 0 and first_ref in [0, 2**61)")


def _inv_log_geom(mean: float) -> float:
    return 0.0 if mean <= 0 else 1.0 / math.log(mean / (1.0 + mean))


def _packed(p: L3SynthParams):
    pi = np.zeros(LS.NPI, np.int64)
    pi[LS.PI_W] = p.ladder_ticks
    pi[LS.PI_H] = p.ladder_ticks // 2 - 1
    pi[LS.PI_M] = p.max_orders
    pi[LS.PI_TARGET] = p.target_orders
    pi[LS.PI_MIN] = p.min_orders
    pi[LS.PI_HALF_SPREAD] = p.half_spread_ticks
    pi[LS.PI_MAX_DEPTH] = p.max_depth_ticks
    pi[LS.PI_MAX_SWEEP] = p.max_sweep_levels
    pi[LS.PI_QTY_SHIFT] = 64 - _QTY_TABLE_BITS
    pi[LS.PI_RECENT] = p.recent_orders
    pf = np.zeros(LS.NPF, np.float64)
    pf[LS.PF_C_ADD:LS.PF_C_EXECUTE + 1] = np.cumsum([p.p_add, p.p_delete, p.p_cancel, p.p_replace, p.p_execute])
    pf[LS.PF_P_CROSS] = p.p_cross
    pf[LS.PF_P_BAD_REF] = p.p_bad_ref
    pf[LS.PF_P_RECENT] = p.p_recent
    pf[LS.PF_INV_LOG_DEPTH] = _inv_log_geom(p.depth_mean_ticks)
    pf[LS.PF_P_DEEP] = p.p_deep
    pf[LS.PF_P_SWEEP] = p.p_sweep
    pf[LS.PF_P_EXEC_PX] = p.p_exec_px
    pf[LS.PF_P_PRINTABLE] = p.p_printable
    pf[LS.PF_P_TICK] = p.p_tick
    pf[LS.PF_P_BURST] = p.p_burst
    pf[LS.PF_INV_LOG_BURST] = _inv_log_geom(p.burst_mean_len - 1)
    pf[LS.PF_GAP_NS] = p.gap_mean_ns
    pf[LS.PF_BURST_GAP_NS] = p.burst_gap_mean_ns
    wts = 1.0 / (np.arange(1, p.n_symbols + 1, dtype=np.float64) ** p.activity_skew)
    sym_cum = np.cumsum(wts)
    sym_cum /= sym_cum[-1]
    return pi, pf, qty_table(p), sym_cum


@dataclass
class L3SynthState:
    """Everything needed to continue a stream (advanced in place by ``generate_l3_into``)."""

    params: L3SynthParams
    G: np.ndarray
    rng: np.ndarray
    ss: np.ndarray
    lv: np.ndarray
    od: np.ndarray
    perm: np.ndarray
    rec: np.ndarray
    pend: np.ndarray
    pi: np.ndarray
    pf: np.ndarray
    qty_tab: np.ndarray
    sym_cum: np.ndarray

    @property
    def n_emitted(self) -> int:
        return int(self.G[LS.G_EMITTED])

    @property
    def n_pending(self) -> int:
        """Messages of the current event not handed out yet."""
        return int(self.G[LS.G_PEND_N] - self.G[LS.G_PEND_POS])

    @property
    def n_bad_refs(self) -> int:
        """Never-added references injected so far (``p_bad_ref``), pending ones included."""
        return int(self.G[LS.G_BAD])

    def live_orders(self) -> dict[int, tuple[int, int, int, int]]:
        """The generator's live orders, ``ref -> (symbol, side, px_tick, qty)``, with the
        current event complete (call ``finish_event`` first if ``n_pending``)."""
        if self.n_pending:
            raise ValueError(f"{self.n_pending} messages of the current event are pending: finish_event() first")
        live = self.od[:, SK.O_QTY] > 0
        sym = np.flatnonzero(live) // self.params.max_orders
        o = self.od[live]
        return {int(r): (int(s), int(k), int(px), int(q)) for r, s, k, px, q in zip(
            o[:, LS.O_REF], sym, o[:, SK.O_SIDE], o[:, SK.O_PX], o[:, SK.O_QTY])}


def new_state(params: L3SynthParams) -> L3SynthState:
    """A fresh stream: empty books, fair values at the base prices."""
    params.validate()
    pi, pf, qtab, sym_cum = _packed(params)
    G = np.zeros(LS.NG, np.int64)
    G[LS.G_T] = params.start_ts_ns
    G[LS.G_SEQ] = params.first_seq
    G[LS.G_REF] = params.first_ref
    rng, ss, lv, od, perm = new_books(params, LS.NSS, LS.NO)
    rec = np.zeros((params.n_symbols, params.recent_orders, 2), np.int64)
    pend = np.zeros((2 * params.max_orders + 8, LS.L3_WORDS), np.int64)  # an event emits <= 2 x live orders + 1
    return L3SynthState(params, G, rng, ss, lv, od, perm, rec, pend, pi, pf, qtab, sym_cum)


def _words(out: np.ndarray) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != schema.MD_L3_DTYPE or out.ndim != 1:
        raise TypeError("out must be a 1-D MD_L3_DTYPE array")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    return out.view(np.int64).reshape(len(out), LS.L3_WORDS)


def generate_l3_into(out: np.ndarray, params: L3SynthParams, state: L3SynthState | None = None) -> L3SynthState:
    """Fill all of ``out`` (1-D ``MD_L3_DTYPE``) with the next ``len(out)`` messages of
    the stream ``state`` (a new stream of ``params`` when None); returns the state,
    advanced in place."""
    if sys.byteorder != "little":
        raise RuntimeError("obpipe.feed_sim.l3_synth needs a little-endian machine")
    words = _words(out)
    if state is None:
        state = new_state(params)
    elif state.params != params:
        raise ValueError("state belongs to a stream with different parameters")
    st = state
    LS.generate_words(words, len(out), st.pi, st.pf, st.qty_tab, st.sym_cum, st.G, st.rng, st.ss, st.lv, st.od,
                      st.perm, st.rec, st.pend)
    return state


def generate_l3(n_msgs: int, params: L3SynthParams | None = None) -> np.ndarray:
    """The first ``n_msgs`` messages of the stream of ``params`` (defaults if None)."""
    if n_msgs < 0:
        raise ValueError(f"n_msgs must be >= 0, got {n_msgs}")
    out = np.empty(int(n_msgs), schema.MD_L3_DTYPE)
    generate_l3_into(out, L3SynthParams() if params is None else params)
    return out


def finish_event(state: L3SynthState) -> np.ndarray:
    """The rest of the current event's messages (possibly none), handed out."""
    out = np.empty(state.n_pending, schema.MD_L3_DTYPE)
    if len(out):
        generate_l3_into(out, state.params, state)
    return out


def message_mix(msgs: np.ndarray) -> dict[str, float]:
    """Fraction of messages of each L3 kind (``schema.L3_KIND_NAMES``)."""
    counts = np.bincount(msgs["kind"], minlength=max(schema.L3_KIND_NAMES) + 1)
    n = max(len(msgs), 1)
    return {name: counts[k] / n for k, name in schema.L3_KIND_NAMES.items()}
