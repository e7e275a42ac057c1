"""The rx process's compiled receive loop: ``recvmmsg`` batches, each datagram checked,
sequence-tracked and pushed into the md ring by ``feed_sim.wire_kernels.rx_packet``.
No Python runs per datagram; the loop returns to Python every ``budget_ns`` for the
stop flag, the heartbeat and the kernel-drop counter.  In moldudp64 mode
(``mold_rx_loop``) the MoldUDP64 receiver and the ITCH decoder run in the same way."""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.feed_sim import itch as IT
from obpipe.feed_sim import moldudp64 as MS
from obpipe.feed_sim.wire_kernels import rx_packet
from obpipe.ring import schema
from obpipe.ring.atomics import cpu_relax, monotonic_ns, poll_in, sched_yield, sleep_ns
from obpipe.ring.jit import HOT
from obpipe.ring.kernels import ring_claim, ring_publish, ring_wake
from obpipe.ring.net import recv_batch

RAW_STRIDE = 2048  # bytes per receive buffer: more than any valid datagram (1,464)
#: Datagrams per ``recvmmsg`` when rx hands its core to the book writer after each call
#: (``handoff``): after a stall, a backlog is passed on in slices of this many (360
#: messages), not in one call of 64 whose first message waits for all the rest.
HANDOFF_DGRAMS = 8


