"""The supervisor: ``obpipe run``.

Creates the instance's segments (stats, md ring, events ring, signals ring,
snapshots), starts the embedded Kafka broker when no broker is named, starts rx, the
book writer, the analysis, the publisher and the feed as separate pinned processes
(spawn context), watches them, shows live counters, and shuts everything down in
order: stop the feed (it sends its closing heartbeat), let rx take in every datagram
sent and the book writer drain the md ring, stop them; then the analysis drains the
events ring and emits the open interval's summaries; then the publisher drains the
signals ring and waits (``[kafka] flush_timeout_s``) for delivery reports, and the Redis
writer writes the final books; then the embedded broker and our Redis server stop.  Print
the final stats, unlink every segment.

Redis (``[redis]``): a server at ``[redis] url``, else one started here on a unix socket
in a temporary directory (``publisher.redis_server``); without ``redis-server`` the run
goes on without Redis and says so.  The Redis writer (``publisher.redis_writer``) is
not essential, like the analysis and the publisher.

Watching: every 50 ms it checks that each child is alive and that each running
child's heartbeat is younger than ``[supervisor] heartbeat_timeout_s``; a hung child
is killed (SIGKILL).  A dead child that ``[supervisor] restart`` names is started again
(at most ``max_restarts`` times).  Any other death of rx, the book writer or the feed
ends the run with exit status 1 and the child's exit code in the message; the analysis
and the publisher are not essential: their death is reported and the book carries on
(the events ring then drops and counts).

With ``[analysis] enabled = false`` the supervisor drains and counts the events ring,
and with ``[kafka] enabled = false`` the signals ring, so their producers see no
full ring in a normal run.

Every child gets one frozen spec, and the config becomes those specs in one place,
``specs_from_config``: no child reads the ``Config``.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import psutil

from obpipe.analysis import process as analysis_proc
from obpipe import config as cfgmod
from obpipe.config import RESTARTABLE, Config
from obpipe.engine import book_writer, lobster, rx
from obpipe.exchange import server as exchange_server
from obpipe.feed_sim import capture as capmod
from obpipe.feed_sim import feed as feedmod
from obpipe.feed_sim import moldudp64 as MS
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.wire import Faults
from obpipe.publisher import process as publisher_proc
from obpipe.publisher import redis_writer
from obpipe.publisher.broker import BrokerError, EmbeddedBroker, reachable
from obpipe.publisher.redis_server import EmbeddedRedis, RedisServerError
from obpipe.publisher.redis_server import ping as redis_ping
from obpipe.ring import schema
from obpipe.ring.kernels import ring_pop
from obpipe.ring.placement import cores_for, pin, usable_cores
from obpipe.ring.runtime import StopFlag, background_priority, realtime_permitted
from obpipe.ring.shm import clean_stale, list_segments
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.stats import (ROW_ANALYSIS, ROW_BOOK, ROW_FEED, ROW_PUBLISHER, ROW_REDIS, ROW_RX, ROW_SUPERVISOR,
                               ROW_TICKS,
                               StatsBlock)
from obpipe.status import Status, render
from obpipe.ticks import recorder as tick_recorder

WATCH_S = 0.05  # supervisor loop period


@dataclass
class RunOptions:
    """Command-line overrides of ``[run]`` and the feed."""

    rate: int | None = None
    duration_s: float | None = None
    count: int | None = None  # stop after this many messages (None: no limit)
    seed: int | None = None
    faults: Faults = field(default_factory=Faults)  # sender-side fault injection
    replay: str | None = None  # a capture or LOBSTER message file instead of the synthetic flow
    speed: float | None = None  # replay at the recorded pace x speed
    symbol: int | str | None = None  # a LOBSTER replay's symbol: index or name (None: the file name's ticker)
    capture: str | None = None  # record the feed's datagrams to this file
    retransmit_window: int = 1 << 20  # an ITCH feed's retransmission window, messages (0: none)
    no_feed: bool = False  # no feed process: an external feed sends to rx's port
    no_kafka: bool = False  # no publisher and no broker ([kafka] enabled = false)
    source: str = "synthetic"  # "exchange": the exchange + simulated traders are the feed ([exchange], [traders])
    as_json: bool = False
    quiet: bool = False


def md_dtype(cfg: Config) -> np.dtype:
    """The md ring's records: per-order (``MD_L3_DTYPE``) for ITCH in MoldUDP64, else
    the aggregated ``MD_DTYPE``."""
    return schema.MD_L3_DTYPE if cfg.rx.protocol == "moldudp64" else schema.MD_DTYPE


class _Segments:
    """Every segment of one instance; unlinks them all on close."""

    def __init__(self, cfg: Config):
        inst = cfg.instance.name
        self.items = []
        try:
            self.stats = self._add(StatsBlock.create(inst))
            self.md = self._add(Ring.create(inst, "md", md_dtype(cfg), cfg.rings.md_capacity))
            self.events = self._add(Ring.create(inst, "events", schema.EVENT_DTYPE, cfg.rings.events_capacity))
            self.snaps = self._add(SnapshotRegion.create(inst, "snap", len(cfg.book.symbols),
                                                         cfg.book.snapshot_levels))
            self.signals = self._add(Ring.create(inst, "signals", schema.SIGNAL_DTYPE, cfg.rings.signals_capacity))
            self.ticks = self._add(Ring.create(inst, "ticks", schema.EVENT_DTYPE, cfg.ticks.ring_capacity)) \
                if cfg.ticks.enabled and cfg.analysis.enabled else None
            self.ev_buf = np.zeros((4096, schema.EVENT_DTYPE.itemsize // 8), np.int64)  # _stand_in
            self.sig_buf = np.zeros((1024, schema.SIGNAL_DTYPE.itemsize // 8), np.int64)
        except BaseException:
            self.close()
            raise

    def _add(self, x):
        self.items.append(x)
        return x

    def close(self):
        for x in reversed(self.items):
            try:
                x.unlink()
            finally:
                x.close()
        self.items = []


def _say(opts: RunOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


class _Child:
    """One supervised part: how to start it, its process, its stats row, its restarts."""

    def __init__(self, name: str, row: int, target, args, restartable: bool, essential: bool = True):
        self.name, self.row, self.target, self.args, self.restartable = name, row, target, args, restartable
        self.essential = essential  # its death (beyond restarts) ends the run
        self.gone = False  # a non-essential part that died for good
        self.proc = None
        self.restarts = 0
        self.started_ns = 0

    def start(self, ctx) -> None:
        self.proc = ctx.Process(target=self.target, args=self.args, name=f"obpipe-{self.name}")
        self.proc.start()
        self.started_ns = time.monotonic_ns()


def _ticks_possible(cfg: Config, opts: RunOptions) -> Config:
    """``[ticks] enabled`` (the default) where recording cannot run: off, and said why
    (no chdb/pyarrow: the ``ticks`` extra; no analysis to relay the events)."""
    import importlib.util

    if not cfg.ticks.enabled:
        return cfg
    why = None
    missing = [m for m in ("chdb", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        why = f"{' and '.join(missing)} not installed (pip install 'obpipe[ticks]')"
    elif not cfg.analysis.enabled:
        why = "[analysis] enabled = false (the analysis relays the book's events to the recorder)"
    if why is None:
        return cfg
    print(f"obpipe run: tick recording off ([ticks] enabled = false hides this): {why}", file=sys.stderr)
    return cfgmod.replace(cfg, ticks={"enabled": False})


def _run_journal(cfg: Config, opts: RunOptions) -> Config:
    """``--source exchange`` without ``[exchange] journal``: the exchange journals into
    the instance's state directory (a new journal each run, fsync ``interval``: the
    traders are simulated; the previous run's journal and store move to
    ``exchange.prev``), so its store writer can keep orders, fills and positions
    (docs/STORE.md).  ``[exchange] store = "off"``: no journal, no store."""
    import shutil

    x = cfg.exchange
    if x.journal or x.store == "off":
        return cfg
    d = cfgmod.run_exchange_dir(cfg.instance.name)
    if d.exists():
        prev = d.with_name("exchange.prev")
        shutil.rmtree(prev, ignore_errors=True)
        d.rename(prev)
    d.mkdir(parents=True, mode=0o700)
    journal = d / "exchange.journal"
    _say(opts, f"obpipe: exchange journal {journal}, store {x.store or str(journal) + '.db'} (obpipe orders / fills / "
               f"positions --instance {cfg.instance.name})")
    return cfgmod.replace(cfg, exchange={"journal": str(journal), "fsync": "interval"})


def run(cfg: Config, opts: RunOptions | None = None) -> int:
    """Run the pipeline; returns the process exit status (0 clean, 1 a part failed, 2 the
    instance or the options are unusable).  Each step is one function below."""
    opts = opts or RunOptions()
    if not _instance_free(cfg.instance.name, opts):
        return 2
    try:
        cores = _place(cfg)
    except ValueError as e:
        print(f"obpipe run: {e}", file=sys.stderr)
        return 2
    try:
        cfg, lobster_md, symbol = _replay_settings(cfg, opts)  # (before the segments: it may name the symbol)
    except ValueError as e:
        print(f"obpipe run: {e}", file=sys.stderr)
        return 2
    if opts.source == "exchange":
        cfg = _run_journal(cfg, opts)
    cfg = _ticks_possible(cfg, opts)
    r = _Run(cfg, opts)
    try:
        session, allow = r.admit()
        if not r.start_broker():
            return 1
        r.start_redis(cores.publisher)
        r.start_metrics()
        specs = specs_from_config(cfg, opts, cores, session=session, allow=allow, src_port=r.src_port(),
                                  bootstrap=r.bootstrap or "", lobster_md=lobster_md, symbol=symbol,
                                  redis_url=r.redis_url or "", request_port=r.request_port(),
                                  day_ns=_itch_day(opts))
        r.trap_signals()
        if r.start_parts(specs):
            r.start_feed(specs.at_port(r.rx_port()))
            rc = r.supervise()
        elif r.interrupted:  # Ctrl-C while a part was still starting: what ran is still drained and reported
            rc = r.interrupted_start()
        else:
            return 1
        rc = r.stop_in_order(rc)
        r.report(rc)
        return rc
    finally:
        r.close()


def _instance_free(inst: str, opts: RunOptions) -> bool:
    """Remove the instance's stale segments; False (said why) if another user's segment
    or a running instance holds the name."""
    foreign: list[tuple[str, str]] = []
    stale = clean_stale(inst, foreign=foreign)
    for name, why in stale:
        _say(opts, f"removed stale segment {name} ({why})")
    if foreign:
        for _name, why in foreign:
            print(f"obpipe run: instance {inst!r}: {why}", file=sys.stderr)
        return False
    if list_segments(inst):
        print(f"obpipe run: instance {inst!r} is already running (segments {list_segments(inst)}); "
              f"pick another [instance] name", file=sys.stderr)
        return False
    return True


@dataclass(frozen=True)
class Placement:
    """The cores each child may run on (``[pinning]``)."""

    book: tuple[int, ...] = ()
    rx: tuple[int, ...] = ()
    feed: tuple[int, ...] = ()
    analysis: tuple[int, ...] = ()
    publisher: tuple[int, ...] = ()
    realtime: int = 0  # SCHED_FIFO priority of rx and the book writer (0: normal scheduling)


def _realtime(cfg: Config, n_cores: int) -> int:
    """rx's and the book writer's SCHED_FIFO priority from ``[pinning] realtime`` (0:
    none): "auto" takes it where permitted on 2+ cores; true where not permitted is an
    error (ValueError)."""
    rt, prio = cfg.pinning.realtime, cfg.pinning.realtime_priority
    if rt is False or (rt == "auto" and n_cores < 2):
        return 0
    if realtime_permitted(prio):
        return prio
    if rt is True:
        raise ValueError(f"pinning.realtime = true, but this process may not use SCHED_FIFO priority {prio} "
                         f"(it needs CAP_SYS_NICE or RLIMIT_RTPRIO >= {prio}); set it to \"auto\" or false")
    return 0


def _place(cfg: Config) -> Placement:
    """Each child's cores and rx's and the book writer's real-time priority, decided from
    the cores we may use *before* pinning ourselves; then pins the supervisor."""
    p, usable = cfg.pinning, usable_cores()
    rt = _realtime(cfg, len(usable))

    def at(role):
        return tuple(cores_for(role, getattr(p, role), usable, realtime=rt > 0))

    cores = Placement(book=at("book"), rx=at("rx"), feed=at("feed"), analysis=at("analysis"),
                      publisher=at("publisher"), realtime=rt)
    pin(list(at("supervisor")))
    return cores


@dataclass(frozen=True)
class Specs:
    """One run's process specs, all built from the config by ``specs_from_config``."""

    book: book_writer.BookWriterSpec
    rx: rx.RxSpec  # port 0: rx binds a free one (``at_port`` then gives it to a restarted rx and the feed)
    analysis: analysis_proc.AnalysisSpec | None  # None: [analysis] enabled = false
    publisher: publisher_proc.PublisherSpec | None  # None: [kafka] enabled = false or --no-kafka
    feed: feedmod.FeedSpec | exchange_server.ExchangeFeedSpec | None  # None: --no-feed
    redis: redis_writer.RedisWriterSpec | None = None  # None: [redis] enabled = false, or no Redis to write to
    ticks: tick_recorder.RecorderSpec | None = None  # None: [ticks] enabled = false (or no analysis to relay)

    def at_port(self, port: int) -> Specs:
        """The specs once rx has bound UDP ``port``: the feed sends there and a restarted
        rx binds it again (so the feed keeps reaching it)."""
        feed = None if self.feed is None else dataclasses.replace(self.feed, port=port)
        return dataclasses.replace(self, rx=dataclasses.replace(self.rx, port=port), feed=feed)


