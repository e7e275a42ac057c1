"""The tick store: every top-of-book change, trade and depth snapshot in ClickHouse.

Tables (database ``ticks``; docs/TICKS.md has the columns and the reasons): ``quotes``
(EV_BBO events), ``trades`` (EV_TRADE events), ``depth`` (top-N levels as arrays), and
OHLCV bars ``bars_1s`` / ``bars_1m``, AggregatingMergeTree tables that materialized views
fill from every insert into ``trades``.  All are MergeTree ordered by (symbol, time),
partitioned by UTC day, with a TTL per table.  Prices stay integer ticks, sizes lots,
times UTC epoch ns.

The engine is chdb (ClickHouse in this process, one data directory per store).  chdb
binds a process to ONE data directory and locks it (``<dir>/status``, flock) against
other processes; ``TickStore.open`` turns both refusals into a ``StoreError`` that says
who holds it.  Inserts are one Arrow IPC stream per table per batch (never row by row).
``sql()`` runs on a second, ``readonly=2`` connection after a lexical check that lets
one SELECT/WITH/SHOW/DESCRIBE statement through and nothing else.

chdb and pyarrow are optional (``pip install 'obpipe[ticks]'``): importing this module
needs neither; ``unavailable()`` says why recording cannot run.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from typing import TYPE_CHECKING

import numpy as np

from obpipe.ring import schema

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow

#: The ClickHouse database that holds the tables.
DB = "ticks"
#: Days a row is kept after it was recorded (TTL); 0 keeps it for ever.  ``bars`` covers
#: both bar tables.  The seed's numbers: ticks 90 days, trades a year.
DEFAULT_RETENTION_DAYS = {"quotes": 90, "trades": 365, "depth": 90, "bars": 365}
#: Bar widths stored by the materialized views: name -> (table, width in ns).
BAR_TABLES = {"1s": ("bars_1s", 1_000_000_000), "1m": ("bars_1m", 60_000_000_000)}
#: What ``export`` and the CLI can ask for.
WHATS = ("quotes", "trades", "depth", "bars")
#: Statements ``sql()`` runs (first keyword).
READ_ONLY_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC")

NO_PX = schema.NO_PX
_NS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}

# --- DDL (the same text for chdb and a ClickHouse server) ----------------------------------

_DAY = "toDate(fromUnixTimestamp64Nano({col}, 'UTC'))"
# Recorded-at time: the TTL's clock.  Event time would drop a replayed 2012 day on arrival.
_INGESTED = "ingested DateTime('UTC') DEFAULT now() CODEC(Delta, ZSTD(1))"
_TS_ALIAS = "ts DateTime64(9, 'UTC') ALIAS fromUnixTimestamp64Nano(ts_ns, 'UTC')"
_MT = ("ENGINE = {engine} PARTITION BY " + _DAY + " ORDER BY (symbol, {col}{extra})"
       " {ttl} SETTINGS ttl_only_drop_parts = 1, " + "non_replicated_deduplication_window = {dedup}")
#: Blocks per table whose deduplication tokens ClickHouse remembers (the recorder's spool
#: retries an interrupted chunk with the same token: ticks/spool.py).
DEDUP_WINDOW = 1000

_TABLES = {
    "quotes": (
        "ts_ns Int64 CODEC(Delta, ZSTD(1)), symbol LowCardinality(String), seq Int64 CODEC(Delta, ZSTD(1)),"
        " bid_px_tick Nullable(Int64) CODEC(Delta, ZSTD(1)), bid_qty Int64 CODEC(ZSTD(1)),"
        " ask_px_tick Nullable(Int64) CODEC(Delta, ZSTD(1)), ask_qty Int64 CODEC(ZSTD(1)),"
        f" {_TS_ALIAS}, {_INGESTED}",
        "MergeTree", "ts_ns", ", seq", "quotes"),
    "trades": (
        "ts_ns Int64 CODEC(Delta, ZSTD(1)), symbol LowCardinality(String), seq Int64 CODEC(Delta, ZSTD(1)),"
        " px_tick Int64 CODEC(Delta, ZSTD(1)), qty Int64 CODEC(ZSTD(1)), aggressor LowCardinality(String),"
        f" {_TS_ALIAS}, {_INGESTED}",
        "MergeTree", "ts_ns", ", seq", "trades"),
    "depth": (
        "ts_ns Int64 CODEC(Delta, ZSTD(1)), symbol LowCardinality(String),"
        " bid_px_tick Array(Int64) CODEC(ZSTD(1)), bid_qty Array(Int64) CODEC(ZSTD(1)),"
        " ask_px_tick Array(Int64) CODEC(ZSTD(1)), ask_qty Array(Int64) CODEC(ZSTD(1)),"
        f" {_TS_ALIAS}, {_INGESTED}",
        "MergeTree", "ts_ns", "", "depth"),
}
# Bars: open/close need argMin/argMax states (SummingMergeTree cannot keep them); the
# others are SimpleAggregateFunction (plain values on disk, combined on merge).
_BAR_COLS = (
    "symbol LowCardinality(String), bucket_ns Int64 CODEC(Delta, ZSTD(1)),"
    " open_tick AggregateFunction(argMin, Int64, Tuple(Int64, Int64)),"
    " high_tick SimpleAggregateFunction(max, Int64), low_tick SimpleAggregateFunction(min, Int64),"
    " close_tick AggregateFunction(argMax, Int64, Tuple(Int64, Int64)),"
    " volume SimpleAggregateFunction(sum, Int64), trades SimpleAggregateFunction(sum, Int64),"
    " turnover SimpleAggregateFunction(sum, Int64),"
    " ingested SimpleAggregateFunction(max, DateTime('UTC')) DEFAULT now()")
_TABLES.update({t: (_BAR_COLS, "AggregatingMergeTree", "bucket_ns", "", "bars") for t, _ in BAR_TABLES.values()})
# (open, close): the first and last trade by (time, sequence).  ``bucket_ns``, not
# ``ts_ns``: a ClickHouse alias is visible in the whole SELECT, so naming the bucket
# ts_ns would make the argMin key the bucket.
_BAR_MV = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t}_mv TO {db}.{t} AS SELECT symbol,"
    " intDiv(ts_ns, {w}) * {w} AS bucket_ns, argMinState(px_tick, (ts_ns, seq)) AS open_tick,"
    " max(px_tick) AS high_tick, min(px_tick) AS low_tick, argMaxState(px_tick, (ts_ns, seq)) AS close_tick,"
    " sum(qty) AS volume, toInt64(count()) AS trades, sum(px_tick * qty) AS turnover"
    " FROM {db}.trades GROUP BY symbol, bucket_ns")

_COLUMNS = {
    "quotes": "ts_ns, symbol, seq, bid_px_tick, bid_qty, ask_px_tick, ask_qty",
    "trades": "ts_ns, symbol, seq, px_tick, qty, aggressor",
    "depth": "ts_ns, symbol, bid_px_tick, bid_qty, ask_px_tick, ask_qty",
}
_ORDER = {"quotes": "ts_ns, seq", "trades": "ts_ns, seq", "depth": "ts_ns"}


class StoreError(RuntimeError):
    """The tick store cannot do what was asked; the message says why and what to do."""


def unavailable() -> str | None:
    """Why the embedded store cannot run here (chdb or pyarrow missing), else None."""
    for mod in ("pyarrow", "chdb"):
        try:
            __import__(mod)
        except ImportError as e:
            return (f"tick recording is off: {mod} is not installed ({e}); "
                    "install it with: pip install 'obpipe[ticks]'")
    return None


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401  (submodule used below)
    except ImportError as e:
        raise StoreError(unavailable() or str(e)) from e
    return pa


# --- the chdb engine ---------------------------------------------------------------------


def _lock_holder(path: str) -> int | None:
    """Pid of ANOTHER process holding chdb's lock on data directory ``path``, else None.

    ClickHouse writes its pid to ``<path>/status`` and flocks the file while the engine
    is up (the kernel drops the lock when the process dies, so a SIGKILLed recorder
    leaves nothing stale).  Our own engine's lock would also look taken: the pid in the
    file tells them apart."""
    status = os.path.join(path, "status")
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            m = re.search(rb"PID:\s*(\d+)", os.pread(fd, 256, 0))
            pid = int(m.group(1)) if m else -1
            return None if pid == os.getpid() else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _in_use(path: str, pid: int) -> StoreError:
    who = f"process {pid}" if pid > 0 else "another process"
    return StoreError(
        f"tick store {path} is in use by {who}: embedded ClickHouse (chdb) locks its data directory "
        f"({path}/status), one process at a time. Stop that process (the recorder) or query through it; "
        "a ClickHouse server (a URL) serves many processes")


#: Engine settings of a lean store (``TickStore.open(..., lean=True)``).
LEAN = "&max_threads=1&max_insert_threads=1&background_pool_size=2"


class _Chdb:
    """chdb backend: a read-write connection and a read-only one (``sql()``) to one path."""

    def __init__(self, path: str, lean: bool = False):
        import chdb
        self.chdb_version = chdb.__version__
        self.engine_version = getattr(chdb, "engine_version", "?")
        if "?" in path:
            raise StoreError(f"tick store path {path!r} contains '?' (chdb reads it as connection parameters)")
        pid = _lock_holder(path)
        if pid is not None:
            raise _in_use(path, pid)
        try:
            # async_insert=0: an INSERT returns once its part is written (chdb defaults to 1).
            # lean (the recorder beside a busy pipeline): one thread per query and insert, 2
            # background merge threads, so the engine takes less of the CPU the analysis needs
            self.rw = chdb.connect(f"{path}?async_insert=0" + (LEAN if lean else ""))
        except Exception as e:  # chdb raises RuntimeError with ClickHouse's text
            msg = str(e)
            m = re.search(r"initialized with path '([^']*)'", msg)
            if m:
                raise StoreError(
                    f"cannot open tick store {path}: this process already has ClickHouse data directory "
                    f"{m.group(1)} open, and chdb runs one embedded engine per process, bound to one directory: "
                    "close that store first") from None
            pid = _lock_holder(path)
            if pid is not None:
                raise _in_use(path, pid) from None
            raise StoreError(f"cannot open tick store {path}: {msg}") from None
        self.ro = None
        self.path = path

    def open_readonly(self) -> None:
        # readonly=2: no writes or DDL, per-query SETTINGS allowed, ``readonly`` itself fixed.
        if self.ro is None:
            import chdb
            self.ro = chdb.connect(f"{self.path}?readonly=2&database={DB}")

    def command(self, sql: str, params: dict | None = None) -> str:
        try:
            return str(self.rw.query(sql, "TabSeparated", params=params or {}))
        except Exception as e:
            raise StoreError(f"ClickHouse: {e}") from None

    def arrow(self, sql: str, params: dict | None = None, readonly: bool = False) -> "pyarrow.Table":
        pa = _pa()
        con = self.ro if readonly else self.rw
        try:
            res = con.query(sql, "Arrow", params=params or {})
        except Exception as e:
            raise StoreError(f"ClickHouse: {e}") from None
        data = res.bytes()
        if not data:  # a statement with no result set (SHOW of nothing ...)
            return pa.table({})
        return pa.ipc.open_file(pa.py_buffer(data)).read_all()

    def batches(self, sql: str, params: dict | None = None):
        """A RecordBatchReader over the result (export: never all of it in memory)."""
        try:
            stream = self.rw.send_query(sql, "Arrow", params=params or {})
            return stream, stream.record_batch(rows_per_batch=1 << 16)
        except Exception as e:
            raise StoreError(f"ClickHouse: {e}") from None

    def insert(self, table: str, tbl: "pyarrow.Table", token: str = "") -> None:
        """One INSERT of an Arrow IPC stream: one part per partition, parsed column-wise.
        With ``token``, a block inserted before under the same token is dropped (and so
        are the views' rows from it); without, nothing is deduplicated."""
        pa = _pa()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tbl.schema) as w:
            w.write_table(tbl)
        cols = ", ".join(tbl.column_names)
        try:
            # (no token: a fresh one, since ``insert_deduplicate = 0`` does not stop the hash
            # deduplication of a non-replicated table in this engine: measured)
            tok = token or secrets.token_hex(12)
            with self.rw.send_insert(f"INSERT INTO {DB}.{table} ({cols}) SETTINGS insert_deduplication_token = '{tok}', "
                                     "deduplicate_blocks_in_dependent_materialized_views = 1", "ArrowStream") as ins:
                ins.append(sink.getvalue().to_pybytes())
                ins.finish()
        except Exception as e:
            raise StoreError(f"insert into {table}: {e}") from None

    def close(self) -> None:
        for con in (self.ro, self.rw):
            if con is not None:
                con.close()
        self.ro = self.rw = None


