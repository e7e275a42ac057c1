"""Nasdaq TotalView-ITCH 5.0: the specification as data, file reading, decode into
``schema.MD_L3_DTYPE`` records, encode back, and a message dump.

The specification lives in ``SPEC``: one entry per message type with its name and its
fields in order (the spec's field names in snake_case, e.g. "Order Reference Number" ->
``order_reference_number``); ``TYPES`` holds one big-endian numpy dtype per type built
from it, each asserted at import to have the spec's length (``MESSAGE_LENGTHS``), and
the compiled decoder's field offsets are asserted against these dtypes.  Field kinds:

* integers: big-endian unsigned, 2, 4 or 8 bytes;
* ``timestamp``: 6 bytes, big-endian nanoseconds after midnight (the dtype holds the 6
  raw bytes; ``timestamps()`` converts a column);
* alpha: space-padded ASCII (``S<n>``; multi-byte alpha fields are shown stripped);
* prices: ``Price(4)`` unsigned 32-bit in 1e-4 USD, ``Price(8)`` (MWCB levels) unsigned
  64-bit in 1e-8 USD (``PRICE_DECIMALS``).

The contract of the decoder (type -> record kind, units, counters, symbol selection):
docs/ITCH.md.  The compiled code is ``_itch_kernels``; everything here validates,
allocates, and calls it in batches.
"""
from __future__ import annotations

import gzip
import json as _json
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from obpipe.feed_sim import _itch_kernels as K

# The decoder kernel and the words of its state, for compiled loops elsewhere (rx).
decode_l3 = K.decode_l3
D_POS, D_SEQ, D_NOUT, D_RECV_NS, D_FINAL = K.D_POS, K.D_SEQ, K.D_NOUT, K.D_RECV_NS, K.D_FINAL
DONE, FULL, PARTIAL = K.DONE, K.FULL, K.PARTIAL
N_COUNTERS = K.NC
from obpipe.ring import schema

INT, ALPHA, PRICE4, PRICE8, TS = "int", "alpha", "price4", "price8", "timestamp"

