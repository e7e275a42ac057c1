"""A compiled order-entry client loop: the exchange's round trip without a Python client.

``rtt_probe`` sends requests one at a time on a blocking TCP socket with libc ``send``
and reads with libc ``recv`` until that request's response (ACK or REJECT) arrives,
timing each round trip with CLOCK_MONOTONIC.  Reports that are not responses (fills,
cancels by the engine) are skipped.  Nothing runs in Python per request, so what it
measures is the exchange's turn plus the kernel's loopback path and two wake-ups, as a
C client would see it.  The libc functions are linked by symbol name, as in
``ring.net``, so the kernel stays cacheable.  A socket with ``SO_RCVTIMEO`` makes a
silent exchange an error return, not a hang.
"""
from __future__ import annotations

from numba import njit, types

from obpipe.ring import schema
from obpipe.ring.atomics import monotonic_ns
from obpipe.ring.jit import HOT

c_send = types.ExternalFunction("send", types.intp(types.intc, types.voidptr, types.uintp, types.intc))
c_recv = types.ExternalFunction("recv", types.intp(types.intc, types.voidptr, types.uintp, types.intc))

REC = 32  # bytes of one request and of one report
_R_ACK = schema.R_ACK
_R_REJECT = schema.R_REJECT


@njit(**HOT)
def rtt_probe(fd, reqs, inbuf, rtt, counts):
    """Send the 32-byte requests ``reqs`` (uint8 ``(n, 32)``) one at a time on blocking
    socket ``fd``, each after the previous one's response; ``rtt[i]`` gets request i's
    round trip in ns.  ``inbuf``: uint8 receive buffer (>= 64 KiB).  ``counts``: int64
    [acks, rejects, other reports, bytes received].  Returns requests answered, or
    ``-(i + 1)`` when sending request i or waiting for its answer failed (connection
    closed, error or receive timeout)."""
    n = reqs.shape[0]
    have = 0  # unparsed bytes at the front of inbuf
    cap = inbuf.shape[0]
    for i in range(n):
        t0 = monotonic_ns()
        sent = 0
        while sent < REC:
            k = c_send(fd, reqs.ctypes.data + i * REC + sent, REC - sent, 0)
            if k <= 0:
                return -(i + 1)
            sent += k
        answered = False
        while True:
            off = 0
            while off + REC <= have:
                typ = inbuf[off]
                off += REC
                if typ == _R_ACK or typ == _R_REJECT:
                    counts[0 if typ == _R_ACK else 1] += 1
                    answered = True
                    break
                counts[2] += 1
            if off > 0:  # keep the unparsed tail at the front
                for j in range(have - off):
                    inbuf[j] = inbuf[off + j]
                have -= off
            if answered:
                break
            k = c_recv(fd, inbuf.ctypes.data + have, cap - have, 0)
            if k <= 0:
                return -(i + 1)
            have += k
            counts[3] += k
        rtt[i] = monotonic_ns() - t0
    return n
