"""Read a running instance's stats block, rings and snapshots (``obpipe stats``)."""
from __future__ import annotations

import math
import time

import psutil

from obpipe.ring import schema
from obpipe.ring.errors import HeaderMismatch
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.itch import counters as itch_counters
from obpipe.feed_sim.moldudp64 import rx_counters
from obpipe.feed_sim.wire import tracker_counters
from obpipe.ring.latency import N_BUCKETS, percentiles
from obpipe.ring.stats import (
    LATENCY_ROWS,
    ROW_ANALYSIS,
    ROW_BOOK,
    ROW_FEED,
    ROW_LATENCY,
    ROW_PUBLISHER,
    ROW_REDIS,
    ROW_TICKS,
    ROW_RX,
    ROW_SUPERVISOR,
    StatsBlock,
)

_STATE = schema.STATE_NAMES


class Status:
    """Attached read-only views of one instance."""

    def __init__(self, instance: str, symbols: list[str] | None = None):
        self.instance = instance
        self.stats = StatsBlock.attach(instance)
        try:
            self.md = Ring.attach(instance, "md", schema.MD_DTYPE)
        except HeaderMismatch:  # (per-order input: ITCH in MoldUDP64)
            self.md = Ring.attach(instance, "md", schema.MD_L3_DTYPE)
        self.events = Ring.attach(instance, "events", schema.EVENT_DTYPE)
        self.signals = Ring.attach(instance, "signals", schema.SIGNAL_DTYPE)
        self.snaps = SnapshotRegion.attach(instance, "snap")
        self.symbols = symbols or [f"sym{i}" for i in range(self.snaps.n_slots)]
        self._procs: dict[int, psutil.Process] = {}
        self._prev: tuple[float, dict] | None = None  # (time, counters) of the previous sample

    def _proc(self, pid: int, cpu_percent: bool = True) -> dict | None:
        """CPU% since the previous sample (first sample: since the call before), CPU
        seconds so far and the core it last ran on; None if the process is gone.
        ``cpu_percent=False``: no percentage (and no first-sample wait)."""
        if pid <= 0:
            return None
        try:
            p = self._procs.get(pid)
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                if cpu_percent:
                    p.cpu_percent(None)
                    time.sleep(0.05)
            with p.oneshot():
                t = p.cpu_times()
                d = {"pid": pid, "cpu_seconds": round(t.user + t.system, 3), "core": p.cpu_num(),
                     "affinity": p.cpu_affinity()}
                if cpu_percent:
                    d["cpu_percent"] = round(p.cpu_percent(None), 1)
                return d
        except (psutil.Error, AttributeError):
            self._procs.pop(pid, None)
            return None

    def collect(self, rates: bool = True, cpu_percent: bool = True) -> dict:
        """Everything ``obpipe stats --json`` prints.  ``rates=False``: no per-second
        rates (and no 0.25 s baseline wait on the first call); ``cpu_percent=False``: the
        processes' CPU seconds only (no wait): what a scrape wants."""
        if rates and self._prev is None:  # a baseline, so the first sample has rates too
            self._prev = (time.monotonic(), self._counts(self.stats.snapshot()))
            time.sleep(0.25)
        t_rows = time.monotonic()  # rates use the time of *this* snapshot (the calls below take time)
        rows = self.stats.snapshot()
        book, feed, sup = rows[ROW_BOOK], rows[ROW_FEED], rows[ROW_SUPERVISOR]
        out = {
            "instance": self.instance,
            "book": {"pid": int(book[schema.ST_PID]), "state": _STATE.get(int(book[schema.ST_STATE]), "?"),
                     "heartbeat_age_s": (round((time.monotonic_ns() - int(book[schema.ST_HEARTBEAT_NS])) / 1e9, 3)
                                         if book[schema.ST_HEARTBEAT_NS] else None),
                     **{n: int(book[i]) for i, n in schema.BOOK_STAT_NAMES.items()}},
            "feed": self._feed(feed),
            "rx": self._rx(rows[ROW_RX]),
            "supervisor": {n: int(sup[i]) for i, n in schema.SUP_STAT_NAMES.items()},
            "analysis": self._analysis(rows[ROW_ANALYSIS]),
            "publisher": self._publisher(rows[ROW_PUBLISHER]),
            "redis": self._redis(rows[ROW_REDIS]),
            "ticks": {**{n: int(rows[ROW_TICKS][i]) for i, n in schema.TICKS_STAT_NAMES.items()},
                      "state": _STATE.get(int(rows[ROW_TICKS][schema.ST_STATE]), "?")},
            "processes": {"supervisor": self._proc(int(self.stats.seg.header[0]["owner_pid"]), cpu_percent),
                          "rx": self._proc(int(rows[ROW_RX][schema.ST_PID]), cpu_percent),
                          "book": self._proc(int(book[schema.ST_PID]), cpu_percent),
                          "analysis": self._proc(int(rows[ROW_ANALYSIS][schema.ST_PID]), cpu_percent),
                          "publisher": self._proc(int(rows[ROW_PUBLISHER][schema.ST_PID]), cpu_percent),
                          "redis": self._proc(int(rows[ROW_REDIS][schema.ST_PID]), cpu_percent),
                          "ticks": self._proc(int(rows[ROW_TICKS][schema.ST_PID]), cpu_percent),
                          "feed": self._proc(int(feed[schema.ST_PID]), cpu_percent)},
            "latency_ns": percentiles(rows[ROW_LATENCY:ROW_LATENCY + LATENCY_ROWS].reshape(-1)),
            "rings": {name: {"fill": len(r), "high_water": r.high_water, "capacity": r.capacity}
                      for name, r in (("md", self.md), ("events", self.events), ("signals", self.signals))},
            "symbols": {},
        }
        for role, r in (("rx", ROW_RX), ("book", ROW_BOOK), ("analysis", ROW_ANALYSIS), ("publisher", ROW_PUBLISHER),
                        ("redis", ROW_REDIS), ("ticks", ROW_TICKS), ("feed", ROW_FEED)):
            p, hb = out["processes"][role], int(rows[r][schema.ST_HEARTBEAT_NS])
            if p is not None:
                p["heartbeat_age_s"] = round((time.monotonic_ns() - hb) / 1e9, 3) if hb else None
        for i, name in enumerate(self.symbols[: self.snaps.n_slots]):
            r = self.snaps.read(i, max_tries=100_000)
            out["symbols"][name] = snapshot_dict(r)
        out["snapshot_read_retries"] = self.snaps.retries
        if rates:
            out["rates"] = self._rates(rows, t_rows)
        return out

    def latency_buckets(self):
        """The receive->apply histogram's counts now: int64[N_BUCKETS] (``ring.latency``)."""
        rows = self.stats.snapshot()
        return rows[ROW_LATENCY:ROW_LATENCY + LATENCY_ROWS].reshape(-1)[:N_BUCKETS]

    _RATE_KEYS = (("feed_msgs_per_s", ROW_FEED, schema.ST_FEED_SENT),
                  ("rx_msgs_per_s", ROW_RX, schema.RX_TRACKER_BASE + WK.T_MESSAGES),
                  ("rx_packets_per_s", ROW_RX, schema.RX_TRACKER_BASE + WK.T_PACKETS),
                  ("applied_msgs_per_s", ROW_BOOK, schema.ST_BOOK_MSGS),
                  ("events_per_s", ROW_BOOK, schema.ST_BOOK_EVENTS),
                  ("analysed_events_per_s", ROW_ANALYSIS, schema.ST_AN_EVENTS),
                  ("signals_per_s", ROW_ANALYSIS, schema.ST_AN_SIGNALS),
                  ("published_per_s", ROW_PUBLISHER, schema.ST_PUB_DELIVERED),
                  ("gap_msgs_per_s", ROW_RX, schema.RX_TRACKER_BASE + WK.T_GAP_MSGS),
                  ("ring_drops_per_s", ROW_RX, schema.RX_TRACKER_BASE + WK.T_RING_DROPS))

    def _counts(self, rows) -> dict:
        return {k: int(rows[r, w]) for k, r, w in self._RATE_KEYS}

    def _rates(self, rows, now: float) -> dict:
        """Per-second rates since the previous sample (the first sample of a Status
        measures over a 0.25 s baseline taken by ``collect``)."""
        vals = self._counts(rows)
        t0, prev = self._prev
        self._prev = (now, vals)
        return {k: round((vals[k] - prev[k]) / max(now - t0, 1e-9)) for k in vals}

    @staticmethod
    def _feed(row) -> dict:
        d = {n: int(row[i]) for i, n in schema.FEED_STAT_NAMES.items()}
        d["state"] = _STATE.get(int(row[schema.ST_STATE]), "?")
        d["injected"] = {n: int(row[schema.ST_FEED_INJECTED + i]) for i, n in enumerate(schema.FEED_INJECTED_NAMES)}
        d["expected"] = {n: int(row[schema.ST_FEED_EXPECTED + i]) for i, n in enumerate(schema.FEED_EXPECTED_NAMES)}
        return d

    @staticmethod
    def _analysis(row) -> dict:
        d = {n: int(row[i]) for i, n in schema.ANALYSIS_STAT_NAMES.items()}
        d["state"] = _STATE.get(int(row[schema.ST_STATE]), "?")
        d["by_kind"] = {n: int(row[schema.ST_AN_BY_KIND + k - 1]) for k, n in schema.SIGNAL_KIND_NAMES.items()}
        return d

    @staticmethod
    def _publisher(row) -> dict:
        d = {n: int(row[i]) for i, n in schema.PUBLISHER_STAT_NAMES.items()}
        d["state"] = _STATE.get(int(row[schema.ST_STATE]), "?")
        return d

    @staticmethod
    def _redis(row) -> dict:
        d = {n: int(row[i]) for i, n in schema.REDIS_STAT_NAMES.items()}
        d["state"] = _STATE.get(int(row[schema.ST_STATE]), "?")
        return d

    @staticmethod
    def _rx(row) -> dict:
        d = {"pid": int(row[schema.ST_PID]), "state": _STATE.get(int(row[schema.ST_STATE]), "?"),
             "port": int(row[schema.ST_RX_PORT]), "kernel_drops": int(row[schema.ST_RX_KERNEL_DROPS]),
             **tracker_counters(row[schema.RX_TRACKER_BASE:schema.RX_TRACKER_BASE + WK.NT])}
        if row[schema.ST_RX_PROTOCOL] != schema.RX_PROTO_MOLDUDP64:
            d["protocol"] = "obpipe"
            return d
        m = rx_counters(row[schema.RX_MOLD_BASE:schema.RX_MOLD_BASE + schema.RX_MOLD_WORDS])
        it = itch_counters(row[schema.RX_ITCH_BASE:schema.RX_ITCH_BASE + schema.RX_ITCH_WORDS])
        # the common keys, as the MoldUDP64 receiver counts them (gap_messages: messages lost)
        d.update(protocol="moldudp64", packets=m["packets"], messages=m["messages"], gap_messages=m["messages_lost"],
                 duplicates=m["duplicate_messages"], out_of_order=m["late"], malformed=m["malformed"],
                 ring_drops=0, foreign_source=m["foreign_source"], foreign_session=m["wrong_session"],
                 implausible_seq=m["implausible_seq"], mold=m, itch=it,
                 ring_waits=int(row[schema.ST_RX_RING_WAITS]), stale_marks=int(row[schema.ST_RX_STALE_MARKS]))
        return d

    def close(self):
        for x in (self.stats, self.md, self.events, self.signals, self.snaps):
            x.close()


