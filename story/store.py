"""Storage of signals, summaries and stories: SQLite (WAL, one file) or PostgreSQL.

One schema for both (docs/STORY.md).  Every insert is idempotent: signals on their id,
summaries on (symbol, start_ns), stories on their id (an upsert: a story grows while
its burst goes on).  ``Store.open(url)`` takes a file path / ``sqlite:///path`` or a
``postgresql://`` URL (psycopg 3), creates or migrates the schema, and hands out
queries with parameters bound by the driver (never formatted into SQL).

Times are feed time (the signals' ``ts_exch_ns``, the summaries' ``start_ns``),
integer UTC epoch nanoseconds; ``stored_ns`` on every table is the wall clock
(``time.time_ns()``) of the transaction that wrote the row: retention deletes by it, so
no message can move the clock that decides what is deleted.

Records the service cannot use are kept in ``rejects`` (raw bytes, reason, Kafka topic,
partition and offset; idempotent on those three).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA_VERSION = 2  # 2: stored_ns on every table (retention by ingestion time), the rejects table

#: Raw bytes of a rejected record: BLOB in SQLite, BYTEA in PostgreSQL.
_BYTES = {"sqlite": "BLOB", "postgresql": "BYTEA"}

_DDL = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS signals (
        id TEXT PRIMARY KEY, symbol TEXT NOT NULL, kind TEXT NOT NULL, side TEXT,
        seq BIGINT NOT NULL, ts_exch_ns BIGINT NOT NULL, ts_detect_ns BIGINT NOT NULL,
        tick_size DOUBLE PRECISION NOT NULL, bid_tick BIGINT, ask_tick BIGINT,
        bid_qty BIGINT NOT NULL, ask_qty BIGINT NOT NULL, vals TEXT NOT NULL, stored_ns BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS signals_symbol_ts ON signals (symbol, ts_exch_ns)",
    "CREATE INDEX IF NOT EXISTS signals_kind_ts ON signals (kind, ts_exch_ns)",
    "CREATE INDEX IF NOT EXISTS signals_ts ON signals (ts_exch_ns)",
    """CREATE TABLE IF NOT EXISTS summaries (
        symbol TEXT NOT NULL, start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, seq BIGINT NOT NULL,
        tick_size DOUBLE PRECISION NOT NULL, bid_tick BIGINT, ask_tick BIGINT, mid_tick DOUBLE PRECISION,
        spread_min DOUBLE PRECISION, spread_mean DOUBLE PRECISION, spread_max DOUBLE PRECISION,
        imb_tob DOUBLE PRECISION, imb_depth DOUBLE PRECISION, volume_buy BIGINT NOT NULL,
        volume_sell BIGINT NOT NULL, trades BIGINT NOT NULL, messages BIGINT NOT NULL,
        stored_ns BIGINT NOT NULL, PRIMARY KEY (symbol, start_ns))""",
    "CREATE INDEX IF NOT EXISTS summaries_ts ON summaries (start_ns)",
    """CREATE TABLE IF NOT EXISTS stories (
        id TEXT PRIMARY KEY, symbol TEXT NOT NULL, kind TEXT NOT NULL, side TEXT,
        start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, severity DOUBLE PRECISION NOT NULL,
        text TEXT NOT NULL, signal_ids TEXT NOT NULL, stored_ns BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stories_symbol_ts ON stories (symbol, start_ns)",
    "CREATE INDEX IF NOT EXISTS stories_kind_ts ON stories (kind, start_ns)",
    "CREATE INDEX IF NOT EXISTS stories_ts ON stories (start_ns)",
    """CREATE TABLE IF NOT EXISTS rejects (
        topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL,
        reason TEXT NOT NULL, detail TEXT NOT NULL, raw {BYTES} NOT NULL, stored_ns BIGINT NOT NULL,
        PRIMARY KEY (topic, kafka_partition, kafka_offset))""",
    "CREATE INDEX IF NOT EXISTS rejects_reason ON rejects (reason)",
] + [f"CREATE INDEX IF NOT EXISTS {t}_stored ON {t} (stored_ns)" for t in ("signals", "summaries", "stories", "rejects")]

#: Tables retention deletes from (by ``stored_ns``).
RETAINED = ("signals", "summaries", "stories", "rejects")

SIGNAL_COLS = ("id", "symbol", "kind", "side", "seq", "ts_exch_ns", "ts_detect_ns", "tick_size", "bid_tick",
               "ask_tick", "bid_qty", "ask_qty", "vals")
SUMMARY_COLS = ("symbol", "start_ns", "end_ns", "seq", "tick_size", "bid_tick", "ask_tick", "mid_tick",
                "spread_min", "spread_mean", "spread_max", "imb_tob", "imb_depth", "volume_buy", "volume_sell",
                "trades", "messages")
