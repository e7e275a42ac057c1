"""The rx process's compiled receive loop: ``recvmmsg`` batches, each datagram checked,
sequence-tracked and pushed into the md ring by ``feed_sim.wire_kernels.rx_packet``.
No Python runs per datagram; the loop returns to Python every ``budget_ns`` for the
stop flag, the heartbeat and the kernel-drop counter."""
from __future__ import annotations

from numba import njit

from obpipe.feed_sim.wire_kernels import rx_packet
from obpipe.ring.atomics import cpu_relax, monotonic_ns, sched_yield, sleep_ns
from obpipe.ring.net import recv_batch
from obpipe.ring.jit import HOT

RAW_STRIDE = 2048  # bytes per receive buffer: more than any valid datagram (1,464)


@njit(**HOT)
def rx_loop(fd, mvec, raw, names, T, miss, C, allow, ctrl, rec, spin_iters, yield_iters, idle_sleep_ns, budget_ns):
    """Receive and handle datagrams for about ``budget_ns``; when none is waiting, spin
    (``pause``) ``spin_iters`` polls, then ``sched_yield`` ``yield_iters`` polls, then
    sleep ``idle_sleep_ns`` per poll.  Every datagram of one ``recvmmsg`` gets the same
    receive stamp; ``names[k, 0]`` is datagram k's sender (sockaddr_in, first 8 bytes),
    checked against ``allow``.  Returns the datagrams handled."""
    t_end = monotonic_ns() + budget_ns
    vlen = mvec.shape[0]
    idle = 0
    total = 0
    while True:
        n = recv_batch(fd, mvec, vlen)
        if n > 0:
            now = monotonic_ns()
            for k in range(n):
                rx_packet(raw[k], mvec[k, 7] & 0xFFFFFFFF, names[k, 0], T, miss, C, allow, ctrl, rec, now)
            total += n
            idle = 0
            if now >= t_end:
                return total
            continue
        idle += 1
        if idle < spin_iters:
            cpu_relax()
            if (idle & 1023) == 0 and monotonic_ns() >= t_end:
                return total
        elif idle < spin_iters + yield_iters:
            sched_yield()
        else:
            if monotonic_ns() >= t_end:
                return total
            sleep_ns(idle_sleep_ns)
