"""Signals-ring records (``schema.SIGNAL_DTYPE``) -> JSON messages of docs/SCHEMA.md.

The publisher's only per-message Python: signals and summaries are a few hundred to
a few thousand a second, not the feed's millions.  Which ``iv``/``fv`` slot holds
which named value, per kind, is the table ``ring.schema.SIGNAL_VALUES`` (summaries:
``SUMMARY_VALUES``); this module reads the slots it names.
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


def _ratio(v: float) -> float:
    return v if math.isfinite(v) else 1e9


_SIDE = {sc.SIDE_BID: "bid", sc.SIDE_ASK: "ask"}

#: How a value of each type is published (types not named here: as it is).
_CONVERT = {sc.VT_TICK_OR_NULL: _px, sc.VT_RATIO: _ratio}

#: Per kind code: (kind name, ((value name, from iv?, index, conversion or None), ...)).
_KINDS = {
    k: (sc.SIGNAL_KIND_NAMES[k], tuple((v.name, v.slot == "iv", v.index, _CONVERT.get(v.vtype)) for v in vals))
    for k, vals in sc.SIGNAL_VALUES.items()}

#: Summary value slots, by the table's names.
_S = {v.name: v.index for v in sc.SUMMARY_VALUES}
_S_END, _S_BUY, _S_SELL, _S_TRADES, _S_MSGS, _S_EVENTS = (
    _S[n] for n in ("end_ns", "buy_volume", "sell_volume", "trades", "messages", "events"))
_S_SP_MIN, _S_SP_MEAN, _S_SP_MAX, _S_TOB, _S_DEPTH, _S_MID = (
    _S[n] for n in ("spread_min", "spread_mean", "spread_max", "tob_imbalance", "depth_imbalance", "mid_tick"))


def _values(fields, iv, fv) -> dict:
    vals = {}
    for name, is_int, i, conv in fields:
        x = iv[i] if is_int else fv[i]
        vals[name] = x if conv is None else conv(x)
    return vals


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
        got = _KINDS.get(kind_i)
        if got is None:
            raise EncodeError(f"unknown signal kind {kind_i}")
        kind, fields = got
        side = _SIDE.get(side_i)
        return True, symbol, {
            "type": "signal", "v": SCHEMA_VERSION, "id": signal_id(symbol, seq, kind, side), "symbol": symbol,
            "kind": kind, "side": side, "seq": seq, "ts_exch_ns": ts_exch, "ts_detect_ns": ts_det,
            "tick_size": tick_size, "bbo": bbo, "values": _values(fields, iv, fv)}
    if rtype == sc.OUT_SUMMARY:
        end = iv[_S_END]
        secs = max(end - ts_exch, 1) / 1e9
        return False, symbol, {
            "type": "summary", "v": SCHEMA_VERSION, "symbol": symbol, "seq": seq, "start_ns": ts_exch,
            "end_ns": end, "ts_emit_ns": ts_det, "tick_size": tick_size, "bbo": bbo, "mid_tick": _num(fv[_S_MID]),
            "spread_ticks": {"min": _num(fv[_S_SP_MIN]), "mean": _num(fv[_S_SP_MEAN]), "max": _num(fv[_S_SP_MAX])},
            "imbalance": {"tob": _num(fv[_S_TOB]), "depth": _num(fv[_S_DEPTH])},
            "volume": {"buy": iv[_S_BUY], "sell": iv[_S_SELL]}, "trades": iv[_S_TRADES], "messages": iv[_S_MSGS],
            "msgs_per_s": round(iv[_S_MSGS] / secs, 3), "events": iv[_S_EVENTS]}
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
