"""The supervisor: ``obpipe run``.

Creates the instance's segments (stats, md ring, events ring, snapshots), starts the
book writer as its own pinned process (spawn context), feeds it, shows live counters,
and shuts everything down in order: stop the feed, let the book writer drain the md
ring, stop it, print the final stats, unlink every segment.

Until the UDP receiver and the analysis process exist (later issues), the supervisor
itself is the feed (the seeded synthetic flow of ``feed_sim.synth``, pushed into the md
ring in batches at the configured rate; a full ring drops and counts) and the events
ring's consumer (it drains and counts events so the book never sees a full ring in a
normal run).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import orjson
import psutil

from feed_sim.sender import UdpSender
from feed_sim.synth import SynthParams, generate_into
from feed_sim.wire import Faults
from obpipe.config import Config
from ring import schema
from ring._kernels import ring_pop
from ring._shm import clean_stale, list_segments
from ring.snapshot import SnapshotRegion
from ring.spsc import Backoff, Ring
from ring.stats import ROW_BOOK, ROW_FEED, ROW_RX, ROW_SUPERVISOR, StatsBlock

from . import book_writer, rx
from ._placement import cores_for, pin
from feed_sim import _wire_kernels as WK

from .status import Status, render

CHUNK = 45 * 64  # messages generated and sent per feed step (64 full packets)


@dataclass
class RunOptions:
    """Command-line overrides of ``[run]``."""

    rate: int | None = None
    duration_s: float | None = None
    count: int | None = None  # stop after this many messages (None: no limit)
    seed: int | None = None
    faults: Faults = Faults()  # sender-side fault injection
    as_json: bool = False
    quiet: bool = False


class _Segments:
    """Every segment of one instance; unlinks them all on close."""

    def __init__(self, cfg: Config):
        inst = cfg.instance.name
        self.items = []
        try:
            self.stats = self._add(StatsBlock.create(inst))
            self.md = self._add(Ring.create(inst, "md", schema.MD_DTYPE, cfg.rings.md_capacity))
            self.events = self._add(Ring.create(inst, "events", schema.EVENT_DTYPE, cfg.rings.events_capacity))
            self.snaps = self._add(SnapshotRegion.create(inst, "snap", len(cfg.book.symbols),
                                                         cfg.book.snapshot_levels))
            self.ev_buf = np.zeros((4096, schema.EVENT_DTYPE.itemsize // 8), np.int64)  # _drain_events
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


def run(cfg: Config, opts: RunOptions | None = None) -> int:
    """Run the pipeline; returns the process exit status (0 clean, 1 a child failed)."""
    opts = opts or RunOptions()
    inst = cfg.instance.name
    rate = cfg.run.rate if opts.rate is None else opts.rate
    duration = cfg.run.duration_s if opts.duration_s is None else opts.duration_s
    seed = cfg.run.seed if opts.seed is None else opts.seed

    stale = clean_stale(inst)
    for name, why in stale:
        _say(opts, f"removed stale segment {name} ({why})")
    if list_segments(inst):
        print(f"obpipe run: instance {inst!r} is already running (segments {list_segments(inst)}); "
              f"pick another [instance] name", file=sys.stderr)
        return 2

    # placement is decided from the cores we may use *before* pinning ourselves
    book_cores = tuple(cores_for("book", cfg.pinning.book))
    feed_cores = tuple(cores_for("feed", cfg.pinning.feed))
    pin(cores_for("supervisor", cfg.pinning.supervisor))
    segs = _Segments(cfg)
    writer = None
    children = []
    status = None
    old_handlers = {}
    rc = 0
    try:
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        b = cfg.backoff
        spec = book_writer.BookWriterSpec(
            instance=inst, widths=tuple(cfg.book.widths()), n_levels=cfg.book.snapshot_levels,
            depth_ticks=cfg.book.event_depth_ticks, max_batch=cfg.book.max_batch,
            backoff=Backoff(b.spin_iters, b.yield_iters, b.sleep_us), cores=book_cores, parent_pid=os.getpid())
        writer = ctx.Process(target=book_writer.main_entry, args=(spec, stop), name="obpipe-book")
        rx_proc = ctx.Process(target=rx.main_entry, name="obpipe-rx", args=(
            rx.RxSpec(inst, backoff=spec.backoff, cores=feed_cores, parent_pid=os.getpid()), stop))
        children.extend([writer, rx_proc])
        interrupted = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda *_: interrupted.append(1))
        for c in children:
            c.start()
        _say(opts, f"obpipe: instance {inst}, book writer pid {writer.pid} on cores {list(spec.cores)}, "
                   f"rx pid {rx_proc.pid} on cores {list(feed_cores)}, {len(cfg.book.symbols)} symbols; "
                   f"starting (first run compiles kernels)...")
        t0 = time.monotonic()
        for c, row_i in ((writer, ROW_BOOK), (rx_proc, ROW_RX)):
            row = segs.stats.row(row_i)
            while row[schema.ST_STATE] < book_writer.STATE_RUNNING:
                if not c.is_alive():
                    print(f"obpipe run: {c.name} exited with code {c.exitcode} during start-up", file=sys.stderr)
                    return 1
                if interrupted or time.monotonic() - t0 > 300:
                    return 1 if not interrupted else 0
                time.sleep(0.05)
        port = int(segs.stats.row(ROW_RX)[schema.ST_RX_PORT])
        status = Status(inst, list(cfg.book.symbols))
        sender = UdpSender(("127.0.0.1", port), session=seed & 0xFFFFFFFF or 1, faults=opts.faults)
        cpu0, t_feed = _cpu_times(children), time.monotonic()
        try:
            rc = _feed_loop(cfg, opts, segs, children, status, interrupted, rate, duration, seed, sender)
            feed_s = time.monotonic() - t_feed
            cpu1 = _cpu_times(children)
            sender.finish()  # the closing heartbeat: a lost last packet becomes a counted gap
            segs.stats.row(ROW_FEED)[schema.ST_FEED_DATAGRAMS] = sender.datagrams_sent
        finally:
            sender.close()
        # orderly stop: let rx take in every datagram sent, then the writer drain the md ring
        rx_row = segs.stats.row(ROW_RX)
        t_drain = time.monotonic()
        while time.monotonic() - t_drain < 10 and all(c.is_alive() for c in children) and (
                rx_row[schema.RX_TRACKER_BASE + WK.T_PACKETS] < sender.datagrams_sent or len(segs.md)):
            _drain_events(segs)
            time.sleep(0.01)
        stop.set()
        for c in children:
            c.join(30)
        _drain_events(segs)
        for c in children:
            if c.exitcode not in (0, None) and rc == 0:
                print(f"obpipe run: {c.name} exited with code {c.exitcode}", file=sys.stderr)
                rc = 1
        final = status.collect()
        final.update(summary(final, sender.counters()))
        final["feed_seconds"] = round(feed_s, 3)
        final["feed_msgs_per_s"] = round(final["feed"]["sent"] / max(feed_s, 1e-9))
        final["cpu_percent"] = {k: round(100 * (cpu1[k] - cpu0[k]) / max(feed_s, 1e-9), 1)
                                for k in cpu1 if k in cpu0}
        final["exit_code"] = rc
        if opts.as_json:
            sys.stdout.write(orjson.dumps(final, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(render(final))
        return rc
    finally:
        for c in children:
            if c.pid is None:
                continue
            stop.set()
            c.join(10)
            if c.is_alive():
                c.terminate()
                c.join(5)
            if c.is_alive():
                c.kill()
                c.join(5)
        if status is not None:
            status.close()
        segs.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)


def _drain_events(segs: _Segments) -> int:
    """Stand-in events consumer (until the analysis process exists): pop and count."""
    buf = segs.ev_buf
    total = 0
    while True:
        n = int(ring_pop(segs.events.ctrl, segs.events.slots, buf, buf.shape[0]))
        total += n
        if n < buf.shape[0]:
            break
    row = segs.stats.row(ROW_SUPERVISOR)
    row[schema.ST_SUP_EVENTS_READ] += total
    return total


def _cpu_times(children) -> dict[str, float]:
    """user + system CPU seconds of the supervisor and each live child, by role."""
    out = {}
    for name, pid in [("supervisor", os.getpid())] + [(c.name.removeprefix("obpipe-"), c.pid) for c in children]:
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except (psutil.Error, TypeError):
            pass
    return out


def summary(d: dict, sender: dict) -> dict:
    """The scriptable top-level keys of a bounded run's JSON."""
    r = d["rx"]
    return {"packets": r["packets"], "messages": r["messages"], "gap_messages": r["gap_messages"],
            "duplicates": r["duplicates"], "out_of_order": r["out_of_order"], "malformed": r["malformed"],
            "ring_drops": r["ring_drops"], "applied": d["book"]["msgs"], "latency_ns": d["latency_ns"],
            "kernel_drops": r["kernel_drops"] if r["kernel_drops"] >= 0 else None, "sent": sender}