#: Every field after the common header (message_type, stock_locate, tracking_number,
#: timestamp), per type: (spec name in snake_case, kind, bytes).
SPEC: dict[str, tuple[str, list[tuple[str, str, int]]]] = {
    "S": ("System Event", [("event_code", ALPHA, 1)]),
    "R": ("Stock Directory", [
        ("stock", ALPHA, 8), ("market_category", ALPHA, 1), ("financial_status_indicator", ALPHA, 1),
        ("round_lot_size", INT, 4), ("round_lots_only", ALPHA, 1), ("issue_classification", ALPHA, 1),
        ("issue_sub_type", ALPHA, 2), ("authenticity", ALPHA, 1), ("short_sale_threshold_indicator", ALPHA, 1),
        ("ipo_flag", ALPHA, 1), ("luld_reference_price_tier", ALPHA, 1), ("etp_flag", ALPHA, 1),
        ("etp_leverage_factor", INT, 4), ("inverse_indicator", ALPHA, 1)]),
    "H": ("Stock Trading Action", [
        ("stock", ALPHA, 8), ("trading_state", ALPHA, 1), ("reserved", ALPHA, 1), ("reason", ALPHA, 4)]),
    "Y": ("Reg SHO Short Sale Price Test Restricted Indicator", [("stock", ALPHA, 8), ("reg_sho_action", ALPHA, 1)]),
    "L": ("Market Participant Position", [
        ("mpid", ALPHA, 4), ("stock", ALPHA, 8), ("primary_market_maker", ALPHA, 1),
        ("market_maker_mode", ALPHA, 1), ("market_participant_state", ALPHA, 1)]),
    "V": ("MWCB Decline Level", [("level_1", PRICE8, 8), ("level_2", PRICE8, 8), ("level_3", PRICE8, 8)]),
    "W": ("MWCB Status", [("breached_level", ALPHA, 1)]),
    "K": ("IPO Quoting Period Update", [
        ("stock", ALPHA, 8), ("ipo_quotation_release_time", INT, 4), ("ipo_quotation_release_qualifier", ALPHA, 1),
        ("ipo_price", PRICE4, 4)]),
    "J": ("LULD Auction Collar", [
        ("stock", ALPHA, 8), ("auction_collar_reference_price", PRICE4, 4), ("upper_auction_collar_price", PRICE4, 4),
        ("lower_auction_collar_price", PRICE4, 4), ("auction_collar_extension", INT, 4)]),
    "h": ("Operational Halt", [("stock", ALPHA, 8), ("market_code", ALPHA, 1), ("operational_halt_action", ALPHA, 1)]),
    "A": ("Add Order - No MPID Attribution", [
        ("order_reference_number", INT, 8), ("buy_sell_indicator", ALPHA, 1), ("shares", INT, 4),
        ("stock", ALPHA, 8), ("price", PRICE4, 4)]),
    "F": ("Add Order with MPID Attribution", [
        ("order_reference_number", INT, 8), ("buy_sell_indicator", ALPHA, 1), ("shares", INT, 4),
        ("stock", ALPHA, 8), ("price", PRICE4, 4), ("attribution", ALPHA, 4)]),
    "E": ("Order Executed", [
        ("order_reference_number", INT, 8), ("executed_shares", INT, 4), ("match_number", INT, 8)]),
    "C": ("Order Executed With Price", [
        ("order_reference_number", INT, 8), ("executed_shares", INT, 4), ("match_number", INT, 8),
        ("printable", ALPHA, 1), ("execution_price", PRICE4, 4)]),
    "X": ("Order Cancel", [("order_reference_number", INT, 8), ("cancelled_shares", INT, 4)]),
    "D": ("Order Delete", [("order_reference_number", INT, 8)]),
    "U": ("Order Replace", [
        ("original_order_reference_number", INT, 8), ("new_order_reference_number", INT, 8), ("shares", INT, 4),
        ("price", PRICE4, 4)]),
    "P": ("Trade (Non-Cross)", [
        ("order_reference_number", INT, 8), ("buy_sell_indicator", ALPHA, 1), ("shares", INT, 4),
        ("stock", ALPHA, 8), ("price", PRICE4, 4), ("match_number", INT, 8)]),
    "Q": ("Cross Trade", [
        ("shares", INT, 8), ("stock", ALPHA, 8), ("cross_price", PRICE4, 4), ("match_number", INT, 8),
        ("cross_type", ALPHA, 1)]),
    "B": ("Broken Trade / Order Execution", [("match_number", INT, 8)]),
    "I": ("Net Order Imbalance Indicator (NOII)", [
        ("paired_shares", INT, 8), ("imbalance_shares", INT, 8), ("imbalance_direction", ALPHA, 1),
        ("stock", ALPHA, 8), ("far_price", PRICE4, 4), ("near_price", PRICE4, 4),
        ("current_reference_price", PRICE4, 4), ("cross_type", ALPHA, 1), ("price_variation_indicator", ALPHA, 1)]),
    "N": ("Retail Price Improvement Indicator (RPII)", [("stock", ALPHA, 8), ("interest_flag", ALPHA, 1)]),
    "O": ("Direct Listing with Capital Raise Price Discovery", [
        ("stock", ALPHA, 8), ("open_eligibility_status", ALPHA, 1), ("minimum_allowable_price", PRICE4, 4),
        ("maximum_allowable_price", PRICE4, 4), ("near_execution_price", PRICE4, 4), ("near_execution_time", INT, 8),
        ("lower_price_range_collar", PRICE4, 4), ("upper_price_range_collar", PRICE4, 4)]),
}
#: The common header every message starts with.
HEADER = [("message_type", ALPHA, 1), ("stock_locate", INT, 2), ("tracking_number", INT, 2), ("timestamp", TS, 6)]
#: The spec's message lengths in bytes (the length prefix of a well-formed message).
MESSAGE_LENGTHS: dict[str, int] = dict(K.SPEC_LENGTHS)
#: Implied decimals of each price field.
PRICE_DECIMALS: dict[str, int] = {f: (4 if kind == PRICE4 else 8)
                                  for _, fields in SPEC.values() for f, kind, _ in fields if kind in (PRICE4, PRICE8)}


def _dtype(fields) -> np.dtype:
    spec = []
    for name, kind, size in fields:
        if kind == ALPHA:
            spec.append((name, f"S{size}"))
        elif kind == TS:
            spec.append((name, "u1", (6,)))
        else:
            spec.append((name, f">u{size}"))
    return np.dtype(spec)


#: One packed big-endian dtype per message type, covering the whole message.
TYPES: dict[str, np.dtype] = {c: _dtype(HEADER + fields) for c, (_, fields) in SPEC.items()}

assert set(SPEC) == set(MESSAGE_LENGTHS) and len(SPEC) == 23
for _c, _dt in TYPES.items():
    assert _dt.itemsize == MESSAGE_LENGTHS[_c], f"ITCH {_c}: dtype {_dt.itemsize} bytes, spec {MESSAGE_LENGTHS[_c]}"