def _px(v) -> int | None:
    return None if int(v) == schema.NO_PX else int(v)


def _f(v) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


def snapshot_dict(r) -> dict:
    """A snapshot record as plain JSON-able values (None for empty / undefined)."""
    n = int(r["n_levels"])
    return {
        "bid_px_tick": _px(r["bid_px_tick"]), "bid_qty": int(r["bid_qty"]),
        "ask_px_tick": _px(r["ask_px_tick"]), "ask_qty": int(r["ask_qty"]),
        "spread_tick": _px(r["spread_tick"]), "imbalance": _f(r["imbalance"]),
        "depth_imbalance": _f(r["depth_imbalance"]), "microprice_tick": _f(r["microprice_tick"]),
        "last_trade_px_tick": _px(r["last_trade_px_tick"]), "last_trade_qty": int(r["last_trade_qty"]),
        "last_trade_side": int(r["last_trade_side"]), "msgs_applied": int(r["msgs_applied"]),
        "seq": int(r["seq"]), "ts_exch_ns": int(r["ts_exch_ns"]), "ts_apply_ns": int(r["ts_apply_ns"]),
        "version": int(r["version"]), "stale": bool(r["stale"]),
        "bids": [[int(p), int(q)] for p, q in zip(r["bid_px"][:n], r["bid_lvl_qty"][:n]) if int(p) != schema.NO_PX],
        "asks": [[int(p), int(q)] for p, q in zip(r["ask_px"][:n], r["ask_lvl_qty"][:n]) if int(p) != schema.NO_PX],
    }


