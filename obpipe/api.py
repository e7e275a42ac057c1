"""The Python API: read a running instance's books, or replay a file through a book, from
a notebook or a script (``import obpipe``; docs/API.md).

Two doors, neither touching a hot path:

* ``attach(instance)`` maps a running instance's shared memory read-only: the snapshot
  region (seqlock reads, the copy ``obpipe stats`` prints), the stats block and its
  latency histogram.  The region holds slots, not names: the names come from
  ``symbols=``, else from a config file's ``[book] symbols`` (the default config, as
  ``obpipe stats`` does); a config whose symbol count differs from the region's slot
  count is not this instance's, and the slots are then named ``sym0``, ``sym1``, ...
* ``replay(path)`` runs a LOBSTER message file, a capture (``.obcap``) or an ITCH 5.0
  file through the book the pipeline runs (``engine.book.Book`` / ``engine.l3.L3Book``:
  the same kernels), in process and in batches: no Python per message.  What the
  kernels write is what comes out: the events ring (one row per top-of-book change and
  per trade, ``EVENT_RECORD``) and, after each batch, the book's top levels
  (``depth_record``).  A LOBSTER file with its order-book file beside it is replayed as
  ``obpipe run --replay`` sends it (``engine.lobster.replay_stream``: row 1 as seeds,
  each message followed by the corrections that keep the best levels equal to the
  order-book row), so the top of book after message k is the vendor's row k; without
  the order-book file (or with ``orderbook=False``) the messages alone, as ``obpipe
  trace`` reads them.

Units: prices in ticks (``*_px_tick``, int64; ``NO_PX`` for an empty side in numpy
records, ``None`` in the scalar tuples) and in currency (``*_px``, float64: ticks x
tick size, ``NaN`` / ``None`` for an empty side); quantities in shares (lots of the
synthetic feed); ``ts_exch_ns`` exchange time as UTC epoch nanoseconds; latencies in
nanoseconds.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from obpipe import config as cfgmod
from obpipe.engine import trace as tr
from obpipe.engine.book import Book
from obpipe.engine.l3 import L3Book, OrderAnswer, query_order
from obpipe.ring import kernels as RK
from obpipe.ring import schema
from obpipe.ring.latency import N_BUCKETS, bucket_upper, percentiles
from obpipe.ring.shm import process_start_ns
from obpipe.status import Status

if TYPE_CHECKING:
    import pandas

__all__ = ["EVENT_RECORD", "EV_BBO", "EV_TRADE", "LEVEL_RECORD", "NO_PX", "Bbo", "Instance", "OrderAnswer",
           "Replay", "ReplayBatch", "Snapshot", "attach", "depth_record", "replay"]

#: The price of an empty side or level in ticks (int64 minimum), in every numpy record;
#: its currency price is NaN.
NO_PX: int = schema.NO_PX
#: ``EVENT_RECORD.kind``: the top of book changed (best price or size, either side).
EV_BBO: int = schema.EV_BBO
#: ``EVENT_RECORD.kind``: a trade (a visible execution or a trade against hidden liquidity).
EV_TRADE: int = schema.EV_TRADE

#: One price level: ``px_tick`` (ticks), ``px`` (currency), ``qty`` (shares resting there).
LEVEL_RECORD = np.dtype([("px_tick", "<i8"), ("px", "<f8"), ("qty", "<i8")], align=True)

#: One book event of a replay (a row of the events ring the book writer fills), with the
#: top of book after the message that caused it.
EVENT_RECORD = np.dtype(
    [
        ("kind", "u1"),  # EV_BBO or EV_TRADE
        ("side", "u1"),  # EV_TRADE: aggressor side (0 buyer-initiated, 1 seller-initiated); EV_BBO: 0
        ("seq", "<i8"),  # the message's sequence (LOBSTER: its row number; ITCH / capture: feed sequence)
        ("ts_exch_ns", "<i8"),  # its exchange time, UTC epoch ns
        ("bid_px_tick", "<i8"),  # best bid after the message, ticks; NO_PX when the side is empty
        ("bid_qty", "<i8"),  # shares at the best bid (0: empty)
        ("ask_px_tick", "<i8"),
        ("ask_qty", "<i8"),
        ("trade_px_tick", "<i8"),  # EV_TRADE: price, ticks; else NO_PX
        ("trade_qty", "<i8"),  # EV_TRADE: shares traded; else 0
        ("bid_depth_qty", "<i8"),  # shares within [book] event_depth_ticks (10) ticks of the best bid
        ("ask_depth_qty", "<i8"),
        ("msgs", "<i8"),  # messages of the symbol applied so far
        ("bid_px", "<f8"),  # best bid in currency; NaN when empty
        ("ask_px", "<f8"),
        ("trade_px", "<f8"),  # EV_TRADE: price in currency; else NaN
    ],
    align=True,
)


def depth_record(levels: int) -> np.dtype:
    """The record of a replay's book after one batch, ``levels`` levels per side (best
    first; an empty level is ``NO_PX`` / NaN with quantity 0)."""
    if not 1 <= levels <= 1000:
        raise ValueError(f"levels must be 1..1000, got {levels}")
    return np.dtype(
        [
            ("seq", "<i8"),  # sequence of the batch's last message (of any symbol)
            ("ts_exch_ns", "<i8"),  # its exchange time, UTC epoch ns
            ("msgs", "<i8"),  # messages of the symbol applied so far
            ("bid_px_tick", "<i8", (levels,)),
            ("bid_qty", "<i8", (levels,)),
            ("ask_px_tick", "<i8", (levels,)),
            ("ask_qty", "<i8", (levels,)),
            ("bid_px", "<f8", (levels,)),  # currency; NaN for an empty level
            ("ask_px", "<f8", (levels,)),
        ],
        align=True,
    )


class _Money:
    """Ticks to currency for one tick size, exactly: ``px_tick * num / 10**decimals``
    (an exact product and one correctly rounded division, so 44762 ticks of 0.005 is
    223.81, not 223.81000000000003)."""

    def __init__(self, tick_size: float):
        self.tick_size = float(tick_size)
        self.num, dec = tr.tick_units(tick_size)
        self.scale = 10.0**dec

    def array(self, px_tick: np.ndarray) -> np.ndarray:
        px = np.asarray(px_tick, np.int64)
        out = px.astype(np.float64) * self.num / self.scale
        out[px == NO_PX] = np.nan
        return out

    def one(self, px_tick: int | None) -> float | None:
        return None if px_tick is None else px_tick * self.num / self.scale


def _tick_or_none(v) -> int | None:
    return None if int(v) == NO_PX else int(v)


# --- a running instance ------------------------------------------------------------------------


class Bbo(NamedTuple):
    """The best bid and offer of one symbol, as the book writer last published it.

    Prices ``*_px_tick`` in ticks and ``*_px`` in currency, ``None`` when the side is
    empty; sizes in shares (0 when empty); ``seq`` and ``ts_exch_ns`` (UTC epoch ns) of
    the last message applied to the symbol; ``stale``: messages were lost and the book
    may be wrong until the symbol is cleared."""

    symbol: str
    bid_px_tick: int | None
    bid_qty: int
    ask_px_tick: int | None
    ask_qty: int
    bid_px: float | None
    ask_px: float | None
    seq: int
    ts_exch_ns: int
    stale: bool

    @property
    def spread_tick(self) -> int | None:
        """Ask minus bid in ticks; None when a side is empty."""
        if self.bid_px_tick is None or self.ask_px_tick is None:
            return None
        return self.ask_px_tick - self.bid_px_tick


class Snapshot(NamedTuple):
    """One consistent copy of a symbol's book (a seqlock read of its snapshot slot).

    ``bids`` / ``asks``: ``LEVEL_RECORD`` arrays of the non-empty levels, best first
    (at most the requested depth and the instance's ``[book] snapshot_levels``).
    ``msgs_applied``: messages applied to the symbol so far; ``version``: snapshots
    published for it so far (unchanged version: unchanged book).  ``record``: the raw
    slot payload (``schema.snapshot_dtype``: imbalance, microprice, last trade, ...)."""

    symbol: str
    bbo: Bbo
    bids: np.ndarray
    asks: np.ndarray
    msgs_applied: int
    version: int
    record: np.void


class Instance:
    """Read-only views of one running instance; made by ``attach``.

    Every method reads shared memory at the moment of the call; nothing is cached but
    the names.  Use as a context manager, or call ``close``."""

    def __init__(self, instance: str, tick_size: float):
        self.instance = instance
        self._money = _Money(tick_size)
        self._status: Status | None = Status(instance)
        self._names = [f"sym{i}" for i in range(self._status.snaps.n_slots)]
        self._status.symbols = self._names
        #: Price of one tick in currency (the config's ``[analysis] tick_size``, or ``attach(tick_size=)``).
        self.tick_size = self._money.tick_size

    def __repr__(self) -> str:
        return f"<obpipe.Instance {self.instance!r} symbols={self._names}{' closed' if self._status is None else ''}>"

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the instance's segments (idempotent); the instance itself keeps running."""
        if self._status is not None:
            self._status.close()
            self._status = None

    def _st(self) -> Status:
        if self._status is None:
            raise ValueError(f"instance {self.instance!r}: this Instance is closed")
        return self._status

    def _name_slots(self, names: Sequence[str]) -> bool:
        """Name the slots ``names`` if there are as many; returns whether it did."""
        if len(names) != len(self._names):
            return False
        self._names[:] = names  # (the list Status.collect names the symbols by)
        return True

    def _slot(self, sym: str | int) -> int:
        if isinstance(sym, (int, np.integer)) and not isinstance(sym, bool):
            if not 0 <= sym < len(self._names):
                raise IndexError(f"symbol index {sym} out of range 0..{len(self._names) - 1}")
            return int(sym)
        try:
            return self._names.index(sym)
        except ValueError:
            raise KeyError(f"no symbol {sym!r} in instance {self.instance!r} "
                           f"(symbols: {', '.join(self._names)})") from None

    def symbols(self) -> list[str]:
        """The symbol names, in slot order (slot i = symbol index i of the feed)."""
        return list(self._names)

    def alive(self) -> bool:
        """Does the process that created the instance (its supervisor) still run?"""
        h = self._st().stats.seg.header[0]
        pid, start_ns = int(h["owner_pid"]), int(h["owner_start_ns"])
        now = process_start_ns(pid) if pid > 0 else 0
        return now != 0 and abs(now - start_ns) < 1_000_000_000  # (a reused pid started later)

    def _read(self, slot: int) -> np.void:
        return self._st().snaps.read(slot, max_tries=100_000)

    def _bbo(self, slot: int, r: np.void) -> Bbo:
        bid, ask = _tick_or_none(r["bid_px_tick"]), _tick_or_none(r["ask_px_tick"])
        return Bbo(self._names[slot], bid, int(r["bid_qty"]), ask, int(r["ask_qty"]), self._money.one(bid),
                   self._money.one(ask), int(r["seq"]), int(r["ts_exch_ns"]), bool(r["stale"]))

    def _levels(self, px: np.ndarray, qty: np.ndarray, depth: int) -> np.ndarray:
        px, qty = px[:depth], qty[:depth]
        keep = px != NO_PX
        out = np.zeros(int(keep.sum()), LEVEL_RECORD)
        out["px_tick"], out["qty"] = px[keep], qty[keep]
        out["px"] = self._money.array(px[keep])
        return out

    def _snapshot(self, slot: int, depth: int) -> Snapshot:
        if depth < 1:
            raise ValueError(f"depth must be >= 1 levels, got {depth}")
        r = self._read(slot)
        return Snapshot(self._names[slot], self._bbo(slot, r), self._levels(r["bid_px"], r["bid_lvl_qty"], depth),
                        self._levels(r["ask_px"], r["ask_lvl_qty"], depth), int(r["msgs_applied"]),
                        int(r["version"]), r)

    def bbo(self, sym: str | int) -> Bbo:
        """The best bid and offer of ``sym`` (a name or a symbol index) now."""
        slot = self._slot(sym)
        return self._bbo(slot, self._read(slot))

    def book(self, sym: str | int, depth: int = 10) -> Snapshot:
        """The top ``depth`` levels per side of ``sym`` now (at most the instance's
        ``[book] snapshot_levels``), with its BBO: one consistent copy."""
        return self._snapshot(self._slot(sym), depth)

    def watch(self, sym: str | int, every: float = 0.1, depth: int = 10,
              changed_only: bool = False) -> Iterator[Snapshot]:
        """Snapshots of ``sym`` every ``every`` seconds (each one consistent copy), until
        the caller stops iterating or the instance ends (its supervisor exits).
        ``changed_only``: skip copies whose book did not change since the last one
        yielded (same ``version``)."""
        if every < 0:
            raise ValueError(f"every must be >= 0 seconds, got {every}")
        slot = self._slot(sym)
        last = None
        while self.alive():
            snap = self._snapshot(slot, depth)
            if not changed_only or snap.version != last:
                last = snap.version
                yield snap
            time.sleep(every)

    def stats(self) -> dict[str, Any]:
        """Everything ``obpipe stats --json`` prints, as one dict (counters, rates per
        second since the previous call, processes, rings, latency in ns, and per symbol
        the book as plain values; the first call measures rates over 0.25 s)."""
        return self._st().collect()

    def latency(self) -> dict[str, Any]:
        """The receive -> apply latency histogram of the book writer: ``p50``, ``p90``,
        ``p99``, ``p999`` in nanoseconds (a bucket's upper bound: at most 25 % above the
        true value; None before any message), ``count`` (messages), ``buckets`` (int64
        counts of the 256 log-linear buckets) and ``bucket_upper_ns`` (each bucket's
        largest value, ns; the top buckets end at the int64 maximum)."""
        counts = np.array(self._st().latency_buckets(), np.int64)
        out: dict[str, Any] = percentiles(counts, (0.5, 0.9, 0.99, 0.999))
        out["buckets"] = counts
        top = np.iinfo(np.int64).max  # (the last buckets reach past any int64 nanoseconds)
        out["bucket_upper_ns"] = np.array([min(bucket_upper(b), top) for b in range(N_BUCKETS)], np.int64)
        return out

    def queue_position(self, ref: int, timeout_s: float = 2.0) -> OrderAnswer | None:
        """Live order ``ref`` (an ITCH order reference number) of a per-order book: its
        symbol index, side, price (ticks), remaining shares and the shares and orders
        ahead of it at its price, as the book writer answers now; None when the order is
        not live.  Raises ``RuntimeError`` when the instance keeps an aggregated book,
        ``TimeoutError`` when the writer does not answer within ``timeout_s`` seconds."""
        self._st()
        return query_order(self.instance, ref, timeout_s=timeout_s)


def _load_config(config: str | Path | cfgmod.Config | None) -> cfgmod.Config:
    return config if isinstance(config, cfgmod.Config) else cfgmod.load(config)


def attach(instance: str | None = None, symbols: Sequence[str] | None = None, *,
           config: str | Path | cfgmod.Config | None = None, tick_size: float | None = None) -> Instance:
    """Attach to the running instance ``instance`` (read-only; the instance is not disturbed).

    Args:
        instance: the instance name (``[instance] name``); None: the config's (``main``
            in the default config).
        symbols: the names of its symbols in slot order; None: the config's ``[book]
            symbols`` when their number matches the instance's, else ``sym0``, ``sym1``, ...
        config: a config file (or a loaded ``Config``) to take names and tick size
            from; None: ``configs/default.toml``, as ``obpipe stats`` reads it.
        tick_size: price of one tick in currency; None: the config's ``[analysis] tick_size``.

    Raises ``obpipe.ring.errors.RingError`` (``SegmentMissing``) when no such instance
    runs, ``ConfigError`` for a bad config file.
    """
    cfg = _load_config(config)
    name = instance if instance is not None else cfg.instance.name
    ts = tick_size if tick_size is not None else cfg.analysis.tick_size
    inst = Instance(name, ts)
    if symbols is None:
        inst._name_slots(list(cfg.book.symbols))  # (else sym0, sym1, ...: not this instance's config)
    elif not inst._name_slots([str(s) for s in symbols]):
        n = len(inst.symbols())
        inst.close()
        raise ValueError(f"instance {name!r} has {n} symbols, {len(symbols)} names given")
    return inst


# --- replay --------------------------------------------------------------------------------------


class ReplayBatch(NamedTuple):
    """What one batch of a replay produced: ``events`` (``EVENT_RECORD`` rows of the
    replayed symbol, in order) and ``depth`` (a ``depth_record`` record: the book
    after the batch's last message)."""

    events: np.ndarray
    depth: np.void


def _lobster_input(path: str, symbol: str | None, orderbook: bool | None) -> tuple[tr.Source, str]:
    from obpipe.engine import lobster

    src = tr.from_lobster(path, symbol, 0)
    ob_path = lobster.orderbook_beside(path) if orderbook is not False else None
    if orderbook is True and ob_path is None:
        raise FileNotFoundError(f"no order-book file beside {path} (…_orderbook_N.csv)")
    if ob_path is None or not len(src.md):
        return src, "lobster"
    ob = lobster.load_orderbook(ob_path, tick_divisor=round(src.tick_size * 10_000))
    md, ends = lobster.replay_stream(src.md, ob)
    # each record's seq: the file row it belongs to (row 1's levels, the seeds: 1;
    # message k and the corrections after it: k), so events speak of the file's rows
    seeds = int(((ob[0, 0::2] != NO_PX) & (ob[0, 1::2] > 0)).sum())
    i = np.arange(len(md))
    md["seq"] = np.where(i < seeds, 1, np.searchsorted(ends, i, side="right") + 2)
    src.md, src.widths = md, [tr.lobster_width(md)]
    return src, "lobster+orderbook"


def _open_input(path: str, symbol: str | None, config, orderbook: bool | None) -> tuple[tr.Source, str]:
    """The file as ``engine.trace`` reads it, and its kind."""
    from obpipe.feed_sim.capture import is_capture
    from obpipe.feed_sim.feed import is_itch

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if is_itch(path) or is_capture(path):
        cfg = _load_config(config)
        if symbol is None:
            raise tr.TraceError(f"{path}: symbol= is required for an ITCH file or a capture "
                                f"(a stock, or one of the config's [book] symbols)")
        if is_itch(path):
            s = tr.from_itch(path, symbol, cfg.book.ladder_width, cfg.analysis.tick_size, 1)
            # the order table: the file's adds and replaces bound the orders live at once
            # (orders from before the file are never added); at most [book] l3_orders
            kinds = s.md["kind"]
            s.l3_orders = int(min(cfg.book.l3_orders, max(1024, np.count_nonzero(
                (kinds == schema.L3_ADD) | (kinds == schema.L3_REPLACE)))))
            return s, "itch"
        return tr.from_capture(path, symbol, tuple(cfg.book.symbols), cfg.book.widths(),
                               cfg.analysis.tick_size), "capture"
    return _lobster_input(path, symbol, orderbook)


class Replay:
    """A file run through a book in process; made by ``replay``.

    Iterate it for ``ReplayBatch`` records as the book goes (each iteration replays from the
    start on a fresh book), or take everything at once: ``events`` (``EVENT_RECORD``),
    ``depth`` (``depth_record(levels)``, one per batch) and ``to_pandas()``.  The
    replay runs once for those and is kept.

    Attributes: ``path``, ``symbol`` (name), ``kind`` (``"lobster"``,
    ``"lobster+orderbook"``, ``"capture"``, ``"itch"``), ``tick_size`` (currency per
    tick), ``levels``, ``messages`` (records the book applies; for a LOBSTER file with
    its order-book file, the messages and the corrections).
    """

    def __init__(self, path: str, inp: tr.Source, kind: str, levels: int, batch_size: int,
                 depth_every_s: float | None):
        self.path = path
        self._in = inp
        self.symbol = inp.name
        self.kind = kind
        self.tick_size = inp.tick_size
        self.levels = levels
        self.messages = len(inp.md)
        self._money = _Money(inp.tick_size)
        self._batch = batch_size
        self._every_ns = None if depth_every_s is None else round(depth_every_s * 1e9)
        self._dt = depth_record(levels)
        self._result: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"<obpipe.Replay {self.kind} {self.symbol} of {self.path}: {self.messages:,} messages>"

    def _ends(self) -> np.ndarray:
        """Where batches end (exclusive message indices): every ``batch_size`` messages,
        and at each multiple of ``depth_every_s`` of exchange time."""
        n = len(self._in.md)
        ends = np.arange(self._batch, n, self._batch, dtype=np.int64)
        if self._every_ns and n:
            ts = np.maximum.accumulate(self._in.md["ts_exch_ns"])
            e = self._every_ns
            grid = np.arange((int(ts[0]) // e + 1) * e, int(ts[-1]) + 1, e, dtype=np.int64)
            ends = np.concatenate([ends, np.searchsorted(ts, grid, side="left")])
        ends = np.unique(np.concatenate([ends, [n]]))
        return ends[ends > 0]

    def __iter__(self) -> Iterator[ReplayBatch]:
        inp, levels = self._in, self.levels
        cap = 1 << max(4, (2 * self._batch - 1).bit_length())  # a message emits at most 2 events
        ctrl = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
        ev = np.zeros(cap, schema.EVENT_DTYPE)
        if inp.l3_orders:
            book: Book = L3Book(inp.widths, inp.l3_orders, n_levels=levels, events=(ctrl, ev))
        else:
            book = Book(inp.widths, n_levels=levels, events=(ctrl, ev), uncross=inp.uncross)
        slots = ev.view(np.int64).reshape(cap, -1)
        got = np.zeros(cap, schema.EVENT_DTYPE)
        dst = got.view(np.int64).reshape(cap, -1)
        md, sym = inp.md, inp.sym
        sym_msgs = np.cumsum(md["symbol"] == sym)
        start = 0
        for end in self._ends().tolist():
            book.apply(md, start, end - start)
            k = int(RK.ring_pop(ctrl, slots, dst, cap))
            dropped = book.counters()["events_dropped"]
            if dropped:  # (cannot happen: the ring holds two events per message of a batch)
                raise RuntimeError(f"replay of {self.path}: {dropped} events dropped")
            evs = got[:k]
            yield ReplayBatch(self._events(evs[evs["symbol"] == sym]),
                              self._depth(book, md[end - 1], int(sym_msgs[end - 1])))
            start = end

    def _events(self, e: np.ndarray) -> np.ndarray:
        out = np.zeros(len(e), EVENT_RECORD)
        for f in ("kind", "side", "seq", "ts_exch_ns", "bid_px_tick", "bid_qty", "ask_px_tick", "ask_qty",
                  "trade_px_tick", "bid_depth_qty", "ask_depth_qty"):
            out[f] = e[f]
        out["trade_qty"] = e["trade_qty"]
        out["msgs"] = e["sym_msgs"]
        for f in ("bid", "ask", "trade"):
            out[f"{f}_px"] = self._money.array(e[f"{f}_px_tick"])
        return out

    def _depth(self, book: Book, last: np.void, msgs: int) -> np.void:
        r = np.zeros(1, self._dt)[0]
        r["seq"], r["ts_exch_ns"], r["msgs"] = int(last["seq"]), int(last["ts_exch_ns"]), msgs
        for side, name in ((schema.SIDE_BID, "bid"), (schema.SIDE_ASK, "ask")):
            lv = book.top(self._in.sym, side, self.levels)
            px = np.full(self.levels, NO_PX, np.int64)
            qty = np.zeros(self.levels, np.int64)
            if lv:
                px[:len(lv)], qty[:len(lv)] = zip(*lv)
            r[f"{name}_px_tick"], r[f"{name}_qty"], r[f"{name}_px"] = px, qty, self._money.array(px)
        return r

    def _run(self) -> tuple[np.ndarray, np.ndarray]:
        if self._result is None:
            ev, dp = [], []
            for b in self:
                ev.append(b.events)
                dp.append(b.depth)
            self._result = (np.concatenate(ev) if ev else np.zeros(0, EVENT_RECORD),
                            np.array(dp, self._dt) if dp else np.zeros(0, self._dt))
        return self._result

    @property
    def events(self) -> np.ndarray:
        """Every book event of the symbol, in order (``EVENT_RECORD``): one row per
        top-of-book change and per trade, each with the top of book after its message."""
        return self._run()[0]

    @property
    def depth(self) -> np.ndarray:
        """The book's top ``levels`` levels per side after each batch (``depth_record``)."""
        return self._run()[1]

    def to_pandas(self, what: str = "events") -> pandas.DataFrame:
        """``events`` (default) or ``depth`` as a DataFrame indexed by exchange time
        (``ts``, a UTC ``DatetimeIndex``; the ``ts_exch_ns`` column keeps the integer).
        Depth columns are flattened: ``bid_px_1`` .. ``ask_qty_<levels>``.  Needs pandas
        (``pip install obpipe[pandas]``)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("Replay.to_pandas needs pandas, an optional extra: pip install obpipe[pandas]") from e
        if what == "events":
            a = self.events
            cols = {n: a[n] for n in EVENT_RECORD.names}
        elif what == "depth":
            a = self.depth
            cols = {n: a[n] for n in ("seq", "ts_exch_ns", "msgs")}
            for k in range(self.levels):
                for side in ("bid", "ask"):
                    for f in ("px_tick", "qty", "px"):
                        cols[f"{side}_{f}_{k + 1}"] = a[f"{side}_{f}"][:, k]
        else:
            raise ValueError(f"what must be 'events' or 'depth', got {what!r}")
        return pd.DataFrame(cols, index=pd.DatetimeIndex(pd.to_datetime(a["ts_exch_ns"], unit="ns", utc=True),
                                                         name="ts"))


def replay(path: str | Path, symbol: str | None = None, *, levels: int = 5, depth_every_s: float | None = None,
           batch_size: int = 1 << 16, orderbook: bool | None = None,
           config: str | Path | cfgmod.Config | None = None) -> Replay:
    """Run ``path`` through a book in process: a LOBSTER message file (``*_message_N.csv``),
    a capture (``.obcap``, written by ``obpipe feed --capture``) or an ITCH 5.0 file
    (``*.itch50``, ``*.NASDAQ_ITCH50``, gzip too; through the per-order book).

    Args:
        path: the file.
        symbol: the symbol to follow: required for a capture (one of the config's
            ``[book] symbols``) and an ITCH file (a stock); a LOBSTER file holds one
            (given, it must be the file's ticker).
        levels: levels per side in ``depth`` records.
        depth_every_s: also end a batch (so take a ``depth`` record) at each multiple of
            this many seconds of exchange time (intervals without messages take none);
            None: batches of ``batch_size`` messages only.
        batch_size: messages per kernel call (the events ring holds two events per message).
        orderbook: LOBSTER only: replay with the order-book file beside the message file
            (row 1 as seeds and per-message corrections, as ``obpipe run --replay``);
            None: when it is there; False: the messages alone (as ``obpipe trace``).
        config: config file (or ``Config``) for a capture's symbols, ladders and tick size,
            an ITCH file's ladder, tick size and largest order table (``[book]
            l3_orders``; the table holds the file's adds); None: ``configs/default.toml``.

    The file is read and decoded at once; the book runs when the result is iterated or
    its ``events`` / ``depth`` / ``to_pandas()`` are first asked for.  Raises
    ``FileNotFoundError``, and ``ValueError`` (``engine.trace.TraceError`` among them)
    naming what is wrong with the file or the symbol.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 messages, got {batch_size}")
    if depth_every_s is not None and not depth_every_s > 0:
        raise ValueError(f"depth_every_s must be > 0 seconds, got {depth_every_s}")
    depth_record(levels)  # (checks levels)
    path = str(path)
    return Replay(path, *_open_input(path, symbol, config, orderbook), levels, batch_size, depth_every_s)
