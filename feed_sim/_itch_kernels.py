"""Compiled Nasdaq TotalView-ITCH 5.0 codec: length-prefixed messages <-> ``MD_L3_DTYPE``.

Design
------
Input is a uint8 buffer of messages, each a 2-byte big-endian length then the message
(Nasdaq's ``*.NASDAQ_ITCH50`` files; a MoldUDP64 packet's message blocks have the same
framing).  ``decode_l3`` walks it once and writes one ``MD_L3_DTYPE`` record per
book-relevant message (A/F add, E exec, C exec with price, X cancel, D delete, U replace,
P trade, Q cross); every other type is validated, counted and passed over.  Fields are
read byte by byte at the spec's fixed offsets (``O_*`` below; ``itch.py`` asserts them
against its per-type dtypes), so there is no alignment or endianness assumption.

State lives in caller-owned arrays, so the kernel never allocates and a caller can call
it in batches (a bench on a preallocated output, rx once per datagram):

* ``D`` - int64 decoder state and settings (``D_*``): read position, next sequence
  number, records in ``out``, symbols assigned, session midnight, tick divisor, modes.
* ``C`` - int64 counters (``C_*``, names in ``COUNTER_NAMES``).  Every complete message
  gets exactly one disposition:
  messages == records + other + unknown_type + bad_length + bad_field + subtick
              + skipped_symbol + unknown_locate
* ``loc`` - int32[65536], stock locate -> symbol index (>= 0); ``LOC_UNDECIDED`` (-1)
  nothing known yet; ``LOC_UNSELECTED`` (-2) known and not wanted.  ``names`` - uint64
  per symbol index: the stock name as a big-endian key (8 space-padded ASCII bytes, so
  keys sort like the names); 0 = not known yet.

Symbol selection (``D_MODE``): ``MODE_WANTED`` selects the stocks whose key is in
``wanted`` (symbol index = position in ``wanted``); ``MODE_ALL`` gives each new stock the
next index up to ``names.size`` (more are counted ``symbol_overflow`` and skipped).  A
locate is decided by its stock directory (R) message; before one (a stream that starts
after the R messages), ``D_UNKNOWN`` says: ``UNK_SKIP`` skip its messages, ``UNK_NAME``
decide it by the first message that names its stock (A, F, P, Q), ``UNK_ANY`` (MODE_ALL
only) also give an index to the first E/C/X/D/U of it (its name filled in by a later
R/A/F/P/Q).  Messages of a negative locate cost one table load and are counted.

Resumable: the kernel stops (status ``FULL``) before a message when ``out`` is full,
and (status ``PARTIAL``) at a message the buffer ends inside, with ``D_POS`` at that
message's length prefix; with ``D_FINAL`` set, a cut message is counted ``truncated``
and the buffer is consumed instead.  Alternatives rejected: decoding into per-type
arrays first (a second pass and far more memory for a book that needs 8 types).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.jit import HOT, HOT_NOALIAS

#: Every message type of ITCH 5.0 and its length in bytes (the specification's table).
SPEC_LENGTHS = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21,
    "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40, "B": 19,
    "I": 50, "N": 20, "O": 48,
}
#: The type letters in counter-slot order (``C_TYPE0 + i`` counts ``TYPE_CODES[i]``).
TYPE_CODES = "".join(SPEC_LENGTHS)
MAX_MSG_LEN = max(SPEC_LENGTHS.values())  # 50 (I)
MIN_MSG_LEN = min(SPEC_LENGTHS.values())  # 12 (S, W)
#: The shortest message that makes a record (D, 19 bytes): a buffer of b bytes makes at
#: most b // (2 + MIN_BOOK_LEN) records.
MIN_BOOK_LEN = min(SPEC_LENGTHS[c] for c in "AFECXDUPQ")


def _tables():
    slot = np.full(256, -1, np.int64)
    length = np.zeros(256, np.int64)
    for i, c in enumerate(TYPE_CODES):
        slot[ord(c)] = i
        length[ord(c)] = SPEC_LENGTHS[c]
    return slot, length


_SLOT, _LEN = _tables()  # by type byte: counter slot (-1 unknown), spec length
_BOOK = np.zeros(256, np.int64)  # by type byte: 1 for the types that become records
for _c in "AFECXDUPQ":
    _BOOK[ord(_c)] = 1

# Type bytes.
T_S, T_R, T_A, T_F, T_E, T_C, T_X, T_D, T_U, T_P, T_Q = (ord(c) for c in "SRAFECXDUPQ")

# Byte offsets inside a message (the spec's; itch.py asserts them against its dtypes).
O_LOCATE = 1  # stock_locate u2, every type
O_TRACKING = 3  # tracking_number u2
O_TS = 5  # timestamp, 6 bytes, ns after midnight
O_REF = 11  # order_reference_number u8 (A F E C X D P); original_order_reference_number (U)
O_AP_SIDE = 19  # buy_sell_indicator (A F P)
O_AP_SHARES = 20  # shares u4 (A F P)
O_AP_STOCK = 24  # stock 8 (A F P)
O_AP_PRICE = 32  # price u4 (A F P)
O_F_ATTRIBUTION = 36  # attribution 4 (F)
O_P_MATCH = 36  # match_number u8 (P)
O_EC_SHARES = 19  # executed_shares u4 (E C)
O_EC_MATCH = 23  # match_number u8 (E C)
O_C_PRINTABLE = 31  # printable (C)
O_C_PRICE = 32  # execution_price u4 (C)
O_X_SHARES = 19  # cancelled_shares u4 (X)
O_U_NEW_REF = 19  # new_order_reference_number u8 (U)
O_U_SHARES = 27  # shares u4 (U)
O_U_PRICE = 31  # price u4 (U)
O_Q_SHARES = 11  # shares u8 (Q)
O_Q_STOCK = 19  # stock 8 (Q)
O_Q_PRICE = 27  # cross_price u4 (Q)
O_Q_MATCH = 31  # match_number u8 (Q)
O_Q_CROSS_TYPE = 39  # cross_type (Q)
O_R_STOCK = 11  # stock 8 (R)
O_S_EVENT = 11  # event_code (S)

# Decoder state and settings (D), int64 each.
D_POS = 0  # in/out: byte offset of the next length prefix
D_SEQ = 1  # in/out: sequence number of the next message (every framed message takes one)
D_NOUT = 2  # in/out: records written to out (the kernel appends from here)
D_NSYM = 3  # in/out: symbol indices assigned so far (MODE_ALL)
D_DAY_NS = 4  # UTC epoch ns of the session's midnight (New York); ts_exch_ns = this + timestamp
D_TICK_DIV = 5  # ITCH price units (1e-4 USD) per tick: 100 for 0.01 ticks
D_MODE = 6  # MODE_ALL / MODE_WANTED
D_UNKNOWN = 7  # UNK_SKIP / UNK_NAME / UNK_ANY: messages of a locate no R message named
D_FINAL = 8  # 1: the buffer ends the input (a cut message at its end is counted truncated)
D_RECV_NS = 9  # written to every record's ts_recv_ns
ND = 16

MODE_ALL = 0
MODE_WANTED = 1
UNK_SKIP = 0
UNK_NAME = 1
UNK_ANY = 2

LOC_UNDECIDED = -1
LOC_UNSELECTED = -2
N_LOCATES = 1 << 16

# Statuses of decode_l3.
DONE = 0  # the buffer was consumed
FULL = 1  # out is full: call again with room (D_NOUT reset), from D_POS
PARTIAL = 2  # the buffer ends inside the message at D_POS: call again with more bytes

# Counters (C), int64 each.
C_MESSAGES = 0  # complete messages framed (each took a sequence number)
C_RECORDS = 1  # MD_L3 records written
C_OTHER = 2  # well-formed messages of types the book does not use (incl. R)
C_UNKNOWN_TYPE = 3  # a type byte that is not ITCH 5.0
C_BAD_LENGTH = 4  # length prefix 0 or not the spec's length for its type
C_TRUNCATED = 5  # a message cut by the end of the input (D_FINAL)
C_BAD_FIELD = 6  # side not B/S, printable not Y/N, cross shares beyond 32 bits
C_SUBTICK = 7  # a price that is not a whole number of ticks (message skipped)
C_SKIPPED_SYMBOL = 8  # book messages of a locate not selected
C_UNKNOWN_LOCATE = 9  # book messages of a locate not decided yet (no R, no name seen)
C_OUT_FULL = 10  # kernel calls that stopped because out was full
C_SYMBOLS = 11  # symbols selected (a locate mapped to an index)
C_SYMBOL_OVERFLOW = 12  # MODE_ALL: stocks refused because every index was taken
C_LOCATE_CONFLICT = 13  # an R naming another stock for a locate already mapped (kept)
C_TYPE0 = 16  # C_TYPE0 + i: well-formed messages of type TYPE_CODES[i]
NC = C_TYPE0 + len(TYPE_CODES)
COUNTER_NAMES = {
    C_MESSAGES: "messages", C_RECORDS: "records", C_OTHER: "other", C_UNKNOWN_TYPE: "unknown_type",
    C_BAD_LENGTH: "bad_length", C_TRUNCATED: "truncated", C_BAD_FIELD: "bad_field", C_SUBTICK: "subtick",
    C_SKIPPED_SYMBOL: "skipped_symbol", C_UNKNOWN_LOCATE: "unknown_locate", C_OUT_FULL: "out_full",
    C_SYMBOLS: "symbols", C_SYMBOL_OVERFLOW: "symbol_overflow", C_LOCATE_CONFLICT: "locate_conflict",
}
#: The dispositions: every complete message is counted in exactly one.
DISPOSITIONS = (C_RECORDS, C_OTHER, C_UNKNOWN_TYPE, C_BAD_LENGTH, C_BAD_FIELD, C_SUBTICK, C_SKIPPED_SYMBOL,
                C_UNKNOWN_LOCATE)

_ADD = schema.L3_ADD
_EXEC = schema.L3_EXEC
_EXEC_PX = schema.L3_EXEC_PX
_CANCEL = schema.L3_CANCEL
_DELETE = schema.L3_DELETE
_REPLACE = schema.L3_REPLACE
_TRADE = schema.L3_TRADE
_CROSS = schema.L3_CROSS
_BID = schema.SIDE_BID
_ASK = schema.SIDE_ASK
_NONE = schema.SIDE_NONE_L3
_B = ord("B")
_SELL = ord("S")
_Y = ord("Y")
_N = ord("N")
_U32 = (1 << 32) - 1


# --- big-endian field access ---------------------------------------------------------

@njit(**HOT, inline="always")
def _u16(b, i):
    u = np.uint64(i)  # (an unsigned index: no negative-index wraparound, so LLVM merges the byte loads)
    return (np.int64(b[u]) << 8) | np.int64(b[u + np.uint64(1)])


@njit(**HOT, inline="always")
def _u32(b, i):
    u = np.uint64(i)
    return ((np.int64(b[u]) << 24) | (np.int64(b[u + np.uint64(1)]) << 16) | (np.int64(b[u + np.uint64(2)]) << 8)
            | np.int64(b[u + np.uint64(3)]))


@njit(**HOT, inline="always")
def _u48(b, i):
    return (_u16(b, i) << 32) | _u32(b, i + 2)


@njit(**HOT, inline="always")
def _u64(b, i):
    """Unsigned 64-bit (order references, stock keys); kept in uint64 throughout."""
    hi = np.uint64(_u32(b, i))
    lo = np.uint64(_u32(b, i + 4))
    return (hi << np.uint64(32)) | lo


@njit(**HOT, inline="always")
def _put16(o, i, v):
    o[i] = (v >> 8) & 0xFF
    o[i + 1] = v & 0xFF


@njit(**HOT, inline="always")
def _put32(o, i, v):
    o[i] = (v >> 24) & 0xFF
    o[i + 1] = (v >> 16) & 0xFF
    o[i + 2] = (v >> 8) & 0xFF
    o[i + 3] = v & 0xFF


@njit(**HOT, inline="always")
def _put48(o, i, v):
    _put16(o, i, v >> 32)
    _put32(o, i + 2, v & _U32)


@njit(**HOT, inline="always")
def _put64(o, i, v):
    """``v`` uint64 (or a non-negative int64)."""
    u = np.uint64(v)
    for k in range(8):
        o[i + 7 - k] = np.uint8(u & np.uint64(0xFF))
        u = u >> np.uint64(8)


# --- symbols -------------------------------------------------------------------------

@njit(**HOT)
def _decide(key, locate, loc, wanted, names, D, C):
    """Select (or not) the stock ``key`` for ``locate``; returns the new map value."""
    v = LOC_UNSELECTED
    if D[D_MODE] == MODE_WANTED:
        for k in range(wanted.shape[0]):
            if wanted[k] == key:
                v = k
                names[k] = key
                C[C_SYMBOLS] += 1
                break
    else:
        n = D[D_NSYM]
        if n < names.shape[0]:
            v = n
            D[D_NSYM] = n + 1
            names[n] = key
            C[C_SYMBOLS] += 1
        else:
            C[C_SYMBOL_OVERFLOW] += 1
    loc[locate] = v
    return v


@njit(**HOT)
def _directory(buf, m, loc, wanted, names, D, C):
    """A stock directory (R) message: decide its locate, or fill / check its name."""
    locate = _u16(buf, m + O_LOCATE)
    key = _u64(buf, m + O_R_STOCK)
    v = loc[locate]
    if v == LOC_UNDECIDED:
        _decide(key, locate, loc, wanted, names, D, C)
    elif v >= 0:
        if names[v] == 0:
            names[v] = key
        elif names[v] != key:
            C[C_LOCATE_CONFLICT] += 1


@njit(**HOT)
def _unmapped(buf, m, t, locate, v, loc, wanted, names, D, C):
    """Symbol index for a book message of a locate not mapped (``v`` < 0): decides an
    undecided locate if allowed; < 0: skip (counted here).  Off the hot path."""
    if v == LOC_UNDECIDED:
        unk = D[D_UNKNOWN]
        if unk != UNK_SKIP:
            key = np.uint64(0)
            named = True
            if t == T_A or t == T_F or t == T_P:
                key = _u64(buf, m + O_AP_STOCK)
            elif t == T_Q:
                key = _u64(buf, m + O_Q_STOCK)
            else:
                named = False
            if named or (unk == UNK_ANY and D[D_MODE] == MODE_ALL):
                v = _decide(key, locate, loc, wanted, names, D, C)
        if v >= 0:
            return v
        if v == LOC_UNDECIDED:
            C[C_UNKNOWN_LOCATE] += 1
            return v
    C[C_SKIPPED_SYMBOL] += 1
    return v


# --- decode --------------------------------------------------------------------------

@njit(**HOT, inline="always")
def _ticks(price, div, inv):
    """``price // div`` when ``div`` divides the 32-bit ``price``, else -1 (subtick), by a
    rounded multiply with ``inv = 1 / div``: its error is below 2**-20, so the rounding
    is exact for every multiple, and the check by multiplication catches the rest."""
    q = np.int64(price * inv + 0.5)
    if q * div != price:
        return np.int64(-1)
    return q


@njit(**HOT, inline="always")
def _put(out, j, kind, side, sym, qty, px, seq, ts, recv, ref, new_ref):
    r = out[np.uint64(j)]
    r.kind = kind
    r.side = side
    r.symbol = sym
    r.qty = qty
    r.px_tick = px
    r.seq = seq
    r.ts_exch_ns = ts
    r.ts_recv_ns = recv
    r.ref = ref
    r.new_ref = new_ref


@njit(**HOT_NOALIAS)
def decode_l3(buf, end, out, loc, wanted, names, D, C):
    """Decode the messages of ``buf[D[D_POS]:end]`` into ``out[D[D_NOUT]:]``; returns
    ``DONE``, ``FULL`` or ``PARTIAL`` (module docstring), with ``D`` advanced."""
    pos = D[D_POS]
    seq = D[D_SEQ]
    j = D[D_NOUT]
    cap = out.shape[0]
    day = D[D_DAY_NS]
    div = D[D_TICK_DIV]
    inv = 1.0 / div  # price -> ticks by a multiply (an integer division costs more than the rest of a message)
    recv = D[D_RECV_NS]
    seq0 = seq
    j0 = j
    z = np.uint64(0)
    status = DONE
    while True:
        if pos + 2 > end:
            if pos < end:
                status = PARTIAL
            break
        n = _u16(buf, pos)
        m = pos + 2
        if m + n > end:
            status = PARTIAL
            break
        if j >= cap:
            status = FULL
            C[C_OUT_FULL] += 1
            break
        pos = m + n
        s = seq
        seq += 1
        if n == 0:
            C[C_BAD_LENGTH] += 1
            continue
        t = np.uint64(buf[np.uint64(m)])
        slot = _SLOT[t]
        if slot < 0:
            C[C_UNKNOWN_TYPE] += 1
            continue
        if n != _LEN[t]:
            C[C_BAD_LENGTH] += 1
            continue
        C[np.uint64(C_TYPE0 + slot)] += 1
        if _BOOK[t] == 0:
            if t == T_R:
                _directory(buf, m, loc, wanted, names, D, C)
            C[C_OTHER] += 1
            continue
        locate = _u16(buf, m + O_LOCATE)
        sym = np.int64(loc[np.uint64(locate)])
        if sym < 0:
            sym = _unmapped(buf, m, t, locate, sym, loc, wanted, names, D, C)
            if sym < 0:
                continue
        if t == T_A or t == T_F or t == T_P:
            side_b = buf[np.uint64(m + O_AP_SIDE)]
            if side_b == _B:
                side = _BID
            elif side_b == _SELL:
                side = _ASK
            else:
                C[C_BAD_FIELD] += 1
                continue
            tick = _ticks(_u32(buf, m + O_AP_PRICE), div, inv)
            if tick < 0:
                C[C_SUBTICK] += 1
                continue
            if names[sym] == z:
                names[sym] = _u64(buf, m + O_AP_STOCK)
            kind = _TRADE if t == T_P else _ADD
            _put(out, j, kind, side, sym, _u32(buf, m + O_AP_SHARES), tick, s, day + _u48(buf, m + O_TS),
                 recv, _u64(buf, m + O_REF), z)
        elif t == T_D or t == T_X or t == T_E:
            if t == T_D:
                kind = _DELETE
                qty = np.int64(0)
            elif t == T_X:
                kind = _CANCEL
                qty = _u32(buf, m + O_X_SHARES)
            else:
                kind = _EXEC
                qty = _u32(buf, m + O_EC_SHARES)
            _put(out, j, kind, 0, sym, qty, 0, s, day + _u48(buf, m + O_TS), recv, _u64(buf, m + O_REF), z)
        elif t == T_U:
            tick = _ticks(_u32(buf, m + O_U_PRICE), div, inv)
            if tick < 0:
                C[C_SUBTICK] += 1
                continue
            _put(out, j, _REPLACE, 0, sym, _u32(buf, m + O_U_SHARES), tick, s, day + _u48(buf, m + O_TS),
                 recv, _u64(buf, m + O_REF), _u64(buf, m + O_U_NEW_REF))
        elif t == T_C:
            pr = buf[np.uint64(m + O_C_PRINTABLE)]
            if pr != _Y and pr != _N:
                C[C_BAD_FIELD] += 1
                continue
            tick = _ticks(_u32(buf, m + O_C_PRICE), div, inv)
            if tick < 0:
                C[C_SUBTICK] += 1
                continue
            _put(out, j, _EXEC_PX, 1 if pr == _Y else 0, sym, _u32(buf, m + O_EC_SHARES), tick, s,
                 day + _u48(buf, m + O_TS), recv, _u64(buf, m + O_REF), z)
        else:  # T_Q
            shares = _u64(buf, m + O_Q_SHARES)
            if shares > np.uint64(_U32):
                C[C_BAD_FIELD] += 1
                continue
            tick = _ticks(_u32(buf, m + O_Q_PRICE), div, inv)
            if tick < 0:
                C[C_SUBTICK] += 1
                continue
            if names[sym] == z:
                names[sym] = _u64(buf, m + O_Q_STOCK)
            _put(out, j, _CROSS, _NONE, sym, np.int64(shares), tick, s, day + _u48(buf, m + O_TS), recv, z, z)
        j += 1
    C[C_MESSAGES] += seq - seq0
    C[C_RECORDS] += j - j0
    if status == PARTIAL and D[D_FINAL] != 0:
        C[C_TRUNCATED] += 1
        pos = end
        status = DONE
    D[D_POS] = pos
    D[D_SEQ] = seq
    D[D_NOUT] = j
    return status


@njit(**HOT)
def frame(buf, pos, end, offs):
    """Offsets of the length prefixes of the complete messages in ``buf[pos:end]``, into
    ``offs`` (up to its size); returns how many.  For message-by-message tools (dump)."""
    k = 0
    cap = offs.shape[0]
    while k < cap and pos + 2 <= end:
        n = _u16(buf, pos)
        if pos + 2 + n > end:
            break
        offs[k] = pos
        k += 1
        pos += 2 + n
    return k


# --- encode --------------------------------------------------------------------------

# Encoder state (E), int64 each.
E_POS = 0  # in/out: byte offset in out of the next length prefix
E_MATCH = 1  # in/out: the next match number (E, C, P, Q)
E_DAY_NS = 2  # timestamp = ts_exch_ns - E_DAY_NS (must be in [0, 2^48))
E_TICK_MUL = 3  # ITCH price = px_tick * E_TICK_MUL (must fit 32 bits)
E_SKIP_KIND = 4  # out: records of a kind ITCH cannot carry (L3_CLEAR, unknown)
E_SKIP_RANGE = 5  # out: records whose symbol, timestamp, price or side does not fit ITCH
E_MESSAGES = 6  # out: messages written (all types)
NE = 8
#: Room ``encode_l3`` wants free before it writes a message.
ENC_ROOM = 2 + MAX_MSG_LEN


@njit(**HOT, inline="always")
def _head(o, p, t, n, locate, ts):
    """Length prefix and the common header; returns the message's first byte."""
    _put16(o, p, n)
    m = p + 2
    o[m] = t
    _put16(o, m + O_LOCATE, locate)
    _put16(o, m + O_TRACKING, 0)
    _put48(o, m + O_TS, ts)
    return m


