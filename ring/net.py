"""Batched UDP I/O from compiled kernels: libc ``recvmmsg`` / ``sendmmsg``.

Python's socket module moves one datagram per call, with a trip through the
interpreter on top of each syscall (docs/DESIGN.md "Facts measured"); these move up to ``VLEN`` datagrams per syscall
and are called from ``@njit`` loops, so no Python runs per datagram at all.  The libc
functions are linked by symbol name (``types.ExternalFunction``), not by ctypes
address, so the kernels that use them stay cacheable.

Layouts (Linux x86-64 / aarch64, LP64), held in int64 arrays owned by Python:

    struct iovec   { void *base; size_t len; }                         -> iov[i, 0:2]
    struct mmsghdr { struct msghdr { void *name; u32 namelen; .. pad;
                                     iovec *iov; size_t iovlen;
                                     void *control; size_t controllen;
                                     int flags; .. pad; };
                     u32 msg_len; .. pad; }                             -> mvec[i, 0:8]

    mvec word 0 name, 1 namelen, 2 iov, 3 iovlen, 4 control, 5 controllen,
         6 flags (low 32 bits), 7 msg_len (low 32 bits, set by the kernel)
"""
from __future__ import annotations

import ctypes
import socket
import struct
import sys

import numpy as np
from numba import njit, types

from obpipe.ring.jit import HOT

if sys.byteorder != "little" or struct.calcsize("P") != 8:
    raise ImportError("obpipe.ring.net needs a little-endian 64-bit machine")

VLEN = 64  # datagrams per recvmmsg / sendmmsg call
MSG_DONTWAIT = 0x40
MVEC_WORDS = 8

recvmmsg = types.ExternalFunction(
    "recvmmsg", types.intc(types.intc, types.voidptr, types.uintc, types.intc, types.voidptr))
sendmmsg = types.ExternalFunction(
    "sendmmsg", types.intc(types.intc, types.voidptr, types.uintc, types.intc))


class MsgVec:
    """``n`` mmsghdr + iovec pairs in preallocated int64 arrays (kept alive here: the
    kernel holds raw pointers into them)."""

    def __init__(self, n: int = VLEN, addr: tuple[str, int] | None = None):
        self.mvec = np.zeros((n, MVEC_WORDS), np.int64)
        self.iov = np.zeros((n, 2), np.int64)
        self.sockaddr = np.zeros(2, np.int64)  # struct sockaddr_in, 16 bytes
        if addr is not None:
            host, port = addr
            raw = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)
            self.sockaddr[:] = np.frombuffer(raw, np.int64)
        iov0 = self.iov.ctypes.data
        for i in range(n):
            self.mvec[i, 0] = self.sockaddr.ctypes.data if addr is not None else 0
            self.mvec[i, 1] = 16 if addr is not None else 0
            self.mvec[i, 2] = iov0 + 16 * i
            self.mvec[i, 3] = 1

    def record_senders(self) -> np.ndarray:
        """Receive side: the kernel writes datagram i's sender (``struct sockaddr_in``,
        16 bytes) into row i of the returned (n, 2) int64 array."""
        self.names = np.zeros((len(self.mvec), 2), np.int64)
        for i in range(len(self.mvec)):
            self.mvec[i, 0] = self.names.ctypes.data + 16 * i
            self.mvec[i, 1] = 16
        return self.names

    def point_at(self, buf: np.ndarray, stride: int) -> None:
        """Receive side: iovec i -> ``buf`` + i*stride bytes, ``stride`` long."""
        if buf.nbytes < stride * len(self.iov):
            raise ValueError("receive buffer smaller than n * stride")
        base = buf.ctypes.data
        for i in range(len(self.iov)):
            self.iov[i, 0] = base + stride * i
            self.iov[i, 1] = stride


@njit(**HOT)
def recv_batch(fd, mvec, n):
    """Non-blocking ``recvmmsg`` of up to ``n`` datagrams; returns how many (0 when none
    is waiting or on error).  Datagram i's length is ``mvec[i, 7] & 0xFFFFFFFF``."""
    got = recvmmsg(fd, mvec.ctypes.data, n, MSG_DONTWAIT, 0)
    return got if got > 0 else 0


@njit(**HOT)
def send_batch(fd, mvec, first, n):
    """Blocking ``sendmmsg`` of entries ``first .. first+n-1``; returns how many were
    sent (the kernel may send fewer) or -1 on error."""
    return sendmmsg(fd, mvec.ctypes.data + first * (MVEC_WORDS * 8), n, 0)


_PR_SET_TIMERSLACK = 29


def set_timer_slack(ns: int = 1000) -> bool:
    """Make this thread's sleeps wake within ``ns`` of their deadline instead of Linux's
    default 50 us slack (a paced sender or a backing-off poller sleeps in tens of us)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, int(ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
