"""The consumer: Kafka signals and summaries -> the database -> stories.

At-least-once, exactly-once in effect:

1. ``consume`` up to ``batch_max`` records from ``<prefix>.signals`` and
   ``<prefix>.summaries`` (a consumer group; auto-commit off);
2. parse and check each completely (``check``: the JSON Schema with jsonschema-rs, the
   id rule, integers written as integers, plausible timestamps); a record that fails is
   a reject: counted, logged once per reason, and kept with its raw bytes (never a
   crash loop, never a stored bad row);
3. insert the batch and its rejects in one transaction (idempotent: signals on their
   id, summaries on (symbol, start_ns), rejects on (topic, partition, offset)), then
   recompute the stories the new signals touch;
4. only then commit the offsets.

A kill between 3 and 4 re-delivers the batch after a restart, and the inserts ignore
what is already there: no gap, no duplicate.  With Kafka down the loop just finds no
records (librdkafka reconnects by itself); the HTTP API keeps answering from the
database.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time

import jsonschema_rs
import orjson

from obpipe.publisher.schema import SCHEMA_VERSION, load_json_schema, signal_id, topic_names

from obpipe.story.config import StoryConfig
from obpipe.story.narratives import stories
from obpipe.story.store import RETAINED, Store, signal_row, summary_row

#: ``records`` = signals_new + signals_seen_before + summaries_new + summaries_seen_before + rejected;
#: ``rejected`` = malformed + unknown_version + implausible_time (each kept in the rejects table).
COUNTER_NAMES = ("records", "signals_new", "signals_seen_before", "summaries_new", "summaries_seen_before",
                 "rejected", "malformed", "unknown_version", "implausible_time", "kafka_errors", "batches",
                 "stories_written", "retention_deleted")

#: Timestamps outside [1990-01-01, now + 1 day] (UTC epoch ns) are implausible: rejected, never stored.
MIN_PLAUSIBLE_NS = 631_152_000 * 10**9
MAX_AHEAD_NS = 86_400 * 10**9
_TIME_FIELDS = {"signal": ("ts_exch_ns", "ts_detect_ns"), "summary": ("start_ns", "end_ns", "ts_emit_ns")}


class Skip(ValueError):
    """A record the service cannot use; ``reason`` names why (raised by ``check``)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _validator(msg_type: str):
    """A jsonschema-rs validator for one message type (its ``$defs`` entry), built once."""
    s = load_json_schema()
    return jsonschema_rs.validator_for({"$schema": s["$schema"], "$defs": s["$defs"], "$ref": f"#/$defs/{msg_type}"})


def _int_paths(msg_type: str) -> list[tuple[str, ...]]:
    """The paths of the integer fields of one message type, read from the schema (for
    signals, ``values`` fields under ``("values", kind, name)``)."""
    defs = load_json_schema()["$defs"]

    def node(x):
        return defs[x["$ref"].rsplit("/", 1)[1]] if "$ref" in x else x

    def is_int(x):
        x = node(x)
        return x.get("type") == "integer" or any(is_int(a) for a in x.get("anyOf", ()))

    def walk(x, path):
        x = node(x)
        for k, sub in x.get("properties", {}).items():
            if is_int(sub):
                yield (*path, k)
            elif "properties" in node(sub):
                yield from walk(sub, (*path, k))
    out = list(walk(defs[msg_type], ()))
    if msg_type == "signal":
        out += [("values", d[len("values_"):], k) for d in defs if d.startswith("values_")
                for (k,) in walk(defs[d], ())]
    return out


_VALIDATORS = {t: _validator(t) for t in ("signal", "summary")}
_INT_PATHS = {t: _int_paths(t) for t in ("signal", "summary")}


def _not_int(m: dict, msg_type: str) -> str | None:
    """The first integer field written as a float (JSON Schema calls 1.0 an integer; a
    BIGINT column and the id rule do not), or None."""
    for path in _INT_PATHS[msg_type]:
        if path[0] == "values":
            if path[1] != m["kind"]:
                continue
            x = m["values"][path[2]]
            path = (path[0], path[2])
        else:
            x = m
            for k in path:
                x = x[k]
        if x is not None and type(x) is not int:
            return "/".join(path)
    return None


