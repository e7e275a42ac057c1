"""The one packer and unpacker of each record word that kernels write as an int64.

Kernels write a record as whole 8-byte words (a market-data message is 4 or 5 stores
instead of 8 field stores), so the small fields that share a word are packed by shifts:
word 0 of a market-data record (``kind | side << 8 | symbol << 16 | qty << 32``), words 0
and 1 of an order-entry report, words 0 and 2 of a UDP packet header.  Every shift and
mask here is read from the dtypes of ``obpipe.ring.schema`` at import, and the fields a
word is packed from must tile that word exactly, so a layout change either moves the
packing with it or fails at import; nowhere else in obpipe spells a shift of a record
field.  The word indices of the whole-word fields (``MD_W_*``, ``WIRE_W_*``, ``REP_W_*``)
come from the same dtypes.

The packers mask every field to its width (a value never bleeds into its neighbour) and
return int64; the unpackers return each field as a non-negative int64.  They are
``inline="always"``: inside a kernel they are the same shifts and masks written by hand
(the constants fold; docs/DECISIONS.md "One packer per record word").
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT


def _word_fields(dt: np.dtype, word: int, names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(shift, mask) of each of ``names``, the integer fields that tile word ``word`` of ``dt``."""
    out = []
    covered = 0
    for name in names:
        fdt, off = dt.fields[name][:2]
        if fdt.shape or fdt.kind not in "ui":
            raise AssertionError(f"{name}: not a scalar integer field")
        if off // 8 != word or (off + fdt.itemsize - 1) // 8 != word:
            raise AssertionError(f"{name}: bytes {off}..{off + fdt.itemsize - 1} are not inside word {word}")
        bits = ((1 << 8 * fdt.itemsize) - 1) << 8 * (off % 8)
        if covered & bits:
            raise AssertionError(f"{name}: overlaps another field of word {word}")
        covered |= bits
        out.append((8 * (off % 8), (1 << 8 * fdt.itemsize) - 1))
    if covered != (1 << 64) - 1:
        raise AssertionError(f"the fields {names} do not fill word {word} of {dt}")
    return tuple(out)


def _word_of(dt: np.dtype, name: str) -> int:
    """Word index of an 8-byte field."""
    fdt, off = dt.fields[name][:2]
    if fdt.itemsize != 8 or off % 8:
        raise AssertionError(f"{name}: not a whole aligned word")
    return off // 8


# --- market-data message, word 0 (MD_DTYPE and WIRE_MSG_DTYPE share it) ---------------

MD_W0_FIELDS = ("kind", "side", "symbol", "qty")
(_KIND_SH, _KIND_M), (_SIDE_SH, _SIDE_M), (_SYM_SH, _SYM_M), (_QTY_SH, _QTY_M) = \
    _word_fields(schema.MD_DTYPE, 0, MD_W0_FIELDS)
if _word_fields(schema.WIRE_MSG_DTYPE, 0, MD_W0_FIELDS) != _word_fields(schema.MD_DTYPE, 0, MD_W0_FIELDS):
    raise AssertionError("word 0 of WIRE_MSG_DTYPE and MD_DTYPE differ: md_w0 serves both")

#: Word indices of MD_DTYPE (the md ring's records as int64 words).
MD_W_PX = _word_of(schema.MD_DTYPE, "px_tick")
MD_W_SEQ = _word_of(schema.MD_DTYPE, "seq")
MD_W_TS_EXCH = _word_of(schema.MD_DTYPE, "ts_exch_ns")
MD_W_TS_RECV = _word_of(schema.MD_DTYPE, "ts_recv_ns")
MD_WORDS = schema.words_of(schema.MD_DTYPE)
#: Word indices of WIRE_MSG_DTYPE (a UDP message, and the exchange's market-data buffer).
WIRE_W_ORDER_ID = _word_of(schema.WIRE_MSG_DTYPE, "order_id")
WIRE_W_PX = _word_of(schema.WIRE_MSG_DTYPE, "px_tick")
WIRE_W_TS_EXCH = _word_of(schema.WIRE_MSG_DTYPE, "ts_exch_ns")
WIRE_MSG_WORDS = schema.words_of(schema.WIRE_MSG_DTYPE)


@njit(**HOT, inline="always")
def md_w0(kind, side, symbol, qty):
    """Word 0 of a market-data record (MD_DTYPE or WIRE_MSG_DTYPE) from its four fields."""
    return (((np.int64(kind) & _KIND_M) << _KIND_SH) | ((np.int64(side) & _SIDE_M) << _SIDE_SH)
            | ((np.int64(symbol) & _SYM_M) << _SYM_SH) | ((np.int64(qty) & _QTY_M) << _QTY_SH))


@njit(**HOT, inline="always")
def md_w0_fields(w0):
    """(kind, side, symbol, qty) of word 0 of a market-data record."""
    return ((w0 >> _KIND_SH) & _KIND_M, (w0 >> _SIDE_SH) & _SIDE_M, (w0 >> _SYM_SH) & _SYM_M,
            (w0 >> _QTY_SH) & _QTY_M)


# --- order-entry report (ORDER_OUT_DTYPE), words 0 and 1 ------------------------------