def _render_analysis(a: dict) -> str:
    if a["state"] == "unused":
        return "  analysis off"
    kinds = "  ".join(f"{k} {v:,}" for k, v in a["by_kind"].items())
    return (f"  analysis events {a['events']:>13,}  signals {a['signals']:,} ({kinds})  summaries {a['summaries']:,}  "
            f"dropped(ring full) {a['signal_drops'] + a['summary_drops']:,}  {a['state']}")


def _render_publisher(p: dict, sup: dict) -> str:
    if p["state"] == "unused":
        return f"  kafka    off (signals discarded {sup['signals_discarded']:,})"
    up = {1: "up", 0: "DOWN"}.get(p["broker_up"], "?")
    return (f"  kafka    delivered {p['delivered']:>11,}  failed {p['failed']:,}  errors {p['kafka_errors']:,}  "
            f"broker {up}  pending {p['pending']:,}  in flight {p['in_flight']:,}  dropped "
            f"{p['signals_dropped'] + p['summaries_dropped']:,}  coalesced {p['coalesced']:,}  lost {p['lost']:,}  "
            f"{p['state']}" + (f"  (embedded broker 127.0.0.1:{sup['kafka_port']})" if sup["kafka_port"] else ""))


def _render_redis(r: dict) -> str:
    if r["state"] == "unused":
        return "  redis    off"
    up = {1: "up", 0: "DOWN"}.get(r["up"], "?")
    return (f"  redis    writes {r['redis_writes']:>13,}  publishes {r['publishes']:,}  errors {r['redis_errors']:,}  "
            f"{up}  reconnects {r['reconnects']:,}  rounds {r['rounds']:,}  {r['state']}")