def check(topic_kind: str, raw: bytes, now_ns: int | None = None) -> dict:
    """The message of one record, or ``Skip`` naming why not: not JSON (orjson: NaN,
    infinities and invalid UTF-8 are not JSON), not version 1, the wrong type for its
    topic, not valid under publisher/obpipe.v1.schema.json (bounds, shapes, symbol
    charset), an integer written as a float, an id not following the id rule, or a
    timestamp outside [1990-01-01, ``now_ns`` + 1 day]."""
    try:
        m = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Skip("not JSON", str(e)[:80]) from None
    if not isinstance(m, dict):
        raise Skip("not an object")
    if m.get("v") != SCHEMA_VERSION or type(m.get("v")) is not int:
        raise Skip("unknown_version", f"v={m.get('v')!r}"[:80])
    if m.get("type") != topic_kind:
        raise Skip("wrong type", f"{m.get('type')!r} on the {topic_kind}s topic"[:120])
    v = _VALIDATORS[topic_kind]
    if not v.is_valid(m):
        err = next(iter(v.iter_errors(m)))
        where = "/".join(map(str, err.instance_path)) or "top level"
        raise Skip("schema", f"{where}: {err.message}"[:200])
    bad = _not_int(m, topic_kind)
    if bad:
        raise Skip("schema", f"{bad}: an integer written as a float")
    if topic_kind == "signal":
        if m["id"] != signal_id(m["symbol"], m["seq"], m["kind"], m["side"]):
            raise Skip("bad id", f"{m['id']!r} is not symbol-seq-kind[-side]")
        row = signal_row(m)
    else:
        if m["end_ns"] < m["start_ns"]:
            raise Skip("schema", "end_ns before start_ns")
        row = summary_row(m)
    now = time.time_ns() if now_ns is None else now_ns
    for f in _TIME_FIELDS[topic_kind]:
        if not MIN_PLAUSIBLE_NS <= m[f] <= now + MAX_AHEAD_NS:
            raise Skip("implausible time", f"{f}={m[f]} (UTC epoch ns, 1990-01-01 .. now + 1 day)")
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
        self._local_offsets = itertools.count(1)

    # --- one batch -----------------------------------------------------------------------
    def handle(self, records: list[tuple]) -> None:
        """Store a batch of (topic, partition, offset, value) records (or (topic, value):
        not from Kafka, given partition -1 and offsets counting down from -1) and their
        rejects, and update the stories the new signals touch."""
        sigs, sums, msgs, rejects = [], [], [], []
        now = time.time_ns()
        for rec in records:
            topic, part, off, raw = rec if len(rec) == 4 else (rec[0], -1, -next(self._local_offsets), rec[1])
            kind = self.topics.get(topic)
            try:
                if kind is None:
                    raise Skip("unknown topic", topic)
                m = check(kind, raw, now)
            except Skip as e:
                key = {"unknown_version": "unknown_version", "implausible time": "implausible_time"}.get(e.reason,
                                                                                                         "malformed")
                self.counters[key] += 1
                self.counters["rejected"] += 1
                self.skipped[e.reason] = self.skipped.get(e.reason, 0) + 1
                rejects.append((topic, part, off, e.reason, str(e)[:300], bytes(raw)))
                if e.reason not in self._said:
                    self._said.add(e.reason)
                    self.log(f"obpipe-story: rejecting a record on {topic}: {str(e)[:300]!r} (logged once per "
                             "reason; counted; kept in the rejects table)")
                continue
            (sigs if kind == "signal" else sums).append(m["_row"])
            if kind == "signal":
                msgs.append(m)
        self.counters["records"] += len(records)
        is_new: list[bool] = []
        # one transaction: the rows, the rejects and the stories of the new signals (so a
        # signal stored is a signal narrated, and a re-delivered one needs nothing)
        new_sig, new_sum = self.store.insert(sigs, sums, rejects, commit=False, signal_is_new=is_new)
        self.counters["signals_new"] += new_sig
        self.counters["signals_seen_before"] += len(sigs) - new_sig
        self.counters["summaries_new"] += new_sum
        self.counters["summaries_seen_before"] += len(sums) - new_sum
        self.counters["batches"] += 1
        self.narrate([m for m, new in zip(msgs, is_new) if new], commit=False)
        self.store.conn().commit()

    def narrate(self, msgs: list[dict], commit: bool = True) -> None:
        """Recompute the stories these newly stored signals touch.  Per (symbol, kind,
        side): from the start of the burst the earliest new signal falls in, read
        forward to the first burst boundary past which no new signal is near, replace
        the stories starting in that range; repeat for new signals further on.  So a
        late or re-sent old signal costs its burst, not every signal after it."""
        groups: dict[tuple, list[int]] = {}
        for m in msgs:
            groups.setdefault((m["symbol"], m["kind"], m["side"]), []).append(m["ts_exch_ns"])
        gap = int(self.rules.merge_gap_ms * 1e6)
        ex = self.store.execute
        for (sym, kind, side), new_ts in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
            side_q = "side IS NULL" if side is None else "side = ?"
            sp = () if side is None else (side,)
            pending, i = sorted(new_ts), 0
            while i < len(pending):
                t0 = pending[i]
                # every stored signal is in a story, so a signal within the gap before t0 is in the
                # story starting last at or before t0 (bursts are disjoint: at most one is that near)
                row = ex(f"SELECT start_ns, end_ns FROM stories WHERE symbol = ? AND kind = ? AND {side_q} "
                         "AND start_ns <= ? ORDER BY start_ns DESC LIMIT 1", (sym, kind, *sp, t0)).fetchall()
                from_ns = min(t0, row[0][0]) if row and row[0][1] >= t0 - gap else t0
                cur = ex(f"SELECT id, ts_exch_ns, tick_size, vals FROM signals WHERE symbol = ? AND "
                         f"kind = ? AND {side_q} AND ts_exch_ns >= ? ORDER BY ts_exch_ns, id", (sym, kind, *sp, from_ns))
                sigs: list[dict] = []
                for r in cur:
                    if sigs and r[1] - sigs[-1]["ts_exch_ns"] > gap and sigs[-1]["ts_exch_ns"] >= t0:  # a boundary
                        while i < len(pending) and pending[i] <= sigs[-1]["ts_exch_ns"]:
                            i += 1
                        if i == len(pending) or pending[i] > r[1]:  # no new signal in the next burst's start
                            break
                    sigs.append({"id": r[0], "ts_exch_ns": r[1], "tick_size": r[2], "values": json.loads(r[3])})
                else:
                    i = len(pending)
                cur.close()
                if not sigs:  # (cannot happen: t0's signal is stored in this transaction)
                    i += 1
                    continue
                new = stories(sym, kind, side, sigs, self.rules, self.median_spread)
                self.store.replace_stories(sym, kind, side, from_ns, sigs[-1]["ts_exch_ns"], new, commit=False)
                self.counters["stories_written"] += len(new)
        if commit:
            self.store.conn().commit()

    def median_spread(self, symbol: str, ts_ns: int) -> float | None:
        w = int(self.rules.spread_median_window_s * 1e9)
        rows = self.store.execute("SELECT spread_mean FROM summaries WHERE symbol = ? AND start_ns >= ? AND "
                                  "start_ns < ? AND spread_mean IS NOT NULL", (symbol, ts_ns - w, ts_ns)).fetchall()
        vals = [r[0] for r in rows]
        return statistics.median(vals) if vals else None

    def retention(self, now_ns: int | None = None) -> int:
        """Delete the rows (signals, summaries, stories, rejects) stored more than
        ``keep_hours`` ago by the wall clock (``stored_ns``): no message's timestamp
        moves this clock, and a replay of an old day is kept as long as a live one."""
        keep = self.cfg.retention.keep_hours
        if keep <= 0:
            return 0
        cut = (time.time_ns() if now_ns is None else now_ns) - int(keep * 3600e9)
        n = sum(self.store.delete_older(t, cut, self.cfg.retention.batch) for t in RETAINED)
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
                    records.append((r.topic(), r.partition(), r.offset(), r.value() or b""))
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
    from obpipe.ring.instance import instance_bootstrap  # reads the instance's stats segment; no engine process

    return instance_bootstrap(cfg.kafka.instance) or os.environ.get("OBPIPE_KAFKA") or "127.0.0.1:9092"
