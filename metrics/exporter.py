"""The /metrics endpoint of a running instance, in the Prometheus text format.

A ``prometheus_client`` custom collector reads the instance's shared memory at scrape
time, through the same views as ``obpipe stats`` (``obpipe.status.Status``): the stats
block's counters, the rings' fill, every symbol's snapshot and the receive->apply
latency histogram.  Nothing is added to any kernel or hot process: a scrape is a read
of shared memory (and of the processes' CPU times) in whichever process serves it, the
supervisor for ``obpipe run`` (a daemon thread), or ``obpipe metrics`` for an instance
started elsewhere.  Names, types and labels: docs/METRICS.md.

Counters stay monotonic across a restart of a part: a part that is restarted starts
its own counts again, and a value below the last one scraped is added to what was
counted before (``_Monotonic``), so a Prometheus ``rate()`` never sees a reset and a
counter never decreases while the exporter runs.
"""
from __future__ import annotations

import os
import threading
from importlib.metadata import PackageNotFoundError, version
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from obpipe.ring.errors import RingError
from obpipe.ring.latency import le_buckets
from obpipe.ring.shm import SHM_DIR, seg_name
from obpipe.status import Status

try:
    _VERSION = version("obpipe")
except PackageNotFoundError:  # (run from a checkout that is not installed)
    _VERSION = "unknown"

#: The parts whose process, heartbeat and CPU are exported (label ``part``).
PARTS = ("supervisor", "feed", "rx", "book", "analysis", "publisher", "redis", "ticks")