@njit(**HOT, inline="always")
def _stock(o, i, key):
    _put64(o, i, key)


@njit(**HOT)
def encode_system_event(code, ts, out, E):
    """A system event (S) message with ``event_code`` ``code`` (a byte) at ``ts`` (ns after
    midnight), at ``out[E[E_POS]:]``."""
    m = _head(out, E[E_POS], T_S, 12, 0, ts)
    out[m + O_S_EVENT] = code
    E[E_POS] = m + 12
    E[E_MESSAGES] += 1


@njit(**HOT)
def encode_directory(names, ts, out, E):
    """One stock directory (R) message per symbol: ``names[i]`` (key) at locate ``i + 1``,
    the other fields plain defaults (Nasdaq Global Select, normal, round lot 100, common
    stock, production, tier 1, not an ETP)."""
    p = E[E_POS]
    for i in range(names.shape[0]):
        m = _head(out, p, T_R, 39, i + 1, ts)
        _stock(out, m + 11, names[i])
        out[m + 19] = ord("Q")  # market_category
        out[m + 20] = ord("N")  # financial_status_indicator
        _put32(out, m + 21, 100)  # round_lot_size
        out[m + 25] = ord("N")  # round_lots_only
        out[m + 26] = ord("C")  # issue_classification
        out[m + 27] = ord("Z")  # issue_sub_type (2)
        out[m + 28] = ord(" ")
        out[m + 29] = ord("P")  # authenticity
        out[m + 30] = ord("N")  # short_sale_threshold_indicator
        out[m + 31] = ord("N")  # ipo_flag
        out[m + 32] = ord("1")  # luld_reference_price_tier
        out[m + 33] = ord("N")  # etp_flag
        _put32(out, m + 34, 0)  # etp_leverage_factor
        out[m + 38] = ord("N")  # inverse_indicator
        p = m + 39
        E[E_MESSAGES] += 1
    E[E_POS] = p