REPORT_W0_FIELDS = ("type", "side", "reason", "flags", "symbol", "_reserved")
REPORT_W1_FIELDS = ("qty", "leaves")
(_RT_SH, _RT_M), (_RS_SH, _RS_M), (_RR_SH, _RR_M), (_RF_SH, _RF_M), (_RY_SH, _RY_M), _ = \
    _word_fields(schema.ORDER_OUT_DTYPE, 0, REPORT_W0_FIELDS)
(_RQ_SH, _RQ_M), (_RL_SH, _RL_M) = _word_fields(schema.ORDER_OUT_DTYPE, 1, REPORT_W1_FIELDS)
#: Word indices of ORDER_OUT_DTYPE.
REP_W_PX = _word_of(schema.ORDER_OUT_DTYPE, "px_tick")
REP_W_ORDER_ID = _word_of(schema.ORDER_OUT_DTYPE, "order_id")
REPORT_WORDS = schema.words_of(schema.ORDER_OUT_DTYPE)


@njit(**HOT, inline="always")
def report_w0(typ, side, reason, flags, symbol):
    """Word 0 of an order-entry report (``_reserved`` 0)."""
    return (((np.int64(typ) & _RT_M) << _RT_SH) | ((np.int64(side) & _RS_M) << _RS_SH)
            | ((np.int64(reason) & _RR_M) << _RR_SH) | ((np.int64(flags) & _RF_M) << _RF_SH)
            | ((np.int64(symbol) & _RY_M) << _RY_SH))


@njit(**HOT, inline="always")
def report_w0_fields(w0):
    """(type, side, reason, flags, symbol) of word 0 of a report."""
    return ((w0 >> _RT_SH) & _RT_M, (w0 >> _RS_SH) & _RS_M, (w0 >> _RR_SH) & _RR_M, (w0 >> _RF_SH) & _RF_M,
            (w0 >> _RY_SH) & _RY_M)


@njit(**HOT, inline="always")
def report_w1(qty, leaves):
    """Word 1 of an order-entry report."""
    return ((np.int64(qty) & _RQ_M) << _RQ_SH) | ((np.int64(leaves) & _RL_M) << _RL_SH)


@njit(**HOT, inline="always")
def report_w1_fields(w1):
    """(qty, leaves) of word 1 of a report."""
    return (w1 >> _RQ_SH) & _RQ_M, (w1 >> _RL_SH) & _RL_M


# --- UDP packet header (WIRE_HEADER_DTYPE), words 0 and 2 -----------------------------

WIRE_H0_FIELDS = ("magic", "version", "flags", "session")
WIRE_H2_FIELDS = ("count", "msg_size", "check")
(_HM_SH, _HM_M), (_HV_SH, _HV_M), (_HF_SH, _HF_M), (_HS_SH, _HS_M) = \
    _word_fields(schema.WIRE_HEADER_DTYPE, 0, WIRE_H0_FIELDS)
(_HC_SH, _HC_M), (_HZ_SH, _HZ_M), (_HK_SH, _HK_M) = _word_fields(schema.WIRE_HEADER_DTYPE, 2, WIRE_H2_FIELDS)
#: Word indices of the header: word 0 (wire_h0), the first sequence number, word 2
#: (wire_h2); messages start at word WIRE_HEADER_WORDS.
WIRE_W_H0 = schema.WIRE_HEADER_DTYPE.fields[WIRE_H0_FIELDS[0]][1] // 8
WIRE_W_SEQ = _word_of(schema.WIRE_HEADER_DTYPE, "seq")
WIRE_W_H2 = schema.WIRE_HEADER_DTYPE.fields[WIRE_H2_FIELDS[0]][1] // 8
WIRE_HEADER_WORDS = schema.words_of(schema.WIRE_HEADER_DTYPE)


@njit(**HOT, inline="always")
def wire_h0(magic, version, flags, session):
    """Word 0 of a packet header."""
    return (((np.int64(magic) & _HM_M) << _HM_SH) | ((np.int64(version) & _HV_M) << _HV_SH)
            | ((np.int64(flags) & _HF_M) << _HF_SH) | ((np.int64(session) & _HS_M) << _HS_SH))


@njit(**HOT, inline="always")
def wire_h0_fields(h0):
    """(magic, version, flags, session) of word 0 of a packet header."""
    return (h0 >> _HM_SH) & _HM_M, (h0 >> _HV_SH) & _HV_M, (h0 >> _HF_SH) & _HF_M, (h0 >> _HS_SH) & _HS_M


@njit(**HOT, inline="always")
def wire_h2(count, msg_size, check):
    """Word 2 of a packet header."""
    return (((np.int64(count) & _HC_M) << _HC_SH) | ((np.int64(msg_size) & _HZ_M) << _HZ_SH)
            | ((np.int64(check) & _HK_M) << _HK_SH))


@njit(**HOT, inline="always")
def wire_h2_fields(h2):
    """(count, msg_size, check) of word 2 of a packet header."""
    return (h2 >> _HC_SH) & _HC_M, (h2 >> _HZ_SH) & _HZ_M, (h2 >> _HK_SH) & _HK_M
