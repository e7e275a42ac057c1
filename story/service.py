"""The consumer: Kafka signals and summaries -> the database -> stories.

At-least-once, exactly-once in effect:

1. ``consume`` up to ``batch_max`` records from ``<prefix>.signals`` and
   ``<prefix>.summaries`` (a consumer group; auto-commit off);
2. parse and check each; a malformed record or an unknown schema version is counted,
   logged once per reason, and skipped (never a crash loop);
3. insert the batch in one transaction (idempotent: signals on their id, summaries on
   (symbol, start_ns)), then recompute the stories the new signals touch;
4. only then commit the offsets.

A kill between 3 and 4 re-delivers the batch after a restart, and the inserts ignore
what is already there: no gap, no duplicate.  With Kafka down the loop just finds no
records (librdkafka reconnects by itself); the HTTP API keeps answering from the
database.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from publisher.schema import SCHEMA_VERSION, SIGNAL_KINDS, SIGNAL_VALUE_FIELDS, topic_names

from .config import StoryConfig
from .narratives import stories
from .store import Store, signal_row, summary_row

COUNTER_NAMES = ("records", "signals_new", "signals_seen_before", "summaries_new", "summaries_seen_before",
                 "malformed", "unknown_version", "kafka_errors", "batches", "stories_written", "retention_deleted")


class Skip(ValueError):
    """A record the service cannot use; ``reason`` names why (raised by ``check``)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def check(topic_kind: str, raw: bytes) -> dict:
    """The message of one record, or ``Skip``.  Checks what storing needs: version,
    type, and the fields with their types."""
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Skip("not JSON", str(e)[:80]) from None
    if not isinstance(m, dict):
        raise Skip("not an object")
    if m.get("v") != SCHEMA_VERSION:
        raise Skip("unknown_version", f"v={m.get('v')!r}")
    if m.get("type") != topic_kind:
        raise Skip("wrong type", f"{m.get('type')!r} on the {topic_kind}s topic")
    try:
        if topic_kind == "signal":
            if m["kind"] not in SIGNAL_KINDS:
                raise Skip("unknown signal kind", repr(m["kind"]))
            if set(m["values"]) != set(SIGNAL_VALUE_FIELDS[m["kind"]]):
                raise Skip("bad values", m["kind"])
            row = signal_row(m)
            if not (isinstance(m["id"], str) and isinstance(m["symbol"], str) and isinstance(m["seq"], int)
                    and isinstance(m["ts_exch_ns"], int) and m["side"] in ("bid", "ask", None)):
                raise Skip("bad field types")
        else:
            row = summary_row(m)
            if not (isinstance(m["symbol"], str) and isinstance(m["start_ns"], int)):
                raise Skip("bad field types")
    except (KeyError, TypeError) as e:
        raise Skip("missing field", str(e)) from None
    m["_row"] = row
    return m