# --- sql(): read-only check ----------------------------------------------------------------


def _scan(sql: str) -> tuple[list[list[str]], bool]:
    """Split ``sql`` into statements of upper-cased words, outside strings, quoted names and
    comments; and whether it has INTO OUTFILE.  Conservative where ClickHouse is richer:
    ``#`` comments and ``$$`` strings are not recognised, so a ``;`` in them is counted
    and the text refused, never run as two statements."""
    stmts: list[list[str]] = [[]]
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            i += 1
            while i < n and sql[i] != c:
                i += 2 if sql[i] == "\\" else 1
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == ";":
            stmts.append([])
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            stmts[-1].append(sql[i:j].upper())
            i = j
        elif c == "(" and not stmts[-1]:
            i += 1  # "(SELECT ...) UNION ALL (SELECT ...)"
        else:
            if not c.isspace():
                stmts[-1].append(c)
            i += 1
    words = [w for s in stmts for w in s]
    outfile = any(a == "INTO" and b == "OUTFILE" for a, b in zip(words, words[1:]))
    return [s for s in stmts if s], outfile


def check_read_only(sql: str) -> None:
    """Raise StoreError unless ``sql`` is one read-only statement (why, in the message)."""
    stmts, outfile = _scan(sql)
    if not stmts:
        raise StoreError("sql(): empty query")
    if len(stmts) > 1:
        raise StoreError(f"sql(): one statement at a time ({len(stmts)} given, separated by ';'): "
                         "ClickHouse would run them all")
    first = stmts[0][0]
    if first not in READ_ONLY_KEYWORDS:
        raise StoreError(f"sql(): read-only: only {', '.join(READ_ONLY_KEYWORDS[:4])} run here, not {first}; "
                         "the tick store is written by the recorder alone")
    if outfile:
        raise StoreError("sql(): INTO OUTFILE writes a file; use export() or the CLI's --out")