def _check_kernel_offsets() -> None:
    """The kernel reads fields at fixed offsets: they must be these dtypes' offsets."""
    off = {c: {f: dt.fields[f][1] for f in dt.names} for c, dt in TYPES.items()}
    want = [
        ("A", "stock_locate", K.O_LOCATE), ("A", "tracking_number", K.O_TRACKING), ("A", "timestamp", K.O_TS),
        ("A", "order_reference_number", K.O_REF), ("A", "buy_sell_indicator", K.O_AP_SIDE),
        ("A", "shares", K.O_AP_SHARES), ("A", "stock", K.O_AP_STOCK), ("A", "price", K.O_AP_PRICE),
        ("F", "order_reference_number", K.O_REF), ("F", "buy_sell_indicator", K.O_AP_SIDE),
        ("F", "shares", K.O_AP_SHARES), ("F", "stock", K.O_AP_STOCK), ("F", "price", K.O_AP_PRICE),
        ("F", "attribution", K.O_F_ATTRIBUTION),
        ("P", "order_reference_number", K.O_REF), ("P", "buy_sell_indicator", K.O_AP_SIDE),
        ("P", "shares", K.O_AP_SHARES), ("P", "stock", K.O_AP_STOCK), ("P", "price", K.O_AP_PRICE),
        ("P", "match_number", K.O_P_MATCH),
        ("E", "order_reference_number", K.O_REF), ("E", "executed_shares", K.O_EC_SHARES),
        ("E", "match_number", K.O_EC_MATCH),
        ("C", "order_reference_number", K.O_REF), ("C", "executed_shares", K.O_EC_SHARES),
        ("C", "match_number", K.O_EC_MATCH), ("C", "printable", K.O_C_PRINTABLE),
        ("C", "execution_price", K.O_C_PRICE),
        ("X", "order_reference_number", K.O_REF), ("X", "cancelled_shares", K.O_X_SHARES),
        ("D", "order_reference_number", K.O_REF),
        ("U", "original_order_reference_number", K.O_REF), ("U", "new_order_reference_number", K.O_U_NEW_REF),
        ("U", "shares", K.O_U_SHARES), ("U", "price", K.O_U_PRICE),
        ("Q", "shares", K.O_Q_SHARES), ("Q", "stock", K.O_Q_STOCK), ("Q", "cross_price", K.O_Q_PRICE),
        ("Q", "match_number", K.O_Q_MATCH), ("Q", "cross_type", K.O_Q_CROSS_TYPE),
        ("R", "stock", K.O_R_STOCK), ("S", "event_code", K.O_S_EVENT),
    ]
    for c, f, o in want:
        assert off[c][f] == o, f"ITCH {c}.{f}: kernel offset {o}, spec {off[c][f]}"
    for c in TYPES:
        assert off[c]["stock_locate"] == K.O_LOCATE and off[c]["timestamp"] == K.O_TS


_check_kernel_offsets()

#: Book-relevant types and the MD_L3 kind each becomes.
L3_KIND_OF = {"A": schema.L3_ADD, "F": schema.L3_ADD, "E": schema.L3_EXEC, "C": schema.L3_EXEC_PX,
              "X": schema.L3_CANCEL, "D": schema.L3_DELETE, "U": schema.L3_REPLACE, "P": schema.L3_TRADE,
              "Q": schema.L3_CROSS}

#: System event codes (S ``event_code``).
EVENT_START_OF_MESSAGES = b"O"
EVENT_END_OF_MESSAGES = b"C"

N_SYMBOLS_MAX = K.N_LOCATES - 1  # locate 0 names no stock
_UNKNOWN_LOCATE = {"skip": K.UNK_SKIP, "name": K.UNK_NAME, "any": K.UNK_ANY}
#: Statuses of ``Decoder.run`` (``_itch_kernels.decode_l3``).
DONE, FULL, PARTIAL = K.DONE, K.FULL, K.PARTIAL
_GZIP_MAGIC = b"\x1f\x8b"
_EXCHANGE_TZ = "America/New_York"


class ItchError(ValueError):
    """Raised by this module's Python face on bad arguments (a symbol name that is not
    1-8 ASCII characters, a tick divisor < 1, too many symbols, a buffer that is not
    bytes); never for bad ITCH input, which is counted."""


# --- names ---------------------------------------------------------------------------

