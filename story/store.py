"""Storage of signals, summaries and stories: SQLite (WAL, one file) or PostgreSQL.

One schema for both (docs/STORY.md).  Every insert is idempotent: signals on their id,
summaries on (symbol, start_ns), stories on their id (an upsert: a story grows while
its burst goes on).  ``Store.open(url)`` takes a file path / ``sqlite:///path`` or a
``postgresql://`` URL (psycopg 3), creates or migrates the schema, and hands out
queries with parameters bound by the driver (never formatted into SQL).

Times are feed time (the signals' ``ts_exch_ns``, the summaries' ``start_ns``),
integer nanoseconds.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

SCHEMA_VERSION = 1

_DDL = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS signals (
        id TEXT PRIMARY KEY, symbol TEXT NOT NULL, kind TEXT NOT NULL, side TEXT,
        seq BIGINT NOT NULL, ts_exch_ns BIGINT NOT NULL, ts_detect_ns BIGINT NOT NULL,
        tick_size DOUBLE PRECISION NOT NULL, bid_tick BIGINT, ask_tick BIGINT,
        bid_qty BIGINT NOT NULL, ask_qty BIGINT NOT NULL, vals TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS signals_symbol_ts ON signals (symbol, ts_exch_ns)",
    "CREATE INDEX IF NOT EXISTS signals_kind_ts ON signals (kind, ts_exch_ns)",
    "CREATE INDEX IF NOT EXISTS signals_ts ON signals (ts_exch_ns)",
    """CREATE TABLE IF NOT EXISTS summaries (
        symbol TEXT NOT NULL, start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, seq BIGINT NOT NULL,
        tick_size DOUBLE PRECISION NOT NULL, bid_tick BIGINT, ask_tick BIGINT, mid_tick DOUBLE PRECISION,
        spread_min DOUBLE PRECISION, spread_mean DOUBLE PRECISION, spread_max DOUBLE PRECISION,
        imb_tob DOUBLE PRECISION, imb_depth DOUBLE PRECISION, volume_buy BIGINT NOT NULL,
        volume_sell BIGINT NOT NULL, trades BIGINT NOT NULL, messages BIGINT NOT NULL,
        PRIMARY KEY (symbol, start_ns))""",
    "CREATE INDEX IF NOT EXISTS summaries_ts ON summaries (start_ns)",
    """CREATE TABLE IF NOT EXISTS stories (
        id TEXT PRIMARY KEY, symbol TEXT NOT NULL, kind TEXT NOT NULL, side TEXT,
        start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, severity DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL, signal_ids TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stories_symbol_ts ON stories (symbol, start_ns)",
    "CREATE INDEX IF NOT EXISTS stories_kind_ts ON stories (kind, start_ns)",
    "CREATE INDEX IF NOT EXISTS stories_ts ON stories (start_ns)",
]

SIGNAL_COLS = ("id", "symbol", "kind", "side", "seq", "ts_exch_ns", "ts_detect_ns", "tick_size", "bid_tick",
               "ask_tick", "bid_qty", "ask_qty", "vals")
SUMMARY_COLS = ("symbol", "start_ns", "end_ns", "seq", "tick_size", "bid_tick", "ask_tick", "mid_tick",
                "spread_min", "spread_mean", "spread_max", "imb_tob", "imb_depth", "volume_buy", "volume_sell",
                "trades", "messages")
STORY_COLS = ("id", "symbol", "kind", "side", "start_ns", "end_ns", "severity", "text", "signal_ids")


class StoreError(RuntimeError):
    """Raised by ``Store.open`` for a database it cannot use (bad URL, newer schema,
    no driver)."""


def signal_row(m: dict) -> tuple:
    b = m["bbo"]
    return (m["id"], m["symbol"], m["kind"], m["side"], m["seq"], m["ts_exch_ns"], m["ts_detect_ns"],
            m["tick_size"], b["bid_tick"], b["ask_tick"], b["bid_qty"], b["ask_qty"],
            json.dumps(m["values"], sort_keys=True))


def summary_row(m: dict) -> tuple:
    b, sp, im, vol = m["bbo"], m["spread_ticks"], m["imbalance"], m["volume"]
    return (m["symbol"], m["start_ns"], m["end_ns"], m["seq"], m["tick_size"], b["bid_tick"], b["ask_tick"],
            m["mid_tick"], sp["min"], sp["mean"], sp["max"], im["tob"], im["depth"], vol["buy"], vol["sell"],
            m["trades"], m["messages"])