def _render_ticks(t: dict, a: dict) -> str:
    if t["state"] == "unused":
        return "  ticks    off"
    return (f"  ticks    events {t['events']:>13,}  stored quotes {t['quotes']:,} trades {t['trades']:,} depth "
            f"{t['depth']:,}  pending {t['pending']:,}  dropped(ring full) {a.get('ticks_dropped', 0):,}  "
            f"lost {t['lost_at_restart']:,}  errors {t['errors']:,}  {t['state']}")


def _us(ns) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f} us"


def _render_mold(r: dict) -> list[str]:
    if r.get("protocol") != "moldudp64":
        return []
    m, it = r["mold"], r["itch"]
    return [f"  mold     gaps {m['gaps_seen']:,} healed {m['gaps_healed']:,} lost {m['gaps_lost']:,} "
            f"({m['messages_lost']:,} msgs; books marked stale {r['stale_marks']:,})  recovered {m['recovered']:,}  "
            f"requests {m['requests']:,}  round trip mean {_us(m['round_trip_mean_ns'])} max "
            f"{_us(m['round_trip_max_ns'])}  held {m['held']:,} (max {m['max_held']:,})",
            f"  itch     msgs {it['messages']:,}  book records {it['records']:,}  other {it['other']:,}  "
            f"skipped symbol {it['skipped_symbol']:,}  unknown locate {it['unknown_locate']:,}  "
            f"bad {it['unknown_type'] + it['bad_length'] + it['bad_field'] + it['truncated']:,}  "
            f"subtick {it['subtick']:,}  ring waits {r['ring_waits']:,}"]


