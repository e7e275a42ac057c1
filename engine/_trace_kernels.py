"""Kernels of ``obpipe trace``: a book's top levels after every message of one symbol,
and those rows formatted as text, without Python per message.

``trace_md`` applies records one at a time through the book's own batch kernel and,
after each record of the traced symbol, writes one row: seq, ts_exch_ns, then per level
k (best first) bid px, bid qty, ask px, ask qty (NO_PX / 0 for an empty level).
``capture_md`` turns a capture's datagrams into md records through rx's own receive
kernel.  ``format_rows`` writes rows as CSV or fixed-width text into a byte buffer.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.engine import _book_kernels as BK
from obpipe.engine import _l3_kernels as LK
from obpipe.feed_sim.wire_kernels import rx_packet
from obpipe.ring import schema
from obpipe.ring.jit import HOT

NO_PX = schema.NO_PX


@njit(**HOT)
def trace_md(md, start, n, lad, S, C, ev, ev_ctrl, dirty, sym, n_levels, out, lv_px, lv_qty):
    """Apply ``md[start:start+n]`` one record at a time; after each record of symbol
    ``sym`` write a row of ``out`` (``2 + 4 * n_levels`` columns).  Stops early when
    ``out`` is full.  Returns (records applied, rows written)."""
    rows = 0
    cap = out.shape[0]
    for j in range(n):
        i = start + j
        if md[i].symbol == sym and rows == cap:
            return j, rows
        BK.apply_batch(md, i, 1, -1, lad, S, C, ev, ev_ctrl, dirty)
        if md[i].symbol != sym:
            continue
        _row(out[rows], md[i].seq, md[i].ts_exch_ns, lad, S, sym, n_levels, lv_px, lv_qty)
        rows += 1
    return n, rows


@njit(**HOT)
def trace_md_l3(md, start, n, lad, S, C, ev, ev_ctrl, dirty, O, Hd, Hx, E, sym, n_levels, out, lv_px, lv_qty):
    """``trace_md`` for per-order records (``MD_L3_DTYPE``) through the per-order book."""
    rows = 0
    cap = out.shape[0]
    for j in range(n):
        i = start + j
        if md[i].symbol == sym and rows == cap:
            return j, rows
        LK.apply_batch_l3(md, i, 1, -1, lad, S, C, ev, ev_ctrl, dirty, O, Hd, Hx, E)
        if md[i].symbol != sym:
            continue
        _row(out[rows], md[i].seq, md[i].ts_exch_ns, lad, S, sym, n_levels, lv_px, lv_qty)
        rows += 1
    return n, rows


@njit(**HOT, inline="always")
def _row(r, seq, ts, lad, S, sym, n_levels, lv_px, lv_qty):
    r[0] = seq
    r[1] = ts
    for side in range(2):
        k = BK.top_levels(lad, S, sym, side, n_levels, lv_px, lv_qty)
        for lv in range(n_levels):
            c = 2 + 4 * lv + 2 * side
            if lv < k:
                r[c] = lv_px[lv]
                r[c + 1] = lv_qty[lv]
            else:
                r[c] = NO_PX
                r[c + 1] = 0


@njit(**HOT)
def capture_md(raw, off, length, T, miss, C, allow, md_ctrl, md_rec):
    """Every datagram of a capture (``raw`` its bytes as int64 words; payload offsets
    8-aligned) through rx's receive kernel into a local md ring; returns messages
    delivered."""
    got = 0
    for i in range(off.shape[0]):
        w0 = off[i] // 8
        got += rx_packet(raw[w0:w0 + (length[i] + 7) // 8], length[i], 0, T, miss, C, allow, md_ctrl, md_rec, 0)
    return got


@njit(**HOT, inline="always")
def _digits(buf, p, v):
    """Write non-negative ``v`` in decimal at ``buf[p:]``; returns the new end."""
    if v == 0:
        buf[p] = 48
        return p + 1
    q = p
    while v > 0:
        buf[q] = 48 + v % 10
        v //= 10
        q += 1
    a, b = p, q - 1
    while a < b:
        t = buf[a]
        buf[a] = buf[b]
        buf[b] = t
        a += 1
        b -= 1
    return q


@njit(**HOT, inline="always")
def _int(buf, p, v):
    if v < 0:
        buf[p] = 45
        return _digits(buf, p + 1, -v)
    return _digits(buf, p, v)


@njit(**HOT, inline="always")
def _price(buf, p, px, tick_num, decimals):
    """px ticks x (tick_num / 10**decimals) as a decimal with ``decimals`` digits."""
    v = px * tick_num
    if v < 0:
        buf[p] = 45
        p += 1
        v = -v
    scale = 1
    for _ in range(decimals):
        scale *= 10
    p = _digits(buf, p, v // scale)
    if decimals > 0:
        buf[p] = 46
        p += 1
        f = v % scale
        for d in range(decimals - 1, -1, -1):
            div = 1
            for _ in range(d):
                div *= 10
            buf[p] = 48 + (f // div) % 10
            p += 1
    return p


@njit(**HOT, inline="always")
def _field_end(buf, start, p, width, last):
    """CSV (width 0): a comma unless last.  Fixed width: right-align to ``width``, then
    a space unless last."""
    if width > 0:
        n = p - start
        if n < width:
            sh = width - n
            for k in range(n - 1, -1, -1):
                buf[start + sh + k] = buf[start + k]
            for k in range(sh):
                buf[start + k] = 32
            p = start + width
    if not last:
        buf[p] = 44 if width == 0 else 32
        p += 1
    return p


@njit(**HOT)
def format_rows(out, n, n_levels, tick_num, decimals, width, buf):
    """Rows ``out[:n]`` as lines into ``buf`` (room: ``n * row_bytes``); prices in currency
    units, an empty level as empty fields (``-`` in fixed width).  Returns bytes written."""
    p = 0
    ncol = 2 + 4 * n_levels
    for i in range(n):
        r = out[i]
        for c in range(ncol):
            s = p
            last = c == ncol - 1
            if c < 2:
                p = _int(buf, p, r[c])
            else:
                is_px = (c - 2) % 2 == 0
                px = r[c] if is_px else r[c - 1]
                if px == NO_PX:
                    if width > 0:
                        buf[p] = 45
                        p += 1
                elif is_px:
                    p = _price(buf, p, r[c], tick_num, decimals)
                else:
                    p = _int(buf, p, r[c])
            p = _field_end(buf, s, p, width, last)
        buf[p] = 10
        p += 1
    return p


def row_bytes(n_levels: int, width: int) -> int:
    """Room one formatted row can take."""
    return (2 + 4 * n_levels) * max(width + 1, 26) + 2


def new_rows(n: int, n_levels: int) -> np.ndarray:
    return np.zeros((n, 2 + 4 * n_levels), np.int64)