# (metric name without _total, help, path in Status.collect()); a path that is absent (the
# MoldUDP64 receiver's counters with obpipe's own protocol) exports nothing
_COUNTERS = (
    ("obpipe_feed_messages_sent", "Messages the feed sent.", ("feed", "sent")),
    ("obpipe_feed_datagrams_sent", "Datagrams the feed sent.", ("feed", "datagrams")),
    ("obpipe_feed_send_errors", "Datagrams the feed failed to send.", ("feed", "send_errors")),
    ("obpipe_rx_packets", "Datagrams rx received and accepted.", ("rx", "packets")),
    ("obpipe_rx_messages", "Messages rx received in order and pushed to the md ring.", ("rx", "messages")),
    ("obpipe_rx_gap_messages", "Messages rx found missing (sequence gaps; lost ones with MoldUDP64).", ("rx",
     "gap_messages")),
    ("obpipe_rx_duplicate_messages", "Messages rx received again (dropped).", ("rx", "duplicates")),
    ("obpipe_rx_out_of_order_messages", "Messages rx received late, after a later one.", ("rx", "out_of_order")),
    ("obpipe_rx_malformed_datagrams", "Datagrams rx rejected as malformed.", ("rx", "malformed")),
    ("obpipe_rx_kernel_drops", "Datagrams the kernel dropped at rx's socket (receive buffer full).", ("rx",
     "kernel_drops")),
    ("obpipe_rx_foreign_source_datagrams", "Datagrams from a sender rx does not admit.", ("rx", "foreign_source")),
    ("obpipe_rx_foreign_session_datagrams", "Datagrams of a session other than the one rx follows.", ("rx",
     "foreign_session")),
    ("obpipe_book_messages", "Messages the book writer applied.", ("book", "msgs")),
    ("obpipe_book_batches", "Batches the book writer applied.", ("book", "batches")),
    ("obpipe_book_bad_messages", "Messages the book writer refused (bad kind, symbol, side, price or size).",
     ("book", "bad_msgs")),
    ("obpipe_book_out_of_ladder_messages", "Messages whose price fell outside the symbol's ladder.", ("book",
     "out_of_ladder")),
    ("obpipe_book_trades", "Trades the book writer saw (executions, hidden trades, crosses).", ("book", "trades")),
    ("obpipe_book_events", "Events (top-of-book changes, trades) the book writer wrote.", ("book", "events")),
    ("obpipe_book_snapshots", "Seqlock snapshots the book writer published.", ("book", "snapshots")),
    ("obpipe_book_crossed", "Top-of-book changes that left a book crossed or locked.", ("book", "crossed")),
    ("obpipe_book_unknown_order_refs", "Per-order messages naming an order the book does not hold.", ("book",
     "l3_unknown_refs")),
    ("obpipe_book_order_table_full", "Orders refused because the per-order table was full.", ("book",
     "l3_table_full")),
    ("obpipe_analysis_events", "Events the analysis read.", ("analysis", "events")),
    ("obpipe_analysis_summaries", "Summaries the analysis wrote.", ("analysis", "summaries")),
    ("obpipe_kafka_produced", "Messages the publisher handed to the Kafka client.", ("publisher", "produced")),
    ("obpipe_kafka_delivered", "Messages Kafka acknowledged.", ("publisher", "delivered")),
    ("obpipe_kafka_delivery_failures", "Messages whose delivery failed (retried from the publisher's queue).",
     ("publisher", "failed")),
    ("obpipe_kafka_errors", "Errors the Kafka client reported.", ("publisher", "kafka_errors")),
    ("obpipe_kafka_lost", "Messages the publisher gave up on (its queue full for too long).", ("publisher", "lost")),
    ("obpipe_redis_writes", "Writes to Redis (live book state).", ("redis", "redis_writes")),
    ("obpipe_redis_errors", "Redis commands that failed.", ("redis", "redis_errors")),
    ("obpipe_ticks_stored_quotes", "Quotes stored in the tick store.", ("ticks", "quotes")),
    ("obpipe_ticks_stored_trades", "Trades stored in the tick store.", ("ticks", "trades")),
    ("obpipe_ticks_errors", "Tick store inserts that failed.", ("ticks", "errors")),
    ("obpipe_supervisor_restarts", "Parts the supervisor restarted.", ("supervisor", "restarts")),
    ("obpipe_supervisor_stale_kills", "Parts killed because their heartbeat went stale.", ("supervisor",
     "stale_kills")),
    # the MoldUDP64 receiver (order-by-order input only)
    ("obpipe_rx_gaps_seen", "Sequence gaps rx saw (MoldUDP64).", ("rx", "mold", "gaps_seen")),
    ("obpipe_rx_gaps_healed", "Gaps filled by retransmission.", ("rx", "mold", "gaps_healed")),
    ("obpipe_rx_gaps_lost", "Gaps declared lost (books marked stale).", ("rx", "mold", "gaps_lost")),
    ("obpipe_rx_messages_recovered", "Messages received by retransmission.", ("rx", "mold", "recovered")),
    ("obpipe_rx_retransmission_requests", "Retransmission requests rx sent.", ("rx", "mold", "requests")),
    ("obpipe_rx_stale_marks", "Lost ranges that marked the books stale.", ("rx", "stale_marks")),
)
# (metric name, help, path in Status.collect()) of plain gauges
_GAUGES = (
    ("obpipe_kafka_broker_up", "1 while the publisher reaches Kafka.", ("publisher", "broker_up")),
    ("obpipe_kafka_pending_messages", "Messages waiting in the publisher's queue.", ("publisher", "pending")),
)
# (ring label, section, key) of each ring's drops
_RING_DROPS = (("md", "rx", "ring_drops"), ("events", "book", "events_dropped"),
               ("signals", "analysis", "signal_drops"), ("ticks", "analysis", "ticks_dropped"))


def _at(d: dict, path: tuple[str, ...]):
    """``d[path[0]][path[1]]...``, or None where a key is absent."""
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


class _Monotonic:
    """Counters that never decrease across a restart of the part that counts them."""

    def __init__(self):
        self._last: dict[tuple, int] = {}
        self._base: dict[tuple, int] = {}

    def __call__(self, key: tuple, raw: int) -> int:
        last = self._last.get(key)
        if last is not None and raw < last:  # the part started counting again
            self._base[key] = self._base.get(key, 0) + last
        self._last[key] = raw
        return self._base.get(key, 0) + raw


