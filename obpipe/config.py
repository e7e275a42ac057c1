"""Configuration: one frozen dataclass per component, loaded from TOML.

``load(path)`` reads a TOML file (``configs/default.toml`` when no path is given) and
returns a ``Config``.  Unknown sections and keys, and values of the wrong type or
range, raise ``ConfigError`` naming the key (``book.ladder_widht: unknown key``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from obpipe.exchange.config import ExchangeConfig, TradersConfig  # (the exchange's own sections)
from obpipe.ring.settings import ConfigError, build_section, read_toml

_build = build_section

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PATH = CONFIG_DIR / "default.toml"


@dataclass(frozen=True)
class InstanceConfig:
    name: str = "main"  # segments are /obpipe.<name>.<part>; letters, digits, - and _


@dataclass(frozen=True)
class BookConfig:
    symbols: tuple[str, ...] = ("AAA", "BBB", "CCC", "DDD")  # symbol index = position
    ladder_width: int = 4096  # ticks held per symbol (both sides share the window)
    ladder_width_by_symbol: dict[str, int] = field(default_factory=dict)  # per-symbol override
    snapshot_levels: int = 10  # levels per side in snapshots
    event_depth_ticks: int = 10  # events carry the lots within this many ticks of each best (1..16)
    max_batch: int = 1024  # messages applied per batch (one snapshot per symbol per batch)
    uncross: bool = False  # an add crossing the other side removes the stale levels it crosses (on for LOBSTER replays)
    l3_orders: int = 1 << 22  # live orders the per-order book holds (ITCH input; docs/L3BOOK.md); more are counted

    def widths(self) -> list[int]:
        return [self.ladder_width_by_symbol.get(s, self.ladder_width) for s in self.symbols]


@dataclass(frozen=True)
class RingsConfig:
    md_capacity: int = 1 << 16  # rx -> book writer, MD records (power of two)
    events_capacity: int = 1 << 16  # book writer -> analysis, events (power of two)
    signals_capacity: int = 1 << 14  # analysis -> publisher, signals and summaries (power of two)


@dataclass(frozen=True)
class BackoffConfig:
    spin_iters: int = 2000  # pause-loop polls before yielding (~10 us)
    yield_iters: int = 20  # sched_yield() polls before sleeping
    sleep_us: int = 50  # sleep per idle round after that (wake = "sleep")
    # "doorbell": after spinning and yielding, an idle rx blocks in poll() until a
    # datagram arrives and an idle book writer blocks on its ring's doorbell until rx
    # rings it (docs/LATENCY.md); "sleep": both sleep sleep_us per idle round
    wake: str = "doorbell"


@dataclass(frozen=True)
class PinningConfig:
    # role -> cores.  "auto": spread roles over the cores this process may use
    # (on 2 cores the book writer gets its own core, everything else shares the other).
    book: str | list[int] = "auto"
    rx: str | list[int] = "auto"
    feed: str | list[int] = "auto"
    analysis: str | list[int] = "auto"
    publisher: str | list[int] = "auto"
    supervisor: str | list[int] = "auto"
    # analysis and publisher as SCHED_IDLE: they use only CPU the book writer and rx
    # leave, so sharing a core never delays those (a starved analysis drops and counts)
    background_idle: bool = True
    # rx and the book writer as SCHED_FIFO real-time processes (they always wait
    # blocking, so they cannot starve the machine): "auto" when permitted and there are
    # 2+ cores, true (refuse to start if not permitted), false
    realtime: str | bool = "auto"
    realtime_priority: int = 10  # 1..99 (SCHED_FIFO priority)


#: Parts a restart brings back to a correct state: rx keeps its tracker in shared memory.
#: Not the book writer (its books live in its memory: a restarted writer would publish
#: empty books as if true) nor the feed (it would start its sequence numbers again).
#: The analysis restarts with empty detector state and reads on from the events ring's
#: tail; the publisher reads on from the signals ring's tail (what the dead one held in
#: flight is counted as lost).
RESTARTABLE = ("rx", "analysis", "publisher", "redis", "ticks")


@dataclass(frozen=True)
class RxConfig:
    """Which datagrams rx admits (docs/PROTOCOL.md "Admission")."""

    # the feed session followed; 0: the one obpipe's own feed is given (random per run),
    # or with --no-feed the first session seen from an allowed source
    session: int = 0
    # "host" or "host:port" senders admitted; empty: only the feed obpipe starts (its
    # reserved source port), or any sender with --no-feed
    allow_sources: tuple[str, ...] = ()
    # largest forward sequence jump one packet may make (messages): 16.8M, > 8 s of loss at
    # 2M msgs/s; beyond it the packet is counted implausible_seq and not adopted
    max_seq_jump: int = 1 << 24
    # this many contiguous beyond-window packets in a row are a feed that moved on (e.g.
    # while rx was down) and are adopted as a gap; 0: never
    resync_packets: int = 64
    # a new session's first packet (seq 1) from an allowed source switches rx to it (a
    # restarted external feed); false: a new session needs a restart of obpipe
    accept_new_session: bool = False
    # "obpipe": obpipe's own datagrams into the aggregated book; "moldudp64": Nasdaq ITCH 5.0
    # in MoldUDP64 packets into the per-order book, gaps requested and healed (an ITCH
    # replay sets it); [book] symbols then name the stocks selected (docs/ITCH.md)
    protocol: str = "obpipe"
    request_port: int = 0  # moldudp64: the feed's retransmission request port (0: the feed obpipe starts)
    mold_hold: int = 1 << 19  # moldudp64: messages that may wait for a gap to be filled (a power of two)
    mold_timeout_ms: float = 25.0  # moldudp64: ask again after this long without an answer
    mold_retries: int = 16  # moldudp64: requests after the first before a gap is declared lost

    def sources(self) -> tuple[tuple[str, int], ...]:
        """``allow_sources`` as (host, port) pairs (port 0: any)."""
        out = []
        for item in self.allow_sources:
            host, _, port = item.partition(":")
            out.append((host, int(port) if port else 0))
        return tuple(out)


@dataclass(frozen=True)
class SupervisorConfig:
    restart: tuple[str, ...] = ("rx", "analysis", "publisher", "redis", "ticks")  # parts restarted when they die or hang
    max_restarts: int = 3  # restarts per part per run; one more failure fails the run
    heartbeat_timeout_s: float = 5.0  # a running part whose heartbeat is older is killed (0: never)


@dataclass(frozen=True)
class SpreadDetector:
    enabled: bool = True
    ratio: float = 3.0  # fire when spread >= ratio x its baseline ...
    min_ticks: int = 3  # ... and >= this many ticks
    baseline_ms: float = 1000.0  # EWMA time constant of the baseline, feed time
    warmup_events: int = 50  # valid spreads seen before it may fire
    rearm_ratio: float = 1.5  # fires again only after the spread fell to rearm_ratio x baseline


@dataclass(frozen=True)
class ImbalanceDetector:
    enabled: bool = True
    tob_threshold: float = 0.8  # |(bid_qty - ask_qty) / (bid_qty + ask_qty)| at the best
    depth_threshold: float = 0.7  # |imbalance| of the lots within event_depth_ticks of each best
    min_depth_qty: int = 500  # both bands together hold at least this many lots
    rearm_below: float = 0.3  # fires again after |depth imbalance| fell below this


@dataclass(frozen=True)
class MicropriceDetector:
    enabled: bool = True
    shift_ticks: float = 4.0  # microprice moved this many ticks ...
    window_ms: float = 50.0  # ... from its low/high within this window (feed time)


@dataclass(frozen=True)
class SweepDetector:
    enabled: bool = True
    levels: int = 4  # a same-side burst that traded at this many successive prices ...
    burst_qty: int = 0  # ... or this many lots (0: volume rule off)
    window_ms: float = 5.0  # burst = same aggressor side within this time of its first trade


@dataclass(frozen=True)
class WithdrawalDetector:
    enabled: bool = True
    drop_fraction: float = 0.7  # band depth fell by this fraction (not counting traded lots) ...
    window_ms: float = 50.0  # ... within this window (feed time) ...
    min_depth_qty: int = 500  # ... from at least this many lots


@dataclass(frozen=True)
class AnalysisConfig:
    enabled: bool = True  # false: no analysis process (the supervisor discards events)
    summary_interval_ms: float = 100.0  # summaries per symbol every this much feed time
    max_batch: int = 4096  # events per kernel call
    idle_sleep_us: int = 500  # idle: sleep this long between polls (no spinning: it shares rx's core)
    tick_size: float = 0.01  # price of one tick, published with every message
    spread: SpreadDetector = SpreadDetector()
    imbalance: ImbalanceDetector = ImbalanceDetector()
    microprice: MicropriceDetector = MicropriceDetector()
    sweep: SweepDetector = SweepDetector()
    withdrawal: WithdrawalDetector = WithdrawalDetector()


@dataclass(frozen=True)
class KafkaConfig:
    enabled: bool = True  # false: no publisher process (the supervisor discards signals)
    bootstrap_servers: str = ""  # "host:port,...": a real cluster; "": obpipe run starts the embedded broker
    topic_prefix: str = "obpipe"  # topics <prefix>.signals and <prefix>.summaries
    client: dict[str, str | int | float | bool] = field(default_factory=dict)  # extra librdkafka settings (security)
    pending_max: int = 10_000  # signals waiting for the producer; when full the oldest is dropped
    producer_queue_max: int = 10_000  # messages inside the producer (queue.buffering.max.messages)
    message_timeout_ms: int = 10_000  # a message not delivered by then fails (counted)
    linger_ms: int = 5  # producer batching delay
    flush_timeout_s: float = 5.0  # at the end of a run, wait this long for deliveries


@dataclass(frozen=True)
class RedisConfig:
    enabled: bool = True  # false: no Redis writer; true without redis-server: the run goes on without it (said)
    url: str = ""  # redis://host:port[/db], rediss://..., unix:///path; "": obpipe run starts its own server
    interval_ms: float = 10.0  # at most one write per symbol per interval (from the book's snapshots)
    ttl_s: float = 5.0  # every key expires this long after its last write: a dead instance leaves nothing
    timeout_s: float = 1.0  # connect and command timeout; a slower Redis counts an error and is retried later
    key_prefix: str = "obpipe"  # keys and channels <key_prefix>:<instance>:...


@dataclass(frozen=True)
class TicksConfig:
    enabled: bool = True  # record ticks into the tick store (docs/TICKS.md); needs chdb (the ticks extra)
    where: str = ""  # a directory (embedded ClickHouse, chdb) or http(s):// server URL; "": <state dir>/ticks
    ring_capacity: int = 1 << 18  # the "ticks" ring (analysis -> recorder), events; a power of two
    flush_rows: int = 65_536  # insert when this many rows are buffered ...
    flush_ms: float = 1000.0  # ... or when the oldest is this old (and at stop)
    depth_interval_ms: float = 100.0  # top levels per symbol this often, from the snapshots (0: no depth)
    live_max_events_per_s: float = 200_000.0  # store during the run only while events come slower (else: spool) ...
    spool_max_mb: float = 2048.0  # ... or while the spool holds more than this (ticks/spool.py)
    quotes_days: int = 90  # retention (ClickHouse TTL) per table
    trades_days: int = 365
    depth_days: int = 90


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 9464  # /metrics in the Prometheus text format on host:port (docs/METRICS.md); 0: off
    host: str = "127.0.0.1"  # the address it listens on (loopback unless configured)


@dataclass(frozen=True)
class RunConfig:
    rate: int = 200_000  # synthetic feed messages/s (0: as fast as possible)
    duration_s: float = 0.0  # 0: until Ctrl-C
    seed: int = 1  # synthetic flow seed
    # the synthetic clock's start, UTC epoch ns; 0: the wall clock when the feed starts
    # (same seed + same start_ns: the same stream, e.g. to compare two runs)
    start_ns: int = 0
    stats_interval_s: float = 1.0  # live status line period


@dataclass(frozen=True)
class Config:
    instance: InstanceConfig = InstanceConfig()
    book: BookConfig = BookConfig()
    rings: RingsConfig = RingsConfig()
    backoff: BackoffConfig = BackoffConfig()
    pinning: PinningConfig = PinningConfig()
    rx: RxConfig = RxConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    ticks: TicksConfig = TicksConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    traders: TradersConfig = TradersConfig()
    metrics: MetricsConfig = MetricsConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self):
        _validate(self)


#: UTC epoch ns a configured clock start may name: 1990-01-01 .. 2200-01-01.
_PLAUSIBLE_NS = (631_152_000 * 10**9, 7_258_118_400 * 10**9)


def _pow2(v: int) -> bool:
    return v >= 2 and v & (v - 1) == 0


def _validate(c: Config) -> None:
    import math
    import re

    def bad(key, why):
        raise ConfigError(f"{key}: {why}")

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", c.instance.name):
        bad("instance.name", f"{c.instance.name!r} must be 1-64 letters, digits, '-' or '_'")
    b = c.book
    if not b.symbols:
        bad("book.symbols", "at least one symbol is needed")
    if len(set(b.symbols)) != len(b.symbols):
        bad("book.symbols", "symbols must be unique")
    if len(b.symbols) > 65535:
        bad("book.symbols", "at most 65535 symbols (u16 symbol index)")
    from obpipe.publisher.schema import SYMBOL_RE

    for sym in b.symbols:
        if not (isinstance(sym, str) and re.fullmatch(SYMBOL_RE, sym)):
            bad("book.symbols", f"{sym!r}: a symbol is 1-16 letters, digits, '.', '_' or '-'")
    if not 1 <= b.snapshot_levels <= 1024:
        bad("book.snapshot_levels", f"must be 1..1024, got {b.snapshot_levels}")
    for sym, w in [("", b.ladder_width)] + list(b.ladder_width_by_symbol.items()):
        key = "book.ladder_width" + (f"_by_symbol.{sym}" if sym else "")
        if sym and sym not in b.symbols:
            bad(key, f"{sym!r} is not in book.symbols")
        if not 2 * b.snapshot_levels <= w <= 1 << 24:
            bad(key, f"must be {2 * b.snapshot_levels}..{1 << 24} ticks, got {w}")
    if not 1 <= b.event_depth_ticks <= 16:
        bad("book.event_depth_ticks", f"must be 1..16 ticks, got {b.event_depth_ticks}")
    if not 1 <= b.max_batch <= 1 << 20:
        bad("book.max_batch", f"must be 1..{1 << 20}, got {b.max_batch}")
    if not 1 << 10 <= b.l3_orders <= 1 << 28:
        bad("book.l3_orders", f"must be {1 << 10}..{1 << 28} orders, got {b.l3_orders}")
    for k in ("md_capacity", "events_capacity", "signals_capacity"):
        v = getattr(c.rings, k)
        if not _pow2(v) or v > 1 << 24:
            bad(f"rings.{k}", f"must be a power of two in 2..{1 << 24}, got {v}")
    for k in ("spin_iters", "yield_iters", "sleep_us"):
        if getattr(c.backoff, k) < 0:
            bad(f"backoff.{k}", "must be >= 0")
    for part in c.supervisor.restart:
        if part not in RESTARTABLE:
            why = {"book": "its books live in the writer's memory; a restarted writer would publish empty books",
                   "feed": "a restarted feed would start its sequence numbers again"}.get(part, "no such part")
            bad("supervisor.restart", f"{part!r} is not restartable ({why}); restartable: {', '.join(RESTARTABLE)}")
    _validate_rx(c.rx, bad)
    if c.supervisor.max_restarts < 0:
        bad("supervisor.max_restarts", "must be >= 0")
    if not (math.isfinite(c.supervisor.heartbeat_timeout_s) and c.supervisor.heartbeat_timeout_s >= 0):
        bad("supervisor.heartbeat_timeout_s", f"must be a number >= 0, got {c.supervisor.heartbeat_timeout_s}")
    _validate_analysis(c.analysis, bad)
    _validate_kafka(c.kafka, bad)
    _validate_redis(c.redis, bad)
    _validate_ticks(c.ticks, bad)
    _validate_metrics(c.metrics, bad)
    _validate_exchange(c.exchange, c.traders, bad)
    if c.backoff.wake not in ("doorbell", "sleep"):
        bad("backoff.wake", f"must be \"doorbell\" or \"sleep\", got {c.backoff.wake!r}")
    if c.pinning.realtime not in ("auto", True, False):
        bad("pinning.realtime", f"must be \"auto\", true or false, got {c.pinning.realtime!r}")
    if not (isinstance(c.pinning.realtime_priority, int) and 1 <= c.pinning.realtime_priority <= 99):
        bad("pinning.realtime_priority", f"must be 1..99, got {c.pinning.realtime_priority!r}")
    for k in ("book", "rx", "feed", "analysis", "publisher", "supervisor"):
        v = getattr(c.pinning, k)
        if isinstance(v, str) and v != "auto":
            bad(f"pinning.{k}", f"must be \"auto\" or a list of core numbers, got {v!r}")
        if isinstance(v, list) and (not v or any(x < 0 for x in v)):
            bad(f"pinning.{k}", f"core list must be non-empty and non-negative, got {v!r}")

    for k in ("duration_s", "stats_interval_s"):
        if not math.isfinite(getattr(c.run, k)):
            bad(f"run.{k}", f"must be a finite number, got {getattr(c.run, k)}")
    if c.run.rate < 0:
        bad("run.rate", "must be >= 0")
    if c.run.start_ns and not _PLAUSIBLE_NS[0] <= c.run.start_ns <= _PLAUSIBLE_NS[1]:
        bad("run.start_ns", f"must be 0 (now) or UTC epoch ns in 1990..2200, got {c.run.start_ns}")
    if c.run.duration_s < 0:
        bad("run.duration_s", "must be >= 0")
    if c.run.stats_interval_s <= 0:
        bad("run.stats_interval_s", "must be > 0")


def _validate_metrics(m: MetricsConfig, bad) -> None:
    import ipaddress

    if not 0 <= m.port <= 65535:
        bad("metrics.port", f"must be 0 (off) or 1..65535, got {m.port}")
    try:
        ipaddress.ip_address(m.host)
    except ValueError:
        bad("metrics.host", f"must be an IP address (e.g. 127.0.0.1), got {m.host!r}")


def _validate_rx(r: RxConfig, bad) -> None:
    import ipaddress

    if not 0 <= r.session <= 0xFFFFFFFF:
        bad("rx.session", f"must be 0 (automatic) or a u32 session id, got {r.session}")
    for item in r.allow_sources:
        host, sep, port = item.partition(":")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            bad("rx.allow_sources", f"{item!r}: the host must be an IPv4 address (e.g. 127.0.0.1 or 127.0.0.1:5000)")
        if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
            bad("rx.allow_sources", f"{item!r}: the port must be 1..65535")
    if not 1 <= r.max_seq_jump <= 1 << 48:
        bad("rx.max_seq_jump", f"must be 1..{1 << 48} messages, got {r.max_seq_jump}")
    if not 0 <= r.resync_packets <= 1 << 20:
        bad("rx.resync_packets", f"must be 0 (never) .. {1 << 20}, got {r.resync_packets}")
    if r.protocol not in ("obpipe", "moldudp64"):
        bad("rx.protocol", f"must be \"obpipe\" or \"moldudp64\", got {r.protocol!r}")
    if not 0 <= r.request_port <= 65535:
        bad("rx.request_port", f"must be 0..65535, got {r.request_port}")
    if not (1 << 10 <= r.mold_hold <= 1 << 24) or r.mold_hold & (r.mold_hold - 1):
        bad("rx.mold_hold", f"must be a power of two 1024..{1 << 24}, got {r.mold_hold}")
    if not 1 <= r.mold_timeout_ms <= 10_000:
        bad("rx.mold_timeout_ms", f"must be 1..10000 ms, got {r.mold_timeout_ms}")
    if not 0 <= r.mold_retries <= 1000:
        bad("rx.mold_retries", f"must be 0..1000, got {r.mold_retries}")


def _validate_analysis(a: AnalysisConfig, bad) -> None:
    import math

    def pos(key, v, zero_ok=False):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
            bad(f"analysis.{key}", f"must be a finite number {'>= 0' if zero_ok else '> 0'}, got {v!r}")

    pos("summary_interval_ms", a.summary_interval_ms)
    if a.summary_interval_ms * 1e6 < 1:
        bad("analysis.summary_interval_ms", "must be at least 1 ns")
    pos("tick_size", a.tick_size)
    if not 1 <= a.max_batch <= 1 << 20:
        bad("analysis.max_batch", f"must be 1..{1 << 20}, got {a.max_batch}")
    if not 0 <= a.idle_sleep_us <= 1_000_000:
        bad("analysis.idle_sleep_us", f"must be 0..1000000, got {a.idle_sleep_us}")
    pos("spread.ratio", a.spread.ratio)
    pos("spread.min_ticks", a.spread.min_ticks, True)
    pos("spread.baseline_ms", a.spread.baseline_ms)
    pos("spread.warmup_events", a.spread.warmup_events, True)
    pos("spread.rearm_ratio", a.spread.rearm_ratio)
    if a.spread.rearm_ratio > a.spread.ratio:
        bad("analysis.spread.rearm_ratio", f"must be <= ratio ({a.spread.ratio}), got {a.spread.rearm_ratio}")
    for k in ("tob_threshold", "depth_threshold", "rearm_below"):
        v = getattr(a.imbalance, k)
        if not 0 <= v <= 1:
            bad(f"analysis.imbalance.{k}", f"must be in 0..1, got {v}")
    pos("imbalance.min_depth_qty", a.imbalance.min_depth_qty, True)
    pos("microprice.shift_ticks", a.microprice.shift_ticks)
    pos("microprice.window_ms", a.microprice.window_ms)
    if a.sweep.levels < 2:
        bad("analysis.sweep.levels", f"must be >= 2 (a sweep crosses levels), got {a.sweep.levels}")
    pos("sweep.burst_qty", a.sweep.burst_qty, True)
    pos("sweep.window_ms", a.sweep.window_ms)
    if not 0 < a.withdrawal.drop_fraction <= 1:
        bad("analysis.withdrawal.drop_fraction", f"must be in (0, 1], got {a.withdrawal.drop_fraction}")
    pos("withdrawal.window_ms", a.withdrawal.window_ms)
    pos("withdrawal.min_depth_qty", a.withdrawal.min_depth_qty)


def _validate_kafka(k: KafkaConfig, bad) -> None:
    import re

    if k.bootstrap_servers and not all(re.fullmatch(r"[^\s:,]+:\d{1,5}", x.strip())
                                       for x in k.bootstrap_servers.split(",")):
        bad("kafka.bootstrap_servers", f"must be host:port[,host:port...], got {k.bootstrap_servers!r}")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", k.topic_prefix):
        bad("kafka.topic_prefix", f"{k.topic_prefix!r}: letters, digits, '.', '_' or '-' only")
    for key in ("bootstrap.servers", "on_delivery", "error_cb"):
        if key in k.client:
            bad(f"kafka.client.{key}", "set by obpipe; use kafka.bootstrap_servers" if key == "bootstrap.servers"
                else "set by obpipe")
    for key in ("pending_max", "producer_queue_max", "message_timeout_ms"):
        if getattr(k, key) < 1:
            bad(f"kafka.{key}", f"must be >= 1, got {getattr(k, key)}")
    if k.linger_ms < 0:
        bad("kafka.linger_ms", "must be >= 0")
    if not k.flush_timeout_s >= 0:
        bad("kafka.flush_timeout_s", "must be >= 0")


def _validate_redis(r: RedisConfig, bad) -> None:
    import math
    import re

    if r.url and not re.fullmatch(r"(rediss?://[^\s/]+(/\d+)?|unix:///\S+)", r.url):
        bad("redis.url", f"must be redis://host:port[/db], rediss://... or unix:///path (\"\": our own server), "
                         f"got {r.url!r}")
    if not (math.isfinite(r.interval_ms) and 0.1 <= r.interval_ms <= 60_000):
        bad("redis.interval_ms", f"must be 0.1..60000 ms, got {r.interval_ms}")
    if not (math.isfinite(r.ttl_s) and r.ttl_s >= 1 and r.ttl_s * 1000 >= 3 * r.interval_ms):
        bad("redis.ttl_s", f"must be >= 1 s and >= 3 x redis.interval_ms (keys are refreshed before they expire), "
                           f"got {r.ttl_s}")
    if not (math.isfinite(r.timeout_s) and 0 < r.timeout_s <= 60):
        bad("redis.timeout_s", f"must be in (0, 60] s, got {r.timeout_s}")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", r.key_prefix):
        bad("redis.key_prefix", f"{r.key_prefix!r}: 1-64 letters, digits, '.', '_' or '-'")


def _validate_ticks(t: TicksConfig, bad) -> None:
    import math

    if not _pow2(t.ring_capacity) or t.ring_capacity < 1024:
        bad("ticks.ring_capacity", f"must be a power of two >= 1024, got {t.ring_capacity}")
    if not 1 <= t.flush_rows <= 1 << 24:
        bad("ticks.flush_rows", f"must be 1..16777216, got {t.flush_rows}")
    if not (math.isfinite(t.flush_ms) and 1 <= t.flush_ms <= 600_000):
        bad("ticks.flush_ms", f"must be 1..600000 ms, got {t.flush_ms}")
    if not (math.isfinite(t.live_max_events_per_s) and t.live_max_events_per_s >= 0):
        bad("ticks.live_max_events_per_s", f"must be >= 0 events/s (0: store only at the stop), got {t.live_max_events_per_s}")
    if not (math.isfinite(t.spool_max_mb) and t.spool_max_mb > 0):
        bad("ticks.spool_max_mb", f"must be > 0 MB, got {t.spool_max_mb}")
    if not (math.isfinite(t.depth_interval_ms) and (t.depth_interval_ms == 0 or 1 <= t.depth_interval_ms <= 3_600_000)):
        bad("ticks.depth_interval_ms", f"must be 0 (no depth) or 1..3600000 ms, got {t.depth_interval_ms}")
    for k in ("quotes_days", "trades_days", "depth_days"):
        if not 1 <= getattr(t, k) <= 36_500:
            bad(f"ticks.{k}", f"must be 1..36500 days, got {getattr(t, k)}")


def _validate_exchange(x: ExchangeConfig, t: TradersConfig, bad) -> None:
    import math

    for key in ("port", "md_port", "md_src_port", "metrics_port"):
        if not 0 <= getattr(x, key) <= 65535:
            bad(f"exchange.{key}", f"must be 0..65535, got {getattr(x, key)}")
    if not 2 <= x.band_ticks <= 1 << 24:
        bad("exchange.band_ticks", f"must be 2..{1 << 24}, got {x.band_ticks}")
    if not 1 <= x.capacity <= 1 << 26:
        bad("exchange.capacity", f"must be 1..{1 << 26}, got {x.capacity}")
    if not 1 <= x.max_batch <= 1 << 16:
        bad("exchange.max_batch", f"must be 1..{1 << 16}, got {x.max_batch}")
    if x.read_max < 32:
        bad("exchange.read_max", "must be >= 32 bytes (one message)")
    if x.out_buffer_max < 4096:
        bad("exchange.out_buffer_max", "must be >= 4096 bytes")
    if x.max_clients < 1:
        bad("exchange.max_clients", "must be >= 1")
    if x.fsync not in ("batch", "interval", "none"):
        bad("exchange.fsync", f"must be \"batch\", \"interval\" or \"none\", got {x.fsync!r}")
    if not (math.isfinite(x.fsync_interval_ms) and x.fsync_interval_ms > 0):
        bad("exchange.fsync_interval_ms", f"must be > 0, got {x.fsync_interval_ms}")
    for key in ("max_open_orders", "max_msgs_per_s"):
        if not 0 <= getattr(x, key) <= 1 << 31:
            bad(f"exchange.{key}", f"must be 0 (no limit) .. 2^31, got {getattr(x, key)}")
    if not (math.isfinite(x.idle_timeout_s) and x.idle_timeout_s >= 0):
        bad("exchange.idle_timeout_s", f"must be >= 0 (0: never), got {x.idle_timeout_s}")
    if x.max_clients_per_address < 1:
        bad("exchange.max_clients_per_address", f"must be >= 1, got {x.max_clients_per_address}")
    if not x.metrics_host:
        bad("exchange.metrics_host", "must be an address (127.0.0.1: this machine only)")
    if t.clients < 1 or t.window < 1 or t.rate < 0:
        bad("traders", f"clients and window must be >= 1 and rate >= 0, got {t}")


def from_dict(table: dict) -> Config:
    """A ``Config`` from a parsed TOML table; raises ``ConfigError`` naming a bad key."""
    return _build(Config, table, "")


def load(path: str | Path | None = None) -> Config:
    """Load a TOML config file (default: ``configs/default.toml``)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    table = read_toml(p)
    try:
        return from_dict(table)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with some fields of some sections replaced, type-checked and
    validated like a file's values: ``replace(cfg, run={"rate": 0})``."""
    table = dataclasses.asdict(cfg)
    for k, v in sections.items():
        if k not in table:
            raise ConfigError(f"{k}: unknown section")
        table[k].update(v)
    return from_dict(table)


