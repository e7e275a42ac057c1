"""The feed: the synthetic flow or a replay, sent over UDP in the wire format.

One code path serves ``obpipe feed`` (synthetic), ``obpipe replay FILE`` and the feed
process that ``obpipe run`` starts.  Sources:

* **synthetic** - ``feed_sim.synth``, seeded; unbounded unless a count or duration.
* **LOBSTER** - a LOBSTER message CSV (``engine.lobster.load_messages``).  When the
  matching order-book file lies beside it (``..._message_N.csv`` ->
  ``..._orderbook_N.csv``), the replay first sends row 1's levels as set-level
  messages and then messages 2.. (LOBSTER's book before message 1 is unknown; row 1 is
  the book after it), so the receiver's book is right from the start; and after each
  message whose order-book row its book would not show (a level-N file never reports
  an order cancelled outside the top N levels, so such levels go stale), set-level
  corrections that make the receiver's best bid and ask equal the row
  (``engine.lobster.replay_stream``; how many a day needs: docs/DECISIONS.md).
* **capture** - an ``.obcap`` file (``feed_sim.capture``): its datagrams are resent
  byte for byte (faults included), so a replayed capture reproduces the original run's
  counters.  Fault injection on top of a capture is refused (it has no packets to
  re-encode, only datagrams).

Pacing: a fixed message rate, the recorded pace (``ts_exch_ns``, or a capture's send
times) times ``speed``, or as fast as possible (rate 0, no speed).  Python runs per
chunk (at most ~20 ms of feed), never per datagram.
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from obpipe.ring import schema

from obpipe.feed_sim import capture as capmod
from obpipe.feed_sim.sender import UdpSender
from obpipe.feed_sim.synth import SynthParams, generate_into
from obpipe.feed_sim.wire import Faults

CHUNK_SECONDS = 0.02  # feed time per chunk at a fixed rate (stop checks, counters, progress)
MAX_CHUNK = 45 * 256  # messages per chunk at full speed


#: How a LOBSTER message file becomes MD records: (path, symbol index) -> records of
#: ``schema.MD_DTYPE``.  The wiring gives ``obpipe.engine.lobster.load_lobster`` (the
#: feed imports nothing above it).
LobsterLoader = Callable[[str, int], np.ndarray]


@dataclass(frozen=True)
class FeedSpec:
    """The feed process (``obpipe run``'s, ``obpipe feed``, ``obpipe replay``): what to
    send, where and how fast.  Picklable for the spawn context."""

    host: str = "127.0.0.1"
    port: int = 0
    replay: str | None = None  # None: synthetic; else a capture (.obcap) or a LOBSTER message CSV
    rate: float = 0.0  # messages/s; 0: as fast as possible (or the recorded pace when speed is set)
    speed: float | None = None  # recorded pace x speed
    count: int | None = None  # stop after this many messages
    duration_s: float = 0.0  # stop after this many seconds (0: no limit)
    seed: int = 1
    start_ns: int = 0  # synthetic clock start, UTC epoch ns; 0: the wall clock when the feed starts
    n_symbols: int = 4
    symbol: int = 0  # symbol index a LOBSTER file's messages carry
    faults: Faults = field(default_factory=Faults)
    capture: str | None = None  # also write every datagram sent to this file
    session: int = 0  # 0: random per run (a receiver follows one session; a guessable one could be forged)
    src_port: int = 0  # send from this port (reserved by the supervisor: rx allows only it); 0: any
    instance: str | None = None  # publish live counters in this instance's feed stats row
    cores: tuple[int, ...] = ()
    parent_pid: int = 0
    progress: bool = False  # a progress bar on stderr
    # the LOBSTER ``replay`` already loaded (MD records): not parsed again
    lobster_md: np.ndarray | None = field(default=None, compare=False, repr=False)
    lobster_loader: LobsterLoader | None = None  # else how to load it
    # ITCH 5.0 in MoldUDP64 (an ITCH file, ``is_itch``): the retransmission request port
    # (0: a free one, published in the feed row) and window, and how long the feed stays
    # after the last message answering requests
    request_port: int = 0
    retransmit_window: int = 1 << 20
    linger_s: float = 2.0

    def source_name(self) -> str:
        return "synthetic" if self.replay is None else Path(self.replay).name


class FeedError(ValueError):
    """A feed that cannot start (bad file, bad option): the message says why."""


def random_session() -> int:
    """A feed session id: random, never 0 (rx never follows session 0)."""
    return int.from_bytes(os.urandom(4), "little") or 1


class Progress:
    """The feed's progress on stderr (``--progress`` / ``--no-progress``; the command
    line turns it on by itself when stderr is a terminal).

    On a terminal: a rich progress bar (label, bar, percent, messages sent of the total,
    messages/s, time left), redrawn in place at most 5 times a second by ``update`` (no
    refresh thread: nothing runs beside the send loop).  Anywhere else (a pipe, a log
    file: ``--progress`` asked for it): plain text, no escape codes, one line at most
    every second and a last one at ``close``, each ``LABEL [####   ]  42.0%
    DONE/TOTAL msgs  RATE msgs/s  ETA m:ss`` (``LABEL DONE msgs  RATE msgs/s`` without a
    total), so a log reads it and a test can parse it.  Rates are averages since
    ``start`` (messages per second of sending)."""

    def __init__(self, label: str, total: int | None, enabled: bool, stream=None):
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and _isatty(self.stream) and os.environ.get("TERM") != "dumb"
        self.t0 = time.monotonic()
        self._next = 0.0
        self._bar = self._task = None

    def start(self) -> float:
        """Sending starts now (rate and time left count from here): returns the time
        (``time.monotonic()`` seconds)."""
        self.t0 = time.monotonic()
        if self.tty and self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            # the decision is ours (a terminal): force_terminal, so FORCE_COLOR/TTY_COMPATIBLE do not change it
            console = Console(file=self.stream, force_terminal=True)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
                            TimeRemainingColumn(), console=console, auto_refresh=False,
                            redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task(self.label, total=self.total, count="", rate="")
            self._bar.start()
        return self.t0

    def update(self, done: int, force: bool = False) -> None:
        """``done`` messages sent so far (drawn when due or ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next and not force:
            return
        self._next = now + (0.2 if self.tty else 1.0)
        rate = done / max(now - self.t0, 1e-9)
        if self.tty:
            if self._bar is None:
                self.start()
            count = f"{done:,}/{self.total:,} msgs" if self.total else f"{done:,} msgs"
            self._bar.update(self._task, completed=done, count=count, rate=f"{rate:,.0f} msgs/s", refresh=True)
            return
        if self.total:
            f = min(done / self.total, 1.0)
            bar = "#" * int(f * 30)
            eta = (self.total - done) / rate if rate > 0 else 0
            line = (f"{self.label} [{bar:<30}] {100 * f:5.1f}%  {done:,}/{self.total:,} msgs  "
                    f"{rate:,.0f} msgs/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        else:
            line = f"{self.label} {done:,} msgs  {rate:,.0f} msgs/s"
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, done: int) -> None:
        """The last state (``done`` messages sent), drawn once more; the bar ends there."""
        if not self.enabled:
            return
        self.update(done, force=True)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # (no isatty, or closed)
        return False


class FeedRow:
    """The feed's live counters in an instance's stats row (or nowhere)."""

    def __init__(self, instance: str | None):
        self.stats = self.row = None
        self._next_cpu = 0
        if instance:
            from obpipe.ring.runtime import claim_row
            from obpipe.ring.stats import ROW_FEED

            self.stats, self.row = claim_row(instance, ROW_FEED)
            self.row[schema.ST_STATE + 1:] = 0

    def publish(self, s: UdpSender, total: int | None, state: int | None = None, t1_ns: int | None = None) -> None:
        """``t1_ns``: when the last message went (default now; an ITCH feed lingers after it)."""
        r = self.row
        if r is None:
            return
        r[schema.ST_FEED_SENT] = s.msgs
        r[schema.ST_FEED_DATAGRAMS] = s.datagrams_sent
        r[schema.ST_FEED_PACKETS] = s.packets_made
        r[schema.ST_FEED_SEND_ERRORS] = s.send_errors
        r[schema.ST_FEED_TOTAL] = -1 if total is None else total
        for i, name in enumerate(schema.FEED_INJECTED_NAMES):
            r[schema.ST_FEED_INJECTED + i] = s.injected[name]
        for i, name in enumerate(schema.FEED_EXPECTED_NAMES):
            r[schema.ST_FEED_EXPECTED + i] = s.expected.get(name, 0)
        r[schema.ST_FEED_CAPTURED] = s.capture.datagrams if s.capture is not None else 0
        r[schema.ST_FEED_T0_NS] = s.t0_ns or 0
        now = time.monotonic_ns()
        r[schema.ST_FEED_T1_NS] = now if t1_ns is None else t1_ns
        if state is not None or now >= self._next_cpu:  # CPU time: 4 samples a second are enough
            t = os.times()
            r[schema.ST_FEED_CPU_NS] = int((t.user + t.system) * 1e9)
            self._next_cpu = now + 250_000_000
        r[schema.ST_HEARTBEAT_NS] = now
        if state is not None:
            r[schema.ST_STATE] = state

    def close(self):
        if self.stats is not None:
            self.stats.close()


def run(spec: FeedSpec, stop=None) -> dict:
    """Send the feed; returns its counters.  ``stop`` (an Event) ends it early, as does
    KeyboardInterrupt; either way the closing heartbeat is sent and the capture closed."""
    if spec.rate < 0 or (spec.speed is not None and not spec.speed > 0):
        raise FeedError("rate must be >= 0 and speed > 0")
    if spec.port <= 0 or spec.port > 65535:
        raise FeedError(f"no receiver port (got {spec.port}); give --port or --instance")
    kind, md, cap = "synthetic", None, None
    if spec.replay is not None:
        if is_itch(spec.replay):
            return _run_itch(spec, stop)
        if capmod.is_capture(spec.replay):
            kind = "capture"
            try:
                cap = capmod.read(spec.replay)
            except capmod.CaptureError as e:
                raise FeedError(str(e)) from None
            if spec.faults.any():
                raise FeedError("fault injection applies to synthetic and LOBSTER feeds; a capture replays its "
                                "datagrams exactly as recorded")
        elif not Path(spec.replay).is_file():
            raise FeedError(f"{spec.replay}: no such file")
        else:
            kind = "lobster"
            if spec.lobster_md is not None:
                md = spec.lobster_md
            elif spec.lobster_loader is not None:
                md = spec.lobster_loader(spec.replay, spec.symbol)
            else:
                raise FeedError(f"{spec.replay}: a LOBSTER file needs a loader (obpipe.engine.lobster.load_lobster)")
    session = spec.session or random_session()
    sender = UdpSender((spec.host, spec.port), session=session, faults=spec.faults, rate=spec.rate,
                       speed=spec.speed, capture=spec.capture, max_batch=MAX_CHUNK, src_port=spec.src_port)
    row = FeedRow(spec.instance)
    if kind == "capture":
        total = int(cap.msgs.sum()) if spec.count is None else min(spec.count, int(cap.msgs.sum()))
    elif kind == "lobster":
        total = len(md) if spec.count is None else min(spec.count, len(md))
    else:
        total = spec.count
    prog = Progress(f"{kind} {spec.source_name()}", total, spec.progress)
    t_start = time.monotonic()  # reset once the kernels are loaded: a duration is of sending
    interrupted = False
    try:
        sender.warm()
        if kind == "synthetic":
            generate_into(np.zeros(1, schema.MD_DTYPE), SynthParams(n_symbols=spec.n_symbols, seed=spec.seed))
            spec = replace(spec, start_ns=spec.start_ns or time.time_ns())  # the stream's clock: its start
        sender.start_clock()
        t_start = prog.start()
        row.publish(sender, total, schema.STATE_RUNNING)
        if kind == "capture":
            _send_capture(spec, sender, cap, total, stop, row, prog, t_start)
        else:
            _send_messages(spec, sender, md, total, stop, row, prog, t_start)
            sender.finish()
    except KeyboardInterrupt:
        interrupted = True
        if kind != "capture":
            sender.finish()
    finally:
        seconds = time.monotonic() - t_start
        sender.close()
        row.publish(sender, total, schema.STATE_STOPPED)
        row.close()
        prog.close(sender.msgs)
    return {"source": kind, "file": spec.replay, "messages": sender.msgs, "packets": sender.packets_made,
            "datagrams": sender.datagrams_sent, "send_errors": sender.send_errors,
            "injected": dict(sender.injected), "expected": dict(sender.expected),
            "captured": sender.capture.datagrams if sender.capture is not None else 0,
            "capture_file": spec.capture, "session": session,
            "start_ns": spec.start_ns if kind == "synthetic" else None, "seconds": round(seconds, 3),
            "msgs_per_s": round(sender.msgs / max(seconds, 1e-9)), "interrupted": interrupted,
            "port": spec.port}


def is_itch(path) -> bool:
    """A Nasdaq ITCH 5.0 file, by its name: ``*.itch50``, ``*.NASDAQ_ITCH50`` (``.gz`` too)."""
    n = str(path).lower().removesuffix(".gz")
    return n.endswith(".itch50") or n.endswith(".nasdaq_itch50")


def _run_itch(spec: FeedSpec, stop) -> dict:
    """An ITCH file sent in MoldUDP64 packets, answering retransmission requests
    (``itch_feed``)."""
    from obpipe.feed_sim import itch
    from obpipe.feed_sim import itch_feed
    from obpipe.feed_sim.moldudp64 import MoldError, MoldPacker, RequestServer

    try:
        stream = itch_feed.ItchStream(itch.read_itch(spec.replay))
    except (OSError, ValueError) as e:
        raise FeedError(f"{spec.replay}: {e}") from None
    session = spec.session or random_session()
    if spec.retransmit_window < 0 or (spec.retransmit_window & (spec.retransmit_window - 1)):
        raise FeedError(f"retransmit window must be 0 (none) or a power of two, got {spec.retransmit_window}")
    try:
        packer = MoldPacker(session, window=max(spec.retransmit_window, 64), max_packets=itch_feed.MAX_PACKETS)
        server = RequestServer(packer, port=spec.request_port) if spec.retransmit_window else None
    except (MoldError, OSError) as e:
        raise FeedError(f"retransmission: {e}") from None
    sender = UdpSender((spec.host, spec.port), session=session, rate=spec.rate, speed=spec.speed,
                       capture=spec.capture, src_port=spec.src_port)
    row = FeedRow(spec.instance)
    total = len(stream) if spec.count is None else min(spec.count, len(stream))
    prog = Progress(f"itch {spec.source_name()}", total, spec.progress)
    t_start = time.monotonic()
    res, interrupted, request_port = {}, False, server.port if server is not None else 0
    sent_ns = None
    try:
        sender.warm()
        itch_feed.warm(packer, server)
        if row.row is not None:
            row.row[schema.ST_FEED_REQUEST_PORT] = request_port
        sender.start_clock()
        t_start = prog.start()
        row.publish(sender, total, schema.STATE_RUNNING)

        def progress(done):
            row.publish(sender, total)
            prog.update(done)

        res = itch_feed.send(stream, sender, packer, server, spec.faults, spec.rate, spec.speed, spec.count,
                             lambda: _should_stop(spec, stop, t_start), progress, spec.linger_s)
        sent_ns = res["sent_ns"]
        for k, v in res["injected"].items():
            sender.injected[k] += v
    except KeyboardInterrupt:
        interrupted = True
    finally:
        seconds = (sent_ns - sender.t0_ns) / 1e9 if sent_ns and sender.t0_ns else time.monotonic() - t_start
        if server is not None:
            server.close()
        sender.close()
        row.publish(sender, total, schema.STATE_STOPPED, t1_ns=sent_ns)
        row.close()
        prog.close(sender.msgs)
    return {"source": "itch", "file": spec.replay, "messages": sender.msgs, "packets": sender.packets_made,
            "datagrams": sender.datagrams_sent, "send_errors": sender.send_errors, "injected": dict(sender.injected),
            "retransmission": res.get("server", {}), "request_port": request_port, "session": session,
            "captured": sender.capture.datagrams if sender.capture is not None else 0, "capture_file": spec.capture,
            "seconds": round(seconds, 3), "msgs_per_s": round(sender.msgs / max(seconds, 1e-9)),
            "interrupted": interrupted, "port": spec.port}


def _chunk(rate: float) -> int:
    """Messages per chunk: whole packets (so packet boundaries, and with them the fault
    plan, do not depend on the rate)."""
    per = schema.WIRE_MAX_MSGS
    return MAX_CHUNK if rate <= 0 else int(min(MAX_CHUNK, max(per, rate * CHUNK_SECONDS // per * per)))


def _should_stop(spec, stop, t_start) -> bool:
    if stop is not None and stop.is_set():
        return True
    return bool(spec.duration_s) and time.monotonic() - t_start >= spec.duration_s


def _send_messages(spec, sender, md, total, stop, row, prog, t_start) -> None:
    chunk = _chunk(spec.rate)
    if md is None:
        params = SynthParams(n_symbols=spec.n_symbols, seed=spec.seed, start_ts_ns=spec.start_ns)
        buf = np.zeros(chunk, schema.MD_DTYPE)
        state = None
    sent = 0
    while total is None or sent < total:
        if _should_stop(spec, stop, t_start):
            break
        n = chunk if total is None else min(chunk, total - sent)
        if md is not None and spec.speed is not None:  # about CHUNK_SECONDS of paced time per chunk
            ts = md["ts_exch_ns"]
            span = int(np.searchsorted(ts, ts[sent] + CHUNK_SECONDS * spec.speed * 1e9, side="right")) - sent
            per = schema.WIRE_MAX_MSGS
            n = min(n, max(per, -(-span // per) * per))
        if md is None:
            part = buf[:n]
            state = generate_into(part, params, state)
        else:
            part = md[sent:sent + n]
        sender.send(part)
        sent += n
        row.publish(sender, total)
        prog.update(sent)


def _send_capture(spec, sender, cap, total, stop, row, prog, t_start) -> None:
    n = len(cap)
    if spec.count is not None:  # the datagrams whose messages make up the first `count`
        cum = np.cumsum(cap.msgs)
        n = int(np.searchsorted(cum, spec.count, side="left")) + 1 if len(cum) else 0
        n = min(n, len(cap))
    if spec.speed is not None:
        due = ((cap.ts - (cap.ts[0] if n else 0)) / spec.speed).astype(np.int64)
    elif spec.rate > 0:
        before = np.concatenate(([0], np.cumsum(cap.msgs)[:-1]))
        due = (before * (1e9 / spec.rate)).astype(np.int64)
    else:
        due = np.zeros(n, np.int64)
    step = max(1, _chunk(spec.rate) // schema.WIRE_MAX_MSGS)
    i = 0
    while i < n:
        if _should_stop(spec, stop, t_start):
            break
        j = min(n, i + step)
        if spec.speed is not None:  # about CHUNK_SECONDS of recorded time per call
            j = max(j, min(n, int(np.searchsorted(due, due[i] + CHUNK_SECONDS * 1e9))))
        sender.send_datagrams(cap.raw, cap.off, cap.length, due, i, j)
        sender.msgs += int(cap.msgs[i:j].sum())
        i = j
        row.publish(sender, total)
        prog.update(sender.msgs)


def main_entry(spec: FeedSpec, stop) -> None:
    """Process target for the supervisor (spawn)."""
    from obpipe.ring.runtime import child_setup

    child_setup(spec.parent_pid, spec.cores, "feed")
    try:
        run(spec, stop)
    except FeedError as e:
        print(f"obpipe feed: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


__all__ = ["FeedSpec", "FeedError", "run"]