def render(d: dict, levels: int = 3) -> str:
    """A human table of ``Status.collect()``."""
    b, f = d["book"], d["feed"]
    lines = [
        f"instance {d['instance']}  book writer pid {b['pid']} ({b['state']}, heartbeat "
        f"{'-' if b['heartbeat_age_s'] is None else format(b['heartbeat_age_s'], '.1f') + 's ago'})",
        f"  feed     sent {f['sent']:>14,}  datagrams {f['datagrams']:>10,}  {f['state']}"
        + (f"  {100 * f['sent'] / f['total']:.1f}% of {f['total']:,}" if f['total'] > 0 else ""),
        "  rates    " + "  ".join(f"{k.removesuffix('_per_s').replace('_', ' ')} {v:,}/s"
                                  for k, v in d.get("rates", {}).items()),
        f"  rx       pkts {d['rx']['packets']:>14,}  msgs {d['rx']['messages']:,}  gap_msgs {d['rx']['gap_messages']:,}  "
        f"dups {d['rx']['duplicates']:,}  out_of_order {d['rx']['out_of_order']:,}  malformed {d['rx']['malformed']:,}  "
        f"ring_drops {d['rx']['ring_drops']:,}  kernel_drops {d['rx']['kernel_drops']:,}",
        f"  rx admit session {d['rx']['session']}  foreign_source {d['rx']['foreign_source']:,}  "
        f"foreign_session {d['rx']['foreign_session']:,}  implausible_seq {d['rx']['implausible_seq']:,}  "
        f"accepted {d['rx']['accepted']:,}",
        *_render_mold(d["rx"]),
        f"  book     msgs {b['msgs']:>14,}  batches {b['batches']:>10,}  bad {b['bad_msgs']:,}  "
        f"out_of_ladder {b['out_of_ladder']:,}  recentres {b['recentres']:,}  evicted {b['evicted_levels']:,}  "
        f"underflow {b['qty_underflow']:,}  crossed {b['crossed']:,}  uncrossed {b['uncrossed_levels']:,}",
        f"  events   sent {b['events']:>14,}  dropped(ring full) {b['events_dropped']:>10,}  "
        f"snapshots {b['snapshots']:,}  trades {b['trades']:,}",
        _render_analysis(d["analysis"]),
        _render_publisher(d["publisher"], d["supervisor"]),
        _render_redis(d["redis"]),
        _render_ticks(d["ticks"], d["analysis"]),
        "  procs    " + "  ".join(
            f"{name} pid {p['pid']} cpu {p['cpu_percent']:.0f}% core {p['core']}"
            + (f" hb {p['heartbeat_age_s']:.2f}s" if p.get("heartbeat_age_s") is not None else "")
            for name, p in d["processes"].items() if p),
        f"  latency  receive->apply p50 {_us(d['latency_ns']['p50'])}  p99 {_us(d['latency_ns']['p99'])}  "
        f"p999 {_us(d['latency_ns']['p999'])}  ({d['latency_ns']['count']:,} msgs)",
        "  rings    " + "  ".join(f"{n} {r['fill']:,}/{r['capacity']:,} (high water {r['high_water']:,})"
                                  for n, r in d["rings"].items()),
        f"  {'symbol':<8}{'bid':>16}{'ask':>16}{'spread':>8}{'imb':>8}{'last trade':>18}{'msgs':>14}",
    ]
    for name, s in d["symbols"].items():
        bid = f"{s['bid_qty']}@{s['bid_px_tick']}" if s["bid_px_tick"] is not None else "-"
        ask = f"{s['ask_qty']}@{s['ask_px_tick']}" if s["ask_px_tick"] is not None else "-"
        last = f"{s['last_trade_qty']}@{s['last_trade_px_tick']}" if s["last_trade_px_tick"] is not None else "-"
        imb = f"{s['imbalance']:+.2f}" if s["imbalance"] is not None else "-"
        spread = s["spread_tick"] if s["spread_tick"] is not None else "-"
        lines.append(f"  {name:<8}{bid:>16}{ask:>16}{spread!s:>8}{imb:>8}{last:>18}{s['msgs_applied']:>14,}"
                     + ("  STALE (messages lost)" if s.get("stale") else ""))
    return "\n".join(lines)
