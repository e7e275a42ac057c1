"""Signals-ring records (``schema.SIGNAL_DTYPE``) -> JSON messages of docs/SCHEMA.md.

The publisher's only per-message Python: signals and summaries are a few hundred to
a few thousand a second, not the feed's millions.  Field meanings per kind follow the
``iv``/``fv`` table in analysis/_kernels.py.
"""
from __future__ import annotations

import math

import numpy as np
import orjson

from obpipe.ring import schema as sc

from obpipe.publisher.schema import SCHEMA_VERSION, signal_id


def _px(v: int) -> int | None:
    return None if v == sc.NO_PX else v


def _num(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else v


_SIDE = {sc.SIDE_BID: "bid", sc.SIDE_ASK: "ask"}


def _values(kind: str, iv: list[int], fv: list[float]) -> dict:
    if kind == "spread_widening":
        return {"spread_ticks": iv[0], "baseline_ticks": fv[0], "ratio": fv[1] if math.isfinite(fv[1]) else 1e9}
    if kind == "imbalance":
        return {"tob_imbalance": fv[0], "depth_imbalance": fv[1], "bid_depth": iv[0], "ask_depth": iv[1]}
    if kind == "microprice_shift":
        return {"shift_ticks": fv[0], "from_tick": fv[1], "to_tick": fv[2], "elapsed_ns": iv[0]}
    if kind == "sweep":
        return {"levels": iv[0], "volume": iv[1], "trades": iv[2], "first_tick": iv[3], "last_tick": iv[4],
                "elapsed_ns": iv[5]}
    return {"depth_before": iv[0], "depth_after": iv[1], "drop_fraction": fv[0], "elapsed_ns": iv[2],
            "touch_tick": _px(iv[3])}


class EncodeError(ValueError):
    """Raised by ``encode`` for a record it cannot turn into a message (unknown record
    type or kind, symbol index outside the configured symbols)."""


def encode(rec, symbols: tuple[str, ...], tick_size: float) -> tuple[bool, str, dict]:
    """(is_signal, symbol, message dict) of one record (a ``SIGNAL_DTYPE`` element, or a
    row from ``records_to_rows``)."""
    rtype, kind_i, side_i, sym_i, seq, ts_exch, ts_det, bpx, apx, bq, aq, iv, fv = rec
    if not 0 <= sym_i < len(symbols):
        raise EncodeError(f"symbol index {sym_i} outside the {len(symbols)} configured symbols")
    symbol = symbols[sym_i]
    bbo = {"bid_tick": _px(bpx), "ask_tick": _px(apx), "bid_qty": bq, "ask_qty": aq}
    if rtype == sc.OUT_SIGNAL:
        kind = sc.SIGNAL_KIND_NAMES.get(kind_i)
        if kind is None:
            raise EncodeError(f"unknown signal kind {kind_i}")
        side = _SIDE.get(side_i)
        return True, symbol, {
            "type": "signal", "v": SCHEMA_VERSION, "id": signal_id(symbol, seq, kind, side), "symbol": symbol,
            "kind": kind, "side": side, "seq": seq, "ts_exch_ns": ts_exch, "ts_detect_ns": ts_det,
            "tick_size": tick_size, "bbo": bbo, "values": _values(kind, iv, fv)}
    if rtype == sc.OUT_SUMMARY:
        end = iv[0]
        secs = max(end - ts_exch, 1) / 1e9
        return False, symbol, {
            "type": "summary", "v": SCHEMA_VERSION, "symbol": symbol, "seq": seq, "start_ns": ts_exch,
            "end_ns": end, "ts_emit_ns": ts_det, "tick_size": tick_size, "bbo": bbo, "mid_tick": _num(fv[5]),
            "spread_ticks": {"min": _num(fv[0]), "mean": _num(fv[1]), "max": _num(fv[2])},
            "imbalance": {"tob": _num(fv[3]), "depth": _num(fv[4])},
            "volume": {"buy": iv[1], "sell": iv[2]}, "trades": iv[3], "messages": iv[4],
            "msgs_per_s": round(iv[4] / secs, 3), "events": iv[5]}
    raise EncodeError(f"unknown record type {rtype}")


_FIELDS = ("rtype", "kind", "side", "symbol", "seq", "ts_exch_ns", "ts_detect_ns", "bid_px_tick", "ask_px_tick",
           "bid_qty", "ask_qty", "iv", "fv")


def records_to_rows(recs: np.ndarray) -> list[tuple]:
    """Plain-Python rows (ints, floats, lists) of a batch of records, column by column
    (one ``tolist`` per field instead of numpy scalars per value)."""
    cols = [recs[f].tolist() for f in _FIELDS]
    return list(zip(*cols))


def dumps(msg: dict) -> bytes:
    return orjson.dumps(msg)