def stock_key(name: str) -> int:
    """A stock name as the decoder's uint64 key: 8 space-padded ASCII bytes, big-endian."""
    if not isinstance(name, str) or not 1 <= len(name) <= 8 or not name.isascii() or name != name.strip():
        raise ItchError(f"stock name {name!r}: 1-8 ASCII characters, no padding")
    return int.from_bytes(name.ljust(8).encode("ascii"), "big")


def key_name(key: int) -> str:
    """The stock name of a key (padding stripped); "" for 0 (not known)."""
    key = int(key)
    return "" if key == 0 else key.to_bytes(8, "big").decode("latin-1").rstrip(" \x00")


# --- files ---------------------------------------------------------------------------

def read_itch(path) -> np.ndarray:
    """The whole of an ITCH file (plain or gzip, told by its first bytes) as a writable
    uint8 array.  For files larger than memory use ``iter_itch``."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    if not gz:
        return np.fromfile(path, np.uint8)
    with gzip.open(path, "rb") as f:
        return np.frombuffer(bytearray(f.read()), np.uint8)


def iter_itch(path, chunk_bytes: int = 1 << 26) -> Iterator[np.ndarray]:
    """An ITCH file (plain or gzip) in chunks of up to ``chunk_bytes`` raw bytes (cut
    anywhere, not at message boundaries: ``Decoder.feed`` carries a cut message over)."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        while True:
            b = bytearray(chunk_bytes)
            n = f.readinto(b)
            if not n:
                return
            yield np.frombuffer(b, np.uint8, count=n)


_FILE_DATE = re.compile(r"(\d{2})(\d{2})(\d{4})\.(?:[\w.-]+\.)?(?:NASDAQ_ITCH50|itch50)(?:\.gz)?", re.IGNORECASE)


