"""The rx process: busy-polls a UDP socket, checks and sequence-tracks each datagram
in a kernel, and pushes its messages into the md ring in one batch per datagram.

No select/epoll on the hot path: a compiled loop (``_rx_kernels.rx_loop``) polls a
non-blocking ``recvmmsg`` for up to 64 datagrams per syscall; when nothing arrives it
spins, then yields, then sleeps (``[backoff]``), so it shares a core politely.  The tracker's counters are words of the rx stats row (shared memory), so
``obpipe stats`` sees them live.  Nothing a sender does can crash it: every datagram
is validated by ``feed_sim.wire_kernels.rx_packet`` before anything is read from it,
and admitted only from an allowed source, in the session followed, and within the
sequence window (``foreign_source``, ``foreign_session``, ``implausible_seq`` count the
rest; docs/PROTOCOL.md "Admission").
"""
from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass

import numpy as np

from obpipe.feed_sim import itch as IT
from obpipe.feed_sim import moldudp64 as MS
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.moldudp64 import MoldReceiver
from obpipe.feed_sim.wire import allow_list
from obpipe.ring import schema
from obpipe.ring.schema import STATE_STOPPED
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.net import VLEN, MsgVec
from obpipe.ring.stats import ROW_RX

from obpipe.engine import _rx_kernels as RK
from obpipe.ring.runtime import child_setup, claim_row, go_realtime, mark_running

RCVBUF_BYTES = 8 << 20
BUDGET_NS = 20_000_000  # the compiled loop returns to Python this often


@dataclass(frozen=True)
class RxSpec:
    """Everything the child needs, copied from ``[rx]`` and ``[backoff]`` by the wiring
    (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    instance: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (reported in the stats row word ST_RX_PORT)
    backoff: Backoff = Backoff()
    cores: tuple[int, ...] = ()
    parent_pid: int = 0
    # admission (docs/PROTOCOL.md "Admission"): the session followed (0: the first seen),
    # the sources allowed ((host, port), port 0: any; empty: any source), the largest
    # forward sequence jump one packet may make, the contiguous beyond-window packets that
    # are adopted (0: never), and whether a new session starting at seq 1 is followed
    session: int = 0
    allow: tuple[tuple[str, int], ...] = ()
    max_seq_jump: int = WK.DEFAULT_WINDOW
    resync_packets: int = WK.DEFAULT_RESYNC
    accept_new_session: bool = False
    # [rx] protocol = "moldudp64": ITCH 5.0 in MoldUDP64 packets into the per-order book
    protocol: str = "obpipe"
    request_host: str = "127.0.0.1"  # the feed's retransmission request port
    request_port: int = 0
    symbols: tuple[str, ...] = ()  # the stocks selected (index = position), by their stock directory names
    tick_divisor: int = 100  # ITCH price units (1e-4) per tick
    day_ns: int = 0  # UTC epoch ns of the session's midnight (New York); 0: today's
    mold_hold: int = 1 << 19  # messages that may wait for a gap (0.5 s at 1M msgs/s)
    mold_timeout_ms: float = 25.0  # ask again after this long
    mold_retries: int = 16  # requests after the first before a gap is lost
    realtime: int = 0  # > 0: run SCHED_FIFO at this priority once compiled ([pinning] realtime)


def open_socket(host: str, port: int) -> socket.socket:
    """Non-blocking UDP socket with a large receive buffer (SO_RCVBUFFORCE when allowed:
    plain SO_RCVBUF is capped by net.core.rmem_max, ~200 KB by default)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), RCVBUF_BYTES)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    s.bind((host, port))
    s.setblocking(False)
    return s


