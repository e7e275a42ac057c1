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
from obpipe.ring.runtime import sched_policy
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
                     "affinity": p.cpu_affinity(), "sched": sched_policy(pid)}
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


# -- rendering: ``obpipe stats`` as plain text (a pipe, a file) and as a terminal view ---
#
# One set of line builders serves both.  A line is a part name and a list of
# (text, style) segments: the plain text is the texts joined (no escape codes: what a
# pipe, a log and the tests that parse it read), the terminal view (rich) shows the same
# words, styled.  A style marks trouble only: data lost (drops, books marked stale) in
# red, sequence gaps in yellow, a heartbeat older than it should be yellow then red.

Seg = tuple[str, "str | None"]

DROP = "bold red"  #: messages or signals lost: a ring full, the kernel, a failed delivery, a stale book
GAP = "bold yellow"  #: messages missing from the feed's sequence (healed or not)
WARN = "yellow"  #: worth a look (a heartbeat late, a ring that was once full, errors)
_STATE_STYLE = {"running": "green", "starting": "cyan", "stopped": "dim", "unused": "dim"}
HEARTBEAT_WARN_S = 1.0  #: a running part's heartbeat older than this (seconds) is shown late (WARN)
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"  #: a sparkline's eight heights, lowest first


def _bad(v: int, style: str = DROP, fmt: str = ",") -> Seg:
    """A count that is trouble when non-zero: ``style`` then."""
    return format(v, fmt), (style if v else None)


def _sched_note(p: dict) -> str:
    """`` fifo:10`` / `` idle`` after a process that is not scheduled normally."""
    return f" {p['sched']}" if p.get("sched") not in (None, "", "normal") else ""


def _hb_style(age_s: float | None, state: str | None, stale_s: float) -> str | None:
    """A running part's heartbeat age (seconds): WARN from ``HEARTBEAT_WARN_S``, DROP
    from ``stale_s`` (a part not running has no heartbeat to keep)."""
    if age_s is None or state not in (None, "running"):
        return None
    return DROP if age_s >= stale_s else WARN if age_s >= HEARTBEAT_WARN_S else None


def _analysis_segs(a: dict) -> list[Seg]:
    if a["state"] == "unused":
        return [("off", None)]
    kinds = "  ".join(f"{k} {v:,}" for k, v in a["by_kind"].items())
    return [(f"events {a['events']:>13,}  signals {a['signals']:,} ({kinds})  summaries {a['summaries']:,}  "
             "dropped(ring full) ", None), _bad(a["signal_drops"] + a["summary_drops"]), ("  ", None),
            (a["state"], _STATE_STYLE.get(a["state"]))]


def _publisher_segs(p: dict, sup: dict) -> list[Seg]:
    if p["state"] == "unused":
        return [(f"off (signals discarded {sup['signals_discarded']:,})", None)]
    up = {1: "up", 0: "DOWN"}.get(p["broker_up"], "?")
    return [(f"delivered {p['delivered']:>11,}  failed ", None), _bad(p["failed"]), ("  errors ", None),
            _bad(p["kafka_errors"], WARN), ("  broker ", None), (up, DROP if up == "DOWN" else None),
            (f"  pending {p['pending']:,}  in flight {p['in_flight']:,}  dropped ", None),
            _bad(p["signals_dropped"] + p["summaries_dropped"]), (f"  coalesced {p['coalesced']:,}  lost ", None),
            _bad(p["lost"]), ("  ", None), (p["state"], _STATE_STYLE.get(p["state"])),
            ((f"  (embedded broker 127.0.0.1:{sup['kafka_port']})" if sup["kafka_port"] else ""), None)]


def _redis_segs(r: dict) -> list[Seg]:
    if r["state"] == "unused":
        return [("off", None)]
    up = {1: "up", 0: "DOWN"}.get(r["up"], "?")
    return [(f"writes {r['redis_writes']:>13,}  publishes {r['publishes']:,}  errors ", None),
            _bad(r["redis_errors"], WARN), ("  ", None), (up, DROP if up == "DOWN" else None),
            (f"  reconnects {r['reconnects']:,}  rounds {r['rounds']:,}  ", None),
            (r["state"], _STATE_STYLE.get(r["state"]))]