class Store:
    """A connection per thread to one database (``sqlite`` or ``postgresql``)."""

    def __init__(self, url: str):
        self.url = url
        self.kind = "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
        self.path = None if self.kind == "postgresql" else (url[len("sqlite:///"):] if url.startswith("sqlite:///")
                                                            else url)
        self._local = threading.local()
        self._ph = "%s" if self.kind == "postgresql" else "?"

    @classmethod
    def open(cls, url: str) -> "Store":
        s = cls(url)
        if s.kind == "sqlite" and s.path != ":memory:":
            parent = Path(s.path).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"database directory {parent} does not exist")
        s.migrate()
        return s

    # --- connections ---------------------------------------------------------------
    def conn(self):
        c = getattr(self._local, "c", None)
        if c is None:
            if self.kind == "postgresql":
                try:
                    import psycopg
                except ImportError as e:
                    raise StoreError("a postgresql:// URL needs psycopg 3 (pip install 'psycopg[binary]')") from e
                c = psycopg.connect(self.url, autocommit=False)
            else:
                c = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=NORMAL")
            self._local.c = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "c", None)
        if c is not None:
            c.close()
            self._local.c = None

    def sql(self, q: str) -> str:
        """``?`` placeholders in the driver's style."""
        return q.replace("?", self._ph) if self._ph != "?" else q

    def execute(self, q: str, params=()):
        cur = self.conn().cursor()
        cur.execute(self.sql(q), params)
        return cur

    def query(self, q: str, params=()) -> list[tuple]:
        cur = self.execute(q, params)
        rows = cur.fetchall()
        self.conn().commit()  # ends the read transaction (PostgreSQL would hold it open)
        return rows

    # --- schema ------------------------------------------------------------------------
    def migrate(self) -> None:
        c = self.conn()
        cur = c.cursor()
        for ddl in _DDL:
            cur.execute(ddl)
        cur.execute(self.sql("SELECT value FROM meta WHERE key = ?"), ("schema_version",))
        row = cur.fetchone()
        if row is None:
            cur.execute(self.sql("INSERT INTO meta (key, value) VALUES (?, ?)"), ("schema_version", str(SCHEMA_VERSION)))
        elif int(row[0]) > SCHEMA_VERSION:
            c.rollback()
            raise StoreError(f"{self.url}: schema version {row[0]} is newer than this service's {SCHEMA_VERSION}")
        c.commit()

    # --- writes (one transaction per call) ---------------------------------------------
    def insert(self, signals: list[tuple], summaries: list[tuple]) -> tuple[int, int]:
        """Insert rows, ignoring ones already stored; commit.  Returns (new signals,
        new summaries)."""
        c = self.conn()
        cur = c.cursor()
        new_sig = new_sum = 0
        q_sig = self.sql(f"INSERT INTO signals ({', '.join(SIGNAL_COLS)}) VALUES "
                         f"({', '.join('?' * len(SIGNAL_COLS))}) ON CONFLICT DO NOTHING")
        q_sum = self.sql(f"INSERT INTO summaries ({', '.join(SUMMARY_COLS)}) VALUES "
                         f"({', '.join('?' * len(SUMMARY_COLS))}) ON CONFLICT DO NOTHING")
        for r in signals:
            cur.execute(q_sig, r)
            new_sig += max(cur.rowcount, 0)
        for r in summaries:
            cur.execute(q_sum, r)
            new_sum += max(cur.rowcount, 0)
        c.commit()
        return new_sig, new_sum

    def replace_stories(self, symbol: str, kind: str, side, from_ns: int, stories: list[tuple]) -> None:
        """Stories of (symbol, kind, side) starting at ``from_ns`` or later are replaced by
        ``stories`` (recomputed from the signals), in one transaction."""
        c = self.conn()
        cur = c.cursor()
        side_q = "side IS NULL" if side is None else "side = ?"
        cur.execute(self.sql(f"DELETE FROM stories WHERE symbol = ? AND kind = ? AND {side_q} AND start_ns >= ?"),
                    (symbol, kind, *(() if side is None else (side,)), from_ns))
        q = self.sql(f"INSERT INTO stories ({', '.join(STORY_COLS)}) VALUES ({', '.join('?' * len(STORY_COLS))}) "
                     "ON CONFLICT (id) DO UPDATE SET end_ns = excluded.end_ns, severity = excluded.severity, "
                     "text = excluded.text, signal_ids = excluded.signal_ids, start_ns = excluded.start_ns")
        for s in stories:
            cur.execute(q, s)
        c.commit()

    def delete_older(self, table: str, column: str, before_ns: int, batch: int = 5000) -> int:
        """Retention: delete rows with ``column`` < ``before_ns`` in batches of ``batch``
        (short transactions: readers and the consumer are never blocked for long)."""
        if (table, column) not in (("signals", "ts_exch_ns"), ("summaries", "start_ns"), ("stories", "end_ns")):
            raise ValueError(f"no retention for {table}.{column}")
        key = "id" if table != "summaries" else "symbol, start_ns"
        total = 0
        while True:
            if self.kind == "postgresql":
                q = (f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {column} < ? LIMIT ?)")
            else:
                q = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)"
            cur = self.execute(q, (before_ns, batch))
            n = max(cur.rowcount, 0)
            self.conn().commit()
            total += n
            if n < batch:
                return total