@njit(**HOT, inline="always")
def _idle_wait(idle, spin_iters, yield_iters, idle_sleep_ns, t_end, wait_fd):
    """The ``idle``-th poll in a row that found nothing: spin (``pause``) for the first
    ``spin_iters``, then ``sched_yield`` for ``yield_iters``, then block in ``poll`` on
    ``wait_fd`` until a datagram arrives or the turn ends (``wait_fd`` < 0: sleep
    ``idle_sleep_ns`` instead).  True when the turn's budget (``t_end``) is spent."""
    if idle < spin_iters:
        cpu_relax()
        return (idle & 1023) == 0 and monotonic_ns() >= t_end
    if idle < spin_iters + yield_iters:
        sched_yield()
        return False
    now = monotonic_ns()
    if now >= t_end:
        return True
    if wait_fd >= 0:
        poll_in(wait_fd, (t_end - now) // 1_000_000 + 1)
    else:
        sleep_ns(idle_sleep_ns)
    return False


@njit(**HOT)
def rx_loop(fd, mvec, raw, names, T, miss, C, allow, ctrl, rec, spin_iters, yield_iters, idle_sleep_ns, budget_ns,
            block=False, handoff=False):
    """Receive and handle datagrams for about ``budget_ns``; when none is waiting, spin
    (``pause``) ``spin_iters`` polls, then ``sched_yield`` ``yield_iters`` polls, then
    block in ``poll`` until one arrives (``block``) or sleep ``idle_sleep_ns`` per poll.
    Every datagram of one ``recvmmsg`` gets the same receive stamp; ``names[k, 0]`` is
    datagram k's sender (sockaddr_in, first 8 bytes), checked against ``allow``.  The
    book writer's doorbell is rung once per ``recvmmsg``; with ``handoff`` (rx and the
    book writer real-time on one core) rx then yields, so the woken writer applies this
    batch before rx reads the next one (not after a backlog).  Returns the datagrams
    handled."""
    t_end = monotonic_ns() + budget_ns
    vlen = min(mvec.shape[0], HANDOFF_DGRAMS) if handoff else mvec.shape[0]
    idle = 0
    total = 0
    while True:
        n = recv_batch(fd, mvec, vlen)
        if n > 0:
            now = monotonic_ns()
            for k in range(n):
                rx_packet(raw[k], mvec[k, 7] & 0xFFFFFFFF, names[k, 0], T, miss, C, allow, ctrl, rec, now)
            if ring_wake(ctrl) and handoff:
                sched_yield()
            total += n
            idle = 0
            if now >= t_end:
                return total
            continue
        idle += 1
        if _idle_wait(idle, spin_iters, yield_iters, idle_sleep_ns, t_end, fd if block else -1):
            return total


# --- MoldUDP64 + ITCH 5.0 (``[rx] protocol = "moldudp64"``) ------------------------------

#: Words of rx's own state in moldudp64 mode (``X``): where decoding of the receiver's
#: delivered messages stands, and counters.
X_MSG = 0  # messages of OUT decoded (index into OSEQ)
X_BYTE = 1  # bytes of OUT decoded
X_LOST = 2  # rows of LOST handled (a stale mark pushed)
X_RING_WAITS = 3  # turns that found the md ring full (decoding waits; the receiver heals what the kernel drops)
X_STALE_MARKS = 4  # stale marks pushed (one per lost range)
NX = 8


@njit(**HOT, inline="always")
def _msg_end(OUT, b, k):
    """Byte offset after ``k`` framed messages from byte ``b`` of OUT."""
    for _ in range(k):
        b += 2 + ((np.int64(OUT[b]) << 8) | np.int64(OUT[b + 1]))
    return b


@njit(**HOT)
def mold_decode(S, OUT, OSEQ, LOST, X, D, loc, wanted, names, DC, md_ctrl, md_rec, now):
    """Decode what the receiver delivered into OUT (from where the last call stopped)
    into the md ring, as ``MD_L3_DTYPE`` records, with a stale mark (``L3_STALE``, every
    symbol) where a range was lost.  Returns True when all of OUT is decoded (the caller
    resets OUT), False when the md ring filled first."""
    cap = md_rec.shape[0]
    mask = cap - 1
    n_msgs = S[MS.S_OUT_MSGS]
    n_lost = S[MS.S_NLOST]
    D[IT.D_RECV_NS] = now
    D[IT.D_FINAL] = 1
    while True:
        # the next boundary: a lost range after message LOST[X_LOST, 2], else the end
        stop = n_msgs
        if X[X_LOST] < n_lost:
            stop = min(stop, LOST[X[X_LOST], 2])
        if X[X_MSG] >= stop:
            if X[X_LOST] >= n_lost:
                return True
            head, free = ring_claim(md_ctrl, cap, 1)
            if free < 1:
                X[X_RING_WAITS] += 1
                return False
            r = md_rec[head & mask]
            r.kind = schema.L3_STALE
            r.symbol = schema.SYMBOL_ALL
            r.side = 0
            r.qty = 0
            r.px_tick = 0
            r.seq = LOST[X[X_LOST], 0]
            r.ts_exch_ns = 0
            r.ts_recv_ns = now
            r.ref = 0
            r.new_ref = 0
            ring_publish(md_ctrl, head + 1)
            X[X_LOST] += 1
            X[X_STALE_MARKS] += 1
            continue
        end = _msg_end(OUT, X[X_BYTE], stop - X[X_MSG])
        head, free = ring_claim(md_ctrl, cap, cap)
        if free < 1:
            X[X_RING_WAITS] += 1
            return False
        h0 = head & mask
        room = min(free, cap - h0)
        D[IT.D_POS] = X[X_BYTE]
        D[IT.D_SEQ] = OSEQ[X[X_MSG]]
        D[IT.D_NOUT] = 0
        IT.decode_l3(OUT, end, md_rec[h0:h0 + room], loc, wanted, names, D, DC)
        X[X_MSG] += D[IT.D_SEQ] - OSEQ[X[X_MSG]]
        X[X_BYTE] = D[IT.D_POS]
        if D[IT.D_NOUT] > 0:
            ring_publish(md_ctrl, head + D[IT.D_NOUT])


@njit(**HOT)
def mold_rx_loop(dfd, dmvec, draw, dnames, allow, afd, amvec, araw, rmvec, riov, req,
                 S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, X, D, loc, wanted, names, DC, md_ctrl, md_rec,
                 spin_iters, yield_iters, idle_sleep_ns, budget_ns):
    """rx's loop in moldudp64 mode for about ``budget_ns``: a receive turn (answers, data,
    requests due: ``moldudp64.rx_turn``), then the delivered messages decoded into the md
    ring (``mold_decode``).  While the md ring is full no datagram is read: the socket
    buffer fills and the kernel drops, and those gaps are requested and healed like any
    other.  Idle: spin, yield, sleep as ``rx_loop`` (not ``poll``: the receiver's request
    timers are due without a datagram).  Returns datagrams handled."""
    t_end = monotonic_ns() + budget_ns
    idle = 0
    total = 0
    while True:
        now = monotonic_ns()
        if S[MS.S_OUT_MSGS] > 0 or S[MS.S_NLOST] > 0:
            done = mold_decode(S, OUT, OSEQ, LOST, X, D, loc, wanted, names, DC, md_ctrl, md_rec, now)
            ring_wake(md_ctrl)
            if done:
                S[MS.S_OUT_BYTES] = 0
                S[MS.S_OUT_MSGS] = 0
                S[MS.S_NLOST] = 0
                X[X_MSG] = 0
                X[X_BYTE] = 0
                X[X_LOST] = 0
            else:
                if now >= t_end:
                    return total
                sched_yield()
                continue
        n = MS.rx_turn(dfd, dmvec, draw, dnames, allow, afd, amvec, araw, rmvec, riov, req, now,
                       S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST)
        if n > 0 or S[MS.S_OUT_MSGS] > 0 or S[MS.S_NLOST] > 0:
            total += n
            idle = 0
            if now >= t_end:
                return total
            continue
        idle += 1
        if _idle_wait(idle, spin_iters, yield_iters, idle_sleep_ns, t_end, -1):
            return total