def _ticks_segs(t: dict, a: dict) -> list[Seg]:
    if t["state"] == "unused":
        return [("off", None)]
    return [(f"events {t['events']:>13,}  stored quotes {t['quotes']:,} trades {t['trades']:,} depth "
             f"{t['depth']:,}  pending {t['pending']:,}  dropped(ring full) ", None), _bad(a.get("ticks_dropped", 0)),
            ("  lost ", None), _bad(t["lost_at_restart"]), ("  errors ", None), _bad(t["errors"], WARN), ("  ", None),
            (t["state"], _STATE_STYLE.get(t["state"]))]


def _us(ns) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f} us"


def _mold_lines(r: dict) -> list[tuple[str, list[Seg]]]:
    if r.get("protocol") != "moldudp64":
        return []
    m, it = r["mold"], r["itch"]
    return [("mold", [("gaps ", None), _bad(m["gaps_seen"], GAP), (f" healed {m['gaps_healed']:,} lost ", None),
                      _bad(m["gaps_lost"]), (" (", None), _bad(m["messages_lost"]),
                      (" msgs; books marked stale ", None), _bad(r["stale_marks"]),
                      (f")  recovered {m['recovered']:,}  requests {m['requests']:,}  round trip mean "
                       f"{_us(m['round_trip_mean_ns'])} max {_us(m['round_trip_max_ns'])}  held {m['held']:,} "
                       f"(max {m['max_held']:,})", None)]),
            ("itch", [(f"msgs {it['messages']:,}  book records {it['records']:,}  other {it['other']:,}  "
                       f"skipped symbol {it['skipped_symbol']:,}  unknown locate {it['unknown_locate']:,}  bad ", None),
                      _bad(it["unknown_type"] + it["bad_length"] + it["bad_field"] + it["truncated"], WARN),
                      (f"  subtick {it['subtick']:,}  ring waits {r['ring_waits']:,}", None)])]


def _rate_name(key: str) -> str:
    return key.removesuffix("_per_s").replace("_", " ")


def _rate_style(key: str, v: int) -> str | None:
    """The loss rates are trouble when non-zero."""
    if v <= 0:
        return None
    return DROP if key == "ring_drops_per_s" else GAP if key == "gap_msgs_per_s" else None


def _header(d: dict, stale_s: float) -> list[Seg]:
    b = d["book"]
    age = b["heartbeat_age_s"]
    return [(f"instance {d['instance']}  book writer pid {b['pid']} (", None),
            (b["state"], _STATE_STYLE.get(b["state"])),
            (", heartbeat ", None), ("-" if age is None else format(age, ".1f") + "s ago",
                                     _hb_style(age, b["state"], stale_s)), (")", None)]


def _part_lines(d: dict, stale_s: float) -> list[tuple[str, list[Seg]]]:
    """Every line of the report but the header and the symbols: (part, segments)."""
    b, f, rx = d["book"], d["feed"], d["rx"]
    states = _part_states(d)
    return [
        ("feed", [(f"sent {f['sent']:>14,}  datagrams {f['datagrams']:>10,}  ", None),
                  (f["state"], _STATE_STYLE.get(f["state"])),
                  ((f"  {100 * f['sent'] / f['total']:.1f}% of {f['total']:,}" if f["total"] > 0 else ""), None)]),
        ("rates", [s for i, (k, v) in enumerate(d.get("rates", {}).items())
                   for s in ((("  " if i else "") + f"{_rate_name(k)} ", None), (f"{v:,}/s", _rate_style(k, v)))]),
        ("rx", [(f"pkts {rx['packets']:>14,}  msgs {rx['messages']:,}  gap_msgs ", None), _bad(rx["gap_messages"], GAP),
                (f"  dups {rx['duplicates']:,}  out_of_order {rx['out_of_order']:,}  malformed {rx['malformed']:,}  "
                 "ring_drops ", None), _bad(rx["ring_drops"]), ("  kernel_drops ", None), _bad(rx["kernel_drops"])]),
        ("rx admit", [(f"session {rx['session']}  foreign_source {rx['foreign_source']:,}  foreign_session "
                       f"{rx['foreign_session']:,}  implausible_seq {rx['implausible_seq']:,}  accepted "
                       f"{rx['accepted']:,}", None)]),
        *_mold_lines(rx),
        ("book", [(f"msgs {b['msgs']:>14,}  batches {b['batches']:>10,}  bad ", None), _bad(b["bad_msgs"], WARN),
                  (f"  out_of_ladder {b['out_of_ladder']:,}  recentres {b['recentres']:,}  evicted "
                   f"{b['evicted_levels']:,}  underflow {b['qty_underflow']:,}  crossed {b['crossed']:,}  uncrossed "
                   f"{b['uncrossed_levels']:,}", None)]),
        ("events", [(f"sent {b['events']:>14,}  dropped(ring full) ", None), _bad(b["events_dropped"], fmt=">10,"),
                    (f"  snapshots {b['snapshots']:,}  trades {b['trades']:,}", None)]),
        ("analysis", _analysis_segs(d["analysis"])),
        ("kafka", _publisher_segs(d["publisher"], d["supervisor"])),
        ("redis", _redis_segs(d["redis"])),
        ("ticks", _ticks_segs(d["ticks"], d["analysis"])),
        ("procs", [s for i, (name, p) in enumerate((n, p) for n, p in d["processes"].items() if p)
                   for s in (((("  " if i else "") + f"{name} pid {p['pid']} cpu {p['cpu_percent']:.0f}% core "
                               f"{p['core']}" + _sched_note(p)), None),
                             *(((" hb ", None), (f"{p['heartbeat_age_s']:.2f}s",
                                                 _hb_style(p["heartbeat_age_s"], states.get(name), stale_s)))
                               if p.get("heartbeat_age_s") is not None else ()))]),
        ("latency", [(f"receive->apply p50 {_us(d['latency_ns']['p50'])}  p99 {_us(d['latency_ns']['p99'])}  "
                      f"p999 {_us(d['latency_ns']['p999'])}  ({d['latency_ns']['count']:,} msgs)", None)]),
        ("rings", [s for i, (n, r) in enumerate(d["rings"].items())
                   for s in (((("  " if i else "") + f"{n} {r['fill']:,}/{r['capacity']:,} (high water "), None),
                             (f"{r['high_water']:,}", WARN if r["high_water"] >= r["capacity"] else None),
                             (")", None))]),
    ]


