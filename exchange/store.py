"""The exchange's relational store: orders, fills, positions, rejects and cancels in SQL.

The exchange's journal (``exchange.journal``) is the outcome stream: the matching kernel
is deterministic, so replaying the journaled requests through a ``MatchingEngine`` of the
same symbols, band and capacity (the journal header names them) reproduces every report
the exchange sent, in order.  The store writer tails the journal from the position it
has applied, replays the new batches, turns the reports into rows and commits the rows
together with the new journal position in ONE transaction: a writer killed at any point
resumes exactly where its last commit left it (no duplicate, no gap).  It never runs on
the exchange's request path; it only reads the journal file (docs/STORE.md).

``catch_up(journal_path, db)`` applies everything new and returns counts (tests, the
``obpipe store`` one-shot); ``StoreWriter`` keeps the engine between calls (the tailing
process).  Queries (``query_orders``, ``query_fills``, ``query_positions``) back the
``obpipe orders|fills|positions`` commands.

SQL is the common subset of SQLite and PostgreSQL (integer columns are BIGINT, no
AUTOINCREMENT, explicit ids, ``?`` placeholders rewritten for psycopg): a SQLite file
by default, a PostgreSQL server by ``postgresql://`` URL (``Db``).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import deque
from fractions import Fraction

import numpy as np

from obpipe.ring import schema
from obpipe.ring.settings import ago_ns
from obpipe.exchange import _match_kernels as MK
from obpipe.exchange import journal as J
from obpipe.exchange.matching import MatchingEngine, trades_of

SCHEMA_VERSION = 1
_REPLAY_CHUNK = 1 << 16

SIDE = {schema.BUY: "buy", schema.SELL: "sell"}
ORD_TYPE = {schema.OT_LIMIT: "limit", schema.OT_MARKET: "market"}
TIF = {schema.TIF_GTC: "gtc", schema.TIF_IOC: "ioc", schema.TIF_FOK: "fok"}

DDL = (
    "CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR(64) PRIMARY KEY, value BIGINT NOT NULL)",
    # one row per accepted order; qty = its quantity at entry, leaves = open now (a modify sets it)
    "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, account BIGINT NOT NULL, symbol INTEGER NOT NULL,"
    " side VARCHAR(4) NOT NULL, type VARCHAR(6) NOT NULL, tif VARCHAR(3) NOT NULL, price_tick BIGINT NOT NULL,"
    " qty BIGINT NOT NULL, filled BIGINT NOT NULL, leaves BIGINT NOT NULL, status VARCHAR(9) NOT NULL,"
    " reason VARCHAR(32), created_ns BIGINT NOT NULL, updated_ns BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_account ON orders (account, status)",
    "CREATE INDEX IF NOT EXISTS orders_symbol ON orders (symbol, status)",
    "CREATE TABLE IF NOT EXISTS fills (exec_id BIGINT PRIMARY KEY, symbol INTEGER NOT NULL,"
    " buy_order BIGINT NOT NULL, sell_order BIGINT NOT NULL, buy_account BIGINT NOT NULL,"
    " sell_account BIGINT NOT NULL, price_tick BIGINT NOT NULL, qty BIGINT NOT NULL,"
    " aggressor VARCHAR(4) NOT NULL, ts_ns BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fills_buy ON fills (buy_account, ts_ns)",
    "CREATE INDEX IF NOT EXISTS fills_sell ON fills (sell_account, ts_ns)",
    "CREATE INDEX IF NOT EXISTS fills_symbol ON fills (symbol, ts_ns)",
    # FIFO positions (docs/DECISIONS.md): qty signed lots, open_cost = sum of the open lots' price*qty
    "CREATE TABLE IF NOT EXISTS positions (account BIGINT NOT NULL, symbol INTEGER NOT NULL, qty BIGINT NOT NULL,"
    " open_cost BIGINT NOT NULL, realized_pnl BIGINT NOT NULL, updated_ns BIGINT NOT NULL,"
    " PRIMARY KEY (account, symbol))",
    # the open lots behind a position, oldest first (what FIFO closes next)
    "CREATE TABLE IF NOT EXISTS position_lots (account BIGINT NOT NULL, symbol INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, price_tick BIGINT NOT NULL, qty BIGINT NOT NULL, PRIMARY KEY (account, symbol, seq))",
    "CREATE TABLE IF NOT EXISTS rejects (seq BIGINT PRIMARY KEY, order_id BIGINT NOT NULL, account BIGINT NOT NULL,"
    " symbol INTEGER NOT NULL, side VARCHAR(4), request VARCHAR(6) NOT NULL, reason VARCHAR(32) NOT NULL,"
    " ts_ns BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rejects_account ON rejects (account, ts_ns)",
    "CREATE TABLE IF NOT EXISTS cancels (seq BIGINT PRIMARY KEY, order_id BIGINT NOT NULL, account BIGINT NOT NULL,"
    " symbol INTEGER NOT NULL, side VARCHAR(4) NOT NULL, price_tick BIGINT NOT NULL, qty BIGINT NOT NULL,"
    " reason VARCHAR(32) NOT NULL, ts_ns BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS cancels_account ON cancels (account, ts_ns)",
)
# store_meta keys: what the store has applied (committed with the rows they describe)
META = ("schema_version", "session", "offset", "requests", "batches", "rejects", "cancels")


class StoreError(ValueError):
    """The store cannot apply this journal (another journal's session, other settings,
    an unknown store URL); the message says which."""


class Db:
    """One store database: a SQLite file (WAL: readers never block the writer) or a
    PostgreSQL server by ``postgresql://`` URL (psycopg 3 through a small connection
    pool: a connection broken by a server restart is replaced on the next use instead
    of failing every later transaction).  SQL is written once with ``?`` placeholders."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            try:
                import psycopg_pool
            except ImportError as e:
                raise StoreError("a postgresql:// store needs psycopg 3 and its pool "
                                 "(pip install 'obpipe[postgres]')") from e
            self.pool = psycopg_pool.ConnectionPool(url, min_size=1, max_size=2, open=False, timeout=2.0,
                                                    kwargs={"autocommit": True},
                                                    check=psycopg_pool.ConnectionPool.check_connection)
            try:
                self.pool.open(wait=True, timeout=15.0)
            except psycopg_pool.PoolTimeout as e:
                self.pool.close()
                raise StoreError(f"{redact(url)}: cannot connect to the PostgreSQL store ({e})") from None
            self.con = None
            self.lock = " FOR UPDATE"  # (the writer's row lock: a second writer waits, then sees the offset moved)
        else:
            self.kind = "sqlite"
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
            self.con = sqlite3.connect(path, timeout=30.0, isolation_level=None)  # explicit BEGIN / COMMIT
            self.con.execute("PRAGMA journal_mode=WAL")  # readers (obpipe orders) do not block the writer
            # OFF: no fsync at all.  The journal is the durable record and the store is
            # derived from it; fsyncs here stretched the exchange's journal-fsync tail
            # (docs/DECISIONS.md).  A store an OS crash damaged is rebuilt from the journal.
            self.con.execute("PRAGMA synchronous=OFF")
            self.lock = ""  # (BEGIN IMMEDIATE takes the write lock)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgresql" else sql

    @contextlib.contextmanager
    def tx(self):
        """One transaction: yields a ``_Tx`` (``run``, ``many``, ``one``); commits on
        leaving, rolls back on an exception."""
        if self.kind == "sqlite":
            con = self.con
            con.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(lambda q, a=(): con.execute(q, a), con.executemany)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield _Tx(lambda q, a=(): cur.execute(self._sql(q), a), lambda q, rows: cur.executemany(self._sql(q), rows),
                      cur.copy)

    def query(self, sql: str, args=()) -> tuple[list[str], list[tuple]]:
        """Column names and rows of one read (a store without the tables: ``StoreError``)."""
        try:
            if self.kind == "sqlite":
                cur = self.con.execute(sql, args)
                return [d[0] for d in cur.description], cur.fetchall()
            with self.pool.connection() as conn, conn.cursor() as cur:
                cur.execute(self._sql(sql), args)
                return [d[0] for d in cur.description], cur.fetchall()
        except Exception as e:
            if "store_meta" not in sql and _missing_table(e):
                raise StoreError(f"{redact(self.url)}: not an obpipe store yet (obpipe store writes it): {e}") from None
            raise

    def close(self) -> None:
        if self.kind == "sqlite":
            self.con.close()
        else:
            self.pool.close()