class StoryService:
    """Consumes, stores, narrates.  ``run(stop)`` until ``stop[0]``; ``counters`` live."""

    def __init__(self, cfg: StoryConfig, store: Store, bootstrap: str, log=None):
        self.cfg = cfg
        self.store = store
        self.bootstrap = bootstrap
        self.rules = cfg.narratives.rules()
        self.topics = dict(zip(topic_names(cfg.kafka.topic_prefix), ("signal", "summary")))
        self.counters = {k: 0 for k in COUNTER_NAMES}
        self.skipped: dict[str, int] = {}
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.broker_up: bool | None = None
        self._said: set[str] = set()

    # --- one batch -----------------------------------------------------------------------
    def handle(self, records: list[tuple[str, bytes]]) -> None:
        """Store a batch of (topic, value) records and update the stories they touch."""
        sigs, sums, msgs = [], [], []
        for topic, raw in records:
            kind = self.topics.get(topic)
            try:
                if kind is None:
                    raise Skip("unknown topic", topic)
                m = check(kind, raw)
            except Skip as e:
                key = "unknown_version" if e.reason == "unknown_version" else "malformed"
                self.counters[key] += 1
                self.skipped[e.reason] = self.skipped.get(e.reason, 0) + 1
                if e.reason not in self._said:
                    self._said.add(e.reason)
                    self.log(f"obpipe-story: skipping a record on {topic}: {e} (logged once per reason; counted)")
                continue
            (sigs if kind == "signal" else sums).append(m["_row"])
            if kind == "signal":
                msgs.append(m)
        self.counters["records"] += len(records)
        new_sig, new_sum = self.store.insert(sigs, sums)
        self.counters["signals_new"] += new_sig
        self.counters["signals_seen_before"] += len(sigs) - new_sig
        self.counters["summaries_new"] += new_sum
        self.counters["summaries_seen_before"] += len(sums) - new_sum
        self.counters["batches"] += 1
        if msgs:
            self.narrate(msgs)

    def narrate(self, msgs: list[dict]) -> None:
        """Recompute the stories of every (symbol, kind, side) these signals belong to,
        from the burst the earliest of them falls in."""
        first: dict[tuple, int] = {}
        for m in msgs:
            k = (m["symbol"], m["kind"], m["side"])
            first[k] = min(first.get(k, m["ts_exch_ns"]), m["ts_exch_ns"])
        gap = int(self.rules.merge_gap_ms * 1e6)
        for (sym, kind, side), t0 in sorted(first.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
            side_q = "side IS NULL" if side is None else "side = ?"
            sp = () if side is None else (side,)
            row = self.store.query(f"SELECT MIN(start_ns) FROM stories WHERE symbol = ? AND kind = ? AND {side_q} "
                                   "AND end_ns >= ? AND start_ns <= ?", (sym, kind, *sp, t0 - gap, t0))
            # every stored signal is in a story, so a signal within the gap before t0 is in one of these
            from_ns = min(t0, row[0][0]) if row and row[0][0] is not None else t0
            rows = self.store.query(f"SELECT id, ts_exch_ns, tick_size, vals FROM signals WHERE symbol = ? AND "
                                    f"kind = ? AND {side_q} AND ts_exch_ns >= ? ORDER BY ts_exch_ns, id",
                                    (sym, kind, *sp, from_ns))
            burst = [{"id": r[0], "ts_exch_ns": r[1], "tick_size": r[2], "values": json.loads(r[3])} for r in rows]
            new = stories(sym, kind, side, burst, self.rules, self.median_spread)
            self.store.replace_stories(sym, kind, side, from_ns, new)
            self.counters["stories_written"] += len(new)

    def median_spread(self, symbol: str, ts_ns: int) -> float | None:
        w = int(self.rules.spread_median_window_s * 1e9)
        rows = self.store.query("SELECT spread_mean FROM summaries WHERE symbol = ? AND start_ns >= ? AND "
                                "start_ns < ? AND spread_mean IS NOT NULL", (symbol, ts_ns - w, ts_ns))
        vals = [r[0] for r in rows]
        return statistics.median(vals) if vals else None

    def retention(self) -> int:
        keep = self.cfg.retention.keep_hours
        if keep <= 0:
            return 0
        row = self.store.query("SELECT MAX(ts_exch_ns) FROM signals")
        row2 = self.store.query("SELECT MAX(start_ns) FROM summaries")
        newest = max((r[0][0] for r in (row, row2) if r and r[0][0] is not None), default=None)
        if newest is None:
            return 0
        cut = newest - int(keep * 3600e9)
        n = sum(self.store.delete_older(t, c, cut, self.cfg.retention.batch)
                for t, c in (("signals", "ts_exch_ns"), ("summaries", "start_ns"), ("stories", "end_ns")))
        self.counters["retention_deleted"] += n
        return n

    # --- the loop ------------------------------------------------------------------------
    def consumer_config(self) -> dict:
        return {**self.cfg.kafka.client, "bootstrap.servers": self.bootstrap, "group.id": self.cfg.kafka.group_id,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "reconnect.backoff.max.ms": 1000,
                "topic.metadata.refresh.interval.ms": 2000, "error_cb": self._on_error}

    def _on_error(self, err) -> None:
        self.counters["kafka_errors"] += 1
        if self.broker_up is not False:
            self.broker_up = False
            self.log(f"obpipe-story: Kafka at {self.bootstrap} unreachable ({err.str()}); serving from the "
                     "database, retrying")

    def run(self, stop: list) -> None:
        from confluent_kafka import Consumer

        c = Consumer(self.consumer_config())
        c.subscribe(list(self.topics))
        next_retention = time.monotonic()
        try:
            while not stop[0]:
                batch = c.consume(self.cfg.kafka.batch_max, timeout=0.5)
                records = []
                for r in batch:
                    if r.error():
                        if r.error().code() != -191:  # _PARTITION_EOF
                            self._on_error(r.error())
                        continue
                    records.append((r.topic(), r.value() or b""))
                if records:
                    if self.broker_up is not True:
                        if self.broker_up is False:
                            self.log("obpipe-story: Kafka reachable again")
                        self.broker_up = True
                    self.handle(records)
                    c.commit(asynchronous=False)  # after the rows are committed: at-least-once
                if time.monotonic() >= next_retention:
                    self.retention()
                    next_retention = time.monotonic() + max(1.0, self.cfg.retention.interval_s)
        finally:
            c.close()


def resolve_bootstrap(cfg: StoryConfig, cli_value: str | None = None) -> str:
    """``--kafka``, else ``[kafka] bootstrap_servers``, else the running instance's
    embedded broker, else ``$OBPIPE_KAFKA``, else 127.0.0.1:9092."""
    if cli_value:
        return cli_value
    if cfg.kafka.bootstrap_servers:
        return cfg.kafka.bootstrap_servers
    from obpipe.cli import _instance_bootstrap  # reads the instance's stats segment; no engine process

    return _instance_bootstrap(cfg.kafka.instance) or os.environ.get("OBPIPE_KAFKA") or "127.0.0.1:9092"