def kernel_drops(port: int) -> int | None:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` on 127.0.0.1
    (receive queue full), from /proc/net/udp's ``drops`` column; None if not found."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want:
                    return int(parts[-1])
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return None


def _drops_or_unknown(port: int) -> int:
    d = kernel_drops(port)
    return -1 if d is None else d


def run(spec: RxSpec, stop) -> int:
    if spec.protocol == "moldudp64":
        return run_mold(spec, stop)
    stats, row = claim_row(spec.instance, ROW_RX)
    row[schema.ST_RX_PROTOCOL] = schema.RX_PROTO_OBPIPE
    md = Ring.attach(spec.instance, "md", schema.MD_DTYPE)
    sock = open_socket(spec.host, spec.port)
    T = row[schema.RX_TRACKER_BASE:schema.RX_TRACKER_BASE + WK.NT]
    # the missing-range table is this process's: ranges a previous rx remembered are forgotten
    T[WK.T_MISS_LOST] += T[WK.T_NMISS]
    T[WK.T_NMISS] = 0
    miss = np.zeros((WK.MAX_MISSING, 2), np.int64)
    if spec.session and T[WK.T_SESSION] != spec.session:  # the configured session (kept across rx restarts)
        T[WK.T_SESSION] = spec.session
        T[WK.T_NEXT] = 0
    C = WK.receiver_config(spec.max_seq_jump, spec.resync_packets, spec.accept_new_session)
    allow = allow_list(spec.allow)
    mv = MsgVec(VLEN)
    raw = np.zeros((VLEN, RK.RAW_STRIDE // 8), np.int64)
    mv.point_at(raw, RK.RAW_STRIDE)
    names = mv.record_senders()
    b = spec.backoff
    fd = sock.fileno()
    loop_args = (fd, mv.mvec, raw, names, T, miss, C, allow, md.ctrl, md.records)
    RK.rx_loop(*loop_args, 0, 0, 0, 0, b.doorbell, b.handoff)  # compile / load before announcing "running"
    go_realtime(spec.realtime)
    port = sock.getsockname()[1]
    row[schema.ST_RX_PORT] = port
    row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
    row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()
    mark_running(row)
    next_drops = 0
    try:
        while not stop.is_set():
            RK.rx_loop(*loop_args, b.spin_iters, b.yield_iters, b.sleep_us * 1000, BUDGET_NS, b.doorbell, b.handoff)
            now = time.monotonic_ns()
            row[schema.ST_HEARTBEAT_NS] = now
            if now >= next_drops:  # /proc read at most 5x a second
                row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
                next_drops = now + 200_000_000
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                break
    finally:
        row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
        sock.close()
        row[schema.ST_STATE] = STATE_STOPPED
    return 0


assert MS.NS == schema.RX_MOLD_WORDS and IT.N_COUNTERS == schema.RX_ITCH_WORDS
#: Receiver words that are counters (kept across an rx restart); the others are state.
_MOLD_COUNTERS = [w for w in range(MS.S_PACKETS, MS.S_SESSIONS + 1) if w != MS.S_END_SEQ]


def today_midnight_ns() -> int:
    """UTC epoch ns of today's midnight in New York (ITCH times count from it)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    d = dt.datetime.now(ZoneInfo("America/New_York")).date()
    return IT.session_midnight_ns(d.year, d.month, d.day)


def run_mold(spec: RxSpec, stop) -> int:
    """rx in moldudp64 mode: the MoldUDP64 receiver (gaps requested from the feed's
    request port and healed; docs/MOLDUDP64.md) and the ITCH decoder, both compiled, in
    one loop (``_rx_kernels.mold_rx_loop``) into the md ring of ``MD_L3_DTYPE`` records.
    A restarted rx continues from where its predecessor's row says it was: the messages
    it missed meanwhile are requested like any gap."""
    stats, row = claim_row(spec.instance, ROW_RX)
    md = Ring.attach(spec.instance, "md", schema.MD_L3_DTYPE)
    prev = row[schema.RX_MOLD_BASE:schema.RX_MOLD_BASE + MS.NS].copy()
    restarted = row[schema.ST_RX_PROTOCOL] == schema.RX_PROTO_MOLDUDP64 and prev[MS.S_NEXT] > 0
    rxm = MoldReceiver((spec.request_host, spec.request_port), spec.host, spec.port, allow=spec.allow,
                       hold=spec.mold_hold, timeout_ns=int(spec.mold_timeout_ms * 1e6), retries=spec.mold_retries,
                       start_seq=int(prev[MS.S_NEXT]) if restarted else 1)
    if restarted:
        rxm.S[_MOLD_COUNTERS] = prev[_MOLD_COUNTERS]
        if prev[MS.S_SESS_SET]:
            rxm.S[[MS.S_SESS0, MS.S_SESS1, MS.S_SESS_SET]] = prev[[MS.S_SESS0, MS.S_SESS1, MS.S_SESS_SET]]
    dec = IT.Decoder(list(spec.symbols), tick_divisor=spec.tick_divisor, day_ns=spec.day_ns or today_midnight_ns(),
                     capacity=1)
    if restarted:
        dec.C[:] = row[schema.RX_ITCH_BASE:schema.RX_ITCH_BASE + IT.N_COUNTERS]
    X = np.zeros(RK.NX, np.int64)
    X[RK.X_RING_WAITS] = row[schema.ST_RX_RING_WAITS] if restarted else 0
    X[RK.X_STALE_MARKS] = row[schema.ST_RX_STALE_MARKS] if restarted else 0
    row[schema.ST_RX_PROTOCOL] = schema.RX_PROTO_MOLDUDP64
    b = spec.backoff
    args = (*rxm.turn_args, *rxm.state, X, dec.D, dec.loc, dec.wanted, dec.names, dec.C, md.ctrl, md.records)

    def publish():
        row[schema.RX_MOLD_BASE:schema.RX_MOLD_BASE + MS.NS] = rxm.S
        row[schema.RX_ITCH_BASE:schema.RX_ITCH_BASE + IT.N_COUNTERS] = dec.C
        row[schema.ST_RX_RING_WAITS] = X[RK.X_RING_WAITS]
        row[schema.ST_RX_STALE_MARKS] = X[RK.X_STALE_MARKS]

    RK.mold_rx_loop(*args, 0, 0, 0, 0)  # compile / load before announcing "running"
    go_realtime(spec.realtime)
    port = rxm.port
    row[schema.ST_RX_PORT] = port
    row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
    publish()
    row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()
    mark_running(row)
    next_drops = 0
    try:
        while not stop.is_set():
            RK.mold_rx_loop(*args, b.spin_iters, b.yield_iters, b.sleep_us * 1000, BUDGET_NS)
            publish()
            now = time.monotonic_ns()
            row[schema.ST_HEARTBEAT_NS] = now
            if now >= next_drops:
                row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
                next_drops = now + 200_000_000
            if spec.parent_pid and os.getppid() != spec.parent_pid:
                break
    finally:
        publish()
        row[schema.ST_RX_KERNEL_DROPS] = _drops_or_unknown(port)
        rxm.close()
        row[schema.ST_STATE] = STATE_STOPPED
    return 0


def main_entry(spec: RxSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "rx")
    sys.exit(run(spec, stop))
