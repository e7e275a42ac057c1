"""Signals -> stories: bursts of related signals merged into one plain-words story.

A story is a function of the stored signals, not of the order they arrived in: the
signals of one (symbol, kind, side) sorted by feed time (then id) are cut into bursts
wherever two neighbours are more than ``merge_gap_ms`` of feed time apart; each burst
is one story, identified by its first signal's id.  So re-delivered signals, a restart
or a late signal give the same stories (the service recomputes the affected bursts).

Severity in [0, 1]: the burst's strongest signal on the kind's scale (below), raised
10% per further signal, capped at 1.  Texts come from templates (``[narratives]``
in the story config) filled with the burst's numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from obpipe.publisher.schema import EXAMPLE_VALUES

DEFAULT_TEMPLATES = {
    "liquidity_withdrawal": "Liquidity vanished on the {side}: depth near the touch fell {pct}% in {ms} ms at {touch}",
    "sweep": "Aggressive {action}: {n} {sweeps} through up to {levels} levels, {volume} lots in {span_ms} ms",
    "spread_widening": "Spread instability: spread {spread} ticks, {ratio}x its {baseline}",
    "imbalance": "Book leaning to the {side}: top-of-book imbalance {tob}, depth imbalance {depth}",
    "microprice_shift": "Microprice moved {direction} {ticks} ticks in {ms} ms, to {price}",
}
REPEAT_SUFFIX = " ({n} signals over {span_ms} ms)"


@dataclass(frozen=True)
class NarrativeConfig:
    merge_gap_ms: float = 1000.0  # signals of one kind/side closer than this (feed time) are one story
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    spread_median_window_s: float = 60.0  # spread stories compare with the median spread of this window


def _score(kind: str, v: dict) -> float:
    if kind == "liquidity_withdrawal":
        return float(v["drop_fraction"])
    if kind == "sweep":
        return min(1.0, v["levels"] / 8.0)
    if kind == "spread_widening":
        return min(1.0, max(0.0, (float(v["ratio"]) - 1.0) / 5.0))
    if kind == "imbalance":
        return min(1.0, abs(float(v["tob_imbalance"])))
    if kind == "microprice_shift":
        return min(1.0, abs(float(v["shift_ticks"])) / 8.0)
    return 0.5


def _price(tick, tick_size: float) -> str:
    if tick is None:
        return "an empty side"
    decimals = max(0, len(f"{tick_size:.10f}".rstrip("0").split(".")[1]))
    return f"{tick * tick_size:.{decimals}f}"


def _fmt_num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 or float(x).is_integer() else f"{x:.1f}"


def template_fields(kind: str, side, sigs: list[dict], cfg: NarrativeConfig, median_spread=None) -> dict:
    """The fields a template of ``kind`` is filled with for the burst ``sigs``: the
    same names and types for every burst of a kind."""
    strongest = max(sigs, key=lambda s: _score(kind, s["values"]))
    v = strongest["values"]
    n = len(sigs)
    span_ms = (sigs[-1]["ts_exch_ns"] - sigs[0]["ts_exch_ns"]) / 1e6
    ts = strongest["tick_size"]
    fields = {"n": n, "span_ms": _fmt_num(span_ms), "side": side or "book"}
    if kind == "liquidity_withdrawal":
        fields.update(pct=round(100 * float(v["drop_fraction"])), ms=_fmt_num(v["elapsed_ns"] / 1e6),
                      touch=_price(v["touch_tick"], ts))
    elif kind == "sweep":
        fields.update(action="buying" if side == "bid" else "selling", sweeps="sweep" if n == 1 else "sweeps",
                      levels=max(s["values"]["levels"] for s in sigs),
                      volume=sum(s["values"]["volume"] for s in sigs),
                      span_ms=_fmt_num((sigs[-1]["ts_exch_ns"] - sigs[0]["ts_exch_ns"]
                                        + sigs[0]["values"]["elapsed_ns"]) / 1e6))
    elif kind == "spread_widening":
        spread = int(v["spread_ticks"])
        if median_spread:
            ratio, base = spread / median_spread, f"{_fmt_num(cfg.spread_median_window_s)} s median"
        else:
            ratio, base = float(v["ratio"]), "recent average"
        fields.update(spread=spread, ratio=_fmt_num(ratio), baseline=base)
    elif kind == "imbalance":
        fields.update(tob=f"{float(v['tob_imbalance']):+.2f}", depth=f"{float(v['depth_imbalance']):+.2f}")
    elif kind == "microprice_shift":
        fields.update(direction="up" if float(v["shift_ticks"]) > 0 else "down",
                      ticks=_fmt_num(abs(float(v["shift_ticks"]))), ms=_fmt_num(v["elapsed_ns"] / 1e6),
                      price=_price(round(float(v["to_tick"])), ts))
    return fields


def template_error(kind: str, template: str) -> str | None:
    """Why ``template`` cannot describe a ``kind`` burst (a field it does not have, a
    bad format spec), or None: the template filled with a sample burst's fields."""
    sig = {"values": dict(EXAMPLE_VALUES[kind]), "ts_exch_ns": 0, "tick_size": 0.01}
    fields = template_fields(kind, "bid", [sig], NarrativeConfig())
    try:
        template.format(**fields)
    except KeyError as e:
        return f"names the field {e.args[0]!r}, which {kind} stories do not have (they have {', '.join(sorted(fields))})"
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        return f"not a valid template: {e}"
    return None


def describe(kind: str, side, sigs: list[dict], cfg: NarrativeConfig, median_spread=None) -> str:
    """The text of one burst ``sigs`` (dicts with ``values``, ``ts_exch_ns``,
    ``tick_size``), strongest signal's numbers first."""
    fields = template_fields(kind, side, sigs, cfg, median_spread)
    n = len(sigs)
    text = cfg.templates.get(kind, "{n} " + kind + " signals").format(**fields)
    if n > 1 and kind != "sweep":
        text += REPEAT_SUFFIX.format(**fields)
    return text


def bursts(sigs: list[dict], gap_ns: int) -> list[list[dict]]:
    """Cut feed-time-sorted signals into bursts at gaps over ``gap_ns``."""
    out: list[list[dict]] = []
    for s in sigs:
        if out and s["ts_exch_ns"] - out[-1][-1]["ts_exch_ns"] <= gap_ns:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def stories(symbol: str, kind: str, side, sigs: list[dict], cfg: NarrativeConfig, median_spread=None) -> list[tuple]:
    """Story rows (id, symbol, kind, side, start_ns, end_ns, severity, text,
    signal_ids json) for the signals of one (symbol, kind, side), sorted by
    (ts_exch_ns, id).  ``median_spread(symbol, ts_ns)`` -> ticks or None."""
    gap = int(cfg.merge_gap_ms * 1e6)
    rows = []
    for b in bursts(sigs, gap):
        best = max(_score(kind, s["values"]) for s in b)
        severity = round(min(1.0, best * (1 + 0.1 * (len(b) - 1))), 3)
        med = median_spread(symbol, b[0]["ts_exch_ns"]) if (median_spread and kind == "spread_widening") else None
        rows.append((b[0]["id"], symbol, kind, side, b[0]["ts_exch_ns"], b[-1]["ts_exch_ns"], severity,
                     describe(kind, side, b, cfg, med), json.dumps([s["id"] for s in b])))
    return rows