def _feed_loop(cfg, opts, segs, children, status, interrupted, rate, duration, seed, sender) -> int:
    params = SynthParams(n_symbols=len(cfg.book.symbols), seed=seed)
    buf = np.zeros(CHUNK, schema.MD_DTYPE)
    generate_into(buf[:1], params)  # compile (or load) the generator before the clock starts
    state = None
    feed = segs.stats.row(ROW_FEED)
    sent = 0
    t_start = time.monotonic()
    next_report = t_start + cfg.run.stats_interval_s
    last_sent, last_t = 0, t_start
    while not interrupted:
        now = time.monotonic()
        if duration and now - t_start >= duration:
            break
        if opts.count is not None and sent >= opts.count:
            break
        dead = [c for c in children if not c.is_alive()]
        if dead:
            print(f"obpipe run: {dead[0].name} died (exit code {dead[0].exitcode})", file=sys.stderr)
            return 1
        if rate:
            due = int((now - t_start) * rate)
            if sent >= due:
                time.sleep(min(CHUNK / rate, 0.005))
                continue
        n = CHUNK if opts.count is None else min(CHUNK, opts.count - sent)
        state = generate_into(buf[:n] if n < CHUNK else buf, params, state)
        sender.send(buf[:n])
        sent += n
        feed[schema.ST_FEED_SENT] = sent
        feed[schema.ST_FEED_DATAGRAMS] = sender.datagrams_sent
        _drain_events(segs)
        if now >= next_report:
            d = status.collect()
            r = (sent - last_sent) / max(now - last_t, 1e-9)
            last_sent, last_t = sent, now
            if not opts.quiet:
                print(f"\n[{now - t_start:7.1f}s] feeding {r:,.0f} msgs/s\n{render(d)}", file=sys.stderr, flush=True)
            next_report = now + cfg.run.stats_interval_s
    return 0
