"""Compiled UDP wire protocol: packet encoding, and the receiver's decode + sequence
tracking.  No I/O here; the sender and receiver processes call these once per packet.

Packets are handled as int64 words (little-endian machines only; checked by the
Python face), packed and unpacked by ``obpipe.ring.records`` from the dtypes of
``schema``:

    header  w0 = magic | version << 16 | flags << 24 | session << 32   (records.wire_h0)
            w1 = seq of the first message
            w2 = count | msg_size << 16 | check << 32                  (records.wire_h2)
    message w0 = kind | side << 8 | symbol << 16 | qty << 32           (records.md_w0)
            w1 = order_id, w2 = px_tick, w3 = ts_exch_ns

``check`` is the XOR of all message words folded to 32 bits: a corrupted message body
is caught and counted as malformed instead of reaching the book as garbage.

Admission, before any sequence tracking (MoldUDP64 practice: a receiver follows one
source and one session):
  source       with an allow-list (``allow``: rows of (value, mask) over the first word
               of the sender's ``sockaddr_in``), a datagram from any other address/port
               is counted ``foreign_source`` and never read further
  session      the receiver follows one session: the configured one, else the first
               seen (from an allowed source).  Any other session is counted
               ``foreign_session`` and never applied; session 0 is never followed.  Only
               with ``C[C_FLAGS] & F_ACCEPT_NEW_SESSION`` does a packet of a new session
               that starts it (seq 1, count > 0) switch the receiver to it
  seq window   a packet starting more than ``C[C_WINDOW]`` messages ahead of the next
               expected one is counted ``implausible_seq`` and not adopted (one forged
               heartbeat cannot push the expected sequence to 2^62 and make every real
               packet late).  ``C[C_RESYNC]`` such packets in a row, each carrying
               messages and starting where the previous one ended, are a real feed
               that moved on (e.g. while rx was down): the last one is adopted as a gap

Every datagram gets exactly one disposition: packets == malformed_* + foreign_source +
foreign_session + implausible_seq + heartbeats + duplicates + out_of_order + accepted.

Sequence tracking (one session at a time), for a valid packet covering [a, b):
  a == next        in order: deliver all, next = b
  a >  next        gap: [next, a) is missing (remembered), gap_msgs += a - next, deliver
  b <= next        old: inside a remembered missing range -> out of order (late): counted,
                   *not* applied (the book is not commutative under clamping), gap_msgs
                   shrinks by its count; otherwise a duplicate
  a < next < b     overlap: [a, next) duplicate messages, [next, b) delivered (accepted)
So ``gap_msgs`` is always the net number of messages never received.  An adopted
session starts tracking at sequence 1 (so a receiver counts whatever it missed at the
start as a gap).  A packet with count 0 is a heartbeat: it reveals trailing gaps.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring import schema
from obpipe.ring.kernels import ring_claim, ring_publish
from obpipe.ring.jit import HOT
from obpipe.ring.records import (WIRE_HEADER_WORDS, WIRE_MSG_WORDS, WIRE_W_H0, WIRE_W_H2, WIRE_W_ORDER_ID, WIRE_W_PX,
                                 WIRE_W_SEQ, WIRE_W_TS_EXCH, md_w0, md_w0_fields, wire_h0, wire_h0_fields, wire_h2,
                                 wire_h2_fields)

_MAGIC = schema.WIRE_MAGIC
_VERSION = schema.WIRE_VERSION
_HDR = schema.WIRE_HEADER_BYTES
_MSZ = schema.WIRE_MSG_BYTES
_MAXM = schema.WIRE_MAX_MSGS
_M32 = (1 << 32) - 1

# Tracker words (T): counters and state of the receiver, one int64 each.
T_NEXT = 0  # next expected sequence number (0: no session yet)
T_SESSION = 1
T_SESSIONS = 2  # sessions seen
T_PACKETS = 3  # datagrams received (valid or not)
T_MESSAGES = 4  # messages in valid packets
T_DELIVERED = 5  # messages pushed into the md ring
T_GAP_MSGS = 6  # messages never received (net of late arrivals)
T_GAP_EVENTS = 7  # gaps detected
T_DUP_PKTS = 8  # packets (or packet prefixes) received again
T_DUP_MSGS = 9
T_OOO_PKTS = 10  # late packets that filled (part of) a gap
T_LATE_MSGS = 11  # their messages (not applied)
T_MAL_LENGTH = 12  # malformed: too short, count > 45, wrong message size, length mismatch
T_MAL_MAGIC = 13
T_MAL_VERSION = 14
T_MAL_CHECK = 15  # body does not match the header's check
T_RING_DROPS = 16  # delivered messages dropped because the md ring was full
T_HEARTBEATS = 17  # count-0 packets
T_NMISS = 18  # remembered missing ranges in use
T_MISS_LOST = 19  # missing ranges forgotten (table full): a late packet for them counts as duplicate
T_FOREIGN_SOURCE = 20  # datagrams from a source outside the allow-list (never read further)
T_FOREIGN_SESSION = 21  # valid datagrams of a session other than the one followed (never applied)
T_IMPLAUSIBLE = 22  # valid datagrams starting more than C_WINDOW messages ahead (not adopted)
T_ACCEPTED = 23  # datagrams that delivered new messages (in order, after a gap, or an overlap's tail)
#: Tracker words: the rx stats row reserves ``schema.RX_TRACKER_WORDS`` of them for it.
NT = schema.RX_TRACKER_WORDS
assert max(v for k, v in list(globals().items()) if k.startswith("T_")) < NT, "a T_* word outside the tracker"
TRACKER_NAMES = {
    T_PACKETS: "packets", T_MESSAGES: "messages", T_DELIVERED: "delivered", T_GAP_MSGS: "gap_messages",
    T_GAP_EVENTS: "gap_events", T_DUP_PKTS: "duplicates", T_DUP_MSGS: "duplicate_messages",
    T_OOO_PKTS: "out_of_order", T_LATE_MSGS: "late_messages", T_MAL_LENGTH: "malformed_length",
    T_MAL_MAGIC: "malformed_magic", T_MAL_VERSION: "malformed_version", T_MAL_CHECK: "malformed_check",
    T_RING_DROPS: "ring_drops", T_HEARTBEATS: "heartbeats", T_SESSIONS: "sessions",
    T_MISS_LOST: "missing_ranges_forgotten", T_FOREIGN_SOURCE: "foreign_source",
    T_FOREIGN_SESSION: "foreign_session", T_IMPLAUSIBLE: "implausible_seq", T_ACCEPTED: "accepted",
}
#: The dispositions: every datagram is counted in exactly one of these.
DISPOSITIONS = (T_MAL_LENGTH, T_MAL_MAGIC, T_MAL_VERSION, T_MAL_CHECK, T_FOREIGN_SOURCE, T_FOREIGN_SESSION,
                T_IMPLAUSIBLE, T_HEARTBEATS, T_DUP_PKTS, T_OOO_PKTS, T_ACCEPTED)

# Receiver settings and admission state (C): the process's own, not in shared memory.
C_WINDOW = 0  # largest forward sequence jump adopted from one packet (messages)
C_FLAGS = 1
C_RESYNC = 2  # beyond-window packets in a row (contiguous, with messages) that are adopted; 0: never
C_JUMP_NEXT = 3  # where the last beyond-window packet ended
C_JUMP_RUN = 4  # contiguous beyond-window packets so far
NC = 8
F_ACCEPT_NEW_SESSION = 1  # a packet at seq 1 of a new session (from an allowed source) switches to it
DEFAULT_WINDOW = 1 << 24  # 16.8M messages: > 8 s of loss at 2M msgs/s; a forged jump beyond it is refused
DEFAULT_RESYNC = 64  # 64 contiguous packets (~2,900 messages) beyond the window: the feed really moved on


def receiver_config(window: int = DEFAULT_WINDOW, resync: int = DEFAULT_RESYNC,
                    accept_new_session: bool = False) -> np.ndarray:
    """The C array for ``rx_packet``."""
    c = np.zeros(NC, np.int64)
    c[C_WINDOW] = window
    c[C_RESYNC] = resync
    c[C_FLAGS] = F_ACCEPT_NEW_SESSION if accept_new_session else 0
    return c


NO_ALLOW = np.zeros((0, 2), np.int64)  # no allow-list: any source
MAX_MISSING = 256  # remembered missing ranges [lo, hi)


@njit(**HOT, inline="always")
def _fold(x):
    return ((x >> 32) ^ x) & _M32


@njit(**HOT, inline="always")
def _put_msg(pk, p, j, m, oid):
    """Message ``j`` of packet ``p`` from record ``m``; returns its check contribution."""
    o = WIRE_HEADER_WORDS + WIRE_MSG_WORDS * j
    w0 = md_w0(m.kind, m.side, m.symbol, m.qty)
    pk[p, o] = w0
    pk[p, o + WIRE_W_ORDER_ID] = oid
    pk[p, o + WIRE_W_PX] = m.px_tick
    pk[p, o + WIRE_W_TS_EXCH] = m.ts_exch_ns
    return w0 ^ oid ^ m.px_tick ^ m.ts_exch_ns


@njit(**HOT, inline="always")
def _put_header(pk, p, session, seq, c, chk):
    pk[p, WIRE_W_H0] = wire_h0(_MAGIC, _VERSION, 0, session)
    pk[p, WIRE_W_SEQ] = seq
    pk[p, WIRE_W_H2] = wire_h2(c, _MSZ, _fold(chk))


@njit(**HOT)
def encode_packets(md, start, n, session, seq0, per_packet, pk):
    """Encode messages ``md[start:start+n]`` (MD_DTYPE: no order id, sent as 0) into
    packets of up to ``per_packet`` messages, rows of ``pk`` (int64, WIRE_PACKET_WORDS
    wide), sequence numbers from ``seq0``.  Returns the number of packets (``pk`` must
    have room)."""
    n_pk = (n + per_packet - 1) // per_packet
    for p in range(n_pk):
        c = min(per_packet, n - p * per_packet)
        chk = 0
        for j in range(c):
            chk ^= _put_msg(pk, p, j, md[start + p * per_packet + j], np.int64(0))
        _put_header(pk, p, session, seq0 + p * per_packet, c, chk)
    return n_pk


@njit(**HOT)
def encode_wire(msgs, start, n, session, seq0, per_packet, pk):
    """``encode_packets`` for ``WIRE_MSG_DTYPE`` records (the exchange's market data),
    which carry their order ids onto the wire."""
    n_pk = (n + per_packet - 1) // per_packet
    for p in range(n_pk):
        c = min(per_packet, n - p * per_packet)
        chk = 0
        for j in range(c):
            m = msgs[start + p * per_packet + j]
            chk ^= _put_msg(pk, p, j, m, np.int64(m.order_id))
        _put_header(pk, p, session, seq0 + p * per_packet, c, chk)
    return n_pk


@njit(**HOT)
def encode_heartbeat(session, seq, pk):
    """A count-0 packet announcing ``seq`` as the next sequence number (row 0 of pk)."""
    pk[0, WIRE_W_H0] = wire_h0(_MAGIC, _VERSION, 0, session)
    pk[0, WIRE_W_SEQ] = seq
    pk[0, WIRE_W_H2] = wire_h2(0, _MSZ, 0)
    return _HDR


@njit(**HOT, inline="always")
def _remember_gap(T, miss, lo, hi):
    k = T[T_NMISS]
    if k == miss.shape[0]:  # forget the oldest range
        for i in range(1, k):
            miss[i - 1, 0] = miss[i, 0]
            miss[i - 1, 1] = miss[i, 1]
        k -= 1
        T[T_MISS_LOST] += 1
    miss[k, 0] = lo
    miss[k, 1] = hi
    T[T_NMISS] = k + 1


@njit(**HOT, inline="always")
def _fill_gap(T, miss, a, b):
    """If [a, b) lies inside a remembered missing range, carve it out; True if so."""
    k = T[T_NMISS]
    for i in range(k):
        lo = miss[i, 0]
        hi = miss[i, 1]
        if lo <= a and b <= hi:
            if lo == a and b == hi:  # range filled: remove it
                miss[i, 0] = miss[k - 1, 0]
                miss[i, 1] = miss[k - 1, 1]
                T[T_NMISS] = k - 1
            elif lo == a:
                miss[i, 0] = b
            elif b == hi:
                miss[i, 1] = a
            else:  # split in two
                miss[i, 1] = a
                _remember_gap(T, miss, b, hi)
            return True
    return False


@njit(**HOT, inline="always")
def _allowed(src, allow):
    for i in range(allow.shape[0]):
        if (src & allow[i, 1]) == allow[i, 0]:
            return True
    return False


@njit(**HOT, inline="always")
def _adopt(T, session):
    T[T_SESSION] = session
    T[T_SESSIONS] += 1
    T[T_NEXT] = 1
    T[T_NMISS] = 0


@njit(**HOT)
def rx_packet(w, nbytes, src, T, miss, C, allow, md_ctrl, md_rec, ts_recv):
    """Check, admit and track one datagram (``w``: its bytes as int64 words, ``nbytes``
    long, from ``src``: the first word of the sender's sockaddr_in) and push its new
    messages into the md ring.  Returns messages delivered."""
    T[T_PACKETS] += 1
    if allow.shape[0] > 0 and not _allowed(src, allow):
        T[T_FOREIGN_SOURCE] += 1
        return 0
    if nbytes < _HDR:
        T[T_MAL_LENGTH] += 1
        return 0
    magic, version, _, session = wire_h0_fields(w[WIRE_W_H0])
    if magic != _MAGIC:
        T[T_MAL_MAGIC] += 1
        return 0
    if version != _VERSION:
        T[T_MAL_VERSION] += 1
        return 0
    count, msz, check = wire_h2_fields(w[WIRE_W_H2])
    if msz != _MSZ or count > _MAXM or nbytes != _HDR + count * _MSZ:
        T[T_MAL_LENGTH] += 1
        return 0
    chk = 0
    for j in range(count):
        o = WIRE_HEADER_WORDS + WIRE_MSG_WORDS * j
        chk ^= w[o] ^ w[o + 1] ^ w[o + 2] ^ w[o + 3]
    if _fold(chk) != check:
        T[T_MAL_CHECK] += 1
        return 0
    a = w[WIRE_W_SEQ]
    if session != T[T_SESSION] or T[T_NEXT] == 0:
        if session != 0 and (T[T_SESSION] == 0 or session == T[T_SESSION]):
            _adopt(T, session)  # the first session seen, or the configured one's first packet
        elif session != 0 and (C[C_FLAGS] & F_ACCEPT_NEW_SESSION) != 0 and a == 1 and count > 0:
            _adopt(T, session)  # a restarted feed (allowed by configuration)
        else:
            T[T_FOREIGN_SESSION] += 1
            return 0
    nxt = T[T_NEXT]
    if a - nxt > C[C_WINDOW]:
        if count > 0 and a == C[C_JUMP_NEXT]:
            C[C_JUMP_RUN] += 1
        else:
            C[C_JUMP_RUN] = 1 if count > 0 else 0
        C[C_JUMP_NEXT] = a + count
        if C[C_RESYNC] == 0 or C[C_JUMP_RUN] < C[C_RESYNC]:
            T[T_IMPLAUSIBLE] += 1
            return 0
        C[C_JUMP_RUN] = 0  # (adopted below as a gap)
    if count == 0:
        T[T_HEARTBEATS] += 1
    T[T_MESSAGES] += count
    b = a + count
    first = 0  # index of the first message to deliver
    if a > nxt:
        _remember_gap(T, miss, nxt, a)
        T[T_GAP_MSGS] += a - nxt
        T[T_GAP_EVENTS] += 1
    elif a < nxt:
        if b <= nxt:
            if count == 0:
                return 0  # an old heartbeat
            if _fill_gap(T, miss, a, b):
                T[T_OOO_PKTS] += 1
                T[T_LATE_MSGS] += count
                T[T_GAP_MSGS] -= count
            else:
                T[T_DUP_PKTS] += 1
                T[T_DUP_MSGS] += count
            return 0
        first = nxt - a
        T[T_DUP_MSGS] += first
    if b > T[T_NEXT]:
        T[T_NEXT] = b
    k = count - first
    if k <= 0:
        return 0
    T[T_ACCEPTED] += 1
    cap = md_rec.shape[0]
    head, free = ring_claim(md_ctrl, cap, k)
    put = min(k, free)
    for i in range(put):
        j = first + i
        o = WIRE_HEADER_WORDS + WIRE_MSG_WORDS * j
        r = md_rec[(head + i) & (cap - 1)]
        r.kind, r.side, r.symbol, r.qty = md_w0_fields(w[o])
        r.px_tick = w[o + WIRE_W_PX]
        r.seq = a + j
        r.ts_exch_ns = w[o + WIRE_W_TS_EXCH]
        r.ts_recv_ns = ts_recv
    if put > 0:
        ring_publish(md_ctrl, head + put)
    T[T_DELIVERED] += put
    T[T_RING_DROPS] += k - put
    return put