def _missing_table(e: Exception) -> bool:
    return "no such table" in str(e) or type(e).__name__ == "UndefinedTable"


class _Tx:
    """Statements inside one ``Db.tx`` transaction."""

    def __init__(self, run, many, copy=None):
        self.run, self.many, self.copy = run, many, copy

    def one(self, sql: str, args=()):
        return self.run(sql, args).fetchone()

    def insert(self, table: str, cols: str, rows) -> None:
        """Insert rows (tuples in ``cols`` order): one executemany on SQLite, a COPY on
        PostgreSQL (several times faster than its pipelined INSERTs)."""
        if not rows:
            return
        names = cols.split(", ")
        if self.copy is None:
            self.many(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(names))})", rows)
            return
        with self.copy(f"COPY {table} ({cols}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)


def redact(url: str) -> str:
    """A store URL without its password (for messages)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        netloc = rest.split("/", 1)[0]
        if "@" in netloc and ":" in netloc.split("@", 1)[0]:
            user = netloc.split("@", 1)[0].split(":", 1)[0]
            return f"{scheme}://{user}:***@{rest.split('@', 1)[1]}"
    return url


def connect(db: str) -> Db:
    """Open the store named by a path (SQLite), a ``sqlite:///path`` or a ``postgresql://`` URL."""
    return Db(db)


def create_schema(db: Db) -> None:
    """Create the tables (a new store) or check the schema version (an existing one)."""
    with db.tx() as t:
        for stmt in DDL:
            t.run(stmt)
        row = t.one("SELECT value FROM store_meta WHERE key = 'schema_version'")
        if row is None:
            t.many("INSERT INTO store_meta (key, value) VALUES (?, ?)",
                   [(k, SCHEMA_VERSION if k == "schema_version" else 0) for k in META])
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(f"store schema version {row[0]}, this obpipe writes version {SCHEMA_VERSION}")


def _meta(db: Db) -> dict:
    return dict(db.query("SELECT key, value FROM store_meta")[1])


def read_header(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read(J.HEADER.size)
    if len(raw) < J.HEADER.size:
        raise StoreError(f"{path}: shorter than a journal header")
    magic, version, _hsize, sess, nsym, band, cap, created = J.HEADER.unpack(raw)
    if magic != J.MAGIC or version != J.VERSION:
        raise StoreError(f"{path}: not an obpipe journal of version {J.VERSION}")
    return {"session": sess, "symbols": nsym, "band_ticks": band, "capacity": cap, "created_ns": created}


def _batches(data: bytes, base: int):
    """Whole, intact batches at the start of ``data`` (journal bytes from offset
    ``base``): yields (end offset, ts_ns, requests, cancel reason).  Stops at the first batch that is
    not whole yet (the exchange is writing it, or a crash cut it: the exchange drops it)."""
    pos = 0
    size = len(data)
    while pos < size:
        if J._bad_batch(data, pos, size) is not None:
            return
        _magic, count, ts, _crc, reason = J.BATCH.unpack_from(data, pos)
        start = pos + J.BATCH.size
        pos = start + count * J.REQ
        yield base + pos, ts, np.frombuffer(data, schema.ORDER_IN_DTYPE, count, start), reason


class StoreWriter:
    """Applies a journal to a store.  ``step()`` applies what is new (in transactions
    of about ``batch_requests`` requests) and returns counts; the engine and the FIFO
    lots stay in memory between steps."""

    def __init__(self, journal_path: str, db: str, batch_requests: int = 50_000):
        self.path = journal_path
        self.batch_requests = batch_requests
        self.db = connect(db)
        try:
            self._open(journal_path, db)
        except BaseException:
            self.db.close()
            raise

    def _open(self, journal_path: str, db: str) -> None:
        create_schema(self.db)
        h = read_header(journal_path)
        m = _meta(self.db)
        if m["session"] and m["session"] != h["session"]:
            raise StoreError(f"{redact(db)}: store holds journal session {m['session']}, {journal_path} is session "
                             f"{h['session']} (another journal)")
        self.header = h
        self.eng = MatchingEngine(h["symbols"], h["band_ticks"], h["capacity"])
        self.offset = m["offset"] or J.HEADER.size
        self.requests = m["requests"]
        self.batches = m["batches"]
        self.n_rejects = m["rejects"]
        self.n_cancels = m["cancels"]
        self._replay_applied()
        self.lots = {}  # (account, symbol) -> deque of [px, signed qty], loaded on first touch
        self.touched: set[int] = set()  # accounts whose orders or positions the commits since take_touched changed

    def _replay_applied(self) -> None:
        """Rebuild the engine from the journal prefix the store has already applied."""
        if self.offset <= J.HEADER.size:
            return
        with open(self.path, "rb") as f:
            f.seek(J.HEADER.size)
            data = f.read(self.offset - J.HEADER.size)
        n, last = 0, J.HEADER.size
        for end, ts, reqs, _why in _batches(data, J.HEADER.size):
            for i in range(0, len(reqs), _REPLAY_CHUNK):
                self.eng.process(reqs[i:i + _REPLAY_CHUNK], ts)
            n += len(reqs)
            last = end
        if n != self.requests or last != self.offset:
            raise StoreError(f"{self.path}: the store applied {self.requests} requests up to byte {self.offset}, "
                             f"the journal holds {n} up to byte {last} there (truncated or another journal)")

    def step(self, max_transactions: int | None = None) -> dict:
        """Apply every whole batch written since the last step; counts of what was added."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        added = {"requests": 0, "orders": 0, "fills": 0, "rejects": 0, "cancels": 0, "transactions": 0}
        pending = []
        n = 0
        for end, ts, reqs, why in _batches(data, self.offset):
            pending.append((end, ts, reqs, why))
            n += len(reqs)
            if n >= self.batch_requests:
                self._apply(pending, added)
                pending, n = [], 0
                if max_transactions is not None and added["transactions"] >= max_transactions:
                    return added
        if pending:
            self._apply(pending, added)
        return added

    # --- one transaction ----------------------------------------------------------------
    def _apply(self, batches, added: dict) -> None:
        orders, fills, updates, rejects, cancels = [], [], [], [], []
        pos_fills = []
        self._rows(batches, orders, fills, updates, rejects, cancels, pos_fills)
        positions, lots = self._positions(pos_fills)
        try:
            with self.db.tx() as t:
                have = t.one("SELECT value FROM store_meta WHERE key = 'offset'" + self.db.lock)[0]
                if have not in (0, self.offset) or (have == 0 and self.offset != J.HEADER.size):
                    raise StoreError(f"the store moved to journal byte {have} under this writer (at {self.offset}): "
                                     f"another store writer runs on it")
                t.insert("orders", "id, account, symbol, side, type, tif, price_tick, qty, filled, leaves, status,"
                         " reason, created_ns, updated_ns", orders)
                t.many("UPDATE orders SET filled = filled + ?, leaves = ?, status = ?, reason = ?,"
                       " price_tick = COALESCE(?, price_tick), updated_ns = ? WHERE id = ?", updates)
                t.insert("fills", "exec_id, symbol, buy_order, sell_order, buy_account, sell_account, price_tick, qty,"
                         " aggressor, ts_ns", fills)
                t.insert("rejects", "seq, order_id, account, symbol, side, request, reason, ts_ns", rejects)
                t.insert("cancels", "seq, order_id, account, symbol, side, price_tick, qty, reason, ts_ns", cancels)
                t.many("INSERT INTO positions (account, symbol, qty, open_cost, realized_pnl, updated_ns)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account, symbol) DO UPDATE SET"
                       " qty = excluded.qty, open_cost = excluded.open_cost,"
                       " realized_pnl = excluded.realized_pnl, updated_ns = excluded.updated_ns", positions)
                t.many("DELETE FROM position_lots WHERE account = ? AND symbol = ?", [(p[0], p[1]) for p in positions])
                t.insert("position_lots", "account, symbol, seq, price_tick, qty", lots)
                end = batches[-1][0]
                n = sum(len(b[2]) for b in batches)
                meta = {"session": self.header["session"], "offset": end, "requests": self.requests + n,
                        "batches": self.batches + len(batches), "rejects": self.n_rejects + len(rejects),
                        "cancels": self.n_cancels + len(cancels)}
                t.many("UPDATE store_meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta.items()])
        except BaseException:
            self.lots = {}  # (reloaded from the store: the failed transaction's changes are gone)
            raise
        self.touched.update(r[1] for r in orders)
        self.touched.update(a for r in fills for a in (r[4], r[5]))
        self.touched.update(r[2] for r in cancels)
        self.offset, self.requests, self.batches = end, meta["requests"], meta["batches"]
        self.n_rejects, self.n_cancels = meta["rejects"], meta["cancels"]
        added["requests"] += n
        added["orders"] += len(orders)
        added["fills"] += len(fills)
        added["rejects"] += len(rejects)
        added["cancels"] += len(cancels)
        added["transactions"] += 1

    def _rows(self, batches, orders, fills, updates, rejects, cancels, pos_fills) -> None:
        """Replay a transaction's batches; append their rows.  The engine runs batch by
        batch (each report gets its batch's stamp); the rows are built once, with numpy,
        over all of the transaction's reports."""
        eng = self.eng
        first_exec = eng.counters()["trades"]
        reps, accs, stamps, lo, hi, reqs_all, req_ts = [], [], [], [], [], [], []
        for _end, ts, reqs, why in batches:
            a = eng.next_order_id
            out = eng.process(reqs, ts)
            rep = out.reports.copy()
            if why:  # (the exchange's own cancels: it set this reason on their reports)
                rep["reason"][rep["type"] == schema.R_CANCELLED] = why
            reps.append(rep)
            accs.append(out.accounts.copy())
            n = len(out.reports)
            stamps.append(np.full(n, ts, np.int64))
            lo.append(np.full(n, a, np.int64))
            hi.append(np.full(n, eng.next_order_id, np.int64))
            reqs_all.append(reqs)
            req_ts.append(np.full(len(reqs), ts, np.int64))
        rep, acc, tss = np.concatenate(reps), np.concatenate(accs), np.concatenate(stamps)
        reqs, rts = np.concatenate(reqs_all), np.concatenate(req_ts)
        # new orders: every OE_NEW takes the next id, in request order (rejected ones too)
        isnew = (reqs["type"] == schema.OE_NEW) & (reqs["_reserved"] == 0)
        new, nts = reqs[isnew], rts[isnew]
        first_id = int(eng.next_order_id - len(new))
        ids = first_id + np.arange(len(new), dtype=np.int64)
        ok = np.isin(ids, rep["order_id"][rep["type"] == schema.R_ACK].astype(np.int64))
        new, nts, ids = new[ok], nts[ok], ids[ok]
        px = np.where(new["ord_type"] == schema.OT_LIMIT, new["px_tick"], 0)
        sides = [SIDE[s] for s in new["side"].tolist()]
        types = [ORD_TYPE[t] for t in new["ord_type"].tolist()]
        tifs = [TIF[t] for t in new["tif"].tolist()]
        q = new["qty"].tolist()
        t = nts.tolist()
        n = len(q)
        orders += zip(ids.tolist(), new["account"].tolist(), new["symbol"].tolist(), sides, types, tifs, px.tolist(),
                      q, [0] * n, q, ["open"] * n, [None] * n, t, t)
        # fills: aggressor's report then the resting order's; exec ids follow the engine's trade count
        tr = trades_of(rep)
        if len(tr):
            agg = np.flatnonzero((rep["type"] == schema.R_FILL) & ((rep["flags"] & schema.RF_AGGRESSOR) != 0))
            a_buys = rep["side"][agg] == schema.BUY
            buy_acct = np.where(a_buys, acc[agg], acc[agg + 1]).tolist()
            sell_acct = np.where(a_buys, acc[agg + 1], acc[agg]).tolist()
            sym = rep["symbol"][agg].tolist()
            fts = tss[agg].tolist()
            exec_ids = range(first_exec + 1, first_exec + 1 + len(tr))
            fills += zip(exec_ids, sym, tr[:, 0].tolist(), tr[:, 1].tolist(), buy_acct, sell_acct,
                         tr[:, 2].tolist(), tr[:, 3].tolist(), [SIDE[s] for s in tr[:, 4].tolist()], fts)
            pos_fills += zip(buy_acct, sell_acct, sym, tr[:, 2].tolist(), tr[:, 3].tolist(), fts)
        # order state: the last report of each order in the transaction decides it
        m = np.isin(rep["type"], (schema.R_FILL, schema.R_CANCELLED, schema.R_MODIFIED))
        if m.any():
            r, rt = rep[m], tss[m]
            uniq, inv = np.unique(r["order_id"].astype(np.int64), return_inverse=True)
            is_fill = r["type"] == schema.R_FILL
            filled = np.bincount(inv, weights=np.where(is_fill, r["qty"], 0).astype(np.float64),
                                 minlength=len(uniq)).astype(np.int64)
            last = np.zeros(len(uniq), np.int64)
            np.maximum.at(last, inv, np.arange(len(r)))
            mod = np.full(len(uniq), -1, np.int64)
            mi = np.flatnonzero(r["type"] == schema.R_MODIFIED)
            np.maximum.at(mod, inv[mi], mi)
            lr = r[last]
            status = np.where(lr["type"] == schema.R_CANCELLED, 2, np.where(
                (lr["type"] == schema.R_FILL) & (lr["leaves"] == 0), 1, 0))
            st = [("open", "filled", "cancelled")[s] for s in status.tolist()]
            why = [schema.REASON_NAMES[x] if s == 2 else None for s, x in zip(status.tolist(), lr["reason"].tolist())]
            mpx = [None if k < 0 else p for k, p in zip(mod.tolist(), r["px_tick"][np.maximum(mod, 0)].tolist())]
            updates += zip(filled.tolist(), lr["leaves"].tolist(), st, why, mpx, rt[last].tolist(), uniq.tolist())
        # rejects and cancels, with their reasons
        k = np.flatnonzero(rep["type"] == schema.R_REJECT)
        if len(k):
            x = rep[k]
            o = x["order_id"].astype(np.int64)
            kind = np.where((o >= np.concatenate(lo)[k]) & (o < np.concatenate(hi)[k]), "new", "amend").tolist()
            seq = range(self.n_rejects + len(rejects) + 1, self.n_rejects + len(rejects) + 1 + len(k))
            rejects += zip(seq, o.tolist(), acc[k].tolist(), x["symbol"].tolist(),
                           [SIDE.get(s) for s in x["side"].tolist()], kind,
                           [schema.REASON_NAMES.get(c, str(c)) for c in x["reason"].tolist()], tss[k].tolist())
        k = np.flatnonzero(rep["type"] == schema.R_CANCELLED)
        if len(k):
            x = rep[k]
            seq = range(self.n_cancels + len(cancels) + 1, self.n_cancels + len(cancels) + 1 + len(k))
            cancels += zip(seq, x["order_id"].tolist(), acc[k].tolist(), x["symbol"].tolist(),
                           [SIDE[s] for s in x["side"].tolist()], x["px_tick"].tolist(), x["qty"].tolist(),
                           [schema.REASON_NAMES[c] for c in x["reason"].tolist()], tss[k].tolist())

    # --- live account state (the store writer's Redis tier, docs/REDIS.md) -------------
    def take_touched(self) -> set[int]:
        """The accounts changed since the last call (and forget them)."""
        t, self.touched = self.touched, set()
        return t

    def account_state(self, accounts=None) -> dict[int, dict]:
        """Per account: ``open_orders`` (resting in the exchange's book as of the applied
        journal) and ``positions`` {symbol: (qty, open_cost, realized_pnl)} from the
        store.  ``accounts``: those only (None: every account with an open order or a
        position row)."""
        O = self.eng.O
        live = O[:, MK.O_ID] > 0
        accts, counts = np.unique(O[live, MK.O_ACCT], return_counts=True)
        open_n = dict(zip(accts.tolist(), counts.tolist()))
        sql = "SELECT account, symbol, qty, open_cost, realized_pnl FROM positions"
        if accounts is None:
            rows = self.db.query(sql)[1]
        else:  # (only the accounts asked for: a step's few, not the whole table each time)
            ids = sorted(accounts)
            rows = [r for i in range(0, len(ids), 500) for r in self.db.query(
                f"{sql} WHERE account IN ({', '.join('?' * len(ids[i:i + 500]))})", ids[i:i + 500])[1]]
        pos: dict[int, dict] = {}
        for a, sym, qty, cost, pnl in rows:
            pos.setdefault(a, {})[sym] = (qty, cost, pnl)
        want = set(open_n) | set(pos) if accounts is None else set(accounts)
        return {a: {"open_orders": open_n.get(a, 0), "positions": pos.get(a, {})} for a in want}

    # --- positions (FIFO lots, docs/DECISIONS.md) -----------------------------------------
    def _lots(self, key):
        q = self.lots.get(key)
        if q is None:
            pos = self.db.query("SELECT realized_pnl FROM positions WHERE account = ? AND symbol = ?", key)[1]
            rows = self.db.query("SELECT price_tick, qty FROM position_lots WHERE account = ? AND symbol = ?"
                                 " ORDER BY seq", key)[1]
            q = self.lots[key] = [deque([list(r) for r in rows]), pos[0][0] if pos else 0, 0]
        return q

    def _positions(self, pos_fills):
        """Apply fills to the FIFO lots; the position and lot rows of every touched key."""
        touched = {}
        for ba, sa, sym, px, qty, ts in pos_fills:
            for acct, signed in ((ba, qty), (sa, -qty)):
                key = (acct, sym)
                st = self._lots(key)
                st[1] += fifo(st[0], px, signed)
                st[2] = ts
                touched[key] = st
        positions, lots = [], []
        for (acct, sym), (q, realized, ts) in touched.items():
            qty = sum(l[1] for l in q)
            cost = sum(l[0] * abs(l[1]) for l in q)
            positions.append((acct, sym, qty, cost, realized, ts))
            lots += [(acct, sym, i, l[0], l[1]) for i, l in enumerate(q)]
        return positions, lots


def fifo(lots: deque, px: int, signed: int) -> int:
    """Add a fill of ``signed`` lots (+ buy, - sell) at ``px`` to a position's FIFO
    lots [px, signed qty]; the P&L it realizes (ticks*lots)."""
    realized = 0
    while signed and lots and (lots[0][1] > 0) != (signed > 0):
        lot = lots[0]
        k = min(abs(lot[1]), abs(signed))
        # closing a long (sell): (px - lot px) * k; closing a short (buy): (lot px - px) * k
        realized += (px - lot[0]) * k if lot[1] > 0 else (lot[0] - px) * k
        lot[1] += k if lot[1] < 0 else -k
        signed += k if signed < 0 else -k
        if lot[1] == 0:
            lots.popleft()
    if signed:
        lots.append([px, signed])
    return realized


def catch_up(journal_path: str, db: str, batch_requests: int = 50_000) -> dict:
    """Apply every journal batch the store has not applied yet; counts of what was added."""
    w = StoreWriter(journal_path, db, batch_requests)
    try:
        return w.step()
    finally:
        w.db.close()


def tail(journal_path: str, db: str, stop, poll_s: float = 0.05, batch_requests: int = 50_000,
         log=lambda m: None, on_step=None) -> dict:
    """Follow the journal until ``stop()`` is true (a store-writer process); waits for
    the journal to be created (the exchange beside it may not have started yet).  A
    database that fails (down, restarting, disk full) is retried with backoff, up to
    5 s apart, by a new writer that resumes from the store's last commit (the failed
    transaction advanced the writer's engine, so that writer is dropped); ``errors``
    counts the failures.  A ``StoreError`` (another journal, another writer) ends it.
    ``on_step(writer)`` runs after every step (the Redis account state)."""
    while not (os.path.exists(journal_path) and os.path.getsize(journal_path) >= J.HEADER.size):
        if stop():
            return {}
        time.sleep(poll_s)
    total = {"errors": 0}
    w = None
    backoff = 0.1
    try:
        while True:
            last = stop()  # (seen before a step: that step applies what came meanwhile, then it ends)
            try:
                if w is None:
                    w = StoreWriter(journal_path, db, batch_requests)
                got = w.step()
                backoff = 0.1
            except StoreError:
                raise
            except Exception as e:  # (sqlite3 / psycopg errors: the database, not the journal)
                total["errors"] += 1
                log(f"store writer: {redact(db)}: {type(e).__name__}: {str(e).strip()}; retrying in {backoff:.1f} s")
                if w is not None:
                    w.db.close()
                    w = None
                deadline = time.monotonic() + backoff
                while time.monotonic() < deadline and not stop():
                    time.sleep(0.05)
                backoff = min(5.0, backoff * 2)
                if stop():
                    return total
                continue
            for k, v in got.items():
                total[k] = total.get(k, 0) + v
            if on_step is not None:
                on_step(w)
            if last:
                return total
            if not got["requests"] and not stop():
                time.sleep(poll_s)
    finally:
        if w is not None:
            w.db.close()


# --- queries --------------------------------------------------------------------------
def _where(conds):
    return (" WHERE " + " AND ".join(c for c, _ in conds)) if conds else "", [v for _, v in conds]


def _rows(db: Db, sql, args):
    names, rows = db.query(sql, args)
    return [dict(zip(names, r)) for r in rows]


def query_orders(db: str, account=None, symbol=None, status=None) -> list[dict]:
    con = connect(db)
    try:
        conds = [(c, v) for c, v in (("account = ?", account), ("symbol = ?", symbol), ("status = ?", status))
                 if v is not None]
        w, args = _where(conds)
        return _rows(con, "SELECT id, account, symbol, side, type, tif, price_tick, qty, filled, leaves, status,"
                          f" reason, created_ns, updated_ns FROM orders{w} ORDER BY id", args)
    finally:
        con.close()


def query_fills(db: str, account=None, symbol=None, since_ns=None) -> list[dict]:
    con = connect(db)
    try:
        conds = []
        if account is not None:
            conds.append(("(buy_account = ? OR sell_account = ?)", account))
        if symbol is not None:
            conds.append(("symbol = ?", symbol))
        if since_ns is not None:
            conds.append(("ts_ns >= ?", since_ns))
        w, args = _where(conds)
        if account is not None:
            args.insert(args.index(account) + 1, account)
        return _rows(con, "SELECT exec_id, symbol, buy_order, sell_order, buy_account, sell_account, price_tick, qty,"
                          f" aggressor, ts_ns FROM fills{w} ORDER BY exec_id", args)
    finally:
        con.close()


def query_positions(db: str, account=None) -> list[dict]:
    con = connect(db)
    try:
        w, args = _where([("account = ?", account)] if account is not None else [])
        rows = _rows(con, "SELECT account, symbol, qty, open_cost, realized_pnl, updated_ns FROM positions"
                          f"{w} ORDER BY account, symbol", args)
    finally:
        con.close()
    for r in rows:  # the average open price, exact (a fraction of ticks) and as a number
        avg = Fraction(r["open_cost"], abs(r["qty"])) if r["qty"] else None
        r["avg_price_tick"] = None if avg is None else (str(avg) if avg.denominator != 1 else avg.numerator)
        r["avg_price"] = None if avg is None else float(avg)
    return rows


def since_ns(text: str) -> int:
    """``10m``, ``2h``, ``30s``, ``1d`` before now, in epoch ns."""
    t = ago_ns(text)
    if t is None:
        raise ValueError(f"--since wants a number and one of s, m, h, d (e.g. 10m), got {text!r}")
    return t


def spawn_writer(journal_path: str, db: str, parent_pid: int, extra: tuple[str, ...] = ()):
    """Start ``obpipe store --follow`` as a child of ``parent_pid`` (it dies with it and
    runs SCHED_BATCH at nice 19: the exchange's CPU comes first); returns the Popen."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "obpipe", "store", "--follow", "--journal", os.fspath(journal_path),
                             "--store", db, "--parent", str(parent_pid), *extra], stdout=subprocess.DEVNULL)


def stop_writer(p, timeout_s: float = 120.0) -> None:
    """Stop a ``spawn_writer`` child: SIGTERM (it applies what is left, then exits),
    SIGKILL after ``timeout_s``."""
    import subprocess

    p.terminate()
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def default_store(journal_path: str) -> str:
    """The store beside a journal: ``<journal>.db``."""
    return os.fspath(journal_path) + ".db"