def store_writer_args(cfg: Config, redis_url: str = "") -> tuple[str, ...]:
    """``obpipe store --follow``'s options beyond the journal and the store, from the
    config of the process that starts it: the instance and symbol names, and the Redis
    its account state goes to (``redis_url``, else ``[redis] url`` when enabled) with
    that config's key prefix and TTL."""
    out = ("--instance", cfg.instance.name, "--symbols", ",".join(cfg.book.symbols))
    url = redis_url or (cfg.redis.url if cfg.redis.enabled else "")
    if url:
        out += ("--redis", url, "--redis-prefix", cfg.redis.key_prefix, "--redis-ttl", repr(cfg.redis.ttl_s))
    return out


def state_dir(instance: str) -> Path:
    """Where an instance keeps what outlives a run (the exchange journal and store of
    ``obpipe run --source exchange``): ``$XDG_STATE_HOME/obpipe/<instance>``, else
    ``~/.local/state/obpipe/<instance>``."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "obpipe" / instance


def run_exchange_dir(instance: str) -> Path:
    """The journal and store of the instance's latest ``obpipe run --source exchange``
    (``exchange.journal``, ``exchange.journal.db``); the run before it is in ``exchange.prev``."""
    return state_dir(instance) / "exchange"


def run_exchange_store(instance: str) -> Path:
    """The store of the instance's latest ``obpipe run --source exchange`` (beside its journal)."""
    return run_exchange_dir(instance) / "exchange.journal.db"


def ticks_where(cfg: Config) -> str:
    """The tick store a config names: ``[ticks] where``, else the instance's state directory."""
    return cfg.ticks.where or str(state_dir(cfg.instance.name) / "ticks")