class PipelineCollector(Collector):
    """Reads instance ``instance`` at every scrape.

    Args:
        instance: the instance's name (segments ``/obpipe.<instance>.*``).
        symbols: the names of its snapshot slots (``[book] symbols``).
        tick_size: currency units per tick, for prices (``[analysis] tick_size``).
    """

    def __init__(self, instance: str, symbols: list[str], tick_size: float):
        self.instance = instance
        self.symbols = list(symbols)
        self.tick_size = float(tick_size)
        self._status: Status | None = None
        self._inode = None
        self._mono = _Monotonic()
        self._lock = threading.Lock()  # (one scrape at a time: Status keeps per-process state)
        self.last_scrape_s = 0.0

    # --- attach --------------------------------------------------------------------

    def _stats_inode(self):
        try:
            st = os.stat(f"{SHM_DIR}{seg_name(self.instance, 'stats')}")
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns

    def _attached(self) -> Status | None:
        """The instance's views, re-attached when its segments are new (a new run)."""
        ino = self._stats_inode()
        if self._status is not None and ino != self._inode:
            self.close()
        if self._status is None and ino is not None:
            try:
                self._status = Status(self.instance, self.symbols)
                self._inode = ino
            except (RingError, OSError):
                self._status = None
        return self._status

    def close(self) -> None:
        if self._status is not None:
            try:
                self._status.close()
            except Exception:  # noqa: BLE001  (views of segments already gone)
                pass
        self._status = None
        self._inode = None

    # --- scrape --------------------------------------------------------------------

    def collect(self) -> Iterator:
        with self._lock:
            t0 = time.perf_counter()
            st = self._attached()
            d = hist = None
            if st is not None:
                try:
                    d = st.collect(rates=False, cpu_percent=False)
                    hist = st.latency_buckets()
                except (RingError, TimeoutError, OSError, ValueError):
                    self.close()
                    d = None
            up = GaugeMetricFamily("obpipe_up", "1 while the instance's shared memory can be read.")
            up.add_metric([], 1 if d is not None else 0)
            yield up
            info = GaugeMetricFamily("obpipe_info", "The exporter's instance and obpipe version.",
                                     labels=["name", "version", "protocol"])
            info.add_metric([self.instance, _VERSION, d["rx"].get("protocol", "") if d else ""], 1)
            yield info
            if d is not None:
                yield from self._families(d, hist)
            self.last_scrape_s = time.perf_counter() - t0
            g = GaugeMetricFamily("obpipe_scrape_duration_seconds", "Time this scrape took to read the instance.")
            g.add_metric([], self.last_scrape_s)
            yield g

    def _add(self, fam: CounterMetricFamily, labels: list[str], raw: int) -> None:
        fam.add_metric(labels, self._mono((fam.name, *labels), int(raw)))

    def _families(self, d: dict, hist) -> Iterator:
        for name, doc, path in _COUNTERS:
            v = _at(d, path)
            if v is not None:
                c = CounterMetricFamily(name, doc)
                self._add(c, [], v)
                yield c
        for name, doc, path in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=int(_at(d, path) or 0))
        if d["book"].get("l3_capacity", 0) > 0:  # (a per-order book)
            yield GaugeMetricFamily("obpipe_book_orders_live", "Live orders in the per-order book.",
                                    value=d["book"]["l3_live_orders"])
            yield GaugeMetricFamily("obpipe_book_orders_capacity", "Orders the per-order table holds.",
                                    value=d["book"]["l3_capacity"])
        drops = CounterMetricFamily("obpipe_ring_drops", "Records dropped because a ring was full.", labels=["ring"])
        for ring, section, key in _RING_DROPS:
            self._add(drops, [ring], d[section].get(key, 0))
        yield drops
        sig = CounterMetricFamily("obpipe_signals", "Signals the analysis detected, by kind.", labels=["kind"])
        for kind, n in d["analysis"]["by_kind"].items():
            self._add(sig, [kind], n)
        yield sig
        yield from self._rings(d["rings"])
        yield from self._processes(d["processes"])
        yield from self._parts(d)
        yield from self._symbols(d["symbols"])
        yield self._latency(hist)

    @staticmethod
    def _rings(rings: dict) -> Iterator:
        fams = [GaugeMetricFamily("obpipe_ring_fill_records", "Records waiting in the ring now.", labels=["ring"]),
                GaugeMetricFamily("obpipe_ring_capacity_records", "The ring's capacity.", labels=["ring"]),
                GaugeMetricFamily("obpipe_ring_high_water_records", "The most records the ring has held at once.",
                                  labels=["ring"])]
        for name, r in rings.items():
            fams[0].add_metric([name], r["fill"])
            fams[1].add_metric([name], r["capacity"])
            fams[2].add_metric([name], r["high_water"])
        yield from fams

    def _processes(self, procs: dict) -> Iterator:
        cpu = CounterMetricFamily("obpipe_process_cpu_seconds", "CPU time of the part's process (user + system).",
                                  labels=["part"])
        hb = GaugeMetricFamily("obpipe_process_heartbeat_age_seconds",
                               "Time since the part's last loop turn (stale: hung).", labels=["part"])
        for part in PARTS:
            p = procs.get(part)
            if p is None:
                continue
            cpu.add_metric([part], self._mono(("cpu", part), int(p["cpu_seconds"] * 1000)) / 1000)
            if p.get("heartbeat_age_s") is not None:
                hb.add_metric([part], p["heartbeat_age_s"])
        yield cpu
        yield hb

    @staticmethod
    def _parts(d: dict) -> Iterator:
        up = GaugeMetricFamily("obpipe_part_running", "1 while the part's process says it is running.",
                               labels=["part"])
        for part in PARTS:
            state = d.get(part, {}).get("state")  # (the supervisor's counters carry no state)
            if state is not None:
                up.add_metric([part], 1 if state == "running" else 0)
        yield up

    def _symbols(self, syms: dict) -> Iterator:
        t = self.tick_size
        fams = {
            "bid": GaugeMetricFamily("obpipe_book_bid_price", "Best bid, currency units (NaN: none).",
                                     labels=["symbol"]),
            "ask": GaugeMetricFamily("obpipe_book_ask_price", "Best ask, currency units (NaN: none).",
                                     labels=["symbol"]),
            "bq": GaugeMetricFamily("obpipe_book_bid_size", "Size at the best bid, lots or shares.",
                                    labels=["symbol"]),
            "aq": GaugeMetricFamily("obpipe_book_ask_size", "Size at the best ask, lots or shares.",
                                    labels=["symbol"]),
            "spread": GaugeMetricFamily("obpipe_book_spread", "Best ask - best bid, currency units (NaN: a side "
                                        "empty).", labels=["symbol"]),
            "stale": GaugeMetricFamily("obpipe_book_stale", "1 while the book is marked stale (messages lost).",
                                       labels=["symbol"]),
            "ts": GaugeMetricFamily("obpipe_book_exchange_timestamp_seconds",
                                    "Exchange time of the last message applied, UTC epoch seconds.",
                                    labels=["symbol"]),
        }
        nan = float("nan")
        for name, s in syms.items():
            bp, ap = s["bid_px_tick"], s["ask_px_tick"]
            fams["bid"].add_metric([name], bp * t if bp is not None else nan)
            fams["ask"].add_metric([name], ap * t if ap is not None else nan)
            fams["bq"].add_metric([name], s["bid_qty"])
            fams["aq"].add_metric([name], s["ask_qty"])
            fams["spread"].add_metric([name], s["spread_tick"] * t if s["spread_tick"] is not None else nan)
            fams["stale"].add_metric([name], 1 if s.get("stale") else 0)
            if s.get("ts_exch_ns"):
                fams["ts"].add_metric([name], s["ts_exch_ns"] / 1e9)
        yield from fams.values()

    def _latency(self, hist) -> HistogramMetricFamily:
        name = "obpipe_receive_apply_latency_seconds"
        h = HistogramMetricFamily(name, "From rx's receive stamp to the book writer's apply, per message "
                                        "(no _sum: the book writer counts buckets only).")
        buckets = [(le, self._mono(("lat", le), n)) for le, n in le_buckets(hist)]
        h.add_metric([], buckets, sum_value=None)
        h.add_sample(name + "_count", {}, buckets[-1][1])
        return h


class MetricsServer:
    """A /metrics endpoint for one instance, served by a daemon thread of this process."""

    def __init__(self, instance: str, symbols: list[str], tick_size: float, port: int, host: str = "127.0.0.1"):
        self.collector = PipelineCollector(instance, symbols, tick_size)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.collector.close()


def serve(instance: str, symbols: list[str], tick_size: float, port: int, host: str = "127.0.0.1",
          stop=None) -> int:
    """``obpipe metrics``: serve until ``stop`` (an ``Interrupt``) is set.  Returns 0."""
    srv = MetricsServer(instance, symbols, tick_size, port, host)
    print(f"obpipe metrics: instance {instance!r} on {srv.url} (Ctrl-C stops)", flush=True)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        srv.close()
    return 0


__all__ = ["MetricsServer", "PipelineCollector", "serve"]
