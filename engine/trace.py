"""``obpipe trace``: one symbol's top N levels after every message that touches it, for
any input obpipe reads (a LOBSTER message file, a capture, an ITCH 5.0 file through the
per-order book), the tool to reach for when a book looks wrong.

CSV: a header, then per message ``seq,ts_ns`` and for each level k = 1..N
``bid_px_k,bid_qty_k,ask_px_k,ask_qty_k``; prices in currency units, an empty level as
empty fields.  Without ``csv`` the same columns, right-aligned, ``-`` for an empty level.
The book is the one the pipeline runs (the same kernels, one message at a time:
``_trace_kernels``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from obpipe.engine import _trace_kernels as TK
from obpipe.engine.book import Book
from obpipe.engine.l3 import L3Book
from obpipe.ring import schema

CHUNK_ROWS = 1 << 16
TEXT_WIDTH = 12


class TraceError(ValueError):
    """The input or the symbol cannot be traced; the message says why."""


def tick_units(tick_size: float) -> tuple[int, int]:
    """A tick size as (numerator, decimals): 0.01 -> (1, 2), 0.005 -> (5, 3)."""
    d = Decimal(str(tick_size)).normalize()
    if d <= 0:
        raise TraceError(f"tick size must be > 0, got {tick_size}")
    exp = -d.as_tuple().exponent
    decimals = max(exp, 0)
    return int(d.scaleb(decimals)), decimals


@dataclass
class Source:
    """What to trace: md records, the traced symbol's index and name, its tick size,
    the ladder width per symbol and whether adds uncross stale levels."""

    md: np.ndarray
    sym: int
    name: str
    tick_size: float
    widths: list[int]
    uncross: bool = False
    l3_orders: int = 0  # > 0: per-order records (ITCH) through a per-order book this big


def header(n_levels: int) -> list[str]:
    cols = ["seq", "ts_ns"]
    for k in range(1, n_levels + 1):
        cols += [f"bid_px_{k}", f"bid_qty_{k}", f"ask_px_{k}", f"ask_qty_{k}"]
    return cols


def trace(src: Source, n_levels: int = 5, csv: bool = True, out=None) -> int:
    """Write the trace of ``src`` to ``out`` (a binary stream; default stdout); returns
    rows written."""
    if not 1 <= n_levels <= 1000:
        raise TraceError(f"--levels must be 1..1000, got {n_levels}")
    out = out if out is not None else sys.stdout.buffer
    width = 0 if csv else TEXT_WIDTH
    tick_num, decimals = tick_units(src.tick_size)
    book = (L3Book(src.widths, src.l3_orders, n_levels=n_levels) if src.l3_orders
            else Book(src.widths, n_levels=n_levels, uncross=src.uncross))
    rows = TK.new_rows(CHUNK_ROWS, n_levels)
    buf = np.zeros(CHUNK_ROWS * TK.row_bytes(n_levels, width), np.uint8)
    lv_px, lv_qty = np.zeros(n_levels, np.int64), np.zeros(n_levels, np.int64)
    cols = header(n_levels)
    out.write(((",".join(cols)) if csv else " ".join(c.rjust(width) for c in cols)).encode() + b"\n")
    md, start, total = src.md, 0, 0
    while start < len(md):
        common = (md, start, len(md) - start, book.lad, book.S, book.C, book.ev, book.ev_ctrl, book.dirty)
        if src.l3_orders:
            k, r = TK.trace_md_l3(*common, *book.table, src.sym, n_levels, rows, lv_px, lv_qty)
        else:
            k, r = TK.trace_md(*common, src.sym, n_levels, rows, lv_px, lv_qty)
        nb = TK.format_rows(rows, r, n_levels, tick_num, decimals, width, buf)
        out.write(buf[:nb].tobytes())
        start += k
        total += r
    out.flush()
    return total


def from_lobster(path: str, symbol: str | None, levels: int) -> Source:
    """A LOBSTER message file: its ticker is the one symbol (``symbol`` must name it,
    or be None); prices in the file's own ticks (LOBSTER units x the detected divisor)."""
    from obpipe.engine import lobster

    ticker, _day = lobster.file_info(path)
    if symbol is not None and ticker is not None and symbol != ticker:
        raise TraceError(f"{path} holds {ticker}, not {symbol}")
    md, d = lobster.load_messages(path, return_tick=True)
    return Source(md, 0, symbol or ticker or "?", d / 10_000, [lobster_width(md)], uncross=True)


def lobster_width(md: np.ndarray) -> int:
    """The ladder width (ticks) for LOBSTER records ``md``: ``lobster.auto_width`` of
    their prices (halts, whose price field is a code, left out), 1,024 without any."""
    from obpipe.engine import lobster

    px = md["px_tick"][(md["px_tick"] > 0) & (md["kind"] != schema.K_HEARTBEAT)]
    return lobster.auto_width(px) if len(px) else 1024


def from_capture(path: str, symbol: str, symbols: tuple[str, ...], widths: list[int], tick_size: float) -> Source:
    """A capture (.obcap): its datagrams through rx's receive kernel (sequence checks,
    duplicates and gaps as rx handles them), symbols named by the config."""
    from obpipe.feed_sim import capture as capmod
    from obpipe.feed_sim import wire_kernels as WK

    if symbol not in symbols:
        raise TraceError(f"symbol {symbol} is not one of the config's [book] symbols ({', '.join(symbols)})")
    cap = capmod.read(path)
    if (cap.off % 8).any():
        raise TraceError(f"{path}: datagram payloads not 8-byte aligned (not a capture this obpipe wrote)")
    n = int(cap.msgs.sum())
    slots = 1 << max(int(n).bit_length(), 4)
    ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
    rec = np.zeros(slots, schema.MD_DTYPE)
    T = np.zeros(WK.NT, np.int64)
    miss = np.zeros((WK.MAX_MISSING, 2), np.int64)
    C = WK.receiver_config(accept_new_session=True)
    got = int(TK.capture_md(cap.raw.view(np.int64), cap.off, cap.length, T, miss, C, WK.NO_ALLOW, ctrl, rec))
    return Source(rec[:got], symbols.index(symbol), symbol, tick_size, list(widths))


def from_itch(path: str, symbol: str, width: int, tick_size: float, l3_orders: int) -> Source:
    """An ITCH 5.0 file (plain or gzip): the stock ``symbol`` chosen by its stock
    directory name, through the per-order book."""
    from obpipe.feed_sim import itch

    day = itch.file_day_ns(path) or 0
    recs, names, c = itch.decode(itch.read_itch(path), [symbol], tick_divisor=round(tick_size * 10_000), day_ns=day)
    if not c["symbols"]:
        raise TraceError(f"{path}: no stock directory message or order names {symbol}")
    return Source(recs, 0, symbol, tick_size, [width], l3_orders=l3_orders)
