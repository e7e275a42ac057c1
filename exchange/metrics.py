"""The exchange's own Prometheus metrics: a collector over a running ``Exchange``.

``ExchangeCollector.collect()`` reads the exchange's counters at scrape time, from the
HTTP server's thread, while the serve loop runs in the main thread:

* What it reads, and who writes it (the serve loop, one thread): ``ex.c`` (a dict of
  ints), ``ex.orders_by_type`` and ``ex.turn_hist`` (lists of ints; the histogram in
  ``obpipe.ring.latency`` buckets, ns) and ``ex.turn_ns``, ``ex.rejects`` (int64 array),
  the engine's counter array ``ex.eng.E`` (int64 words, written by the matching kernel)
  and ``len(ex.conns)``.  Each is copied in one C-level operation under the GIL (a dict
  or list copy, ``len``) or is a set of aligned 8-byte words, so every value read is
  one the loop wrote and no counter goes back; families read at different instants may
  be a turn apart.  No lock: the serve loop takes none and pays nothing per scrape.
* Engine counters (accepted, cancelled, modified, trades, traded lots, resting) count
  over the journal's whole history: a restart that recovers the journal continues
  them.  The server's own counters start at zero in each process (Prometheus sees a
  counter reset).
* ``serve`` starts ``prometheus_client``'s HTTP server on its own registry (no process
  or platform collectors: only this exchange's families) in a daemon thread.

Names, types and labels: docs/METRICS.md.
"""
from __future__ import annotations

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from obpipe.ring import latency, schema

#: label of each RS_* reason code: the constant's name without ``RS_``, lower case
REASON_LABELS = {v: k[3:].lower() for k, v in vars(schema).items() if k.startswith("RS_") and isinstance(v, int)}
#: reasons a reject report can carry (exported at 0 before the first one, so a rate has a start)
REJECT_REASONS = (schema.RS_BAD_PRICE, schema.RS_BAD_QTY, schema.RS_UNKNOWN_ORDER, schema.RS_FOK_UNFILLABLE,
                  schema.RS_BAD_SIDE, schema.RS_BAD_TYPE, schema.RS_BAD_SYMBOL, schema.RS_MALFORMED,
                  schema.RS_NOT_OWNER, schema.RS_AUTH, schema.RS_LOGIN_REQUIRED, schema.RS_RATE_LIMIT,
                  schema.RS_OPEN_LIMIT)
#: order-entry message types counted by ``orders_total{type}``
ORDER_TYPES = {schema.OE_NEW: "new", schema.OE_CANCEL: "cancel", schema.OE_MODIFY: "modify"}
#: ``ex.c`` key -> reason label of ``obpipe_exchange_forced_disconnects_total``
FORCED = {"slow_disconnects": "slow_reader", "closed_idle": "idle", "closed_malformed": "malformed",
          "closed_login_required": "login_required", "bad_logins": "bad_login"}
#: engine counter name -> (metric name, help)
ENGINE = {
    "accepted": ("obpipe_exchange_orders_accepted", "New orders accepted (acknowledged), over the journal's history."),
    "cancelled": ("obpipe_exchange_orders_cancelled", "Orders that left the book cancelled (by their owner, unfilled "
                  "IOC/market rest, self-trade prevention, book full, disconnect), over the journal's history."),
    "modified": ("obpipe_exchange_orders_modified", "Modifies accepted, over the journal's history."),
    "trades": ("obpipe_exchange_trades", "Executions (each one an aggressor's and a resting order's fill report), "
               "over the journal's history."),
    "traded_qty": ("obpipe_exchange_traded_lots", "Lots executed, over the journal's history."),
}
#: ``ex.c`` key -> (metric name, help) of plain counters
SERVER = {
    "requests": ("obpipe_exchange_requests", "Requests matched: clients' (orders, heartbeats, the ones the exchange "
                 "rejects itself) and cancel-on-disconnect cancels."),
    "batches": ("obpipe_exchange_batches", "Matching-kernel calls (one journal write each)."),
    "connections": ("obpipe_exchange_connections", "TCP connections accepted."),
    "disconnects": ("obpipe_exchange_disconnects", "Connections closed, for any reason."),
    "logins": ("obpipe_exchange_logins", "Successful logins."),
    "heartbeats": ("obpipe_exchange_heartbeats", "Heartbeats answered."),
    "disconnect_cancels": ("obpipe_exchange_disconnect_cancels", "Resting orders cancelled because their account "
                           "disconnected (cancel-on-disconnect)."),
    "reports_sent": ("obpipe_exchange_reports", "Reports queued to clients (32 bytes each)."),
    "reports_undeliverable": ("obpipe_exchange_reports_undeliverable", "Reports whose account had no connection."),
    "accept_errors": ("obpipe_exchange_accept_errors", "accept() failures (e.g. out of file descriptors)."),
    "partial_at_close": ("obpipe_exchange_partial_messages_at_close", "Connections closed with a partial message "
                         "unread."),
    "md_messages": ("obpipe_exchange_md_messages", "Market-data messages sent over UDP."),
}


