"""Every shared-memory record layout and constant of obpipe, in one module.

Layouts are ``np.dtype([...], align=True)``; sizes and offsets are asserted at import,
so a change that moves a field fails loudly here rather than as garbage in another
process.  Units are in the names: ``*_tick`` integer price ticks, ``qty`` integer lots,
``*_ns`` integer nanoseconds.
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

# --- segment header ------------------------------------------------------------------

#: Magic number at offset 0 of every obpipe segment: b"OBPIPE\x00\x01" little-endian.
SEG_MAGIC = int.from_bytes(b"OBPIPE\x00\x01", "little")
#: Bumped whenever any layout in this module changes incompatibly.
LAYOUT_VERSION = 4
#: Prefix of every segment name: ``/obpipe.<instance>.<part>``.
SEG_PREFIX = "obpipe"

#: Segment kinds (header field ``kind``).
SEG_RING = 1
SEG_SNAPSHOT = 2
SEG_STATS = 3
SEG_KIND_NAMES = {SEG_RING: "ring", SEG_SNAPSHOT: "snapshot", SEG_STATS: "stats"}

CACHE_LINE = 64

#: The 64-byte header every segment starts with.  Written once by the creator before
#: any other process attaches; read-only afterwards.
SEG_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<i8"),  # SEG_MAGIC (stored as int64 bits)
        ("layout_version", "<i8"),  # LAYOUT_VERSION of the creator's code
        ("kind", "<i8"),  # SEG_RING / SEG_SNAPSHOT / SEG_STATS
        ("record_size", "<i8"),  # bytes per slot / snapshot payload / stats row
        ("capacity", "<i8"),  # slots (power of two) / symbols / stats rows
        ("dtype_crc", "<i8"),  # crc32 of the record dtype's description
        ("owner_pid", "<i8"),  # pid of the supervisor that owns the instance
        ("owner_start_ns", "<i8"),  # that process's start time (guards pid reuse)
    ],
    align=True,
)
assert SEG_HEADER_DTYPE.itemsize == CACHE_LINE

# Ring control words, as indices into the segment viewed as int64 words.  Producer
# words and consumer words sit 128 bytes apart (two lines: x86's adjacent-line
# prefetcher pulls pairs of lines, so 64 bytes apart would still share traffic).
#: The doorbell: 1 while the consumer is blocked (or about to block) in ``ring_doze``,
#: waiting for the producer's ``ring_wake``; the futex word.  Writers: the consumer sets
#: it, either side clears it.  In the header's line pair, which is otherwise read-only.
RING_W_SLEEP = 64 // 8
#: Producer count of records ever pushed.  Writer: producer.  Readers: consumer.
RING_W_HEAD = 128 // 8
#: Producer's private cache of the consumer tail.  Writer and reader: producer only.
RING_W_TAIL_CACHE = RING_W_HEAD + 1
#: Consumer count of records ever popped.  Writer: consumer.  Readers: producer.
RING_W_TAIL = 256 // 8
#: Consumer's private cache of the producer head.  Writer and reader: consumer only.
RING_W_HEAD_CACHE = RING_W_TAIL + 1
#: Highest fill (head - tail) the consumer has seen, sampled each time it reloads the
#: producer's head (so within one consumer batch of the true peak).  Writer: consumer.
RING_W_HWM = RING_W_TAIL + 2
#: Byte offset of slot 0.
RING_DATA_OFFSET = 384

# --- feed / book message kinds -------------------------------------------------------

#: Add ``qty`` at (side, px_tick): a new visible order.
K_ADD = 1
#: Partial cancel: remove ``qty`` from (side, px_tick).
K_CANCEL = 2
#: Delete: an order's remaining ``qty`` leaves (side, px_tick).
K_DELETE = 3
#: Visible execution of ``qty`` resting at (side, px_tick); also a trade whose
#: aggressor is the other side.
K_EXECUTE = 4
#: Hidden / non-displayed trade: informational, the visible book does not change.
#: ``side`` is the resting (passive) side, as in the feed.
K_TRADE = 5
#: Absolute L2 update: the level at (side, px_tick) := qty (0 removes it).
K_SET_LEVEL = 6
#: Clear/reset one symbol's book (both sides).
K_CLEAR = 7
#: Heartbeat: keeps sequence numbers moving, changes nothing.
K_HEARTBEAT = 8
KIND_NAMES = {
    K_ADD: "add",
    K_CANCEL: "cancel",
    K_DELETE: "delete",
    K_EXECUTE: "execute",
    K_TRADE: "trade",
    K_SET_LEVEL: "set_level",
    K_CLEAR: "clear",
    K_HEARTBEAT: "heartbeat",
}

#: Book sides (also ladder array indices).
SIDE_BID = 0
SIDE_ASK = 1

#: A price meaning "no level" (empty side).  Never a valid price.
NO_PX = np.iinfo(np.int64).min

#: One market-data message as it travels the "md" ring (rx -> book writer).  40 bytes.
#: The wire message (docs/PROTOCOL.md) carries an order id; the aggregated book does
#: not need it, so the ring carries the feed sequence and the receive stamp instead.
#: Bytes 0-7 are the wire message's: kernels pack and unpack that word only through
#: ``obpipe.ring.records`` (``md_w0``), which reads its shifts from this dtype.
MD_DTYPE = np.dtype(
    [
        ("kind", "u1"),  # K_*
        ("side", "u1"),  # SIDE_BID / SIDE_ASK
        ("symbol", "<u2"),  # symbol index 0..n_symbols-1
        ("qty", "<u4"),  # lots
        ("px_tick", "<i8"),  # price in ticks
        ("seq", "<i8"),  # feed sequence number of this message
        ("ts_exch_ns", "<i8"),  # exchange timestamp
        ("ts_recv_ns", "<i8"),  # CLOCK_MONOTONIC when rx received it (0 if not stamped)
    ],
    align=True,
)
assert MD_DTYPE.itemsize == 40 and MD_DTYPE.fields["px_tick"][1] == 8

#: Per-order (L3) message kinds, as decoded from order-by-order feeds (Nasdaq ITCH 5.0,
#: LOBSTER with order ids) into ``MD_L3_DTYPE``.  Only ``L3_ADD`` names side and price:
#: the others name an order reference, and the per-order book resolves the rest.
L3_ADD = 16  # new order ``ref``: side, px_tick, qty (ITCH A and F)
L3_EXEC = 17  # ``qty`` of order ``ref`` executed at its own price (ITCH E)
L3_EXEC_PX = 18  # ``qty`` of order ``ref`` executed at ``px_tick`` (ITCH C); side = 1 printable, 0 not
L3_CANCEL = 19  # ``qty`` of order ``ref`` cancelled (ITCH X)
L3_DELETE = 20  # order ``ref`` deleted, whatever remains (ITCH D)
L3_REPLACE = 21  # order ``ref`` replaced by ``new_ref`` at px_tick for qty, same side, new priority (ITCH U)
L3_TRADE = 22  # a trade against a hidden order: symbol, side (resting side), px_tick, qty (ITCH P)
L3_CROSS = 23  # a cross trade: symbol, px_tick, qty (ITCH Q); side SIDE_NONE_L3
L3_CLEAR = 24  # forget every order of ``symbol`` and clear its book (a rebuild)
#: Messages were lost before this point (a gap the feed could not fill): the books of
#: ``symbol`` (SYMBOL_ALL: every symbol) are stale, wrong from here on, until cleared.
L3_STALE = 25
#: ``MD_L3_DTYPE.symbol`` meaning every symbol (L3_STALE).
SYMBOL_ALL = 0xFFFF
L3_KIND_NAMES = {
    L3_ADD: "add",
    L3_EXEC: "exec",
    L3_EXEC_PX: "exec_px",
    L3_CANCEL: "cancel",
    L3_DELETE: "delete",
    L3_REPLACE: "replace",
    L3_TRADE: "trade",
    L3_CROSS: "cross",
    L3_CLEAR: "clear",
    L3_STALE: "stale",
}
#: ``MD_L3_DTYPE.side`` of a cross trade (no resting side).
SIDE_NONE_L3 = 2

#: One per-order message (the "md" ring's record when the input is order by order).
#: 56 bytes: ``MD_DTYPE``'s fields in the same places, then the order reference(s).
#: ``symbol`` is the configured symbol index (L3_ADD, L3_TRADE, L3_CROSS, L3_CLEAR; the
#: others carry it when the decoder knows it, and the book trusts its own table).
MD_L3_DTYPE = np.dtype(
    [
        ("kind", "u1"),  # L3_*
        ("side", "u1"),  # SIDE_BID / SIDE_ASK (L3_ADD, L3_TRADE); printable flag (L3_EXEC_PX)
        ("symbol", "<u2"),
        ("qty", "<u4"),  # shares
        ("px_tick", "<i8"),  # price in ticks (L3_ADD, L3_EXEC_PX, L3_REPLACE, L3_TRADE, L3_CROSS)
        ("seq", "<i8"),
        ("ts_exch_ns", "<i8"),
        ("ts_recv_ns", "<i8"),
        ("ref", "<u8"),  # order reference number
        ("new_ref", "<u8"),  # L3_REPLACE: the new order's reference; else 0
    ],
    align=True,
)
assert MD_L3_DTYPE.itemsize == 56
assert all(MD_L3_DTYPE.fields[f][1] == MD_DTYPE.fields[f][1] for f in MD_DTYPE.names)

#: Event kinds of the "events" ring (book writer -> analysis).
EV_BBO = 1  # top of book changed (price or size on either side)
EV_TRADE = 2  # a trade (visible execution or hidden trade)

#: One book event.  88 bytes.  Carries the book state the analysis needs so it never
#: reads the book's memory.
EVENT_DTYPE = np.dtype(
    [
        ("kind", "u1"),  # EV_*
        ("side", "u1"),  # for EV_TRADE: aggressor side (SIDE_BID = buyer initiated)
        ("symbol", "<u2"),
        ("trade_qty", "<u4"),  # EV_TRADE: lots traded; else 0
        ("seq", "<i8"),  # feed sequence of the message that caused it
        ("ts_exch_ns", "<i8"),
        ("bid_px_tick", "<i8"),  # NO_PX when the side is empty
        ("ask_px_tick", "<i8"),
        ("trade_px_tick", "<i8"),  # EV_TRADE: price; else NO_PX
        ("bid_qty", "<i8"),  # lots at the best bid (a level sums many u32 orders: i8)
        ("ask_qty", "<i8"),
        ("bid_depth_qty", "<i8"),  # lots within [book] event_depth_ticks of the best bid
        ("ask_depth_qty", "<i8"),  # lots within [book] event_depth_ticks of the best ask
        ("sym_msgs", "<i8"),  # messages the writer has applied for this symbol so far (message rate)
    ],
    align=True,
)
assert EVENT_DTYPE.itemsize == 88

#: Record types of the "signals" ring (analysis -> publisher).
OUT_SIGNAL = 1
OUT_SUMMARY = 2

#: Signal kinds (``SIGNAL_DTYPE.kind`` for OUT_SIGNAL; names as published, docs/SCHEMA.md).
SIG_SPREAD = 1  # spread widening: spread vs its EWMA baseline
SIG_IMBALANCE = 2  # top-of-book and depth imbalance beyond thresholds
SIG_MICROPRICE = 3  # microprice moved N ticks within a window
SIG_SWEEP = 4  # same-side aggressor burst through several levels or of large volume
SIG_WITHDRAWAL = 5  # depth near the touch fell by a fraction within a window (trades excluded)
SIGNAL_KIND_NAMES = {SIG_SPREAD: "spread_widening", SIG_IMBALANCE: "imbalance", SIG_MICROPRICE: "microprice_shift",
                     SIG_SWEEP: "sweep", SIG_WITHDRAWAL: "liquidity_withdrawal"}
N_SIGNAL_KINDS = 5
#: ``SIGNAL_DTYPE.side``: no side (SIDE_BID = 0 and SIDE_ASK = 1 as on the wire).
SIDE_NONE = 255

#: One analysis output: a signal or a periodic summary.  160 bytes.  What ``iv``/``fv``
#: hold per record type and kind is the table below (``SIGNAL_VALUES``,
#: ``SUMMARY_VALUES``); the analysis writes the slots it names and the publisher turns
#: them into the named JSON fields of docs/SCHEMA.md.
SIGNAL_DTYPE = np.dtype(
    [
        ("rtype", "u1"),  # OUT_SIGNAL / OUT_SUMMARY
        ("kind", "u1"),  # SIG_* (0 for a summary)
        ("side", "u1"),  # SIDE_BID / SIDE_ASK / SIDE_NONE
        ("_pad", "u1"),
        ("symbol", "<u4"),  # symbol index
        ("seq", "<i8"),  # feed sequence of the event that fired it (summary: last in the interval)
        ("ts_exch_ns", "<i8"),  # its exchange time (summary: interval start, feed time)
        ("ts_detect_ns", "<i8"),  # CLOCK_REALTIME when detected / emitted (wall clock)
        ("bid_px_tick", "<i8"),  # top of book at that moment (NO_PX: side empty)
        ("ask_px_tick", "<i8"),
        ("bid_qty", "<i8"),
        ("ask_qty", "<i8"),
        ("iv", "<i8", (6,)),  # integer values (SIGNAL_VALUES / SUMMARY_VALUES)
        ("fv", "<f8", (6,)),  # real values (ratios, ticks with fractions)
    ],
    align=True,
)
assert SIGNAL_DTYPE.itemsize == 160

# The one table of what a signals-ring record's value slots hold.  The analysis kernel
# takes its slot indexes from it (analysis/_kernels.py V_* and SUM_*), the publisher
# its field names, order, conversions and examples (publisher/encode.py, schema.py),
# and a test holds the JSON Schema file and docs/SCHEMA.md to it
# (tests/publisher/test_signal_table.py).  A value is never in two slots.

#: Value types: what a slot's number is and how it is published.  The first four are
#: integers and live in ``iv``; the others are reals and live in ``fv``.
VT_TICK = "tick"  # a price in ticks
VT_TICK_OR_NULL = "tick_or_null"  # a price in ticks; NO_PX (an empty side) is published as null
VT_COUNT = "count"  # >= 0: lots, trades, levels
VT_NS = "ns"  # >= 0: nanoseconds of feed time
VT_REAL = "real"  # signed and finite (prices and shifts in ticks, with fractions)
VT_NONNEG = "nonneg"  # >= 0
VT_RATIO = "ratio"  # >= 0; a ratio that is not finite (a zero baseline) is published as 1e9
VT_UNIT = "unit"  # in [-1, 1] (an imbalance)
VT_FRACTION = "fraction"  # in [0, 1]
VT_REAL_OR_NAN = "real_or_nan"  # a real; NaN (none: no valid spread, an empty side) is published as null
VT_UNIT_OR_NAN = "unit_or_nan"  # in [-1, 1]; NaN (an empty side) is published as null
INT_VALUE_TYPES = frozenset({VT_TICK, VT_TICK_OR_NULL, VT_COUNT, VT_NS})
REAL_VALUE_TYPES = frozenset({VT_REAL, VT_NONNEG, VT_RATIO, VT_UNIT, VT_FRACTION, VT_REAL_OR_NAN, VT_UNIT_OR_NAN})


class SlotValue(NamedTuple):
    """One named value of a signals-ring record: where it lives and what it is."""

    name: str  # its name in the published message (a signal's ``values`` object)
    slot: str  # "iv" (int64) or "fv" (float64)
    index: int  # 0..5 within that array
    vtype: str  # VT_*
    unit: str  # "ticks", "lots", "ns" or "" (a pure number)
    example: int | float | None = None  # a valid value, for docs, tests and story templates


_V = SlotValue
#: Per signal kind, its values in publication order (the order of the message's
#: ``values`` object and of docs/SCHEMA.md's table).
SIGNAL_VALUES: dict[int, tuple[SlotValue, ...]] = {
    SIG_SPREAD: (
        _V("spread_ticks", "iv", 0, VT_TICK, "ticks", 6),  # spread now
        _V("baseline_ticks", "fv", 0, VT_NONNEG, "ticks", 2.1),  # EWMA of the spread before this event
        _V("ratio", "fv", 1, VT_RATIO, "", 2.857),  # spread_ticks / baseline_ticks
    ),
    SIG_IMBALANCE: (
        _V("tob_imbalance", "fv", 0, VT_UNIT, "", 0.62),  # (bid_qty - ask_qty) / (bid_qty + ask_qty)
        _V("depth_imbalance", "fv", 1, VT_UNIT, "", 0.4),  # the same of the band depths
        _V("bid_depth", "iv", 0, VT_COUNT, "lots", 1200),  # lots within the band of the best bid
        _V("ask_depth", "iv", 1, VT_COUNT, "lots", 514),
    ),
    SIG_MICROPRICE: (
        _V("shift_ticks", "fv", 0, VT_REAL, "ticks", -3.5),  # to_tick - from_tick
        _V("from_tick", "fv", 1, VT_REAL, "ticks", 22384.5),  # microprice at the window's extreme
        _V("to_tick", "fv", 2, VT_REAL, "ticks", 22381.0),  # microprice now
        _V("elapsed_ns", "iv", 0, VT_NS, "ns", 12_000_000),  # feed time between the two
    ),
    SIG_SWEEP: (
        _V("levels", "iv", 0, VT_COUNT, "", 4),  # distinct successive trade prices in the burst
        _V("volume", "iv", 1, VT_COUNT, "lots", 1200),
        _V("trades", "iv", 2, VT_COUNT, "", 5),
        _V("first_tick", "iv", 3, VT_TICK, "ticks", 22383),
        _V("last_tick", "iv", 4, VT_TICK, "ticks", 22386),
        _V("elapsed_ns", "iv", 5, VT_NS, "ns", 2_100_000),  # from the burst's first trade to this one
    ),
    SIG_WITHDRAWAL: (
        _V("depth_before", "iv", 0, VT_COUNT, "lots", 3000),  # band depth at the window's high
        _V("depth_after", "iv", 1, VT_COUNT, "lots", 900),  # band depth now
        _V("drop_fraction", "fv", 0, VT_FRACTION, "", 0.7),  # lots withdrawn (not traded) / depth_before
        _V("elapsed_ns", "iv", 2, VT_NS, "ns", 50_000_000),
        _V("touch_tick", "iv", 3, VT_TICK_OR_NULL, "ticks", 22381),  # the side's best price now
    ),
}

#: A summary's values (``rtype`` OUT_SUMMARY, ``kind`` 0; ``ts_exch_ns`` is the
#: interval's start, feed time).  Names as the kernel and the encoder know them; the
#: message nests them (docs/SCHEMA.md "Summary").
SUMMARY_VALUES: tuple[SlotValue, ...] = (
    _V("end_ns", "iv", 0, VT_NS, "ns"),  # the interval's end, feed time
    _V("buy_volume", "iv", 1, VT_COUNT, "lots"),  # traded with a buying aggressor
    _V("sell_volume", "iv", 2, VT_COUNT, "lots"),
    _V("trades", "iv", 3, VT_COUNT, ""),
    _V("messages", "iv", 4, VT_COUNT, ""),  # messages the book writer applied to the symbol
    _V("events", "iv", 5, VT_COUNT, ""),
    _V("spread_min", "fv", 0, VT_REAL_OR_NAN, "ticks"),
    _V("spread_mean", "fv", 1, VT_REAL_OR_NAN, "ticks"),  # time-weighted
    _V("spread_max", "fv", 2, VT_REAL_OR_NAN, "ticks"),
    _V("tob_imbalance", "fv", 3, VT_UNIT_OR_NAN, ""),  # at the close
    _V("depth_imbalance", "fv", 4, VT_UNIT_OR_NAN, ""),
    _V("mid_tick", "fv", 5, VT_REAL_OR_NAN, "ticks"),
)
del _V


def value_slot(values: tuple[SlotValue, ...], name: str, slot: str) -> int:
    """Index of value ``name`` of ``values`` (a ``SIGNAL_VALUES`` entry or
    ``SUMMARY_VALUES``) in array ``slot``; raises KeyError naming the value when it is
    not there or lives in the other array."""
    for v in values:
        if v.name == name:
            if v.slot != slot:
                raise KeyError(f"value {name!r} lives in {v.slot}, not {slot}")
            return v.index
    raise KeyError(f"no value {name!r} among {', '.join(v.name for v in values)}")


assert set(SIGNAL_VALUES) == set(SIGNAL_KIND_NAMES) and len(SIGNAL_KIND_NAMES) == N_SIGNAL_KINDS
for _vals in (*SIGNAL_VALUES.values(), SUMMARY_VALUES):
    assert len({v.name for v in _vals}) == len(_vals), _vals
    assert len({(v.slot, v.index) for v in _vals}) == len(_vals), _vals
    for _v in _vals:
        assert 0 <= _v.index < SIGNAL_DTYPE[_v.slot].shape[0], _v
        assert _v.slot == ("iv" if _v.vtype in INT_VALUE_TYPES else "fv"), _v
        assert _v.vtype in INT_VALUE_TYPES | REAL_VALUE_TYPES, _v
assert all(v.example is not None for _vals in SIGNAL_VALUES.values() for v in _vals)

#: Default number of levels per side in a snapshot.
DEFAULT_SNAPSHOT_LEVELS = 10


def snapshot_dtype(n_levels: int) -> np.dtype:
    """The per-symbol snapshot payload with ``n_levels`` levels per side.

    The payload is all 8-byte words; ``check`` is the XOR of every other word (floats
    by their bits), so a reader can prove a copy is not torn.  The seqlock sequence
    word lives outside the payload, on its own cache line.
    """
    if not 1 <= n_levels <= 1024:
        raise ValueError(f"snapshot levels must be 1..1024, got {n_levels}")
    return np.dtype(
        [
            ("bid_px_tick", "<i8"),  # NO_PX when empty
            ("bid_qty", "<i8"),
            ("ask_px_tick", "<i8"),
            ("ask_qty", "<i8"),
            ("spread_tick", "<i8"),  # ask - bid; NO_PX when a side is empty
            ("imbalance", "<f8"),  # (bid_qty - ask_qty) / (bid_qty + ask_qty); NaN if empty
            ("depth_imbalance", "<f8"),  # same over the top-N levels
            ("microprice_tick", "<f8"),  # (bid*ask_qty + ask*bid_qty)/(bid_qty+ask_qty)
            ("last_trade_px_tick", "<i8"),  # NO_PX before the first trade
            ("last_trade_qty", "<i8"),
            ("last_trade_side", "<i8"),  # aggressor SIDE_*, -1 before the first trade
            ("msgs_applied", "<i8"),  # messages applied to this symbol so far
            ("seq", "<i8"),  # feed sequence of the last applied message
            ("ts_exch_ns", "<i8"),  # its exchange timestamp
            ("ts_apply_ns", "<i8"),  # CLOCK_MONOTONIC of the batch that applied it
            ("version", "<i8"),  # snapshot publications of this symbol so far
            ("n_levels", "<i8"),  # levels per side in this layout
            ("stale", "<i8"),  # 1: messages were lost (a gap not healed): the book may be wrong until cleared
            ("bid_px", "<i8", (n_levels,)),  # top-N bids, best first; NO_PX padding
            ("bid_lvl_qty", "<i8", (n_levels,)),
            ("ask_px", "<i8", (n_levels,)),  # top-N asks, best first; NO_PX padding
            ("ask_lvl_qty", "<i8", (n_levels,)),
            ("check", "<i8"),  # XOR of all previous words
        ],
        align=True,
    )


# Word indices into a snapshot payload viewed as int64 (the writer kernel writes words;
# floats go in by their bits).  Asserted against the dtype below.
SW_BID_PX = 0
SW_BID_QTY = 1
SW_ASK_PX = 2
SW_ASK_QTY = 3
SW_SPREAD = 4
SW_IMBALANCE = 5
SW_DEPTH_IMBALANCE = 6
SW_MICROPRICE = 7
SW_LAST_PX = 8
SW_LAST_QTY = 9
SW_LAST_SIDE = 10
SW_MSGS = 11
SW_SEQ = 12
SW_TS_EXCH = 13
SW_TS_APPLY = 14
SW_VERSION = 15
SW_N_LEVELS = 16
SW_STALE = 17
#: Scalar words before the level arrays: bid_px[N], bid_lvl_qty[N], ask_px[N],
#: ask_lvl_qty[N] follow, then ``check`` at word ``SNAP_HEADER_WORDS + 4 * N``.
SNAP_HEADER_WORDS = 18

#: Byte offset of the first snapshot slot in a snapshot segment.
SNAP_DATA_OFFSET = 128


def snapshot_slot_words(n_levels: int) -> int:
    """int64 words per snapshot slot: one cache line for the sequence, then the payload,
    rounded up to whole cache lines so slots never share a line."""
    payload = snapshot_dtype(n_levels).itemsize
    lines = 1 + -(-payload // CACHE_LINE)
    return lines * CACHE_LINE // 8


_s = snapshot_dtype(DEFAULT_SNAPSHOT_LEVELS)
assert _s.itemsize % 8 == 0 and _s.fields["bid_px"][1] == SNAP_HEADER_WORDS * 8
assert _s.fields["check"][1] == _s.itemsize - 8
for _name, _w in (("bid_px_tick", SW_BID_PX), ("bid_qty", SW_BID_QTY), ("ask_px_tick", SW_ASK_PX),
                  ("ask_qty", SW_ASK_QTY), ("spread_tick", SW_SPREAD), ("imbalance", SW_IMBALANCE),
                  ("depth_imbalance", SW_DEPTH_IMBALANCE), ("microprice_tick", SW_MICROPRICE),
                  ("last_trade_px_tick", SW_LAST_PX), ("last_trade_qty", SW_LAST_QTY),
                  ("last_trade_side", SW_LAST_SIDE), ("msgs_applied", SW_MSGS), ("seq", SW_SEQ),
                  ("ts_exch_ns", SW_TS_EXCH), ("ts_apply_ns", SW_TS_APPLY), ("version", SW_VERSION),
                  ("n_levels", SW_N_LEVELS), ("stale", SW_STALE)):
    assert _s.fields[_name][1] == _w * 8, _name

# --- UDP wire protocol (docs/PROTOCOL.md) ----------------------------------------------
# A datagram = one 24-byte packet header + ``count`` 32-byte messages, little-endian,
# like MoldUDP64: the header carries the sequence number of the first message.  The
# kernels handle packets as int64 words packed by ``obpipe.ring.records`` from these dtypes.

#: Packet magic, u16 at offset 0: b"OB".
WIRE_MAGIC = 0x424F
WIRE_VERSION = 1
WIRE_HEADER_BYTES = 24
WIRE_MSG_BYTES = 32
#: Largest UDP payload that fits a 1,500-byte Ethernet MTU without fragmenting.
WIRE_MAX_PAYLOAD = 1472
#: Messages per full packet: (1472 - 24) // 32 = 45 (1,464 bytes).
WIRE_MAX_MSGS = (WIRE_MAX_PAYLOAD - WIRE_HEADER_BYTES) // WIRE_MSG_BYTES
#: A packet as int64 words (header 3 words + 45 messages x 4 words).
WIRE_PACKET_WORDS = (WIRE_HEADER_BYTES + WIRE_MAX_MSGS * WIRE_MSG_BYTES) // 8

WIRE_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u2"),  # WIRE_MAGIC
        ("version", "u1"),  # WIRE_VERSION
        ("flags", "u1"),  # 0 (reserved)
        ("session", "<u4"),  # feed session; a new session restarts sequence numbering
        ("seq", "<i8"),  # sequence number of the first message (the first message ever is 1)
        ("count", "<u2"),  # messages in this packet, 0..45
        ("msg_size", "<u2"),  # WIRE_MSG_BYTES
        ("check", "<u4"),  # XOR of the messages' 8-byte words, high half XOR low half
    ],
    align=True,
)
WIRE_MSG_DTYPE = np.dtype(
    [
        ("kind", "u1"),  # K_* (add, cancel, delete, execute, trade, set level, clear, heartbeat)
        ("side", "u1"),  # SIDE_BID / SIDE_ASK
        ("symbol", "<u2"),
        ("qty", "<u4"),  # lots
        ("order_id", "<u8"),  # exchange order id (0 when the feed has none)
        ("px_tick", "<i8"),
        ("ts_exch_ns", "<i8"),
    ],
    align=True,
)
assert WIRE_HEADER_DTYPE.itemsize == WIRE_HEADER_BYTES and WIRE_MSG_DTYPE.itemsize == WIRE_MSG_BYTES
assert WIRE_MAX_MSGS == 45 and WIRE_PACKET_WORDS == 183

# --- order entry (TCP, docs/PROTOCOL.md "Order entry") ------------------------------------

#: Inbound message types (client -> exchange).
OE_NEW = 1  # new order
OE_CANCEL = 2  # cancel order ``order_id``
OE_MODIFY = 3  # modify order ``order_id``: new price (``px_tick`` <= 0 keeps it) and new open quantity
OE_LOGIN = 4  # first message of a connection only: act for ``account`` (1..2^31-1), proving its key (bytes 16..32)
OE_HEARTBEAT = 5  # keeps an idle connection open; answered by R_HEARTBEAT
#: Order-entry protocol version (sent in R_HELLO).  2: challenge-response login, heartbeats.
OE_VERSION = 2
#: Accounts the exchange gives connections that do not log in start here.
OE_AUTO_ACCOUNT = 1 << 31
#: Order types.
OT_LIMIT = 0
OT_MARKET = 1
#: Time in force.  A market order never rests, whatever its TIF (GTC counts as IOC).
TIF_GTC = 0
TIF_IOC = 1
TIF_FOK = 2
#: Order sides (an order's side is the book side it rests on).
BUY = 0
SELL = 1

#: One order-entry request.  32 bytes, little-endian.
ORDER_IN_DTYPE = np.dtype(
    [
        ("type", "u1"),  # OE_*
        ("side", "u1"),  # BUY / SELL (new orders)
        ("ord_type", "u1"),  # OT_* (new orders)
        ("tif", "u1"),  # TIF_* (new orders)
        ("symbol", "<u2"),  # symbol index
        ("_reserved", "<u2"),  # 0
        ("qty", "<u4"),  # lots: new order quantity / modify: new open quantity
        ("account", "<u4"),  # set by the exchange from the connection (a client's value is ignored); 0: no STP
        ("px_tick", "<i8"),  # limit price (new, modify); ignored for market orders
        ("order_id", "<u8"),  # target of cancel / modify; 0 for new orders
    ],
    align=True,
)
assert ORDER_IN_DTYPE.itemsize == 32

#: Outbound report types (exchange -> client).
R_ACK = 1  # new order accepted: order_id assigned, qty, px
R_FILL = 2  # one execution of one of the client's orders (flags & RF_DONE: nothing left open)
R_CANCELLED = 3  # order left the book or its rest was cancelled (reason RS_USER, RS_UNFILLED, RS_SELF_TRADE, RS_BOOK_FULL)
R_REJECT = 4  # request refused (reason RS_*); order_id: the assigned id (new) or the target (cancel/modify)
R_MODIFIED = 5  # modify accepted: qty = new open quantity, px = its price
R_HELLO = 6  # on connect and after a login: order_id = next order id, px_tick = next market-data sequence,
#             qty = protocol version, leaves = the connection's account
R_CHALLENGE = 7  # right after the connect hello: bytes 8..32 are the login nonce (24 random bytes)
R_HEARTBEAT = 8  # the response to OE_HEARTBEAT
REPORT_NAMES = {R_ACK: "ack", R_FILL: "fill", R_CANCELLED: "cancelled", R_REJECT: "reject", R_MODIFIED: "modified",
                R_HELLO: "hello", R_CHALLENGE: "challenge", R_HEARTBEAT: "heartbeat"}
#: ``ORDER_OUT_DTYPE.flags``.
RF_DONE = 1  # fill: the order has no open quantity left
RF_AGGRESSOR = 2  # fill: this order was the incoming (taking) side
#: Reasons (reject and cancel).
RS_NONE = 0
RS_BAD_PRICE = 1  # limit price <= 0 or outside the symbol's price band
RS_BAD_QTY = 2  # quantity 0 (or over the maximum)
RS_UNKNOWN_ORDER = 3  # cancel/modify of an order that is not resting (never existed, filled or cancelled)
RS_FOK_UNFILLABLE = 4  # fill-or-kill that cannot fill completely now
RS_SELF_TRADE = 5  # resting order cancelled because an order of the same account would have traded with it
RS_BAD_SIDE = 6
RS_BAD_TYPE = 7  # unknown message type, order type or time in force
RS_BAD_SYMBOL = 8
RS_BOOK_FULL = 9  # the order pool is full: the rest of the order could not rest (cancelled)
RS_USER = 10  # cancelled by its owner
RS_UNFILLED = 11  # unfilled rest of a market or IOC order, cancelled
RS_MALFORMED = 12  # the exchange could not read the message (reserved bytes set)
RS_NOT_OWNER = 13  # cancel/modify of another account's order; a login to an account connected elsewhere
RS_AUTH = 14  # login refused: unknown account or wrong proof (the connection is closed)
RS_LOGIN_REQUIRED = 15  # anonymous trading is off and the first message was not a login (connection closed)
RS_RATE_LIMIT = 16  # over the account's requests per second (max_msgs_per_s); nothing done
RS_OPEN_LIMIT = 17  # a GTC limit order that could take the account past max_open_orders resting; nothing done
RS_DISCONNECT = 18  # cancelled: its account disconnected with cancel-on-disconnect (or the exchange stopped)
REASON_NAMES = {RS_NONE: "none", RS_BAD_PRICE: "bad price", RS_BAD_QTY: "bad quantity",
                RS_UNKNOWN_ORDER: "unknown order", RS_FOK_UNFILLABLE: "FOK unfillable", RS_SELF_TRADE: "self-trade",
                RS_BAD_SIDE: "bad side", RS_BAD_TYPE: "bad type", RS_BAD_SYMBOL: "bad symbol",
                RS_BOOK_FULL: "book full", RS_USER: "user", RS_UNFILLED: "unfilled", RS_MALFORMED: "malformed",
                RS_NOT_OWNER: "not owner", RS_AUTH: "authentication failed", RS_LOGIN_REQUIRED: "login required",
                RS_RATE_LIMIT: "rate limit", RS_OPEN_LIMIT: "open order limit", RS_DISCONNECT: "disconnect"}

#: One order-entry report.  32 bytes, little-endian.  The matching kernel writes it as
#: four int64 words, words 0 and 1 packed by ``obpipe.ring.records`` (``report_w0/w1``).
ORDER_OUT_DTYPE = np.dtype(
    [
        ("type", "u1"),  # R_*
        ("side", "u1"),  # the order's side
        ("reason", "u1"),  # RS_* (reject, cancelled)
        ("flags", "u1"),  # RF_* (fill)
        ("symbol", "<u2"),
        ("_reserved", "<u2"),
        ("qty", "<u4"),  # ack: order qty; fill: lots executed; cancelled: lots cancelled; modified: new open qty
        ("leaves", "<u4"),  # lots still open after this report
        ("px_tick", "<i8"),  # ack/modified: limit price (market: 0); fill: execution price; cancelled: the order's price
        ("order_id", "<u8"),
    ],
    align=True,
)
assert ORDER_OUT_DTYPE.itemsize == 32
#: Largest order quantity (the wire's u32).
MAX_ORDER_QTY = (1 << 32) - 1


# --- stats block ---------------------------------------------------------------------

#: Counters per stats row: 128 int64 = 16 cache lines, written only by the row's owner.
STATS_WORDS = 128
STATS_DATA_OFFSET = 64

#: The order-query row (``stats.ROW_QUERY``): one reader at a time (it holds an
#: exclusive ``flock`` on the stats segment's file) asks the book writer about a live
#: order of the per-order book; the writer answers between two kernel calls
#: (``engine.l3.query_order``, docs/L3BOOK.md "Queue position of a running book").
Q_REQ = 0  # request number: the reader writes Q_REF, then this (+1)
Q_REF = 1  # the order reference asked about
Q_ANS = 2  # request number answered: the writer fills the words below, then this
Q_FOUND = 3  # 1: the order is live; 0: not (the words below are 0)
Q_SYMBOL = 4  # symbol index
Q_SIDE = 5  # SIDE_BID / SIDE_ASK
Q_PX = 6  # limit price, ticks
Q_QTY = 7  # remaining shares
Q_PRIORITY = 8  # arrival priority (smaller: earlier)
Q_SHARES_AHEAD = 9  # shares of earlier orders at the same symbol, side and price
Q_ORDERS_AHEAD = 10  # how many such orders
Q_SEQ = 11  # the symbol's last applied message sequence: the answer holds as of it
Q_TS_EXCH_NS = 12  # that message's exchange timestamp, UTC epoch ns

#: Common words of every row.
ST_PID = 0  # owner process id (0: row unused)
ST_HEARTBEAT_NS = 1  # owner's CLOCK_MONOTONIC at its last loop turn
ST_STATE = 2  # one of STATE_*
STATE_UNUSED, STATE_STARTING, STATE_RUNNING, STATE_STOPPED = 0, 1, 2, 3
STATE_NAMES = {STATE_UNUSED: "unused", STATE_STARTING: "starting", STATE_RUNNING: "running", STATE_STOPPED: "stopped"}

#: Book-writer row.
ST_BOOK_MSGS = 4  # messages applied
ST_BOOK_BATCHES = 5  # batches applied
ST_BOOK_BAD_MSG = 6  # unknown kind / side / symbol, or non-positive add qty
ST_BOOK_OUT_OF_LADDER = 7  # messages rejected: price outside the ladder policy
ST_BOOK_RECENTRES = 8  # ladder windows re-centred
ST_BOOK_EVICTED_LEVELS = 9  # non-empty levels dropped by a re-centre
ST_BOOK_QTY_UNDERFLOW = 10  # decrements larger than the level (clamped to 0)
ST_BOOK_EVENTS = 11  # events pushed to the events ring
ST_BOOK_EVENTS_DROPPED = 12  # events dropped because the events ring was full
ST_BOOK_SNAPSHOTS = 13  # snapshot publications
ST_BOOK_TRADES = 14  # executions + hidden trades
ST_BOOK_CLEARS = 15  # clear/reset messages
ST_BOOK_HEARTBEATS = 16
ST_BOOK_CROSSED = 17  # top-of-book changes that left the book crossed (bid >= ask)
ST_BOOK_UNCROSSED = 18  # stale levels removed because a newer order crossed them ([book] uncross)
# Per-order (L3) book (engine._l3_kernels; 0 when the input is aggregated):
ST_BOOK_L3_LIVE = 19  # live orders in the order table now (its occupancy)
ST_BOOK_L3_PEAK = 20  # most live orders at once so far
ST_BOOK_L3_CAPACITY = 21  # orders the table holds ([book] l3_orders)
ST_BOOK_L3_UNKNOWN = 22  # messages naming an order the table does not hold (skipped)
ST_BOOK_L3_DUPLICATE = 23  # adds (or replaces' new orders) whose reference is already live (skipped)
ST_BOOK_L3_FULL = 24  # adds skipped because the table was full (later references to them: unknown)
ST_BOOK_L3_OVERFILL = 25  # executions / cancels of more shares than the order had (clamped: it leaves)
BOOK_STAT_NAMES = {
    ST_BOOK_MSGS: "msgs",
    ST_BOOK_BATCHES: "batches",
    ST_BOOK_BAD_MSG: "bad_msgs",
    ST_BOOK_OUT_OF_LADDER: "out_of_ladder",
    ST_BOOK_RECENTRES: "recentres",
    ST_BOOK_EVICTED_LEVELS: "evicted_levels",
    ST_BOOK_QTY_UNDERFLOW: "qty_underflow",
    ST_BOOK_EVENTS: "events",
    ST_BOOK_EVENTS_DROPPED: "events_dropped",
    ST_BOOK_SNAPSHOTS: "snapshots",
    ST_BOOK_TRADES: "trades",
    ST_BOOK_CLEARS: "clears",
    ST_BOOK_HEARTBEATS: "heartbeats",
    ST_BOOK_CROSSED: "crossed",
    ST_BOOK_UNCROSSED: "uncrossed_levels",
    ST_BOOK_L3_LIVE: "l3_live_orders",
    ST_BOOK_L3_PEAK: "l3_peak_orders",
    ST_BOOK_L3_CAPACITY: "l3_capacity",
    ST_BOOK_L3_UNKNOWN: "l3_unknown_refs",
    ST_BOOK_L3_DUPLICATE: "l3_duplicate_refs",
    ST_BOOK_L3_FULL: "l3_table_full",
    ST_BOOK_L3_OVERFILL: "l3_overfills",
}
assert max(BOOK_STAT_NAMES) < STATS_WORDS

#: rx row: words RX_TRACKER_BASE .. RX_TRACKER_BASE + RX_TRACKER_WORDS - 1 hold the
#: receiver's tracker (``obpipe.feed_sim.wire_kernels.T_*``; its ``NT`` is
#: RX_TRACKER_WORDS), updated in place by the rx kernel (single writer), so they are
#: live for any reader.
RX_TRACKER_BASE = 4
RX_TRACKER_WORDS = 24
#: rx row: the UDP port it is bound to (the word after the tracker: 28).
ST_RX_PORT = RX_TRACKER_BASE + RX_TRACKER_WORDS
#: rx row: datagrams the kernel dropped for rx's socket (receive queue full), -1 unknown.
ST_RX_KERNEL_DROPS = ST_RX_PORT + 1
assert ST_RX_PORT == 28 and ST_RX_KERNEL_DROPS < STATS_WORDS  # (docs/PROTOCOL.md "Stats block" gives the words)
#: rx row, ``[rx] protocol = "moldudp64"``: the MoldUDP64 receiver's state words
#: (``obpipe.feed_sim.moldudp64`` S_*, RX_MOLD_WORDS of them) and the ITCH decoder's
#: counters (``obpipe.feed_sim.itch`` counters, RX_ITCH_WORDS), copied by rx after each
#: loop turn; then rx's own.
RX_MOLD_BASE = ST_RX_KERNEL_DROPS + 1
RX_MOLD_WORDS = 56
RX_ITCH_BASE = RX_MOLD_BASE + RX_MOLD_WORDS
RX_ITCH_WORDS = 39
ST_RX_RING_WAITS = 125  # turns that found the md ring full (decoding waited; nothing dropped)
ST_RX_STALE_MARKS = 126  # lost ranges: every book marked stale at that point
ST_RX_PROTOCOL = 127  # RX_PROTO_* of the rx that owns the row
RX_PROTO_OBPIPE, RX_PROTO_MOLDUDP64 = 1, 2
assert RX_ITCH_BASE + RX_ITCH_WORDS <= ST_RX_RING_WAITS and ST_RX_PROTOCOL < STATS_WORDS
#: Feed row (the feed process: synthetic flow or a replay, sent over UDP).
ST_FEED_SENT = 4  # messages sent
ST_FEED_DATAGRAMS = 5  # datagrams sent (faults included)
ST_FEED_PACKETS = 6  # packets encoded (before faults)
ST_FEED_SEND_ERRORS = 7  # sendmmsg failures
ST_FEED_TOTAL = 8  # messages this feed will send (-1: unbounded)
ST_FEED_INJECTED = 9  # words 9..15: packets injected per fault, in FEED_INJECTED_NAMES order (drop .. bad_version)
ST_FEED_EXPECTED = 16  # words 16..21: what an in-order receiver must count (FEED_EXPECTED_NAMES)
ST_FEED_CAPTURED = 22  # datagrams written to the capture file
ST_FEED_T0_NS = 23  # CLOCK_MONOTONIC when pacing started (after the kernels were loaded)
ST_FEED_T1_NS = 24  # CLOCK_MONOTONIC after the last send so far
ST_FEED_CPU_NS = 25  # the feed process's own CPU time (user + system) so far
ST_FEED_REQUEST_PORT = 26  # an ITCH feed's MoldUDP64 retransmission request port (127.0.0.1)
FEED_INJECTED_NAMES = ("drop", "duplicate", "reorder", "truncate", "corrupt", "bad_magic", "bad_version")
FEED_EXPECTED_NAMES = ("gap_messages", "duplicates", "out_of_order", "malformed", "late_messages", "delivered")
#: Analysis row (written by the analysis kernel in place).
ST_AN_EVENTS = 4  # events consumed from the events ring
ST_AN_SIGNALS = 5  # signals detected (all kinds)
ST_AN_SUMMARIES = 6  # summaries made, those dropped for room included (as signals are counted)
ST_AN_SIGNAL_DROPS = 7  # signals dropped: the signals ring was full
ST_AN_SUMMARY_DROPS = 8  # summaries dropped: the signals ring was full
ST_AN_BY_KIND = 9  # words 9..13: signals per kind, SIG_* - 1 order
ST_AN_CPU_NS = 14  # the analysis process's CPU time (user + system) so far
ST_AN_RELAYED = 15  # events copied on to the tick recorder's ring ([ticks] enabled)
ST_AN_RELAY_DROPS = 16  # events not copied: the tick recorder's ring was full (the recorder is behind)
ANALYSIS_STAT_NAMES = {ST_AN_EVENTS: "events", ST_AN_SIGNALS: "signals", ST_AN_SUMMARIES: "summaries",
                       ST_AN_SIGNAL_DROPS: "signal_drops", ST_AN_SUMMARY_DROPS: "summary_drops",
                       ST_AN_CPU_NS: "cpu_ns", ST_AN_RELAYED: "ticks_relayed", ST_AN_RELAY_DROPS: "ticks_dropped"}
#: Publisher row (Python; written by the publisher between polls).
ST_PUB_SIGNALS_IN = 4  # signals taken from the signals ring
ST_PUB_SUMMARIES_IN = 5  # summaries taken from the signals ring
ST_PUB_SIGNALS_DROPPED = 6  # signals dropped oldest-first from the full pending queue
ST_PUB_COALESCED = 7  # summaries replaced by a newer one for the same symbol while pending
ST_PUB_PRODUCED = 8  # messages handed to the Kafka producer
ST_PUB_DELIVERED = 9  # delivery reports: success
ST_PUB_FAILED = 10  # delivery reports: failure (e.g. message timeout while Kafka is down)
ST_PUB_KAFKA_ERRORS = 11  # client errors reported by librdkafka (broker down, transport, ...)
ST_PUB_PENDING = 12  # messages waiting in the publisher's own queue now
ST_PUB_IN_FLIGHT = 13  # messages inside the producer, not yet reported
ST_PUB_BROKER_UP = 14  # 1 after a successful delivery, 0 after an all-brokers-down error
ST_PUB_DELIVERED_SIGNALS = 15  # of ST_PUB_DELIVERED: signals
ST_PUB_FAILED_SIGNALS = 16  # of ST_PUB_FAILED: signals
ST_PUB_LOST = 17  # in flight when a previous publisher process died (never reported)
ST_PUB_ENCODE_ERRORS = 18  # records that could not be encoded (bad symbol index / kind)
ST_PUB_SUMMARIES_DROPPED = 19  # summaries still pending when the publisher stopped
PUBLISHER_STAT_NAMES = {ST_PUB_SIGNALS_IN: "signals_in", ST_PUB_SUMMARIES_IN: "summaries_in",
                        ST_PUB_SIGNALS_DROPPED: "signals_dropped", ST_PUB_COALESCED: "coalesced",
                        ST_PUB_PRODUCED: "produced", ST_PUB_DELIVERED: "delivered", ST_PUB_FAILED: "failed",
                        ST_PUB_KAFKA_ERRORS: "kafka_errors", ST_PUB_PENDING: "pending",
                        ST_PUB_IN_FLIGHT: "in_flight", ST_PUB_BROKER_UP: "broker_up",
                        ST_PUB_DELIVERED_SIGNALS: "delivered_signals", ST_PUB_FAILED_SIGNALS: "failed_signals",
                        ST_PUB_LOST: "lost", ST_PUB_ENCODE_ERRORS: "encode_errors",
                        ST_PUB_SUMMARIES_DROPPED: "summaries_dropped"}
#: Redis writer row (``obpipe.publisher.redis_writer``).
ST_REDIS_ROUNDS = 4  # rounds done (one per [redis] interval_ms at most)
ST_REDIS_WRITES = 5  # symbol states written (one hash + depth per symbol whose snapshot changed)
ST_REDIS_PUBLISHES = 6  # BBO-change messages published
ST_REDIS_ERRORS = 7  # rounds that failed: Redis down, slow (timeout) or refusing
ST_REDIS_UP = 8  # 1 after a round succeeded, 0 after one failed, -1 unknown yet
ST_REDIS_RECONNECTS = 9  # times writes resumed after Redis was down
ST_REDIS_TORN = 10  # snapshot reads that gave up (writer mid-write too long): skipped until the next round
REDIS_STAT_NAMES = {ST_REDIS_ROUNDS: "rounds", ST_REDIS_WRITES: "redis_writes", ST_REDIS_PUBLISHES: "publishes",
                    ST_REDIS_ERRORS: "redis_errors", ST_REDIS_UP: "up", ST_REDIS_RECONNECTS: "reconnects",
                    ST_REDIS_TORN: "snapshot_give_ups"}
#: Tick recorder row (``obpipe.ticks.recorder``).
ST_TK_EVENTS = 4  # events taken from the "ticks" ring
ST_TK_QUOTES = 5  # quote rows stored (committed)
ST_TK_TRADES = 6  # trade rows stored
ST_TK_DEPTH = 7  # depth rows stored
ST_TK_FLUSHES = 8  # inserts done
ST_TK_ERRORS = 9  # inserts that failed (the rows are kept and retried)
ST_TK_PENDING = 10  # rows taken but not stored yet (in the spool, ticks/spool.py)
ST_TK_LOST = 11  # rows a previous, killed recorder had taken but not spooled (counted at the restart)
ST_TK_BAD_SYMBOL = 12  # events of a symbol index the config does not name (skipped)
ST_TK_DEPTH_TAKEN = 13  # depth rows sampled from the snapshots (stored, pending or lost)
ST_TK_BASE = 14  # words 14..16: the store's quotes, trades, depth rows when this run's first recorder
#                   started, and word 17 = 1 once they are set (a restarted recorder finds what its
#                   killed predecessor's last insert stored, and counts only the rest as lost)
ST_TK_SPOOLED = 18  # rows (events, depth) written to the spool
TICKS_STAT_NAMES = {ST_TK_EVENTS: "events", ST_TK_QUOTES: "quotes", ST_TK_TRADES: "trades", ST_TK_DEPTH: "depth",
                    ST_TK_FLUSHES: "flushes", ST_TK_ERRORS: "errors", ST_TK_PENDING: "pending",
                    ST_TK_LOST: "lost_at_restart", ST_TK_BAD_SYMBOL: "bad_symbol", ST_TK_DEPTH_TAKEN: "depth_taken", ST_TK_SPOOLED: "spooled"}
#: Supervisor row.
ST_SUP_EVENTS_READ = 4  # events drained from the events ring while no analysis process runs
ST_SUP_OUT_DISCARDED = 7  # signals-ring records drained while no publisher runs ([kafka] enabled = false)
ST_SUP_KAFKA_PORT = 8  # port of the embedded broker on 127.0.0.1 (0: none started)
ST_SUP_REDIS_PID = 9  # pid of the Redis server obpipe run started (0: none)
ST_SUP_METRICS_PORT = 10  # port of the /metrics endpoint obpipe run serves (0: none)
ST_SUP_RESTARTS = 5  # children restarted (restartable parts only)
ST_SUP_STALE_KILLS = 6  # children killed because their heartbeat went stale
FEED_STAT_NAMES = {ST_FEED_SENT: "sent", ST_FEED_DATAGRAMS: "datagrams", ST_FEED_PACKETS: "packets",
                   ST_FEED_SEND_ERRORS: "send_errors", ST_FEED_TOTAL: "total", ST_FEED_CAPTURED: "captured",
                   ST_FEED_T0_NS: "t0_ns", ST_FEED_T1_NS: "t1_ns", ST_FEED_CPU_NS: "cpu_ns",
                   ST_FEED_REQUEST_PORT: "request_port"}
SUP_STAT_NAMES = {ST_SUP_EVENTS_READ: "events_read", ST_SUP_RESTARTS: "restarts", ST_SUP_STALE_KILLS: "stale_kills",
                  ST_SUP_OUT_DISCARDED: "signals_discarded", ST_SUP_KAFKA_PORT: "kafka_port",
                  ST_SUP_REDIS_PID: "redis_pid", ST_SUP_METRICS_PORT: "metrics_port"}


def dtype_crc(dt: np.dtype) -> int:
    """Stable fingerprint of a record layout (names, formats, offsets, size)."""
    desc = repr([(n, dt.fields[n][0].str, dt.fields[n][0].shape, dt.fields[n][1]) for n in dt.names])
    return zlib.crc32(f"{desc}|{dt.itemsize}".encode())


def words_of(dt: np.dtype) -> int:
    """Record size in int64 words (records are whole words so kernels copy words)."""
    if dt.itemsize % 8:
        raise ValueError(f"record size {dt.itemsize} is not a multiple of 8 bytes")
    return dt.itemsize // 8