def _publishes(cfg: Config, opts: RunOptions) -> bool:
    return cfg.kafka.enabled and not opts.no_kafka


def _duration_s(cfg: Config, opts: RunOptions) -> float:
    return cfg.run.duration_s if opts.duration_s is None else opts.duration_s


def specs_from_config(cfg: Config, opts: RunOptions, cores: Placement = Placement(), *, session: int = 0,
                      allow: tuple[tuple[str, int], ...] = (), src_port: int = 0, bootstrap: str = "",
                      lobster_md: np.ndarray | None = None, symbol: int = 0, redis_url: str = "",
                      request_port: int = 0, day_ns: int = 0) -> Specs:
    """Every child's spec from the config and the command line: the one place where the
    config becomes process specs (no child sees the ``Config``).  What the run decided
    before comes as arguments: admission (``session``, ``allow``, the feed's reserved
    ``src_port``; ``_admission``), the Kafka ``bootstrap`` (``_Run.start_broker``) and a
    LOBSTER replay's loaded ``lobster_md`` and ``symbol`` (``_replay_settings``), the Redis
    written to (``redis_url``; ``_Run.start_redis``), and for ITCH in MoldUDP64 the feed's
    retransmission ``request_port`` and the session's ``day_ns``.  rx's port is known once it runs:
    ``Specs.at_port``."""
    inst, pid, n_symbols = cfg.instance.name, os.getpid(), len(cfg.book.symbols)
    b = cfg.backoff
    backoff = Backoff(b.spin_iters, b.yield_iters, b.sleep_us, doorbell=b.wake == "doorbell")
    if cores.realtime and b.wake == "doorbell" and len(cores.rx) == 1 and cores.rx == cores.book:
        # real-time rx and book writer on one core: neither may spin (a SCHED_FIFO spinner
        # holds the core its partner needs); each blocks at once until the other's data
        # wakes it, and rx hands the core over after ringing
        backoff = dataclasses.replace(backoff, spin_iters=0, yield_iters=0, handoff=True)
    bk = cfg.book
    book = book_writer.BookWriterSpec(
        instance=inst, widths=tuple(bk.widths()), n_levels=bk.snapshot_levels, depth_ticks=bk.event_depth_ticks,
        max_batch=bk.max_batch, uncross=bk.uncross, backoff=backoff, cores=cores.book, parent_pid=pid,
        l3_orders=bk.l3_orders if cfg.rx.protocol == "moldudp64" else 0, realtime=cores.realtime)
    r = cfg.rx
    mold = r.protocol == "moldudp64"
    rx_spec = rx.RxSpec(inst, port=0, backoff=backoff, cores=cores.rx, parent_pid=pid,
                        session=0 if mold else session, allow=allow, max_seq_jump=r.max_seq_jump,
                        resync_packets=r.resync_packets, accept_new_session=r.accept_new_session,
                        protocol=r.protocol, request_port=request_port or r.request_port, symbols=tuple(bk.symbols),
                        tick_divisor=round(cfg.analysis.tick_size * 10_000), day_ns=day_ns, mold_hold=r.mold_hold,
                        mold_timeout_ms=r.mold_timeout_ms, mold_retries=r.mold_retries, realtime=cores.realtime)
    a = cfg.analysis
    analysis = analysis_proc.AnalysisSpec(
        instance=inst, n_symbols=n_symbols, params=analysis_proc.params(a), max_batch=a.max_batch,
        backoff=Backoff(0, 0, a.idle_sleep_us), cores=cores.analysis, background=cfg.pinning.background_idle,
        parent_pid=pid, relay_ticks=cfg.ticks.enabled) if a.enabled else None
    tk = cfg.ticks
    ticks = tick_recorder.RecorderSpec(
        instance=inst, symbols=tuple(bk.symbols), where=cfgmod.ticks_where(cfg),
        flush_rows=tk.flush_rows, flush_ms=tk.flush_ms, depth_interval_ms=tk.depth_interval_ms,
        live_max_events_per_s=tk.live_max_events_per_s, spool_max_mb=tk.spool_max_mb,
        retention_days=(("quotes", tk.quotes_days), ("trades", tk.trades_days), ("depth", tk.depth_days)),
        cores=cores.publisher, background=cfg.pinning.background_idle,
        parent_pid=pid) if tk.enabled and a.enabled else None
    k = cfg.kafka
    publisher = publisher_proc.PublisherSpec(
        instance=inst, symbols=tuple(bk.symbols), bootstrap=bootstrap, prefix=k.topic_prefix,
        client=tuple(sorted(k.client.items())), pending_max=k.pending_max, producer_queue_max=k.producer_queue_max,
        message_timeout_ms=k.message_timeout_ms, linger_ms=k.linger_ms, flush_timeout_s=k.flush_timeout_s,
        tick_size=a.tick_size, cores=cores.publisher, background=cfg.pinning.background_idle,
        parent_pid=pid) if _publishes(cfg, opts) else None
    rd = cfg.redis
    redis = redis_writer.RedisWriterSpec(
        instance=inst, symbols=tuple(bk.symbols), url=redis_url, interval_ms=rd.interval_ms, ttl_s=rd.ttl_s,
        timeout_s=rd.timeout_s, prefix=rd.key_prefix, cores=cores.publisher, background=cfg.pinning.background_idle,
        parent_pid=pid) if rd.enabled and redis_url else None
    duration = _duration_s(cfg, opts)
    if opts.no_feed:
        feed = None
    elif opts.source == "exchange":  # the traders' rate: --rate, else [traders] rate
        feed = exchange_server.ExchangeFeedSpec(
            exchange=cfg.exchange, traders=dataclasses.replace(cfg.traders, rate=opts.rate or cfg.traders.rate),
            n_symbols=n_symbols, src_port=src_port, count=opts.count, duration_s=duration, instance=inst,
            cores=cores.feed, parent_pid=pid, store_args=cfgmod.store_writer_args(cfg, redis_url if redis else ""))
    else:
        rate = cfg.run.rate if opts.rate is None else opts.rate
        if opts.replay is not None and opts.speed is None and opts.rate is None:
            rate = 0  # a replay without --rate/--speed goes as fast as possible, not at the synthetic default
        if opts.speed is not None:
            rate = 0  # paced by the recording
        feed = feedmod.FeedSpec(
            replay=opts.replay, rate=rate, speed=opts.speed, count=opts.count, duration_s=duration,
            seed=cfg.run.seed if opts.seed is None else opts.seed, start_ns=cfg.run.start_ns, n_symbols=n_symbols,
            symbol=symbol, faults=opts.faults, capture=opts.capture, session=session, src_port=src_port,
            instance=inst, cores=cores.feed, parent_pid=pid, lobster_md=lobster_md,
            lobster_loader=lobster.load_lobster, request_port=request_port,
            retransmit_window=opts.retransmit_window)
    return Specs(book=book, rx=rx_spec, analysis=analysis, publisher=publisher, feed=feed, redis=redis, ticks=ticks)