@njit(**HOT)
def encode_l3(recs, start, n, names, out, E):
    """Encode ``recs[start:start+n]`` (MD_L3_DTYPE; symbol i is locate i + 1, named by
    ``names[i]``) as ITCH messages at ``out[E[E_POS]:]``: L3_ADD -> A, EXEC -> E,
    EXEC_PX -> C, CANCEL -> X, DELETE -> D, REPLACE -> U, TRADE -> P, CROSS -> Q.  Records
    ITCH cannot carry are counted and skipped.  Stops when ``out`` has less than
    ``ENC_ROOM`` bytes left; returns the number of records consumed."""
    p = E[E_POS]
    cap = out.shape[0]
    day = E[E_DAY_NS]
    mul = E[E_TICK_MUL]
    nsym = names.shape[0]
    k = 0
    while k < n:
        if p + ENC_ROOM > cap:
            break
        r = recs[start + k]
        k += 1
        kind = np.int64(r.kind)
        sym = np.int64(r.symbol)
        ts = r.ts_exch_ns - day
        px = r.px_tick * mul
        if kind < _ADD or kind > _CROSS:
            E[E_SKIP_KIND] += 1
            continue
        if sym >= nsym or ts < 0 or ts >= (np.int64(1) << 48) or px < 0 or px > _U32:
            E[E_SKIP_RANGE] += 1
            continue
        side = np.int64(r.side)
        if (kind == _ADD or kind == _TRADE) and side != _BID and side != _ASK:
            E[E_SKIP_RANGE] += 1
            continue
        loc = sym + 1
        if kind == _ADD or kind == _TRADE:
            n_b = 36 if kind == _ADD else 44
            m = _head(out, p, T_A if kind == _ADD else T_P, n_b, loc, ts)
            _put64(out, m + O_REF, r.ref)
            out[m + O_AP_SIDE] = _B if side == _BID else _SELL
            _put32(out, m + O_AP_SHARES, np.int64(r.qty))
            _stock(out, m + O_AP_STOCK, names[sym])
            _put32(out, m + O_AP_PRICE, px)
            if kind == _TRADE:
                _put64(out, m + O_P_MATCH, E[E_MATCH])
                E[E_MATCH] += 1
        elif kind == _DELETE:
            n_b = 19
            m = _head(out, p, T_D, n_b, loc, ts)
            _put64(out, m + O_REF, r.ref)
        elif kind == _CANCEL:
            n_b = 23
            m = _head(out, p, T_X, n_b, loc, ts)
            _put64(out, m + O_REF, r.ref)
            _put32(out, m + O_X_SHARES, np.int64(r.qty))
        elif kind == _EXEC or kind == _EXEC_PX:
            n_b = 31 if kind == _EXEC else 36
            m = _head(out, p, T_E if kind == _EXEC else T_C, n_b, loc, ts)
            _put64(out, m + O_REF, r.ref)
            _put32(out, m + O_EC_SHARES, np.int64(r.qty))
            _put64(out, m + O_EC_MATCH, E[E_MATCH])
            E[E_MATCH] += 1
            if kind == _EXEC_PX:
                out[m + O_C_PRINTABLE] = _Y if r.side != 0 else _N
                _put32(out, m + O_C_PRICE, px)
        elif kind == _REPLACE:
            n_b = 35
            m = _head(out, p, T_U, n_b, loc, ts)
            _put64(out, m + O_REF, r.ref)
            _put64(out, m + O_U_NEW_REF, r.new_ref)
            _put32(out, m + O_U_SHARES, np.int64(r.qty))
            _put32(out, m + O_U_PRICE, px)
        else:  # _CROSS
            n_b = 40
            m = _head(out, p, T_Q, n_b, loc, ts)
            _put64(out, m + O_Q_SHARES, np.int64(r.qty))
            _stock(out, m + O_Q_STOCK, names[sym])
            _put32(out, m + O_Q_PRICE, px)
            _put64(out, m + O_Q_MATCH, E[E_MATCH])
            E[E_MATCH] += 1
            out[m + O_Q_CROSS_TYPE] = ord("O")
        p = m + n_b
        E[E_MESSAGES] += 1
    E[E_POS] = p
    return k