# --- the store -------------------------------------------------------------------------------


def parse_width(width: str) -> int:
    """``"1s"``, ``"5m"``, ``"1h"``, ``"1d"`` -> nanoseconds (a whole number of seconds)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", str(width))
    if not m or int(m.group(1)) <= 0:
        raise StoreError(f"bar width {width!r}: want a count and a unit s|m|h|d, e.g. 1s, 1m, 5m, 1h")
    return int(m.group(1)) * _NS[m.group(2)]


def _dict_symbols(pa, idx: np.ndarray, dictionary):
    """Symbol column as an Arrow dictionary (indices, names): no string per row."""
    return pa.DictionaryArray.from_arrays(pa.array(np.ascontiguousarray(idx, dtype=np.int32)), dictionary)


def _px(pa, a: np.ndarray):
    """A price column: NO_PX (an empty side) becomes NULL."""
    a = np.ascontiguousarray(a, dtype=np.int64)
    empty = a == NO_PX
    return pa.array(a, mask=empty) if empty.any() else pa.array(a)


def _levels(pa, px: np.ndarray, qty: np.ndarray):
    """[rows, levels] prices and sizes -> two list columns of the levels that exist
    (entries with NO_PX are absent levels: dropped, the order of the rest kept)."""
    px = np.asarray(px, dtype=np.int64)
    qty = np.asarray(qty, dtype=np.int64)
    if px.ndim != 2 or px.shape != qty.shape:
        raise StoreError(f"depth levels must be 2-D [rows, levels] of one shape, got {px.shape} and {qty.shape}")
    keep = px != NO_PX
    offsets = np.zeros(px.shape[0] + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    off = pa.array(offsets)
    return (pa.ListArray.from_arrays(off, pa.array(px[keep])),
            pa.ListArray.from_arrays(off, pa.array(qty[keep])))


class TickStore:
    """One tick store (a chdb data directory).  Not thread-safe: one user (the recorder,
    a CLI command) at a time.  Query ranges are half-open: ``from_ns <= ts_ns < to_ns``."""

    def __init__(self, backend: _Chdb, where: str, retention_days: dict[str, int]):
        self._b = backend
        self.where = where
        self.retention_days = retention_days
        #: Rows ``insert_events``/``insert_depth`` skipped, by reason (counted, never silent).
        self.skipped = {"bad_symbol": 0, "bad_kind": 0, "bad_side": 0}
        self._sym_key: tuple | None = None
        self._sym_dict = None

    # -- open / close

    @classmethod
    def open(cls, where: str, retention_days: dict[str, int] | None = None, lean: bool = False) -> "TickStore":
        """Open (create if missing) the store at directory ``where``; the tables are created
        if missing and their TTLs set to ``retention_days`` (table -> days, 0 = for ever;
        missing keys take DEFAULT_RETENTION_DAYS)."""
        days = dict(DEFAULT_RETENTION_DAYS)
        for k, v in (retention_days or {}).items():
            if k not in days:
                raise StoreError(f"retention_days: unknown table {k!r} (have {', '.join(days)})")
            if int(v) < 0:
                raise StoreError(f"retention_days[{k!r}] = {v}: want days >= 0 (0 keeps rows for ever)")
            days[k] = int(v)
        where = str(where)
        if re.match(r"(?i)^(https?|clickhouse)://", where):
            raise StoreError(
                f"tick store {where}: a ClickHouse server by URL is not supported yet (this slice has the embedded "
                "store only); give a directory")
        why = unavailable()
        if why:
            raise StoreError(why)
        path = os.path.abspath(where)
        if os.path.exists(path) and not os.path.isdir(path):
            raise StoreError(f"tick store {path} exists and is not a directory")
        os.makedirs(path, exist_ok=True)
        store = cls(_Chdb(path, lean), path, days)
        try:
            store._create()
            store._b.open_readonly()
        except BaseException:
            store.close()
            raise
        return store

    def _create(self) -> None:
        b = self._b
        b.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
        for t, (cols, engine, col, extra, key) in _TABLES.items():
            b.command(f"CREATE TABLE IF NOT EXISTS {DB}.{t} ({cols}) "
                      + _MT.format(engine=engine, col=col, extra=extra, ttl=self._ttl(key), dedup=DEDUP_WINDOW))
            self._sync_ttl(t, key)
            b.command(f"ALTER TABLE {DB}.{t} MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW}")
        for w, (t, ns) in BAR_TABLES.items():
            b.command(_BAR_MV.format(db=DB, t=t, w=ns))

    def _ttl(self, key: str) -> str:
        d = self.retention_days[key]
        return f"TTL ingested + INTERVAL {d} DAY" if d else ""

    def _sync_ttl(self, table: str, key: str) -> None:
        """An existing table gets the TTL asked for now (metadata only: not rewritten)."""
        full = self._b.command("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                               {"d": DB, "t": table})
        m = re.search(r"TTL .*?toIntervalDay\((\d+)\)", full)
        have, want = (int(m.group(1)) if m else 0), self.retention_days[key]
        if have == want:
            return
        if want:
            self._b.command(f"ALTER TABLE {DB}.{table} MODIFY {self._ttl(key)} SETTINGS materialize_ttl_after_modify = 0")
        else:
            self._b.command(f"ALTER TABLE {DB}.{table} REMOVE TTL")

    def close(self) -> None:
        """Close the connections (the engine stops and unlocks the directory when this
        process has no other store open on it)."""
        if self._b is not None:
            self._b.close()
            self._b = None

    def __enter__(self) -> "TickStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def versions(self) -> dict[str, str]:
        """chdb's and its ClickHouse engine's versions."""
        return {"chdb": self._b.chdb_version, "clickhouse": self._b.engine_version}

    def _backend(self) -> _Chdb:
        if self._b is None:
            raise StoreError("tick store is closed")
        return self._b

    # -- writes

    def _symbols(self, pa, symbols):
        key = tuple(symbols)
        if key != self._sym_key:
            self._sym_key, self._sym_dict = key, pa.array(list(key), pa.string())
        return self._sym_dict

    def insert_events(self, ev: np.ndarray, symbols, token: str = "") -> tuple[int, int]:
        """Store a batch of book events (``schema.EVENT_DTYPE``): EV_BBO -> ``quotes``, EV_TRADE
        -> ``trades`` (and, through the views, the bars).  One INSERT per table.  Events with
        a symbol index outside ``symbols``, an unknown kind or (trades) a side that is not
        SIDE_BID/SIDE_ASK are skipped and counted in ``skipped``.  ``token``: inserting the
        same batch again under the same token stores nothing more (the spool's retries).
        Returns (quotes, trades) in the batch."""
        b = self._backend()
        if len(ev) == 0:
            return 0, 0
        if ev.dtype != schema.EVENT_DTYPE:
            raise StoreError(f"insert_events: records must be schema.EVENT_DTYPE, got {ev.dtype}")
        pa = _pa()
        kind, sym = ev["kind"], ev["symbol"]
        ok = sym < len(symbols)
        is_bbo, is_trade = kind == schema.EV_BBO, kind == schema.EV_TRADE
        good_side = ev["side"] <= schema.SIDE_ASK
        self.skipped["bad_symbol"] += int(np.count_nonzero(~ok))
        self.skipped["bad_kind"] += int(np.count_nonzero(ok & ~is_bbo & ~is_trade))
        self.skipped["bad_side"] += int(np.count_nonzero(ok & is_trade & ~good_side))
        names = self._symbols(pa, symbols)
        nq = nt = 0
        q = ev[ok & is_bbo]
        if len(q):
            b.insert("quotes", pa.table({
                "ts_ns": np.ascontiguousarray(q["ts_exch_ns"]), "symbol": _dict_symbols(pa, q["symbol"], names),
                "seq": np.ascontiguousarray(q["seq"]),
                "bid_px_tick": _px(pa, q["bid_px_tick"]), "bid_qty": np.ascontiguousarray(q["bid_qty"]),
                "ask_px_tick": _px(pa, q["ask_px_tick"]), "ask_qty": np.ascontiguousarray(q["ask_qty"])}),
                token and token + ":q")
            nq = len(q)
        t = ev[ok & is_trade & good_side]
        if len(t):
            b.insert("trades", pa.table({
                "ts_ns": np.ascontiguousarray(t["ts_exch_ns"]), "symbol": _dict_symbols(pa, t["symbol"], names),
                "seq": np.ascontiguousarray(t["seq"]), "px_tick": np.ascontiguousarray(t["trade_px_tick"]),
                "qty": t["trade_qty"].astype(np.int64),
                "aggressor": pa.DictionaryArray.from_arrays(pa.array(t["side"].astype(np.int8)),
                                                            pa.array(["buy", "sell"]))}),
                token and token + ":t")
            nt = len(t)
        return nq, nt

    def insert_depth(self, ts_ns: np.ndarray, symbol: np.ndarray, bid_px: np.ndarray, bid_qty: np.ndarray,
                     ask_px: np.ndarray, ask_qty: np.ndarray, symbols, token: str = "") -> int:
        """Store depth snapshots: row i is symbol index ``symbol[i]`` at ``ts_ns[i]`` with the
        levels ``*_px[i, :]``/``*_qty[i, :]`` (best first; NO_PX = no level, not stored).
        Rows with a symbol index outside ``symbols`` are skipped and counted.  ``token``: as
        ``insert_events``.  Returns rows in the batch."""
        b = self._backend()
        ts_ns = np.asarray(ts_ns, dtype=np.int64)
        symbol = np.asarray(symbol)
        if len(ts_ns) == 0:
            return 0
        if not (len(symbol) == len(ts_ns) == len(bid_px) == len(bid_qty) == len(ask_px) == len(ask_qty)):
            raise StoreError("insert_depth: the arrays must have one row per snapshot")
        pa = _pa()
        ok = (symbol >= 0) & (symbol < len(symbols))
        self.skipped["bad_symbol"] += int(np.count_nonzero(~ok))
        if not ok.any():
            return 0
        bp, bq = _levels(pa, np.asarray(bid_px)[ok], np.asarray(bid_qty)[ok])
        ap, aq = _levels(pa, np.asarray(ask_px)[ok], np.asarray(ask_qty)[ok])
        b.insert("depth", pa.table({"ts_ns": ts_ns[ok], "symbol": _dict_symbols(pa, symbol[ok], self._symbols(pa, symbols)),
                                    "bid_px_tick": bp, "bid_qty": bq, "ask_px_tick": ap, "ask_qty": aq}), token)
        return int(np.count_nonzero(ok))

    # -- reads

    @staticmethod
    def _query(what: str, symbol: str, from_ns: int, to_ns: int, width: str = "1m") -> tuple[str, dict]:
        """SQL and parameters for one symbol's rows of ``what`` in [from_ns, to_ns)."""
        params = {"s": str(symbol), "a": int(from_ns), "b": int(to_ns)}
        if what in _COLUMNS:
            return (f"SELECT {_COLUMNS[what]} FROM {DB}.{what} WHERE symbol = {{s:String}}"
                    f" AND ts_ns >= {{a:Int64}} AND ts_ns < {{b:Int64}} ORDER BY {_ORDER[what]}"), params
        if what != "bars":
            raise StoreError(f"unknown table {what!r}: want one of {', '.join(WHATS)}")
        w = parse_width(width)
        table = BAR_TABLES["1m"][0] if w % BAR_TABLES["1m"][1] == 0 else BAR_TABLES["1s"][0]
        # Whole bars: every bar that overlaps [from, to), so the bounds move out to the
        # width (in Python: no Int64 overflow near the ends of time).
        lim = np.iinfo(np.int64)
        params["a"] = max(lim.min, params["a"] // w * w)
        params["b"] = min(lim.max, -(-params["b"] // w) * w)
        # The stored 1 s / 1 min buckets are regrouped to the width (the argMin/argMax
        # states carry (time, seq), so open and close stay exact); -Merge with GROUP BY
        # also folds the rows not yet merged on disk.  (No alias may be named like a
        # column: ClickHouse would use it in WHERE too.)
        return (f"SELECT intDiv(bucket_ns, {w}) * {w} AS ts_ns, symbol,"
                " argMinMerge(open_tick) AS open_tick, max(high_tick) AS high_tick, min(low_tick) AS low_tick,"
                " argMaxMerge(close_tick) AS close_tick, sum(volume) AS volume, sum(trades) AS trades,"
                " sum(turnover) AS turnover, turnover / volume AS vwap_tick"
                f" FROM {DB}.{table} WHERE symbol = {{s:String}} AND bucket_ns >= {{a:Int64}} AND bucket_ns < {{b:Int64}}"
                " GROUP BY symbol, ts_ns ORDER BY ts_ns"), params

    def quotes(self, symbol: str, from_ns: int, to_ns: int) -> "pyarrow.Table":
        """Top-of-book changes of ``symbol`` in [from_ns, to_ns), by (time, seq); an empty
        side's price is null."""
        return self._backend().arrow(*self._query("quotes", symbol, from_ns, to_ns))

    def trades(self, symbol: str, from_ns: int, to_ns: int) -> "pyarrow.Table":
        """Trades of ``symbol`` in [from_ns, to_ns), by (time, seq); aggressor buy|sell."""
        return self._backend().arrow(*self._query("trades", symbol, from_ns, to_ns))

    def depth(self, symbol: str, from_ns: int, to_ns: int) -> "pyarrow.Table":
        """Depth snapshots of ``symbol`` in [from_ns, to_ns): level arrays, best first."""
        return self._backend().arrow(*self._query("depth", symbol, from_ns, to_ns))

    def bars(self, symbol: str, from_ns: int, to_ns: int, width: str = "1m") -> "pyarrow.Table":
        """OHLCV bars of ``symbol`` from its trades: every ``width`` bar (1s, 1m, or any whole
        multiple: 5s, 5m, 1h, 1d) that overlaps [from_ns, to_ns); ``ts_ns`` is the bar's
        start.  Bars without trades are absent."""
        return self._backend().arrow(*self._query("bars", symbol, from_ns, to_ns, width))

    def sql(self, query: str) -> "pyarrow.Table":
        """Run one read-only statement (SELECT, WITH, SHOW, DESCRIBE) on a read-only
        connection whose current database is ``ticks``; anything else is refused with why."""
        check_read_only(query)
        return self._backend().arrow(query, readonly=True)

    def export(self, what: str, symbol: str, from_ns: int, to_ns: int, path: str, width: str = "1m") -> int:
        """Write what ``quotes``/``trades``/``depth``/``bars`` returns for the range to a
        Parquet file at ``path`` (streamed in batches; written to ``path.tmp`` and renamed,
        so a failed export leaves no half file).  Returns rows written."""
        import pyarrow.parquet as pq
        b = self._backend()
        sql, params = self._query(what, symbol, from_ns, to_ns, width)
        tmp = f"{path}.tmp"
        rows = 0
        stream, reader = b.batches(sql, params)
        try:
            sch = reader.schema
            if len(sch) == 0:  # chdb streams no schema for an empty result
                sch = b.arrow(f"SELECT * FROM ({sql}) LIMIT 0", params).schema
            with pq.ParquetWriter(tmp, sch) as w:
                for batch in reader:
                    w.write_batch(batch)
                    rows += batch.num_rows
            os.replace(tmp, path)
        finally:
            stream.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
        return rows

    def counts(self) -> dict[str, int]:
        """Rows per table (bars: distinct (symbol, bar) whether or not merged on disk)."""
        b = self._backend()
        out = {}
        for t in _COLUMNS:
            out[t] = int(b.command(f"SELECT count() FROM {DB}.{t}").strip())
        for _, (t, _) in BAR_TABLES.items():
            out[t] = int(b.command(f"SELECT count() FROM (SELECT 1 FROM {DB}.{t} GROUP BY symbol, bucket_ns)").strip())
        return out

    def bytes_on_disk(self) -> dict[str, int]:
        """Compressed bytes of the active parts per table (system.parts)."""
        rows = self._backend().command(
            "SELECT table, sum(bytes_on_disk) FROM system.parts WHERE database = {d:String} AND active GROUP BY table",
            {"d": DB})
        return {t: int(n) for t, n in (line.split("\t") for line in rows.splitlines() if line)}

    def optimize(self, timeout_s: float = 10.0) -> None:
        """Merge each table's parts into one per partition (OPTIMIZE ... FINAL, which also
        applies the TTLs): for measurements and tests, not needed for correct answers."""
        b = self._backend()
        for t in _TABLES:
            b.command(f"OPTIMIZE TABLE {DB}.{t} FINAL")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and int(b.command(
                "SELECT count() FROM system.merges WHERE database = {d:String}", {"d": DB}).strip() or 0):
            time.sleep(0.05)


# --- backup and restore (ClickHouse BACKUP / RESTORE; obpipe backup|restore, obpipe/backup.py) -----


def _backup_engine(path: str, allowed: str):
    """A chdb connection to data directory ``path`` whose engine may read and write
    backups under directory ``allowed`` (ClickHouse's ``backups.allowed_path``, an engine
    start-up parameter: the engine must not be running in this process yet)."""
    import chdb
    for p in (path, allowed):
        if "?" in p or "&" in p:
            raise StoreError(f"{p!r}: a path with '?' or '&' cannot be handed to chdb (it reads them as parameters)")
    pid = _lock_holder(path)
    if pid is not None:
        raise _in_use(path, pid)
    try:
        return chdb.connect(f"{path}?async_insert=0&backups.allowed_path={allowed.rstrip('/')}/")
    except Exception as e:
        m = re.search(r"initialized with path '([^']*)'", str(e))
        if m:
            raise StoreError(
                f"cannot open tick store {path} for a backup or restore: this process already has ClickHouse data "
                f"directory {m.group(1)} open (chdb: one engine per process): close that store first") from None
        pid = _lock_holder(path)
        if pid is not None:
            raise _in_use(path, pid) from None
        raise StoreError(f"cannot open tick store {path}: {e}") from None


def _run(con, sql: str, params: dict | None = None) -> str:
    try:
        return str(con.query(sql, "TabSeparated", params=params or {}))
    except Exception as e:
        msg = str(e)
        if "backups.allowed_path" in msg:
            raise StoreError(
                "this process already runs the tick store's engine without a backup path (an open TickStore): "
                "close it before backup()/restore(), which start the engine themselves") from None
        raise StoreError(f"ClickHouse: {msg}") from None


def _sql_path(p: str) -> str:
    return "'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'"


def digests(con) -> dict[str, dict]:
    """Per table: rows and an order-free digest of the contents (the sum of a 64-bit hash
    of every row, as text).  Bars are digested as read (states merged), so a background
    merge, which folds a bar's partial rows into one, does not change them."""
    out = {}
    for t, cols in _COLUMNS.items():
        n, h = _run(con, f"SELECT count(), sum(cityHash64({cols}, ingested)) FROM {DB}.{t}").split()
        out[t] = {"rows": int(n), "digest": h}
    for _, (t, _) in BAR_TABLES.items():
        n, h = _run(con, "SELECT count(), sum(cityHash64(*)) FROM (SELECT symbol, bucket_ns, argMinMerge(open_tick),"
                         " max(high_tick), min(low_tick), argMaxMerge(close_tick), sum(volume), sum(trades),"
                         f" sum(turnover), max(ingested) FROM {DB}.{t} GROUP BY symbol, bucket_ns)").split()
        out[t] = {"rows": int(n), "digest": h}
    return out


def backup(where: str, to_dir: str) -> dict:
    """Back up the store at directory ``where`` into the new directory ``to_dir`` with
    ClickHouse's ``BACKUP DATABASE ticks TO File(...)`` (tables, views, parts; about the
    store's size on disk).  The engine starts here with a backup path, so no store may be
    open in this process, and no other process may hold ``where`` (a running recorder):
    StoreError says which.  Returns {"tables": digests(), "chdb", "clickhouse"} of what the
    backup holds (nobody else can write while this process holds the lock)."""
    import chdb
    src, dest = os.path.abspath(str(where)), os.path.abspath(str(to_dir))
    if not os.path.isdir(os.path.join(src, "metadata")):
        raise StoreError(f"{src}: no tick store there (no ClickHouse metadata directory)")
    if os.path.exists(dest):
        raise StoreError(f"{dest} exists: a backup goes into a new directory")
    con = _backup_engine(src, os.path.dirname(dest))
    try:
        if _run(con, "SELECT count() FROM system.databases WHERE name = {d:String}", {"d": DB}).strip() != "1":
            raise StoreError(f"{src}: no '{DB}' database: not a tick store")
        got = _run(con, f"BACKUP DATABASE {DB} TO File({_sql_path(dest)})")
        if "BACKUP_CREATED" not in got:
            raise StoreError(f"BACKUP of {src} did not finish: {got.strip()}")
        return {"tables": digests(con), "chdb": chdb.__version__, "clickhouse": getattr(chdb, "engine_version", "?")}
    finally:
        con.close()


def restore(from_dir: str, where: str, replace: bool = False) -> dict:
    """Restore a ``backup()`` directory into the store at ``where`` (created if missing).
    A target that already has the tables is refused unless ``replace`` (its ``ticks``
    database is then dropped first).  Returns digests() of the restored tables, to compare
    with the backup's.  ClickHouse does not check the parts' checksums on RESTORE (a
    damaged file shows when it is read), hence the caller's file checksums."""
    src, dest = os.path.abspath(str(from_dir)), os.path.abspath(str(where))
    if not os.path.isfile(os.path.join(src, ".backup")):
        raise StoreError(f"{src}: not a ClickHouse backup (no .backup file)")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise StoreError(f"tick store {dest} exists and is not a directory")
    os.makedirs(dest, exist_ok=True)
    con = _backup_engine(dest, os.path.dirname(src))
    try:
        if _run(con, "SELECT count() FROM system.databases WHERE name = {d:String}", {"d": DB}).strip() == "1":
            if not replace:
                raise StoreError(f"tick store {dest} already has a '{DB}' database: restore into an empty directory")
            _run(con, f"DROP DATABASE {DB} SYNC")
        got = _run(con, f"RESTORE DATABASE {DB} FROM File({_sql_path(src)})")
        if "RESTORED" not in got:
            raise StoreError(f"RESTORE into {dest} did not finish: {got.strip()}")
        return digests(con)
    finally:
        con.close()


def lock_holder(where: str) -> int | None:
    """Pid of another process that has the store at ``where`` open (a running recorder),
    else None: chdb lets one process at a time open a data directory."""
    return _lock_holder(os.path.abspath(str(where)))