STORY_COLS = ("id", "symbol", "kind", "side", "start_ns", "end_ns", "severity", "text", "signal_ids")
REJECT_COLS = ("topic", "kafka_partition", "kafka_offset", "reason", "detail", "raw")


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

    #: SQLite's synchronous mode. FULL: a transaction is durable when its commit returns, so
    #: a power loss cannot roll back rows whose Kafka offsets were committed after it (WAL
    #: with NORMAL could: a permanent gap).  Cost measured in docs/STORY.md.  A class
    #: attribute so that bench/story.py can compare NORMAL in the same run.
    sqlite_synchronous = "FULL"

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
                c.execute(f"PRAGMA synchronous={self.sqlite_synchronous}")
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
        cur.execute(_DDL[0])
        cur.execute(self.sql("SELECT value FROM meta WHERE key = ?"), ("schema_version",))
        row = cur.fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            c.rollback()
            raise StoreError(f"{self.url}: schema version {row[0]} is newer than this service's {SCHEMA_VERSION}")
        if row is not None and int(row[0]) == 1:
            # version 1 -> 2: rows already there count as stored now (retention keeps them keep_hours more)
            for table in ("signals", "summaries", "stories"):
                cur.execute(f"ALTER TABLE {table} ADD COLUMN stored_ns BIGINT NOT NULL DEFAULT {time.time_ns()}")
        for ddl in _DDL[1:]:
            cur.execute(ddl.replace("{BYTES}", _BYTES[self.kind]))
        if row is None:
            cur.execute(self.sql("INSERT INTO meta (key, value) VALUES (?, ?)"), ("schema_version", str(SCHEMA_VERSION)))
        else:
            cur.execute(self.sql("UPDATE meta SET value = ? WHERE key = ?"), (str(SCHEMA_VERSION), "schema_version"))
        c.commit()

    # --- writes (one transaction per call) ---------------------------------------------
    def _insert_q(self, table: str, cols: tuple) -> str:
        return self.sql(f"INSERT INTO {table} ({', '.join(cols)}, stored_ns) VALUES "
                        f"({', '.join('?' * (len(cols) + 1))}) ON CONFLICT DO NOTHING")

    def insert(self, signals: list[tuple], summaries: list[tuple], rejects: list[tuple] = (), commit: bool = True,
               signal_is_new: list | None = None) -> tuple[int, int]:
        """Insert rows (signals, summaries, and ``REJECT_COLS`` rows of rejected records),
        ignoring ones already stored, stamped with the wall clock; commit unless told not
        to (one transaction).  Returns (new signals, new summaries); appends one bool per
        signal (stored now, not before) to ``signal_is_new`` if given."""
        c = self.conn()
        cur = c.cursor()
        now = time.time_ns()
        new = [0, 0]
        for i, (table, cols, rows) in enumerate((("signals", SIGNAL_COLS, signals), ("summaries", SUMMARY_COLS, summaries),
                                                 ("rejects", REJECT_COLS, rejects))):
            q = self._insert_q(table, cols)
            for r in rows:
                cur.execute(q, (*r, now))
                if i < 2:
                    new[i] += max(cur.rowcount, 0)
                if i == 0 and signal_is_new is not None:
                    signal_is_new.append(cur.rowcount > 0)
        if commit:
            c.commit()
        return new[0], new[1]

    def replace_stories(self, symbol: str, kind: str, side, from_ns: int, to_ns: int | None, stories: list[tuple],
                        commit: bool = True) -> None:
        """Stories of (symbol, kind, side) starting in [``from_ns``, ``to_ns``] (None: no
        end) are replaced by ``stories`` (recomputed from the signals); commit unless
        told not to."""
        c = self.conn()
        cur = c.cursor()
        side_q = "side IS NULL" if side is None else "side = ?"
        end_q, end_p = ("", ()) if to_ns is None else (" AND start_ns <= ?", (to_ns,))
        cur.execute(self.sql(f"DELETE FROM stories WHERE symbol = ? AND kind = ? AND {side_q} AND start_ns >= ?{end_q}"),
                    (symbol, kind, *(() if side is None else (side,)), from_ns, *end_p))
        q = self.sql(f"INSERT INTO stories ({', '.join(STORY_COLS)}, stored_ns) VALUES "
                     f"({', '.join('?' * (len(STORY_COLS) + 1))}) "
                     "ON CONFLICT (id) DO UPDATE SET end_ns = excluded.end_ns, severity = excluded.severity, "
                     "text = excluded.text, signal_ids = excluded.signal_ids, start_ns = excluded.start_ns, "
                     "stored_ns = excluded.stored_ns")
        now = time.time_ns()
        for s in stories:
            cur.execute(q, (*s, now))
        if commit:
            c.commit()

    def rejects(self, limit: int = 20) -> tuple[int, list[dict]]:
        """(how many rejects are kept, the newest ``limit`` of them as dicts with the raw
        bytes)."""
        n = self.query("SELECT COUNT(*) FROM rejects")[0][0]
        rows = self.query("SELECT topic, kafka_partition, kafka_offset, reason, detail, raw, stored_ns FROM rejects "
                          "ORDER BY stored_ns DESC, topic, kafka_partition, kafka_offset DESC LIMIT ?", (limit,))
        keys = ("topic", "partition", "offset", "reason", "detail", "raw", "stored_ns")
        return n, [dict(zip(keys, (*r[:5], bytes(r[5]), r[6]))) for r in rows]

    def delete_older(self, table: str, before_ns: int, batch: int = 5000) -> int:
        """Retention: delete rows stored (``stored_ns``, wall clock) before ``before_ns``
        in batches of ``batch`` (short transactions: readers and the consumer are never
        blocked for long)."""
        if table not in RETAINED:
            raise ValueError(f"no retention for {table}")
        column = "stored_ns"
        key = {"summaries": "symbol, start_ns", "rejects": "topic, kafka_partition, kafka_offset"}.get(table, "id")
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