def _part_states(d: dict) -> dict[str, str]:
    """Each process's part state ("running", ...) by its ``processes`` key (the
    supervisor has none)."""
    return {k: d[sec]["state"] for k, sec in (("rx", "rx"), ("book", "book"), ("analysis", "analysis"),
                                              ("publisher", "publisher"), ("redis", "redis"), ("ticks", "ticks"),
                                              ("feed", "feed")) if isinstance(d.get(sec), dict) and "state" in d[sec]}


def _symbol_cells(s: dict) -> tuple[str, str, str, str, str, str]:
    """bid, ask, spread, imbalance, last trade, messages applied: as printed."""
    bid = f"{s['bid_qty']}@{s['bid_px_tick']}" if s["bid_px_tick"] is not None else "-"
    ask = f"{s['ask_qty']}@{s['ask_px_tick']}" if s["ask_px_tick"] is not None else "-"
    last = f"{s['last_trade_qty']}@{s['last_trade_px_tick']}" if s["last_trade_px_tick"] is not None else "-"
    imb = f"{s['imbalance']:+.2f}" if s["imbalance"] is not None else "-"
    spread = str(s["spread_tick"]) if s["spread_tick"] is not None else "-"
    return bid, ask, spread, imb, last, f"{s['msgs_applied']:,}"


def _plain(segs: list[Seg]) -> str:
    return "".join(t for t, _ in segs)


def render(d: dict, levels: int = 3) -> str:
    """``Status.collect()`` as plain text, without one escape code: what ``obpipe
    stats`` prints into a pipe or a file (``render_view`` is the terminal's)."""
    stale_s = 1.0  # (styles only: dropped here)
    lines = [_plain(_header(d, stale_s))]
    lines += [f"  {part:<8} " + _plain(segs) for part, segs in _part_lines(d, stale_s)]
    lines.append(f"  {'symbol':<8}{'bid':>16}{'ask':>16}{'spread':>8}{'imb':>8}{'last trade':>18}{'msgs':>14}")
    for name, s in d["symbols"].items():
        bid, ask, spread, imb, last, msgs = _symbol_cells(s)
        lines.append(f"  {name:<8}{bid:>16}{ask:>16}{spread:>8}{imb:>8}{last:>18}{msgs:>14}"
                     + ("  STALE (messages lost)" if s.get("stale") else ""))
    return "\n".join(lines)