def session_midnight_ns(year: int, month: int, day: int) -> int:
    """UTC epoch ns of midnight in New York on that date (ITCH timestamps count from it)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return int(datetime(year, month, day, tzinfo=ZoneInfo(_EXCHANGE_TZ)).timestamp()) * 1_000_000_000


def file_day_ns(path) -> int | None:
    """The session midnight (``session_midnight_ns``) from a Nasdaq file name
    ``MMDDYYYY.NASDAQ_ITCH50[.gz]`` (or ``MMDDYYYY.<anything>.itch50[.gz]``); None for
    other names."""
    m = _FILE_DATE.fullmatch(Path(path).name)
    if m is None:
        return None
    try:
        return session_midnight_ns(int(m[3]), int(m[1]), int(m[2]))
    except ValueError:
        return None


def _as_buffer(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ItchError(f"buffer: a 1-d uint8 array, not {data.dtype} with {data.ndim} dimensions")
        a = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        a = np.frombuffer(data, np.uint8)
    else:
        raise ItchError(f"buffer: bytes or a uint8 array, not {type(data).__name__}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        a = a.copy()  # one kernel specialization: contiguous and writable
    return a


# --- decode --------------------------------------------------------------------------

class Decoder:
    """Stateful decoding of one ITCH stream into ``MD_L3_DTYPE`` records.

    Args:
        symbols: the stock names wanted, in symbol-index order; None: every stock, each
            new one taking the next index (up to ``n_symbols``).
        n_symbols: with ``symbols=None``, how many indices there are (default 65,535).
        tick_divisor: ITCH price units (1e-4 USD) per tick; 100 for 0.01 USD ticks.  A
            price that is not a whole number of ticks is counted (``subtick``) and its
            message skipped.
        day_ns: UTC epoch ns of the session's midnight in New York
            (``session_midnight_ns``, ``file_day_ns``); ts_exch_ns = day_ns + timestamp.
        seq0: sequence number of the first message (every framed message takes one).
        unknown_locate: what to do with a locate no stock directory (R) message named
            (a stream that starts after the R messages): "skip" its messages, decide it
            by the first message naming its "name" (A/F/P/Q), or, with ``symbols=None``
            only, "any": also give an index to the first E/C/X/D/U of it.
        locates: pre-seeded locate -> stock name (e.g. the R messages of the session's
            start), applied as R messages would be.
        capacity: records per kernel call in ``feed`` (memory, not a limit).

    Attributes ``loc``, ``wanted``, ``names``, ``D`` and ``C`` are the kernel's arrays:
    ``run`` calls ``_itch_kernels.decode_l3`` on a caller's buffer and output with no
    other Python work (benchmarks, rx).
    """

    def __init__(self, symbols: Sequence[str] | None = None, n_symbols: int | None = None, *,
                 tick_divisor: int = 100, day_ns: int = 0, seq0: int = 1, unknown_locate: str = "name",
                 locates: Mapping[int, str] | None = None, capacity: int = 1 << 16):
        if int(tick_divisor) < 1:
            raise ItchError(f"tick_divisor {tick_divisor}: must be >= 1")
        if unknown_locate not in _UNKNOWN_LOCATE:
            raise ItchError(f"unknown_locate {unknown_locate!r}: one of {sorted(_UNKNOWN_LOCATE)}")
        if capacity < 1:
            raise ItchError(f"capacity {capacity}: must be >= 1")
        self.D = np.zeros(K.ND, np.int64)
        self.C = np.zeros(K.NC, np.int64)
        self.loc = np.full(K.N_LOCATES, K.LOC_UNDECIDED, np.int32)
        if symbols is not None:
            symbols = list(symbols)
            if unknown_locate == "any":
                raise ItchError('unknown_locate "any" needs symbols=None (a wanted list selects by name)')
            if n_symbols is not None and n_symbols != len(symbols):
                raise ItchError(f"n_symbols {n_symbols} but {len(symbols)} symbols named")
            keys = [stock_key(s) for s in symbols]
            if len(set(keys)) != len(keys):
                raise ItchError(f"symbols: a name is repeated in {symbols}")
            if not 1 <= len(keys) <= N_SYMBOLS_MAX:
                raise ItchError(f"symbols: 1..{N_SYMBOLS_MAX} names, not {len(keys)}")
            self.wanted = np.array(keys, np.uint64)
            self.names = self.wanted.copy()
            self.D[K.D_MODE] = K.MODE_WANTED
        else:
            n = N_SYMBOLS_MAX if n_symbols is None else int(n_symbols)
            if not 1 <= n <= N_SYMBOLS_MAX:
                raise ItchError(f"n_symbols {n}: 1..{N_SYMBOLS_MAX}")
            self.wanted = np.zeros(0, np.uint64)
            self.names = np.zeros(n, np.uint64)
            self.D[K.D_MODE] = K.MODE_ALL
        self.D[K.D_SEQ] = seq0
        self.D[K.D_DAY_NS] = day_ns
        self.D[K.D_TICK_DIV] = tick_divisor
        self.D[K.D_UNKNOWN] = _UNKNOWN_LOCATE[unknown_locate]
        self.out = np.zeros(capacity, schema.MD_L3_DTYPE)
        self._tail = np.zeros(0, np.uint8)
        if locates:
            self.seed(locates)

    def seed(self, locates: Mapping[int, str]) -> None:
        """Map locates to stock names as R messages would (an already decided locate is
        left as it is)."""
        buf = np.zeros(41 * len(locates), np.uint8)
        E = np.zeros(K.NE, np.int64)
        for locate, name in locates.items():
            if not 1 <= int(locate) < K.N_LOCATES:
                raise ItchError(f"locate {locate}: 1..{K.N_LOCATES - 1}")
            p = int(E[K.E_POS])
            K.encode_directory(np.array([stock_key(name)], np.uint64), 0, buf, E)
            buf[p + 3: p + 5] = np.frombuffer(int(locate).to_bytes(2, "big"), np.uint8)
        D = self.D.copy()
        D[K.D_POS] = 0
        D[K.D_NOUT] = 0
        D[K.D_FINAL] = 1
        C = np.zeros(K.NC, np.int64)
        K.decode_l3(buf, int(E[K.E_POS]), self.out, self.loc, self.wanted, self.names, D, C)
        self.D[K.D_NSYM] = D[K.D_NSYM]
        for c in (K.C_SYMBOLS, K.C_SYMBOL_OVERFLOW, K.C_LOCATE_CONFLICT):
            self.C[c] += C[c]

    def run(self, buf: np.ndarray, end: int, out: np.ndarray, start: int = 0, final: bool = True,
            seq: int | None = None, recv_ns: int | None = None) -> tuple[int, int]:
        """One kernel call on ``buf[start:end]`` (uint8, contiguous, writable) into ``out``
        (MD_L3_DTYPE, from index 0): returns (status ``DONE``/``FULL``/``PARTIAL``, records
        written); ``self.D[D_POS]`` is where it stopped.  ``seq``: the first message's
        sequence number (default: continue); ``recv_ns``: the records' ts_recv_ns from now
        on (e.g. a MoldUDP64 packet's sequence number and receive stamp, once per packet)."""
        D = self.D
        D[K.D_POS] = start
        D[K.D_NOUT] = 0
        D[K.D_FINAL] = 1 if final else 0
        if seq is not None:
            D[K.D_SEQ] = seq
        if recv_ns is not None:
            D[K.D_RECV_NS] = recv_ns
        st = K.decode_l3(buf, end, out, self.loc, self.wanted, self.names, D, self.C)
        return int(st), int(D[K.D_NOUT])

    def feed(self, data, final: bool = False) -> np.ndarray:
        """Decode ``data`` (bytes or uint8 array) after whatever was cut at the end of the
        previous ``feed``; returns the records (a new array).  ``final=True`` ends the
        stream: a cut message at the end is counted ``truncated``."""
        buf = _as_buffer(data)
        if self._tail.size:
            buf = np.concatenate([self._tail, buf])
        parts = []
        start = 0
        while True:
            st, n = self.run(buf, buf.size, self.out, start, final)
            parts.append(self.out[:n].copy())
            start = int(self.D[K.D_POS])
            if st != K.FULL:
                break
        self._tail = buf[start:].copy() if st == K.PARTIAL else np.zeros(0, np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def symbol_names(self) -> list[str]:
        """Stock name of each symbol index ("" while not known)."""
        n = self.names.size if self.D[K.D_MODE] == K.MODE_WANTED else int(self.D[K.D_NSYM])
        return [key_name(k) for k in self.names[:n]]

    def counters(self) -> dict[str, int]:
        """The counters by name (docs/ITCH.md), messages of each type as ``type_<letter>``."""
        return counters(self.C)


def counters(C: np.ndarray) -> dict[str, int]:
    """A decoder's counter words by name, messages of each type as ``type_<letter>``."""
    d = {name: int(C[i]) for i, name in K.COUNTER_NAMES.items()}
    d.update({f"type_{c}": int(C[K.C_TYPE0 + i]) for i, c in enumerate(K.TYPE_CODES)})
    return d


def decode(data, symbols: Sequence[str] | None = None, n_symbols: int | None = None, *, tick_divisor: int = 100,
           day_ns: int = 0, seq0: int = 1, unknown_locate: str = "name",
           locates: Mapping[int, str] | None = None) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Decode a whole buffer of length-prefixed ITCH messages (arguments: ``Decoder``).

    Returns:
        (records as ``MD_L3_DTYPE``, stock name of each symbol index, counters).
    """
    buf = _as_buffer(data)
    dec = Decoder(symbols, n_symbols, tick_divisor=tick_divisor, day_ns=day_ns, seq0=seq0,
                  unknown_locate=unknown_locate, locates=locates,
                  capacity=buf.size // (2 + K.MIN_BOOK_LEN) + 1)  # room for every record: one kernel call
    recs = dec.feed(buf, final=True)
    return recs, dec.symbol_names, dec.counters()


# --- encode --------------------------------------------------------------------------

def encode(records: np.ndarray, names: Sequence[str], *, tick_divisor: int = 100, day_ns: int = 0,
           start_end: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """ITCH 5.0 bytes (length-prefixed) of ``MD_L3_DTYPE`` records whose ``symbol`` i is
    the stock ``names[i]`` (locate i + 1).

    With ``start_end``: a system event "start of messages" and one stock directory (R)
    message per symbol first (at the first record's time), "end of messages" last, so
    the result is a complete ITCH file.  Timestamps are ts_exch_ns - day_ns; prices
    px_tick * tick_divisor.  Fields a kind does not carry are not encoded (so only they
    differ after a round trip); records ITCH cannot carry (L3_CLEAR, out of range) are
    counted and skipped.

    Returns:
        (the bytes as a uint8 array, counters: messages, skipped_kind, skipped_range).
    """
    if records.dtype != schema.MD_L3_DTYPE:
        raise ItchError(f"records: MD_L3_DTYPE, not {records.dtype}")
    if int(tick_divisor) < 1:
        raise ItchError(f"tick_divisor {tick_divisor}: must be >= 1")
    if len(names) > N_SYMBOLS_MAX:
        raise ItchError(f"{len(names)} symbols: at most {N_SYMBOLS_MAX}")
    keys = np.array([stock_key(s) for s in names], np.uint64)
    records = np.ascontiguousarray(records)
    n = records.size
    size = n * K.ENC_ROOM + (2 * 14 + keys.size * 41 if start_end else 0) + K.ENC_ROOM
    out = np.zeros(size, np.uint8)
    E = np.zeros(K.NE, np.int64)
    E[K.E_MATCH] = 1
    E[K.E_DAY_NS] = day_ns
    E[K.E_TICK_MUL] = tick_divisor
    t0 = max(0, min(int(records["ts_exch_ns"][0]) - day_ns, (1 << 48) - 1)) if n else 0
    t1 = max(0, min(int(records["ts_exch_ns"][-1]) - day_ns, (1 << 48) - 1)) if n else 0
    if start_end:
        K.encode_system_event(ord(EVENT_START_OF_MESSAGES), t0, out, E)
        K.encode_directory(keys, t0, out, E)
    done = K.encode_l3(records, 0, n, keys, out, E)
    assert done == n, "encode: output sized for every record"
    if start_end:
        K.encode_system_event(ord(EVENT_END_OF_MESSAGES), t1, out, E)
    counters = {"messages": int(E[K.E_MESSAGES]), "skipped_kind": int(E[K.E_SKIP_KIND]),
                "skipped_range": int(E[K.E_SKIP_RANGE])}
    return out[: E[K.E_POS]].copy(), counters


# --- message by message (dump, tests) ------------------------------------------------

def frame(data) -> tuple[np.ndarray, int]:
    """(offsets of the length prefixes of the complete messages, offset where they end:
    ``len(data)`` unless the last message is cut)."""
    buf = _as_buffer(data)
    offs = np.zeros(buf.size // 2 + 1, np.int64)
    n = K.frame(buf, 0, buf.size, offs)
    offs = offs[:n]
    end = int(offs[-1]) + 2 + ((int(buf[offs[-1]]) << 8) | int(buf[offs[-1] + 1])) if n else 0
    return offs, end


def timestamps(arr: np.ndarray) -> np.ndarray:
    """The ``timestamp`` column of an array of a ``TYPES`` dtype as int64 ns after midnight."""
    b = arr["timestamp"].astype(np.int64)
    return (b[:, 0] << 40) | (b[:, 1] << 32) | (b[:, 2] << 24) | (b[:, 3] << 16) | (b[:, 4] << 8) | b[:, 5]


def gather(data, offsets: np.ndarray, code: str) -> np.ndarray:
    """The messages at ``offsets`` (length prefixes, all of type ``code`` with the spec's
    length) as an array of ``TYPES[code]``."""
    buf = _as_buffer(data)
    n_b = MESSAGE_LENGTHS[code]
    rows = buf[np.asarray(offsets, np.int64)[:, None] + 2 + np.arange(n_b)]
    return rows.view(TYPES[code]).reshape(-1)


def _column(arr, name, kind, size):
    if kind == TS:
        return timestamps(arr).tolist()
    col = arr[name]
    if kind == ALPHA:
        vals = [v.decode("latin-1") for v in col.tolist()]
        return [v.rstrip(" ") for v in vals] if size > 1 else vals
    return col.astype(np.uint64).tolist()


def iter_messages(data, count: int | None = None, batch: int = 1 << 16) -> Iterator[dict]:
    """Every message of a buffer as a dict: ``type`` (the letter) and every field under
    the spec's names (ints; alpha fields as str, multi-byte ones stripped; prices as the
    spec's integers; ``timestamp`` in ns after midnight).  A message that cannot be
    decoded gives ``{"type": letter, "error": "unknown type" | "bad length", "length": n}``,
    a cut one at the end ``{"type": None, "error": "truncated", "length": bytes left}``."""
    buf = _as_buffer(data)
    offs, end = frame(buf)
    total = offs.size if count is None else min(count, offs.size)
    for b0 in range(0, total, batch):
        o = offs[b0: min(total, b0 + batch)]
        lens = (buf[o].astype(np.int64) << 8) | buf[o + 1]
        types = np.where(lens > 0, buf[np.minimum(o + 2, buf.size - 1)], -1)
        out: list[dict | None] = [None] * o.size
        for code, dt in TYPES.items():
            sel = np.flatnonzero((types == ord(code)) & (lens == dt.itemsize))
            if not sel.size:
                continue
            arr = gather(buf, o[sel], code)
            cols = [(name, _column(arr, name, kind, size)) for name, kind, size in HEADER[1:] + SPEC[code][1]]
            for k, i in enumerate(sel.tolist()):
                d = {"type": code}
                for name, col in cols:
                    d[name] = col[k]
                out[i] = d
        for i, d in enumerate(out):
            if d is None:
                t = int(types[i])
                letter = chr(t) if t >= 0 else None
                err = "bad length" if letter in MESSAGE_LENGTHS or t < 0 else "unknown type"
                d = {"type": letter, "error": err, "length": int(lens[i])}
            yield d
    if (count is None or count > offs.size) and end < buf.size:
        yield {"type": None, "error": "truncated", "length": buf.size - end}


def _clock(ns: int) -> str:
    s, f = divmod(int(ns), 1_000_000_000)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{f:09d}"


def _text(d: dict) -> str:
    if "error" in d:
        return f"? {d['type'] or '-'} {d['error']} length={d['length']}"
    parts = [_clock(d["timestamp"]), d["type"], f"loc={d['stock_locate']}"]
    if "stock" in d:
        parts.append(d["stock"])
    for name, _, _ in SPEC[d["type"]][1]:
        if name == "stock":
            continue
        v = d[name]
        if name in PRICE_DECIMALS:
            q = PRICE_DECIMALS[name]
            v = f"{v // 10 ** q}.{v % 10 ** q:0{q}d}"
        parts.append(f"{name}={v}")
    return " ".join(parts)


def iter_file_messages(path, count: int | None = None, chunk_bytes: int = 1 << 24) -> Iterator[dict]:
    """``iter_messages`` over a file (plain or gzip) read in chunks: memory stays bounded,
    and with ``count`` only what is needed is read."""
    tail = np.zeros(0, np.uint8)
    left = count
    for chunk in iter_itch(path, chunk_bytes):
        buf = np.concatenate([tail, chunk]) if tail.size else chunk
        end = frame(buf)[1]
        for d in iter_messages(buf[:end], left):
            yield d
            if left is not None:
                left -= 1
                if left <= 0:
                    return
        tail = buf[end:].copy()
    if tail.size:
        yield {"type": None, "error": "truncated", "length": int(tail.size)}


def dump(path, json: bool = False, count: int | None = None, out=None, chunk_bytes: int = 1 << 24) -> int:
    """Print the messages of an ITCH file (plain or gzip), one per line; returns how many.

    Text: ``HH:MM:SS.nnnnnnnnn <type> loc=<stock_locate> [<stock>] field=value ...`` with
    prices in decimal USD.  JSON (``json=True``): one object per line, ``type`` and every
    field under the spec's names, prices as the spec's integers (``PRICE_DECIMALS``
    implied decimals: 4 for Price(4), i.e. USD x 10,000; 8 for the MWCB levels).  ``out``:
    a text stream, default ``sys.stdout``.  The file is read in chunks of ``chunk_bytes``."""
    out = sys.stdout if out is None else out
    n = 0
    for d in iter_file_messages(path, count, chunk_bytes):
        out.write((_json.dumps(d, separators=(",", ":")) if json else _text(d)) + "\n")
        n += 1
    return n


def main(argv: Iterable[str] | None = None, prog: str = "itch") -> int:
    """``python -m obpipe.feed_sim.itch dump FILE [--json] [--count N]``."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Nasdaq TotalView-ITCH 5.0 tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="print decoded messages, one per line")
    d.add_argument("file")
    d.add_argument("--json", action="store_true", help="one JSON object per line")
    d.add_argument("--count", type=int, default=None, help="at most N messages")
    g = sub.add_parser("generate", help="write a generated day-like order-by-order stream as an ITCH 5.0 file")
    g.add_argument("--out", required=True, help="the file (name it DDMMYYYY.*.itch50 to give its day)")
    g.add_argument("--messages", type=int, default=1_000_000)
    g.add_argument("--symbols", default="AAPL,MSFT,NVDA,AMZN", help="stock names, comma-separated")
    g.add_argument("--seed", type=int, default=1)
    a = p.parse_args(None if argv is None else list(argv))
    if a.cmd == "generate":
        return _generate(a.out, a.messages, [x for x in a.symbols.split(",") if x], a.seed)
    try:
        dump(a.file, json=a.json, count=a.count)
    except BrokenPipeError:
        pass
    return 0


def _generate(out: str, n: int, symbols: list[str], seed: int) -> int:
    """``itch generate``: the seeded L3 flow (``l3_synth``) encoded as ITCH, its session
    09:30 New York time of the file name's day (else 2019-01-30)."""
    from obpipe.feed_sim.l3_synth import L3SynthParams, generate_l3

    if n < 1 or not symbols:
        raise ItchError("--messages must be >= 1 and --symbols name at least one stock")
    day = file_day_ns(out) or session_midnight_ns(2019, 1, 30)
    md = generate_l3(n, L3SynthParams(n_symbols=len(symbols), seed=seed, start_ts_ns=day + 34_200 * 10**9))
    data, _ = encode(md, symbols, day_ns=day)
    with open(out, "wb") as f:
        f.write(data.tobytes())
    print(f"wrote {n:,} messages ({len(data):,} bytes) of {', '.join(symbols)} to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
