"""Compiled sending: fault application, paced ``sendmmsg``, capture records.

A *datagram list* is three parallel arrays: ``dg_off`` (byte offset of the datagram
in a base buffer), ``dg_len`` (its length) and ``dg_due`` (ns after the feed's start
when it may leave).  Packets encoded by ``wire_kernels.encode_packets`` become a
datagram list through ``plan_datagrams`` (which applies each packet's fault); a capture
file is already one (``capture_index``).  ``send_paced`` sends any datagram list, so
the synthetic feed, a LOBSTER replay and a capture replay share one send path.

Capture records (docs/PROTOCOL.md, "Capture files"): ``u32 length, u32 flags (0),
i64 send time (CLOCK_MONOTONIC ns)``, then the datagram's bytes padded to 8.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.atomics import cpu_relax, monotonic_ns, sleep_ns
from obpipe.ring.net import send_batch
from obpipe.ring.jit import HOT
from obpipe.ring.records import WIRE_W_H0, WIRE_W_H2, wire_h0, wire_h0_fields, wire_h2_fields

PACKET_BYTES = schema.WIRE_PACKET_WORDS * 8
REC_HDR = 16  # capture record header bytes

# fault actions (feed_sim.wire re-exports these names)
SEND, DROP, DUPLICATE, REORDER, TRUNCATE, CORRUPT, BAD_MAGIC, BAD_VERSION = 0, 1, 2, 3, 4, 5, 6, 7
TRUNCATE_BYTES = 7
CORRUPT_BYTE = schema.WIRE_HEADER_BYTES + 9  # a byte of the first message (caught by the check)


@njit(**HOT)
def plan_datagrams(words, nbytes, actions, n, dg_off, dg_len):
    """The datagrams that ``n`` encoded packets (rows of ``words``) become under
    ``actions``, in sending order; byte faults are applied to the packets in place.
    Returns the number of datagrams (at most 2n)."""
    k = 0
    i = 0
    while i < n:
        a = actions[i]
        off = i * PACKET_BYTES
        if a == DROP:
            i += 1
            continue
        if a == REORDER:  # the next packet overtakes this one
            dg_off[k] = off + PACKET_BYTES
            dg_len[k] = nbytes[i + 1]
            dg_off[k + 1] = off
            dg_len[k + 1] = nbytes[i]
            k += 2
            i += 2
            continue
        length = nbytes[i]
        if a == TRUNCATE:
            length -= TRUNCATE_BYTES
        elif a == CORRUPT:
            words[i, CORRUPT_BYTE // 8] ^= np.int64(0x5A) << (8 * (CORRUPT_BYTE % 8))
        elif a == BAD_MAGIC:
            words[i, 0] ^= 0xFF
        elif a == BAD_VERSION:
            magic, _, flags, session = wire_h0_fields(words[i, WIRE_W_H0])
            words[i, WIRE_W_H0] = wire_h0(magic, schema.WIRE_VERSION + 1, flags, session)
        dg_off[k] = off
        dg_len[k] = length
        k += 1
        if a == DUPLICATE:
            dg_off[k] = off
            dg_len[k] = length
            k += 1
        i += 1
    return k


@njit(**HOT)
def send_paced(fd, mvec, iov, base_ptr, dg_off, dg_len, dg_due, start, nd, t0, sent_ts, out):
    """Send datagrams ``start .. nd-1`` of a list over ``base_ptr`` through ``fd``:
    datagram i not before ``t0 + dg_due[i]`` (CLOCK_MONOTONIC ns); all that are due go
    in one ``sendmmsg`` (up to ``len(mvec)``).  Waits sleep (the caller set a fine
    timer slack) and spin only the last few microseconds.  ``sent_ts[i]`` gets each
    datagram's send time.  ``out`` += [datagrams sent, send errors]."""
    vlen = mvec.shape[0]
    i = start
    while i < nd:
        now = monotonic_ns()
        wait = t0 + dg_due[i] - now
        if wait > 0:
            if wait > 30_000:
                sleep_ns(wait - 15_000)
            else:
                cpu_relax()
            continue
        j = i
        while j < nd and j - i < vlen and t0 + dg_due[j] <= now:
            iov[j - i, 0] = base_ptr + dg_off[j]
            iov[j - i, 1] = dg_len[j]
            j += 1
        r = send_batch(fd, mvec, 0, j - i)
        if r <= 0:  # the first one failed: count it and go on with the next
            out[1] += 1
            sent_ts[i] = now
            i += 1
            continue
        for q in range(r):
            sent_ts[i + q] = now
        out[0] += r
        i += r
    return i


@njit(**HOT)
def capture_pack(base, dg_off, dg_len, sent_ts, nd, out):
    """Capture records of datagrams ``0 .. nd-1`` (bytes in ``base``, uint8) into
    ``out`` (uint8, 8-aligned); returns the bytes written."""
    o = 0
    for i in range(nd):
        n = dg_len[i]
        w = out[o:o + REC_HDR].view(np.int64)
        w[0] = n
        w[1] = sent_ts[i]
        src = dg_off[i]
        for b in range(n):
            out[o + REC_HDR + b] = base[src + b]
        pad = (-n) & 7
        for b in range(pad):
            out[o + REC_HDR + n + b] = 0
        o += REC_HDR + n + pad
    return o


@njit(**HOT)
def capture_index(w, start_byte, end_byte, dg_off, dg_len, dg_ts, dg_msgs):
    """Index the capture records in bytes [start_byte, end_byte) of a file viewed as
    int64 words ``w``: payload offset, length, send time and message count (0 for a
    datagram too short to have a header).  Returns (records, byte offset after the last
    whole record, status): status 0 ok, 1 truncated last record, 2 a record claims an
    impossible length (> 65,535 bytes) or non-zero flags."""
    o = start_byte
    k = 0
    while o < end_byte:
        if o + REC_HDR > end_byte:
            return k, o, 1
        h = w[o // 8]
        n = h & 0xFFFFFFFF
        if (h >> 32) != 0 or n > 65535:
            return k, o, 2
        if o + REC_HDR + n > end_byte:
            return k, o, 1
        dg_off[k] = o + REC_HDR
        dg_len[k] = n
        dg_ts[k] = w[o // 8 + 1]
        dg_msgs[k] = wire_h2_fields(w[(o + REC_HDR) // 8 + WIRE_W_H2])[0] if n >= schema.WIRE_HEADER_BYTES else 0
        k += 1
        o += REC_HDR + n + ((-n) & 7)
    return k, o, 0