def sparkline(values, width: int | None = None) -> str:
    """The last ``width`` (default: all) of ``values`` as one block character each, so a
    rate's recent history reads at a glance.

    Heights are relative to the largest value shown: zero (and a negative, a counter
    that restarted) is the lowest block, any positive value at least the second lowest
    (a small loss never looks like none), the largest the full block; in between,
    linear, rounded half up over the seven non-zero heights."""
    vals = list(values)[-width:] if width else list(values)
    hi = max((v for v in vals if v > 0), default=0)
    return "".join(SPARK_BLOCKS[0] if v <= 0 else SPARK_BLOCKS[1 + min(6, int(6 * v / hi + 0.5))] for v in vals)


class RateHistory:
    """The last ``size`` samples of each rate of ``Status.collect()["rates"]`` (per
    second), kept across ``obpipe stats --watch`` refreshes for the sparklines."""

    def __init__(self, size: int = 40):
        self.size = size
        self._h: dict[str, list[int]] = {}

    def add(self, rates: dict[str, int]) -> None:
        """One sample of every rate (a rate missing from earlier samples starts here)."""
        for k, v in rates.items():
            h = self._h.setdefault(k, [])
            h.append(int(v))
            del h[:-self.size]

    def get(self, key: str) -> list[int]:
        """The samples of ``key``, oldest first (empty if never sampled)."""
        return list(self._h.get(key, ()))


def render_view(d: dict, history: RateHistory | None = None, stale_s: float = 2.5, width: int = 160):
    """``Status.collect()`` as a rich renderable for a terminal: the header, the rates
    with their sparklines (``history``, when it has two samples or more), the counters
    (the plain report's lines, styled), the processes and the books.  ``stale_s``:
    seconds after which a running part's heartbeat is shown stale (red; late, yellow,
    from ``HEARTBEAT_WARN_S``); ``width``: the terminal's columns (the rates and the
    processes go side by side from 150)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def text(segs: list[Seg]) -> Text:
        return Text.assemble(*((t, s or "") for t, s in segs))

    rates = d.get("rates", {})
    spark = history is not None and any(len(history.get(k)) > 1 for k in rates)
    rt = Table(title="rates", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
               show_edge=False)
    rt.add_column("rate")
    rt.add_column("now", justify="right")
    if spark:
        rt.add_column("history", no_wrap=True)
    for k, v in rates.items():
        row = [_rate_name(k), Text(f"{v:,}/s", style=_rate_style(k, v) or "")]
        if spark:
            h = history.get(k)
            loss = k in ("ring_drops_per_s", "gap_msgs_per_s") and any(x > 0 for x in h)
            row.append(Text(sparkline(h, history.size), style=_rate_style(k, 1) if loss else "cyan"))
        rt.add_row(*row)

    states = _part_states(d)
    pt = Table(title="processes", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
               show_edge=False)
    for c, j in (("process", "left"), ("pid", "right"), ("state", "left"), ("cpu", "right"), ("core", "right"),
                 ("sched", "left"), ("heartbeat", "right")):
        pt.add_column(c, justify=j)
    for name, p in d["processes"].items():
        if not p:
            continue
        st, age = states.get(name), p.get("heartbeat_age_s")
        pt.add_row(name, str(p["pid"]), Text(st or "-", style=_STATE_STYLE.get(st, "")), f"{p['cpu_percent']:.0f}%",
                   str(p["core"]), p.get("sched") or "-",
                   Text("-" if age is None else f"{age:.2f} s", style=_hb_style(age, st, stale_s) or ""))

    ct = Table.grid(padding=(0, 1))
    ct.add_column(style="bold", no_wrap=True)
    ct.add_column()
    for part, segs in _part_lines(d, stale_s):
        if part not in ("rates", "procs"):
            ct.add_row(part, text(segs))

    st = Table(title="books", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
               show_edge=False)
    st.add_column("symbol")
    for c in ("bid", "ask", "spread", "imb", "last trade", "msgs"):
        st.add_column(c, justify="right")
    st.add_column("")
    for name, s in d["symbols"].items():
        stale = bool(s.get("stale"))
        st.add_row(Text(name, style=DROP if stale else ""), *_symbol_cells(s),
                   Text("STALE (messages lost)" if stale else "", style=DROP))

    gap = Text("")
    if width >= 150:
        top = Table.grid(padding=(0, 4))
        top.add_row(rt, pt)
        parts = [top]
    else:
        parts = [rt, gap, pt]
    return Group(text(_header(d, stale_s)), gap, *parts, gap, ct, gap, st)
