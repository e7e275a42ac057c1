"""The exchange's config sections, ``[exchange]`` and ``[traders]``.

They live with the exchange, which receives them (``Exchange(x, n_symbols)``, the
``obpipe run --source exchange`` feed's ``ExchangeFeedSpec``): the exchange never reads
the whole ``obpipe.config.Config``, which composes these sections and validates them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExchangeConfig:
    host: str = "127.0.0.1"  # order-entry TCP address; 127.0.0.1 = this machine only
    port: int = 9000  # 0: any free port (printed at start)
    band_ticks: int = 1 << 16  # price ladder (window) per symbol side, ticks; every price is accepted
    capacity: int = 1 << 20  # resting orders, all symbols; past it an order's rest is cancelled (book full)
    max_batch: int = 4096  # requests matched per kernel call; one journal write per batch
    read_max: int = 32 * 1024  # bytes read from one client per loop turn (fairness)
    out_buffer_max: int = 4 << 20  # bytes queued for one client; past it the client is disconnected
    max_clients: int = 1024  # further connections are refused
    md_host: str = "127.0.0.1"  # market data (UDP, the pipeline's wire format) goes to md_host:md_port
    md_port: int = 0  # 0: no market data (obpipe run points it at its receiver)
    md_src_port: int = 0  # send market data from this UDP port (obpipe run reserves one: rx admits only it); 0: any
    journal: str = ""  # journal file; "" = none (a restart starts empty)
    store: str = ""  # the store (SQLite file) written beside a journal; "" = <journal>.db; "off": none (docs/STORE.md)
    fsync: str = "batch"  # "batch": fsync each batch before acknowledging it; "interval"; "none" (page cache only)
    fsync_interval_ms: float = 10.0  # with fsync = "interval"
    # Who may trade (docs/PROTOCOL.md "Order entry", "Accounts"):
    accounts_file: str = ""  # accounts and their scrypt-hashed secrets (obpipe exchange-account add); "" = none
    allow_anonymous: bool = False  # connections that do not log in trade as fresh accounts; off: login required
    # Per-account limits (an accounts-file entry may override them):
    max_open_orders: int = 10_000  # resting orders per account (capacity is 2^20: no one client fills it); 0 = none
    max_msgs_per_s: int = 100_000  # requests per second per connection (1 s burst); 0 = none
    cancel_on_disconnect: bool = False  # logged-in accounts: cancel resting orders on disconnect (always on anonymous)
    idle_timeout_s: float = 30.0  # nothing received for this long (send heartbeats): disconnected; 0 = never
    max_clients_per_address: int = 64  # connections from one IP address at a time
    # Prometheus metrics of the exchange (exchange.metrics; docs/METRICS.md):
    metrics_port: int = 0  # serve them at http://metrics_host:metrics_port/metrics; 0 = off
    metrics_host: str = "127.0.0.1"  # 127.0.0.1 = this machine only


@dataclass(frozen=True)
class TradersConfig:
    clients: int = 8  # simulated traders (TCP connections) when obpipe run uses the exchange as its feed
    rate: int = 20_000  # orders/s, all traders together (0: as fast as the exchange answers)
    window: int = 16  # requests in flight per trader
    seed: int = 1