class ExchangeCollector(Collector):
    """Every metric family of one running exchange (``obpipe.exchange.server.Exchange``),
    read when Prometheus scrapes."""

    def __init__(self, ex):
        self.ex = ex

    def collect(self):
        ex = self.ex
        c = dict(ex.c)
        eng = ex.eng.counters()
        rejects = np.asarray(ex.rejects).tolist()
        by_type = list(ex.orders_by_type)
        hist = list(ex.turn_hist)
        turn_ns = ex.turn_ns
        clients = len(ex.conns)
        sender = ex.sender
        datagrams = sender.datagrams_sent if sender is not None else c["md_datagrams"]

        for key, (name, doc) in SERVER.items():
            yield CounterMetricFamily(name, doc, value=c[key])
        m = CounterMetricFamily("obpipe_exchange_md_datagrams", "Market-data UDP datagrams sent.", value=datagrams)
        yield m
        for key, (name, doc) in ENGINE.items():
            yield CounterMetricFamily(name, doc, value=eng[key])

        m = CounterMetricFamily("obpipe_exchange_orders", "Order-entry messages read from clients, by type "
                                "(including the ones rejected).", labels=["type"])
        for code, label in ORDER_TYPES.items():
            m.add_metric([label], by_type[code])
        yield m
        m = CounterMetricFamily("obpipe_exchange_rejects", "Reject reports sent, by reason (the engine's, the "
                                "exchange's rate and open-order limits, refused logins).", labels=["reason"])
        for code in sorted(set(REJECT_REASONS) | {i for i, n in enumerate(rejects) if n}):
            m.add_metric([REASON_LABELS.get(code, str(code))], rejects[code])
        yield m
        m = CounterMetricFamily("obpipe_exchange_refused_connections", "Connections refused at accept, by reason.",
                                labels=["reason"])
        m.add_metric(["max_clients"], c["refused"])
        m.add_metric(["per_address"], c["refused_per_address"])
        yield m
        m = CounterMetricFamily("obpipe_exchange_forced_disconnects", "Connections the exchange closed, by reason "
                                "(also in disconnects_total).", labels=["reason"])
        for key, label in FORCED.items():
            m.add_metric([label], c[key])
        yield m

        yield GaugeMetricFamily("obpipe_exchange_clients", "Open client connections.", value=clients)
        yield GaugeMetricFamily("obpipe_exchange_resting_orders", "Orders resting in the book (all symbols).",
                                value=eng["resting"])

        yield HistogramMetricFamily("obpipe_exchange_turn_seconds", "Server time from a turn's requests being read "
                                    "to their reports being queued (match, journal, market data, routing), one "
                                    "observation per client request.", buckets=latency.le_buckets(hist),
                                    sum_value=turn_ns / 1e9)


def serve(ex, port: int, host: str = "127.0.0.1"):
    """Serve ``ex``'s metrics at ``http://host:port/metrics`` from a daemon thread;
    returns the ``(server, thread)`` pair (``stop`` ends it).  Raises OSError when the
    port cannot be bound."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExchangeCollector(ex))
    return start_http_server(port, addr=host, registry=registry)


def stop(served) -> None:
    """Stop what ``serve`` started (waits for the server thread's poll, <= 0.5 s)."""
    server, thread = served
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