class _Run:
    """One ``obpipe run`` in progress: its segments, stop flags, children, broker and
    status view.  Each method is one step of ``run``; ``close`` undoes whatever was done."""

    def __init__(self, cfg: Config, opts: RunOptions):
        self.cfg, self.opts = cfg, opts
        self.ctx = mp.get_context("spawn")
        # (lock-free: children get SIGKILLed)
        self.stop, self.feed_stop, self.an_stop, self.pub_stop, self.redis_stop, self.tk_stop = (
            StopFlag(self.ctx) for _ in range(6))
        self.ticks = None
        self.children: list[_Child] = []
        self.writer = self.rxc = self.analysis = self.publisher = self.feed = self.redisw = None
        self.status: Status | None = None
        self.broker: EmbeddedBroker | None = None
        self.bootstrap: str | None = None  # the Kafka published to (None: nothing is published)
        self.redis_server: EmbeddedRedis | None = None
        self.redis_url: str | None = None  # the Redis written to (None: none)
        self.metrics = None  # the /metrics endpoint (obpipe.metrics.exporter.MetricsServer), if serving
        self.src_sock: socket.socket | None = None
        self._request_port = 0
        self.interrupted: list[int] = []  # non-empty once SIGINT or SIGTERM came
        self.old_handlers: dict = {}
        self.meter: dict = {}  # the CPU window: see supervise()
        self.segs = _Segments(cfg)  # (last: close() unlinks them)

    def admit(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Who rx admits (``_admission``): the feed's session and the allowed sources."""
        session, self.src_sock, allow = _admission(self.cfg, self.opts)
        return session, allow

    def request_port(self) -> int:
        """moldudp64 with the feed obpipe starts: a free port on 127.0.0.1 for its
        retransmission requests (``[rx] request_port`` if set); else 0."""
        if self.cfg.rx.protocol != "moldudp64" or self.opts.no_feed:
            return 0
        if self.cfg.rx.request_port:
            return self.cfg.rx.request_port
        if not self._request_port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
                sk.bind(("127.0.0.1", 0))
                self._request_port = sk.getsockname()[1]
        return self._request_port

    def src_port(self) -> int:
        """The UDP port reserved for the feed to send from (0: none reserved)."""
        return self.src_sock.getsockname()[1] if self.src_sock is not None else 0

    def start_broker(self) -> bool:
        """The Kafka the publisher sends to: ``[kafka] bootstrap_servers`` (``obpipe run
        --kafka`` overrides it in the config), else an embedded broker started here.
        False (said why) if that broker cannot start."""
        if not _publishes(self.cfg, self.opts):
            return True
        opts = self.opts
        self.bootstrap = self.cfg.kafka.bootstrap_servers
        if not self.bootstrap:
            try:
                self.broker = EmbeddedBroker.start()
            except BrokerError as e:
                print(f"obpipe run: cannot start the embedded Kafka broker: {e}", file=sys.stderr)
                return False
            self.bootstrap = self.broker.bootstrap
            self.segs.stats.row(ROW_SUPERVISOR)[schema.ST_SUP_KAFKA_PORT] = self.broker.port
            _say(opts, f"obpipe: embedded Kafka broker (tansu) pid {self.broker.pid} on {self.bootstrap}; "
                       f"tail it with: obpipe tail --kafka {self.bootstrap}")
        elif not reachable(self.bootstrap, 1.0):
            # (warnings such as "Kafka unreachable" print even with --quiet, like part deaths)
            _say(opts, f"obpipe: Kafka at {self.bootstrap} is not reachable now; the pipeline runs anyway and the "
                       f"publisher counts errors until it is")
        return True

    def start_redis(self, cores: tuple[int, ...] = ()) -> None:
        """The Redis the live state goes to: ``[redis] url``, else a server started here
        (a unix socket in a temporary directory) on ``cores`` (the Redis writer's), as
        SCHED_IDLE like the writer when ``[pinning] background_idle``: it takes only CPU
        the book writer and rx leave.  Never fails the run: without ``redis-server``, or
        if it cannot start, the run goes on without Redis (said)."""
        rd, opts = self.cfg.redis, self.opts
        if not rd.enabled:
            return
        if rd.url:
            self.redis_url = rd.url
            if not redis_ping(rd.url, 1.0) and not rd.url.startswith("rediss://"):
                _say(opts, f"obpipe: Redis at {rd.url} does not answer now; the pipeline runs anyway and the "
                           f"Redis writer counts errors until it does")
            return
        try:
            self.redis_server = EmbeddedRedis.start(tag=self.cfg.instance.name, cores=cores or None)
        except RedisServerError as e:
            print(f"obpipe run: running without Redis ([redis] enabled = false hides this): {e}", file=sys.stderr,
                  flush=True)
            return
        self.redis_url = self.redis_server.url
        if self.cfg.pinning.background_idle:
            background_priority(True, self.redis_server.pid)
        self.segs.stats.row(ROW_SUPERVISOR)[schema.ST_SUP_REDIS_PID] = self.redis_server.pid
        inst, kp = self.cfg.instance.name, rd.key_prefix
        _say(opts, f"obpipe: Redis (redis-server) pid {self.redis_server.pid} on {self.redis_url}; try: redis-cli "
                   f"-s {self.redis_server.socket_path} HGETALL {kp}:{inst}:bbo:{self.cfg.book.symbols[0]}")

    def start_metrics(self) -> None:
        """The /metrics endpoint on ``[metrics] host:port`` (a daemon thread of this
        process; a scrape reads shared memory).  Never fails the run: a port in use is
        said and the run goes on without it."""
        m = self.cfg.metrics
        if m.port == 0:
            return
        from obpipe.metrics.exporter import MetricsServer

        try:
            self.metrics = MetricsServer(self.cfg.instance.name, list(self.cfg.book.symbols),
                                         self.cfg.analysis.tick_size, m.port, m.host)
        except OSError as e:
            print(f"obpipe run: no /metrics on {m.host}:{m.port} ([metrics] port; 0 turns it off): {e}",
                  file=sys.stderr, flush=True)
            return
        self.segs.stats.row(ROW_SUPERVISOR)[schema.ST_SUP_METRICS_PORT] = self.metrics.port
        _say(self.opts, f"obpipe: metrics on {self.metrics.url}")

    def trap_signals(self) -> None:
        """SIGINT and SIGTERM end the run in order (``close`` restores the handlers)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old_handlers[sig] = signal.signal(sig, lambda *_: self.interrupted.append(1))

    def start_parts(self, specs: Specs) -> bool:
        """Start the book writer, rx, the analysis and the publisher; wait until each
        says running.  False if one died, the start-up timed out or an interrupt came."""
        restart = set(self.cfg.supervisor.restart)
        self.writer = _Child("book", ROW_BOOK, book_writer.main_entry, (specs.book, self.stop), "book" in restart)
        self.rxc = _Child("rx", ROW_RX, rx.main_entry, (specs.rx, self.stop), "rx" in restart)
        self.children.extend([self.writer, self.rxc])
        if specs.analysis is not None:
            self.analysis = _Child("analysis", ROW_ANALYSIS, analysis_proc.main_entry, (specs.analysis, self.an_stop),
                                   "analysis" in restart, essential=False)
            self.children.append(self.analysis)
        if specs.publisher is not None:
            self.publisher = _Child("publisher", ROW_PUBLISHER, publisher_proc.main_entry,
                                    (specs.publisher, self.pub_stop), "publisher" in restart, essential=False)
            self.children.append(self.publisher)
        if specs.redis is not None:
            self.redisw = _Child("redis", ROW_REDIS, redis_writer.main_entry, (specs.redis, self.redis_stop),
                                 "redis" in restart, essential=False)
            self.children.append(self.redisw)
        if specs.ticks is not None:
            self.ticks = _Child("ticks", ROW_TICKS, tick_recorder.main_entry, (specs.ticks, self.tk_stop),
                                "ticks" in restart, essential=False)
            self.children.append(self.ticks)
        for c in self.children:
            c.start(self.ctx)
        an, pub = self.analysis, self.publisher
        _say(self.opts, f"obpipe: instance {self.cfg.instance.name}, book writer pid {self.writer.proc.pid} on cores "
                        f"{list(specs.book.cores)}, rx pid {self.rxc.proc.pid} on cores {list(specs.rx.cores)}, "
                        + (f"analysis pid {an.proc.pid} on cores {list(specs.analysis.cores)}, " if an else "")
                        + (f"publisher pid {pub.proc.pid} on cores {list(specs.publisher.cores)}, " if pub else "")
                        + (f"redis writer pid {self.redisw.proc.pid}, " if self.redisw else "")
                        + f"{len(self.cfg.book.symbols)} symbols; starting (first run compiles kernels)...")
        return _wait_running(self.segs, self.children, self.interrupted)

    def rx_port(self) -> int:
        """The UDP port the running rx bound."""
        return int(self.segs.stats.row(ROW_RX)[schema.ST_RX_PORT])

    def start_feed(self, specs: Specs) -> None:
        """Open the status view and start the feed (``specs`` at rx's port); a restarted
        rx binds the same port, so the feed keeps reaching it."""
        self.rxc.args = (specs.rx, self.stop)
        inst = self.cfg.instance.name
        self.status = Status(inst, list(self.cfg.book.symbols))
        fs, opts, port = specs.feed, self.opts, specs.rx.port
        if fs is None:
            _say(opts, f"obpipe: no feed; send to 127.0.0.1:{port} (e.g. obpipe feed --instance {inst})")
            return
        synthetic = isinstance(fs, feedmod.FeedSpec)
        target = feedmod.main_entry if synthetic else exchange_server.feed_entry
        self.feed = _Child("feed", ROW_FEED, target, (fs, self.feed_stop), False)
        self.feed.start(self.ctx)
        self.children.append(self.feed)
        rate = fs.rate if synthetic else 0
        _say(opts, f"obpipe: feed pid {self.feed.proc.pid} ({fs.source_name()}"
                   f"{f' at {rate:,} msgs/s' if rate and opts.speed is None else ''}"
                   f"{f' at {opts.speed}x recorded pace' if opts.speed else ''}) -> 127.0.0.1:{port}")

    def interrupted_start(self) -> int:
        """An interrupt came before every part ran (with ``--no-feed`` an outside feed may
        already be applied): no feed is started; the stop and the report follow as after
        a run, over an empty CPU window."""
        self.status = Status(self.cfg.instance.name, list(self.cfg.book.symbols))
        self.meter = {"t0": time.monotonic(), "cpu0": {}, "cpu1": {}, "feed_cpu0": 0, "feed_s": 0.0}
        return 0

    def supervise(self) -> int:
        """Watch until the feed ends, the duration passes or an interrupt (``_watch``); 1
        if a part failed.  Keeps the CPU window: the supervisor's seconds and each part's
        CPU times from the feed's first send to here."""
        self.meter = {"t0": time.monotonic(), "cpu0": _cpu_times(self.children), "feed_cpu0": 0}
        rc = _watch(self.cfg, self.opts, self.segs, self.children, self.feed, self.status, self.interrupted,
                    _duration_s(self.cfg, self.opts), self.ctx, self.meter)
        self.meter["feed_s"] = time.monotonic() - self.meter["t0"]
        self.meter["cpu1"] = _cpu_times(self.children)
        return rc

    def stop_in_order(self, rc: int) -> int:
        """The orderly stop: the feed first (closing heartbeat), then rx takes in every
        datagram sent and the writer drains the md ring, then the analysis drains the
        events and flushes its summaries, then the publisher.  Returns ``rc``, made 1 if
        the feed or an essential part exited with an error."""
        rc = self._stop_feed(rc)
        self._stop_book_and_rx()
        self._stop_consumers()
        for c in self.children:
            if c is not self.feed and not c.gone and c.proc.exitcode not in (0, None):
                print(f"obpipe run: {c.name} exited with code {c.proc.exitcode}", file=sys.stderr)
                if c.essential:  # (the analysis and the publisher never fail a run)
                    rc = rc or 1
        return rc

    def _stop_feed(self, rc: int) -> int:
        self.feed_stop.set()
        feed = self.feed
        if feed is not None:
            feed.proc.join(30)
            if feed.proc.exitcode not in (0, None) and rc == 0:
                print(f"obpipe run: feed exited with code {feed.proc.exitcode}", file=sys.stderr)
                rc = 1
        return rc

    def _stop_book_and_rx(self) -> None:
        segs, writer, rxc = self.segs, self.writer, self.rxc
        rx_row, feed_row = segs.stats.row(ROW_RX), segs.stats.row(ROW_FEED)
        t_drain = time.monotonic()
        if self.cfg.rx.protocol == "moldudp64":  # every message delivered or declared lost
            def behind():
                return rx_row[schema.RX_MOLD_BASE + MS.S_NEXT] <= feed_row[schema.ST_FEED_SENT]
        else:
            # rx behind the feed, unless it has turned its loop 3 times since its last datagram
            # with nothing more to read: what it still lacks never reached it (sent while rx was
            # down and being restarted, or dropped by the kernel), and is counted as a gap
            seen = {"packets": -1, "hb": 0, "idle_turns": 0}

            def behind():
                pk = int(rx_row[schema.RX_TRACKER_BASE + WK.T_PACKETS])
                if pk >= feed_row[schema.ST_FEED_DATAGRAMS]:
                    return False
                hb = int(rx_row[schema.ST_HEARTBEAT_NS])
                if pk != seen["packets"]:
                    seen.update(packets=pk, idle_turns=0)
                elif hb != seen["hb"]:
                    seen["idle_turns"] += 1
                seen["hb"] = hb
                return seen["idle_turns"] < 3
        while time.monotonic() - t_drain < 10 and writer.proc.is_alive() and rxc.proc.is_alive() and (
                behind() or len(segs.md)):
            _stand_in(segs, self.analysis, self.publisher)
            time.sleep(0.01)
        self.stop.set()
        for c in (writer, rxc):
            c.proc.join(30)

    def _stop_consumers(self) -> None:
        if self.redis_server is not None:  # (the final books are written at normal priority: see below)
            background_priority(False, self.redis_server.pid)
        for c, ev_ in ((self.analysis, self.an_stop), (self.publisher, self.pub_stop),
                       (self.ticks, self.tk_stop), (self.redisw, self.redis_stop)):
            if c is not None and c.proc.pid:
                # a SCHED_IDLE part drains at normal priority: the book writer is done, and a busy
                # machine leaves it almost no CPU (set from here: it may not run to do it; docs/DECISIONS.md
                # "SCHED_IDLE only while the book writer runs")
                background_priority(False, c.proc.pid)
            ev_.set()
            if c is self.ticks and c is not None:
                self._join_recorder(c)
            elif c is not None:
                c.proc.join(30 + (self.cfg.kafka.flush_timeout_s if c is self.publisher else 0))
            _stand_in(self.segs, self.analysis, self.publisher)

    def _join_recorder(self, c) -> None:
        """Wait for the recorder while it stores its spool: as long as the spool shrinks
        (30 s without progress ends the wait; what is left stays in the spool, stored by the
        next run or ``obpipe ticks``)."""
        row = self.segs.stats.row(ROW_TICKS)
        last, t_last, said = int(row[schema.ST_TK_PENDING]), time.monotonic(), False
        while c.proc.is_alive():
            c.proc.join(0.5)
            p = int(row[schema.ST_TK_PENDING])
            if p < last:
                last, t_last = p, time.monotonic()
            elif time.monotonic() - t_last > 30:
                break
            if p > 1_000_000 and not said:
                _say(self.opts, f"obpipe: storing {p:,} recorded ticks; killed, they stay in the spool for the next run")
                said = True

    def report(self, rc: int) -> None:
        """Print the final stats (JSON on stdout with ``--json``, else the table)."""
        final = self.status.collect()
        final.update(summary(final))
        m = self.meter
        feed_s, cpu0, cpu1 = m["feed_s"], m["cpu0"], m["cpu1"]
        f = final["feed"]
        send_s = (f["t1_ns"] - f["t0_ns"]) / 1e9 if f["t0_ns"] and f["t1_ns"] > f["t0_ns"] else feed_s
        final["feed_seconds"] = round(send_s, 3)  # the feed's own sending time
        final["feed_msgs_per_s"] = round(f["sent"] / max(send_s, 1e-9))
        # CPU over the supervisor's window: from the feed's start (kernels loaded) to its end
        final["cpu_percent"] = {k: round(100 * (cpu1[k][1] - cpu0[k][1]) / max(feed_s, 1e-9), 1)
                                for k in cpu1 if k in cpu0 and cpu0[k][0] == cpu1[k][0]}
        if self.feed is not None and f["cpu_ns"]:
            final["cpu_percent"]["feed"] = round(100 * (f["cpu_ns"] - m["feed_cpu0"]) / 1e9 / max(feed_s, 1e-9), 1)
        final["restarts"] = {c.name: c.restarts for c in self.children}
        final["kafka"] = {"bootstrap": self.bootstrap, "embedded": self.broker is not None}
        final["redis"].update(url=self.redis_url, embedded=self.redis_server is not None)
        final["exit_code"] = rc
        if self.opts.as_json:
            sys.stdout.write(orjson.dumps(final, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(render(final))

    def close(self) -> None:
        """Stop every child (terminate, then kill, the ones that do not exit), close the
        status view, the reserved port and the broker, unlink every segment, restore the
        signal handlers."""
        for flag in (self.stop, self.feed_stop, self.an_stop, self.pub_stop, self.redis_stop, self.tk_stop):
            flag.set()
        for c in self.children:
            p = c.proc
            if p is None or p.pid is None:
                continue
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if self.metrics is not None:
            self.metrics.close()
        if self.status is not None:
            self.status.close()
        if self.src_sock is not None:
            self.src_sock.close()
        if self.broker is not None:
            self.broker.stop()
        if self.redis_server is not None:
            self.redis_server.stop()
        self.segs.close()
        for sig, h in self.old_handlers.items():
            signal.signal(sig, h)


def reserve_udp_port() -> socket.socket:
    """A UDP socket bound to a free port on 127.0.0.1 with SO_REUSEPORT: the feed binds
    the same port (allowed for the same user only), so while this is open no other
    user's process can send from it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


def _admission(cfg: Config, opts: RunOptions) -> tuple[int, socket.socket | None, tuple[tuple[str, int], ...]]:
    """Who rx admits (docs/PROTOCOL.md "Admission"): (the session the feed is given, the
    socket reserving the feed's source port or None, the sources rx allows).  The feed
    obpipe starts sends from a reserved port, the only source rx admits unless
    ``[rx] allow_sources`` names others, in a session chosen here (``[rx] session``, else
    random per run) that rx follows from its first packet.  A capture resends its
    recorded session, and the exchange (``--source exchange``, also sending from the
    reserved port) picks its own: rx follows the first session seen from that port."""
    r = cfg.rx
    own = not opts.no_feed
    capture = opts.replay is not None and capmod.is_capture(opts.replay)
    session = r.session or (feedmod.random_session() if own and not capture and opts.source != "exchange" else 0)
    allow = r.sources()
    sock = None
    if own and not allow:
        sock = reserve_udp_port()
        allow = (("127.0.0.1", sock.getsockname()[1]),)
    return session, sock, allow


def _itch_day(opts: RunOptions) -> int:
    """An ITCH replay's session day (UTC epoch ns of its midnight in New York) from the
    file's name (e.g. 01302019.NASDAQ_ITCH50.gz); 0: not known (rx takes today's)."""
    if opts.replay is None or not feedmod.is_itch(opts.replay):
        return 0
    from obpipe.feed_sim import itch

    return itch.file_day_ns(opts.replay) or 0


def _itch_settings(cfg: Config, opts: RunOptions) -> Config:
    """An ITCH replay runs rx in moldudp64 mode into the per-order book, on the stocks
    ``--symbol A,B,...`` names (else ``[book] symbols``)."""
    names = tuple(x for x in str(opts.symbol).split(",") if x) if opts.symbol is not None else cfg.book.symbols
    if not names:
        raise ValueError("--symbol: name the stocks to follow (e.g. --symbol AAPL,MSFT)")
    w = {k: v for k, v in cfg.book.ladder_width_by_symbol.items() if k in names}
    try:
        return cfgmod.replace(cfg, rx={"protocol": "moldudp64"},
                              book={"symbols": list(names), "ladder_width_by_symbol": w})
    except cfgmod.ConfigError as e:
        raise ValueError(f"--symbol {opts.symbol}: {e}") from None


def _replay_symbol(cfg: Config, opts: RunOptions) -> tuple[Config, int]:
    """The symbol index a LOBSTER replay's messages carry, and the config naming it:
    ``--symbol`` as an index, or as a name (one of ``[book] symbols``, else the only
    symbol), or by default the ticker of the file's name (AMZN_2012-06-21_..._message_1.csv
    is published as AMZN, so stories of it are found by that name)."""
    sym = opts.symbol
    if sym is None:
        sym = lobster.file_info(opts.replay)[0] if opts.replay else None
        if sym is None:
            return cfg, 0
    if isinstance(sym, str) and sym.isdigit():
        sym = int(sym)
    names = cfg.book.symbols
    if isinstance(sym, int):
        if not 0 <= sym < len(names):
            raise ValueError(f"--symbol {sym}: [book] symbols has {len(names)} (indexes 0..{len(names) - 1})")
        return cfg, sym
    if sym in names:
        return cfg, names.index(sym)
    w = {k: v for k, v in cfg.book.ladder_width_by_symbol.items() if k == sym}
    return dataclasses.replace(cfg, book=dataclasses.replace(cfg.book, symbols=(sym,), ladder_width_by_symbol=w)), 0


def _replay_settings(cfg: Config, opts: RunOptions) -> tuple[Config, np.ndarray | None, int]:
    """For a LOBSTER replay: the config it runs with, the file loaded once (the feed
    sends it as loaded; ``None``: not a LOBSTER replay, or a file the feed will report),
    and the symbol index its messages carry (``_replay_symbol``).
    Its ticks are the file's (cents, or half cents for the AMZN sample), so the tick size
    published with every message is the file's, not ``[analysis] tick_size`` (which
    describes the synthetic feed and the exchange).  And its book uncrosses: a level-N
    file has no message for an order cancelled away from the top N levels, so such a
    level stays in the book and, once the market moves through it, crosses it (without
    the order-book file beside it to correct the top; ``lobster.load_lobster``)."""
    if opts.replay is not None and feedmod.is_itch(opts.replay) and not opts.no_feed:
        return _itch_settings(cfg, opts), None, 0
    if opts.replay is None or opts.no_feed or opts.source == "exchange" or capmod.is_capture(opts.replay) \
            or not os.path.isfile(opts.replay):
        return cfg, None, opts.symbol if isinstance(opts.symbol, int) else 0
    cfg, symbol = _replay_symbol(cfg, opts)
    try:
        md, divisor = lobster.load_lobster(opts.replay, symbol, return_tick=True)
    except feedmod.FeedError:
        return cfg, None, symbol  # (the feed reports what is wrong with the file)
    size = divisor / 10_000
    cfg = dataclasses.replace(cfg, book=dataclasses.replace(cfg.book, uncross=True))  # (partial depth: see there)
    if size != cfg.analysis.tick_size:
        _say(opts, f"obpipe: {os.path.basename(opts.replay)} is priced in ticks of {size:g} (LOBSTER prices / "
                   f"{divisor}); publishing tick_size {size:g}, not [analysis] tick_size "
                   f"{cfg.analysis.tick_size:g}")
        cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, tick_size=size))
    return cfg, md, symbol


def _wait_running(segs, children, interrupted, timeout_s: float = 300) -> bool:
    """Wait until every child's stats row says running; False if one died or time ran out."""
    t0 = time.monotonic()
    for c in children:
        row = segs.stats.row(c.row)
        while not (row[schema.ST_STATE] == schema.STATE_RUNNING and row[schema.ST_PID] == c.proc.pid):
            if not c.proc.is_alive():
                print(f"obpipe run: {c.name} exited with code {c.proc.exitcode} during start-up", file=sys.stderr)
                return False
            if interrupted or time.monotonic() - t0 > timeout_s:
                return False
            time.sleep(0.02)
    return True


def _watch(cfg, opts, segs, children, feed, status, interrupted, duration, ctx, meter) -> int:
    """Supervise until the feed ends, the duration passes or Ctrl-C; 1 if a part failed.
    ``meter`` gets the CPU baseline taken when the feed starts sending."""
    feed_row = segs.stats.row(ROW_FEED)
    metered = feed is None
    consumers = [next((c for c in children if c.name == n), None) for n in ("analysis", "publisher")]
    t_start = time.monotonic()
    next_report = t_start + cfg.run.stats_interval_s
    while not interrupted:
        now = time.monotonic()
        if duration and feed is None and now - t_start >= duration:
            break  # (a feed ends itself after the duration, counted from its first send)
        if not metered and feed_row[schema.ST_STATE] >= schema.STATE_RUNNING:
            metered = True
            meter.update(t0=time.monotonic(), cpu0=_cpu_times(children), feed_cpu0=int(feed_row[schema.ST_FEED_CPU_NS]))
        if feed is not None and not feed.proc.is_alive():
            break  # a bounded feed finished (its exit code is checked by the caller)
        for c in children:
            if c is feed or c.gone:
                continue
            if not c.proc.is_alive():
                if not _restart(cfg, segs, c, interrupted, ctx):
                    return 1
                continue
            _kill_if_hung(cfg, segs, c)
        _stand_in(segs, *consumers)
        if now >= next_report:
            d = status.collect()
            if not opts.quiet:
                print(f"\n[{now - t_start:7.1f}s]\n{render(d)}", file=sys.stderr, flush=True)
            next_report = now + cfg.run.stats_interval_s
        time.sleep(WATCH_S)
    return 0


def _restart(cfg, segs, c: _Child, interrupted, ctx) -> bool:
    """A dead child: start it again if ``[supervisor] restart`` names it and it has
    restarts left, else report it (a non-essential one is then gone for good).  False if
    the run must end: an essential part is dead for good or the restart failed."""
    max_restarts = cfg.supervisor.max_restarts
    if not c.restartable or c.restarts >= max_restarts:
        why = "" if c.restartable else (
            " (not restarted: [supervisor] restart does not name it)" if c.name in RESTARTABLE
            else " (not restartable)")
        if c.restartable:
            why = f" (restarted {c.restarts} times already; max_restarts {max_restarts})"
        if not c.essential:
            print(f"obpipe run: {c.name} died (exit code {c.proc.exitcode}){why}; the book carries on "
                  f"without it", file=sys.stderr, flush=True)
            c.gone = True
            return True
        print(f"obpipe run: {c.name} died (exit code {c.proc.exitcode}){why}", file=sys.stderr)
        return False
    c.restarts += 1
    segs.stats.row(ROW_SUPERVISOR)[schema.ST_SUP_RESTARTS] += 1
    print(f"obpipe run: {c.name} died (exit code {c.proc.exitcode}); restarting "
          f"({c.restarts}/{max_restarts})", file=sys.stderr, flush=True)
    c.start(ctx)
    return _wait_running(segs, [c], interrupted, timeout_s=60)


def _kill_if_hung(cfg, segs, c: _Child) -> None:
    """SIGKILL a running child whose heartbeat is older than ``[supervisor]
    heartbeat_timeout_s`` (the next watch turn then finds it dead)."""
    timeout_ns = int(cfg.supervisor.heartbeat_timeout_s * 1e9)
    row = segs.stats.row(c.row)
    hb = int(row[schema.ST_HEARTBEAT_NS])
    if (timeout_ns and row[schema.ST_STATE] == schema.STATE_RUNNING and row[schema.ST_PID] == c.proc.pid
            and time.monotonic_ns() - max(hb, c.started_ns) > timeout_ns
            and not (not c.essential and cfg.pinning.background_idle and _runnable(c.proc.pid))):
        # (a SCHED_IDLE part that is runnable is starved by the book writer and rx, not hung)
        age = (time.monotonic_ns() - max(hb, c.started_ns)) / 1e9
        print(f"obpipe run: {c.name} (pid {c.proc.pid}) heartbeat stale for {age:.1f} s "
              f"(> {cfg.supervisor.heartbeat_timeout_s} s): killing it", file=sys.stderr, flush=True)
        segs.stats.row(ROW_SUPERVISOR)[schema.ST_SUP_STALE_KILLS] += 1
        c.proc.kill()
        c.proc.join(5)


def _drain(ring, buf) -> int:
    """Pop and discard everything in ``ring``; returns how many records."""
    total = 0
    while True:
        n = int(ring_pop(ring.ctrl, ring.slots, buf, buf.shape[0]))
        total += n
        if n < buf.shape[0]:
            return total


def _stand_in(segs: _Segments, analysis, publisher) -> None:
    """Consume the events ring when no analysis is configured and the signals ring when
    no publisher is (counted in the supervisor row), so their producers never fill up."""
    row = segs.stats.row(ROW_SUPERVISOR)
    if analysis is None:
        row[schema.ST_SUP_EVENTS_READ] += _drain(segs.events, segs.ev_buf)
    if publisher is None:
        row[schema.ST_SUP_OUT_DISCARDED] += _drain(segs.signals, segs.sig_buf)


def _runnable(pid: int) -> bool:
    """True if ``pid`` is running or waiting for a CPU (not sleeping or stopped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_RUNNING
    except psutil.Error:
        return False


def _cpu_times(children) -> dict[str, tuple[int, float]]:
    """(pid, user + system CPU seconds) of the supervisor and each live child, by role."""
    out = {}
    for name, pid in [("supervisor", os.getpid())] + [(c.name, c.proc.pid) for c in children]:
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = (pid, t.user + t.system)
        except (psutil.Error, TypeError, ValueError):
            pass
    return out


def summary(d: dict) -> dict:
    """The scriptable top-level keys of a bounded run's JSON."""
    r = d["rx"]
    a, p = d["analysis"], d["publisher"]
    return {"packets": r["packets"], "messages": r["messages"], "gap_messages": r["gap_messages"],
            "duplicates": r["duplicates"], "out_of_order": r["out_of_order"], "malformed": r["malformed"],
            "ring_drops": r["ring_drops"], "applied": d["book"]["msgs"], "latency_ns": d["latency_ns"],
            "kernel_drops": r["kernel_drops"] if r["kernel_drops"] >= 0 else None,
            "signals": a["signals"], "summaries": a["summaries"], "published": p["delivered"],
            "publish_dropped": (a["signal_drops"] + a["summary_drops"] + p["signals_dropped"]
                                + p["summaries_dropped"] + p["failed"] + p["lost"] + p["encode_errors"]),
            "publish_coalesced": p["coalesced"], "kafka_errors": p["kafka_errors"],
            **({k: r["mold"][k] for k in ("gaps_seen", "gaps_healed", "gaps_lost", "messages_lost", "recovered")}
               if r.get("protocol") == "moldudp64" else {})}
