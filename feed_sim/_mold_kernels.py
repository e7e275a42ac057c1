"""Compiled MoldUDP64: the sender's packer and retransmission window, the request
server's answer turn, and the receiver's gap-healing state machine.  No allocation and
no Python per message or per packet; the Python face (``feed_sim.moldudp64``) owns every
array and re-exports what other packages' kernels call.

Packets (big-endian, docs/MOLDUDP64.md):

    downstream  session[10] seq[8] count[2] then count x (length[2] message[length])
                count 0: heartbeat, count 0xFFFF: end of session (both: seq = next)
    request     session[10] seq[8] count[2]  (to the request port; 20 bytes exactly)

A session is 10 bytes, held in kernels as two int64 words (bytes 0-7 and 8-9 read
little-endian: only compared and copied, never interpreted).

Sender.  ``pack`` cuts a stream of length-prefixed messages (an ITCH file's framing)
into packets of at most ``mtu`` bytes, assigns sequence numbers, and stores every
message in the window: an arena of B bytes written as a ring (a block never straddles
its end) plus ``win[seq & (W-1)]`` = the block's absolute arena position.  Message s is
still held iff ``next - W <= s < next`` and its position >= arena_written - B;
positions grow with s, so the oldest held message is found by bisection.  ``answer``
builds packets for a request, clipped to what is held (see "Decisions" in the doc).

Receiver (one session), for a valid packet holding messages [a, b):

  N    next sequence to deliver;  F  1 + the highest sequence known to exist
  gaps sorted rows [lo, hi) that are exactly the missing sequences in [N, F)
  hold ``HB[s & (H-1)]`` for every received, undelivered s in [N, F) (so F - N may
       exceed H only where nothing is held); the packet's bytes sit in a pool buffer
       (K of them, refcounted by their held messages)

  in order (a == N == F): bytes copied straight to ``OUT``; no state but N, F moves.
  otherwise: a new gap [F, a) if a > F; carve [a, min(b, F)) out of the gaps (a gap
  emptied is healed); F = max(F, b); each message s: s < N or already held ->
  duplicate, s == N -> delivered (then every held message that follows), else held.

Bounds: a packet that must be held needs b <= N + H and a free pool buffer; the gap
table has G rows.  When one is short, the lowest gap is declared lost (all of it:
holding its tail would only postpone the same choice) and N moves past it; when
nothing can be lost (the held run at N waits for room in OUT), the packet is dropped
and counted (``hold_drops``): its messages are still missing, so they are requested
again like any loss.  ``due_requests`` asks for each gap on discovery (after
``C_DELAY_NS``), again after ``C_TIMEOUT_NS`` without progress, and after
``C_RETRIES`` retries flags it lost; a lost gap is skipped when N reaches it.  Every skipped range is reported in ``LOST`` (lo, hi, messages delivered
to OUT before it) so the caller can mark books stale at the right place.

Invariant: ``gaps_seen + gaps_split == gaps_healed + gaps_lost + open gaps``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from obpipe.ring.jit import HOT
from obpipe.ring.net import recv_batch, send_batch

from obpipe.feed_sim._send_kernels import BAD_MAGIC, BAD_VERSION, CORRUPT, DROP, DUPLICATE, REORDER, TRUNCATE

HDR = 20  # downstream header and request bytes
REQ_BYTES = 20
EOS = 0xFFFF  # message count of an end-of-session packet
MAX_COUNT = 0xFFFE  # most messages one packet or request may name
STRIDE = 2048  # bytes per receive / pool buffer: the largest datagram handled
DEFAULT_MTU = 1472  # UDP payload of a 1,500-byte Ethernet MTU

# ---------------------------------------------------------------- sender words (X)
X_NEXT = 0  # next sequence number to assign
X_ARENA_W = 1  # bytes ever written to the window arena (absolute position)
X_SESS0 = 2  # session bytes 0-7
X_SESS1 = 3  # session bytes 8-9
X_PACKETS = 4  # downstream packets made (answers not included)
X_MESSAGES = 5  # messages packed
X_BYTES = 6  # message bytes packed (length prefixes included)
X_OVERSIZE = 7  # messages too long for one packet: skipped, no sequence number
X_REQUESTS = 8  # request datagrams received
X_ANSWERED = 9  # requests answered with at least one message
X_CLIPPED = 10  # ... of them with fewer messages than asked
X_REFUSED = 11  # requests for nothing the window holds (too old, or not sent yet)
X_REQ_MALFORMED = 12  # not 20 bytes, count 0 or > MAX_COUNT, seq < 1
X_REQ_SESSION = 13  # another session's requests
X_OVER_BUDGET = 14  # requests left unanswered: the turn's packet budget was spent
X_ANSWER_PACKETS = 15
X_ANSWER_MSGS = 16
X_SEND_ERRORS = 17  # answer datagrams the kernel refused
NX = 24
# sender settings (XC)
XC_MTU = 0  # largest packet, bytes
XC_MAX_MSGS = 1  # most messages per packet
XC_ANSWER_PACKETS = 2  # most packets answering one request
NXC = 4

# -------------------------------------------------------------- receiver words (S)
S_NEXT = 0  # N: next sequence to deliver (0: not started, N becomes the first packet's sequence)
S_FRONT = 1  # F: 1 + the highest sequence known to exist
S_SESS0 = 2
S_SESS1 = 3
S_SESS_SET = 4  # 1 once the session is known (configured or the first seen)
S_ENDED = 5  # 1 after an end-of-session packet
S_NGAPS = 6  # rows of G in use
S_HELD = 7  # messages held now
S_MAX_HELD = 8
S_NFREE = 9  # free pool buffers
S_OUT_BYTES = 10  # bytes in OUT (the caller resets after taking them)
S_OUT_MSGS = 11  # messages in OUT / OSEQ
S_NLOST = 12  # rows in LOST
S_HELD_BYTES = 13  # bytes of the held messages (OUT room needed to release them)
S_PACKETS = 16  # datagrams handled
S_ANSWER_PKTS = 17  # ... of them from the request socket (answers)
S_HEARTBEATS = 18
S_EOS = 19  # end-of-session packets
S_MESSAGES = 20  # messages in valid packets
S_DELIVERED = 21
S_GAPS_SEEN = 22
S_GAPS_SPLIT = 23  # a gap cut in two by a packet filling its middle
S_GAPS_HEALED = 24
S_GAPS_LOST = 25
S_RECOVERED = 26  # missing messages filled by answers
S_LATE = 27  # missing messages filled by late (reordered) downstream packets
S_MSGS_LOST = 28
S_REQUESTS = 29  # request packets sent
S_REQ_MSGS = 30  # messages asked for
S_DUP_PKTS = 31  # packets with no new message
S_DUP_MSGS = 32
S_MAL_SHORT = 33  # shorter than a header
S_MAL_COUNT = 34  # count inconsistent with the length, or a bad sequence number
S_WRONG_SESSION = 35
S_IMPLAUSIBLE = 36  # starting more than C_MAX_JUMP past N (not adopted)
S_HOLD_DROPS = 37  # packets dropped: hold full and nothing left to declare lost
S_RTT_N = 38  # gaps healed after a request: their first-request-to-fill times
S_RTT_SUM_NS = 39
S_RTT_MAX_NS = 40
S_HEALED_UNREQ = 41  # gaps filled before any request (reordering)
S_LOST_RETRY = 42  # lost ranges by cause: retry budget spent
S_LOST_HOLD = 43  # ... hold buffer (index or pool) full
S_LOST_TABLE = 44  # ... gap table full
S_LOST_MERGED = 45  # lost ranges merged into LOST's last row (LOST full)
S_FOREIGN_SOURCE = 46  # data datagrams from a source outside the allow-list
S_END_SEQ = 47  # the sequence an end-of-session packet announced
S_TRUNCATED = 48  # datagrams longer than STRIDE (cut by the receive; counted malformed too)
S_SESSIONS = 49  # sessions followed
NS = 56
# receiver settings (C)
C_HMASK = 0  # hold index size H - 1 (H a power of two)
C_TIMEOUT_NS = 1  # re-request a gap after this long without an answer
C_DELAY_NS = 2  # first request this long after a gap is seen (0: at once)
C_RETRIES = 3  # re-requests before a gap is declared lost
C_MAX_JUMP = 4  # a packet ending more than this past N is implausible
C_REQ_MAX = 5  # most messages one request asks for
C_NEXT_SESSION = 6  # 1: after an end of session, follow a new session starting at sequence 1
NC = 8
# gap rows (G)
G_LO, G_HI, G_T_SEEN, G_T_FIRST, G_T_LAST, G_RETRIES, G_LOST, G_SENT = 0, 1, 2, 3, 4, 5, 6, 7
NG = 8  # (seen, first and last request times in the caller's ns; requests sent)


# ----------------------------------------------------------------- byte helpers
@njit(**HOT, inline="always")
def _u16(b, o):
    return (np.int64(b[o]) << 8) | np.int64(b[o + 1])


@njit(**HOT, inline="always")
def _i64(b, o):
    x = np.int64(0)
    for i in range(8):
        x = (x << 8) | np.int64(b[o + i])
    return x


@njit(**HOT, inline="always")
def _le(b, o, n):
    x = np.int64(0)
    for i in range(n):
        x |= np.int64(b[o + i]) << (8 * i)
    return x


@njit(**HOT, inline="always")
def _put16(b, o, v):
    b[o] = (v >> 8) & 0xFF
    b[o + 1] = v & 0xFF


@njit(**HOT, inline="always")
def _put64(b, o, v):
    for i in range(8):
        b[o + i] = (v >> (56 - 8 * i)) & 0xFF


@njit(**HOT, inline="always")
def _put_header(b, o, s0, s1, seq, count):
    for i in range(8):
        b[o + i] = (s0 >> (8 * i)) & 0xFF
    b[o + 8] = s1 & 0xFF
    b[o + 9] = (s1 >> 8) & 0xFF
    _put64(b, o + 10, seq)
    _put16(b, o + 18, count)


@njit(**HOT, inline="always")
def _copy(dst, d, src, s, n):
    # through views indexed from 0: numba wraps a negative index, and with ``d + i``
    # LLVM cannot rule that out, so the plain loop copies a byte at a time (10x slower)
    dv = dst[d:d + n]
    sv = src[s:s + n]
    for i in range(n):
        dv[i] = sv[i]


# ----------------------------------------------------------------------- sender
@njit(**HOT)
def pack(stream, pos, end, X, XC, win, arena, out, dg_off, dg_len, pk_seq, pk_cnt, max_pk):
    """Cut the length-prefixed messages in ``stream[pos:end]`` (uint8) into packets
    laid one after another in ``out`` (at most ``max_pk``, each at most XC_MTU bytes),
    numbering them from X_NEXT and keeping each in the window.  Packet i is
    ``out[dg_off[i]:dg_off[i] + dg_len[i]]``, first sequence ``pk_seq[i]``, ``pk_cnt[i]``
    messages.  Returns (packets, stream position reached): an incomplete last block,
    or running out of packets or ``out``, stops early."""
    mtu = XC[XC_MTU]
    maxm = XC[XC_MAX_MSGS]
    wmask = win.shape[0] - 1
    B = arena.shape[0]
    cap = out.shape[0]
    s0 = X[X_SESS0]
    s1 = X[X_SESS1]
    seq = X[X_NEXT]
    w = X[X_ARENA_W]
    npk = 0
    cnt = 0
    start = 0
    o = 0
    while pos + 2 <= end:
        blk = 2 + _u16(stream, pos)
        if pos + blk > end:
            break
        if HDR + blk > mtu:
            X[X_OVERSIZE] += 1
            pos += blk
            continue
        if cnt > 0 and (o - start + blk > mtu or cnt == maxm):  # close the packet
            _put_header(out, start, s0, s1, seq - cnt, cnt)
            dg_off[npk] = start
            dg_len[npk] = o - start
            pk_seq[npk] = seq - cnt
            pk_cnt[npk] = cnt
            npk += 1
            cnt = 0
        if cnt == 0:
            if npk == max_pk or o + mtu > cap:
                break
            start = o
            o += HDR
        _copy(out, o, stream, pos, blk)
        p = w % B
        if p + blk > B:  # a block never straddles the arena's end
            w += B - p
            p = 0
        _copy(arena, p, stream, pos, blk)
        win[seq & wmask] = w
        w += blk
        X[X_BYTES] += blk
        o += blk
        pos += blk
        cnt += 1
        seq += 1
    if cnt > 0:
        _put_header(out, start, s0, s1, seq - cnt, cnt)
        dg_off[npk] = start
        dg_len[npk] = o - start
        pk_seq[npk] = seq - cnt
        pk_cnt[npk] = cnt
        npk += 1
    X[X_MESSAGES] += seq - X[X_NEXT]
    X[X_PACKETS] += npk
    X[X_NEXT] = seq
    X[X_ARENA_W] = w
    return npk, pos


@njit(**HOT)
def empty_packet(X, count, out, o):
    """A header-only packet at ``out[o:o+20]``: count 0 (heartbeat) or 0xFFFF (end of
    session), announcing X_NEXT.  Returns its length."""
    _put_header(out, o, X[X_SESS0], X[X_SESS1], X[X_NEXT], count)
    return HDR


@njit(**HOT, inline="always")
def _held(X, win, B, s):
    return win[s & (win.shape[0] - 1)] >= X[X_ARENA_W] - B


@njit(**HOT)
def window_range(X, win, arena):
    """(first, end): the sequences the window still holds, [first, end)."""
    end = X[X_NEXT]
    lo = max(1, end - win.shape[0])
    B = arena.shape[0]
    if lo >= end or not _held(X, win, B, end - 1):
        return end, end
    hi = end - 1  # held; find the first held in [lo, hi] (held is monotone in s)
    while lo < hi:
        mid = (lo + hi) // 2
        if _held(X, win, B, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo, end


@njit(**HOT)
def answer(X, XC, win, arena, seq, count, out, o, dg_off, dg_len, k, max_pk):
    """Packets answering a request for [seq, seq+count), clipped to what the window
    holds: appended to ``out`` from byte ``o`` and to the datagram list from entry
    ``k``, at most ``max_pk`` packets (and XC_ANSWER_PACKETS); counted answered (and
    clipped when short of ``count``) or refused.  Returns (packets, first sequence
    served, messages served, bytes used)."""
    first, end = window_range(X, win, arena)
    lo = max(seq, first)
    hi = min(seq + count, end)
    mtu = XC[XC_MTU]
    maxm = XC[XC_MAX_MSGS]
    max_pk = min(max_pk, XC[XC_ANSWER_PACKETS])
    wmask = win.shape[0] - 1
    B = arena.shape[0]
    cap = out.shape[0]
    s0 = X[X_SESS0]
    s1 = X[X_SESS1]
    o0 = o
    npk = 0
    s = lo
    while s < hi and npk < max_pk and o + mtu <= cap:
        start = o
        o += HDR
        c = 0
        while s < hi and c < maxm:
            p = win[s & wmask] % B
            blk = 2 + _u16(arena, p)
            if o - start + blk > mtu:
                break
            _copy(out, o, arena, p, blk)
            o += blk
            s += 1
            c += 1
        _put_header(out, start, s0, s1, s - c, c)
        dg_off[k + npk] = start
        dg_len[k + npk] = o - start
        npk += 1
    X[X_ANSWER_PACKETS] += npk
    X[X_ANSWER_MSGS] += s - lo
    if s == lo:
        X[X_REFUSED] += 1
    else:
        X[X_ANSWERED] += 1
        if s - lo < count:
            X[X_CLIPPED] += 1
    return npk, lo, s - lo, o - o0


@njit(**HOT)
def serve(fd, mvec, raw, names, X, XC, win, arena, out, dg_off, dg_len, smvec, siov, max_pk):
    """One turn of the request server: ``recvmmsg`` up to ``len(mvec)`` requests
    (non-blocking; datagram i in ``raw[i]``, its sender in ``names[i]``), answer each
    from the window (at most ``max_pk`` packets in all: later requests are counted
    X_OVER_BUDGET and not answered) and ``sendmmsg`` the answers, each to its
    requester.  Returns the requests read."""
    n = recv_batch(fd, mvec, mvec.shape[0])
    k = 0
    o = 0
    base = out.ctypes.data
    nb = names.ctypes.data
    for i in range(n):
        X[X_REQUESTS] += 1
        b = raw[i]
        if (mvec[i, 7] & 0xFFFFFFFF) != REQ_BYTES:
            X[X_REQ_MALFORMED] += 1
            continue
        if _le(b, 0, 8) != X[X_SESS0] or _le(b, 8, 2) != X[X_SESS1]:
            X[X_REQ_SESSION] += 1
            continue
        seq = _i64(b, 10)
        cnt = _u16(b, 18)
        if cnt == 0 or cnt > MAX_COUNT or seq < 1:
            X[X_REQ_MALFORMED] += 1
            continue
        if k >= max_pk:
            X[X_OVER_BUDGET] += 1
            continue
        got, _, msgs, used = answer(X, XC, win, arena, seq, cnt, out, o, dg_off, dg_len, k, max_pk - k)
        for j in range(k, k + got):
            smvec[j, 0] = nb + 16 * i
            smvec[j, 1] = 16
            siov[j, 0] = base + dg_off[j]
            siov[j, 1] = dg_len[j]
        k += got
        o += used
    j = 0
    while j < k:
        r = send_batch(fd, smvec, j, k - j)
        if r <= 0:
            X[X_SEND_ERRORS] += 1
            j += 1
        else:
            j += r
    return n


@njit(**HOT)
def fault_datagrams(actions, n, buf, dg_off, dg_len, out_off, out_len):
    """The datagrams ``n`` packets (``buf[dg_off[i]:][:dg_len[i]]``) become under
    fault ``actions`` (``feed_sim.wire``'s codes; MoldUDP64 has no magic, version or
    checksum, so corrupt flips the count's top bit and bad magic/version a session
    byte: each then counted malformed or wrong-session), applied to ``buf`` in place.
    Returns the number of datagrams (at most 2n)."""
    k = 0
    i = 0
    while i < n:
        a = actions[i]
        if a == DROP:
            i += 1
            continue
        if a == REORDER and i + 1 < n:
            out_off[k] = dg_off[i + 1]
            out_len[k] = dg_len[i + 1]
            out_off[k + 1] = dg_off[i]
            out_len[k + 1] = dg_len[i]
            k += 2
            i += 2
            continue
        ln = dg_len[i]
        if a == TRUNCATE:
            ln = max(0, ln - 7)
        elif a == CORRUPT:
            buf[dg_off[i] + 18] ^= 0x80
        elif a == BAD_MAGIC or a == BAD_VERSION:
            buf[dg_off[i]] ^= 0x20
        out_off[k] = dg_off[i]
        out_len[k] = ln
        k += 1
        if a == DUPLICATE:
            out_off[k] = dg_off[i]
            out_len[k] = ln
            k += 1
        i += 1
    return k


# --------------------------------------------------------------------- receiver
@njit(**HOT, inline="always")
def _room(S, OUT, OSEQ, nbytes, nmsgs):
    return S[S_OUT_BYTES] + nbytes <= OUT.shape[0] and S[S_OUT_MSGS] + nmsgs <= OSEQ.shape[0]


@njit(**HOT)
def _report_lost(S, LOST, lo, hi):
    S[S_MSGS_LOST] += hi - lo
    k = S[S_NLOST]
    if k == LOST.shape[0]:  # full: widen the last row (conservative, never silent)
        LOST[k - 1, 1] = hi
        S[S_LOST_MERGED] += 1
        return
    LOST[k, 0] = lo
    LOST[k, 1] = hi
    LOST[k, 2] = S[S_OUT_MSGS]
    S[S_NLOST] = k + 1


@njit(**HOT, inline="always")
def _gap_remove(S, G, i):
    n = S[S_NGAPS]
    for r in range(i, n - 1):
        for f in range(NG):
            G[r, f] = G[r + 1, f]
    S[S_NGAPS] = n - 1


@njit(**HOT)
def _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask):
    """Deliver held messages from N while they are there (and OUT has room), skipping
    gaps flagged lost when N reaches them."""
    n = S[S_NEXT]
    while True:
        e = n & hmask
        if HB[e, 0] == n:
            meta = HB[e, 1]
            pb = meta >> 32
            off = (meta >> 16) & 0xFFFF
            blk = meta & 0xFFFF
            if not _room(S, OUT, OSEQ, blk, 1):
                break
            ob = S[S_OUT_BYTES]
            _copy(OUT, ob, POOL[pb], off, blk)
            OSEQ[S[S_OUT_MSGS]] = n
            S[S_OUT_BYTES] = ob + blk
            S[S_OUT_MSGS] += 1
            S[S_DELIVERED] += 1
            S[S_HELD] -= 1
            S[S_HELD_BYTES] -= blk
            HB[e, 0] = -1
            REF[pb] -= 1
            if REF[pb] == 0:
                FREE[S[S_NFREE]] = pb
                S[S_NFREE] += 1
            n += 1
        elif S[S_NGAPS] > 0 and G[0, G_LO] == n and G[0, G_LOST] != 0:
            _report_lost(S, LOST, n, G[0, G_HI])
            S[S_LOST_RETRY] += 1
            S[S_GAPS_LOST] += 1
            n = G[0, G_HI]
            _gap_remove(S, G, 0)
        else:
            break
    S[S_NEXT] = n


@njit(**HOT)
def _lose_first(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, why):
    """Declare the lowest gap lost and move N past it (delivering what was held behind
    it).  Only when the gap starts at N; returns False otherwise."""
    if S[S_NGAPS] == 0 or G[0, G_LO] != S[S_NEXT]:
        return False
    lo = G[0, G_LO]
    hi = G[0, G_HI]
    _report_lost(S, LOST, lo, hi)
    S[why] += 1
    S[S_GAPS_LOST] += 1
    _gap_remove(S, G, 0)
    S[S_NEXT] = hi
    _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask)
    return True


@njit(**HOT)
def _carve(S, G, a, b, from_answer, now):
    """Remove [a, b) from the gap rows (a packet filled it); gaps emptied are healed."""
    i = 0
    while i < S[S_NGAPS]:
        lo = G[i, G_LO]
        hi = G[i, G_HI]
        if lo >= b:
            break
        if hi <= a:
            i += 1
            continue
        filled = min(hi, b) - max(lo, a)
        if from_answer != 0:
            S[S_RECOVERED] += filled
        else:
            S[S_LATE] += filled
        G[i, G_RETRIES] = 0  # progress: the retry budget starts again
        if a <= lo and hi <= b:  # emptied: healed
            S[S_GAPS_HEALED] += 1
            if G[i, G_SENT] > 0:
                rtt = now - G[i, G_T_FIRST]
                S[S_RTT_N] += 1
                S[S_RTT_SUM_NS] += rtt
                if rtt > S[S_RTT_MAX_NS]:
                    S[S_RTT_MAX_NS] = rtt
            else:
                S[S_HEALED_UNREQ] += 1
            _gap_remove(S, G, i)
            continue
        if a <= lo:
            G[i, G_LO] = b
        elif hi <= b:
            G[i, G_HI] = a
        else:  # split (the caller made room for a row)
            n = S[S_NGAPS]
            for r in range(n, i + 1, -1):
                for f in range(NG):
                    G[r, f] = G[r - 1, f]
            for f in range(NG):
                G[i + 1, f] = G[i, f]
            G[i, G_HI] = a
            G[i + 1, G_LO] = b
            S[S_NGAPS] = n + 1
            S[S_GAPS_SPLIT] += 1
            i += 1
        i += 1


@njit(**HOT)
def _new_gap(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, lo, hi, now):
    """Append the gap [lo, hi) (lo == F); False if the table is full and its lowest gap
    cannot be declared lost."""
    if S[S_NGAPS] == G.shape[0]:
        if not _lose_first(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, S_LOST_TABLE):
            return False
    k = S[S_NGAPS]
    G[k, G_LO] = lo
    G[k, G_HI] = hi
    G[k, G_T_SEEN] = now
    G[k, G_T_FIRST] = 0
    G[k, G_T_LAST] = 0
    G[k, G_RETRIES] = 0
    G[k, G_LOST] = 0
    G[k, G_SENT] = 0
    S[S_NGAPS] = k + 1
    S[S_GAPS_SEEN] += 1
    return True


@njit(**HOT)
def rx_datagram(pkt, nbytes, from_answer, now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST):
    """Handle one received datagram (``pkt[:nbytes]``, uint8; ``from_answer``: it came
    from the request socket).  In-order messages and every held message they release
    go to ``OUT`` (their framing kept: length[2] + message) with their sequence numbers
    in ``OSEQ``.  Returns messages delivered."""
    S[S_PACKETS] += 1
    if from_answer != 0:
        S[S_ANSWER_PKTS] += 1
    if nbytes > pkt.shape[0]:
        S[S_TRUNCATED] += 1
        S[S_MAL_COUNT] += 1
        return 0
    if nbytes < HDR:
        S[S_MAL_SHORT] += 1
        return 0
    s0 = _le(pkt, 0, 8)
    s1 = _le(pkt, 8, 2)
    a = _i64(pkt, 10)
    c = _u16(pkt, 18)
    if a < 1:
        S[S_MAL_COUNT] += 1
        return 0
    if c != 0 and c != EOS:  # the blocks must fill the datagram exactly
        p = HDR
        for _ in range(c):
            if p + 2 > nbytes:
                p = nbytes + 1
                break
            p += 2 + _u16(pkt, p)
        if p != nbytes:
            S[S_MAL_COUNT] += 1
            return 0
    elif nbytes != HDR:
        S[S_MAL_COUNT] += 1
        return 0
    if S[S_SESS_SET] == 0:  # follow the first session seen in a well-formed packet
        S[S_SESS0] = s0
        S[S_SESS1] = s1
        S[S_SESS_SET] = 1
        S[S_SESSIONS] += 1
    elif s0 != S[S_SESS0] or s1 != S[S_SESS1]:
        # the next session (MoldUDP64 feeds start one a day): followed from its first
        # packet once the current one ended and nothing of it is missing or held
        if (C[C_NEXT_SESSION] != 0 and S[S_ENDED] != 0 and S[S_NEXT] >= S[S_END_SEQ] and S[S_NGAPS] == 0
                and S[S_HELD] == 0 and a == 1 and c != EOS):
            S[S_SESS0] = s0
            S[S_SESS1] = s1
            S[S_SESSIONS] += 1
            S[S_ENDED] = 0
            S[S_END_SEQ] = 0
            S[S_NEXT] = 1
            S[S_FRONT] = 1
        else:
            S[S_WRONG_SESSION] += 1
            return 0
    if S[S_NEXT] == 0:  # start where the stream is (start_seq 0): nothing before counts as missing
        S[S_NEXT] = a
        S[S_FRONT] = a
    hmask = C[C_HMASK]
    N = S[S_NEXT]
    if c == 0 or c == EOS:  # heartbeat / end of session: a is the next sequence
        if a - N > C[C_MAX_JUMP]:
            S[S_IMPLAUSIBLE] += 1
            return 0
        if c == 0:
            S[S_HEARTBEATS] += 1
        else:
            S[S_EOS] += 1
            S[S_ENDED] = 1
            S[S_END_SEQ] = a
        F = S[S_FRONT]
        if a > F:
            if _new_gap(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, F, a, now):
                S[S_FRONT] = a
        return 0
    b = a + c
    if b <= N:
        S[S_MESSAGES] += c
        S[S_DUP_PKTS] += 1
        S[S_DUP_MSGS] += c
        return 0
    if b - N > C[C_MAX_JUMP]:
        S[S_IMPLAUSIBLE] += 1
        return 0
    S[S_MESSAGES] += c
    F = S[S_FRONT]
    pay = nbytes - HDR
    if a == N and F == N and _room(S, OUT, OSEQ, pay, c):  # in order: straight through
        ob = S[S_OUT_BYTES]
        om = S[S_OUT_MSGS]
        _copy(OUT, ob, pkt, HDR, pay)
        sq = OSEQ[om:om + c]
        for i in range(c):
            sq[i] = a + i
        S[S_OUT_BYTES] = ob + pay
        S[S_OUT_MSGS] = om + c
        S[S_DELIVERED] += c
        S[S_NEXT] = b
        S[S_FRONT] = b
        return c
    d0 = S[S_DELIVERED]
    if a > F:  # [F, a) is missing
        if not _new_gap(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, F, a, now):
            S[S_HOLD_DROPS] += 1
            return 0
        S[S_FRONT] = a
        F = a
    H = hmask + 1
    need_pool = a > S[S_NEXT] or not _room(S, OUT, OSEQ, pay + S[S_HELD_BYTES], c + S[S_HELD])
    if need_pool:
        while S[S_NEXT] < b - H or S[S_NFREE] == 0:
            if not _lose_first(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask, S_LOST_HOLD):
                S[S_HOLD_DROPS] += 1
                return S[S_DELIVERED] - d0
    if a < F:
        # a packet strictly inside one gap splits it: the table needs a free row
        for i in range(S[S_NGAPS]):
            if G[i, G_LO] < a and b < G[i, G_HI]:
                if S[S_NGAPS] == G.shape[0] and not _lose_first(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST,
                                                                  hmask, S_LOST_TABLE):
                    S[S_HOLD_DROPS] += 1
                    return S[S_DELIVERED] - d0
                break
        _carve(S, G, a, min(b, F), from_answer, now)
    if b > S[S_FRONT]:
        S[S_FRONT] = b
    # each message: duplicate, delivered, or held
    pb = -1
    fresh = 0  # messages of this packet that were new
    p = HDR
    for i in range(c):
        blk = 2 + _u16(pkt, p)
        s = a + i
        N = S[S_NEXT]
        e = s & hmask
        if s < N or HB[e, 0] == s:
            S[S_DUP_MSGS] += 1
        elif s == N and _room(S, OUT, OSEQ, blk, 1):
            fresh += 1
            ob = S[S_OUT_BYTES]
            _copy(OUT, ob, pkt, p, blk)
            OSEQ[S[S_OUT_MSGS]] = s
            S[S_OUT_BYTES] = ob + blk
            S[S_OUT_MSGS] += 1
            S[S_DELIVERED] += 1
            S[S_NEXT] = s + 1
            _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask)
        else:
            fresh += 1
            if pb < 0:  # the packet's bytes go to a pool buffer: need_pool made one free
                # (with a <= N and OUT room for the packet and all held, none is needed:
                # each message is then below N or at it)
                S[S_NFREE] -= 1
                pb = FREE[S[S_NFREE]]
                _copy(POOL[pb], 0, pkt, 0, nbytes)
            HB[e, 0] = s
            HB[e, 1] = (pb << 32) | (p << 16) | blk
            REF[pb] += 1
            S[S_HELD] += 1
            S[S_HELD_BYTES] += blk
        p += blk
    if pb >= 0 and REF[pb] == 0:
        FREE[S[S_NFREE]] = pb
        S[S_NFREE] += 1
    if S[S_HELD] > S[S_MAX_HELD]:
        S[S_MAX_HELD] = S[S_HELD]
    if fresh == 0:
        S[S_DUP_PKTS] += 1
    _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, hmask)
    return S[S_DELIVERED] - d0


@njit(**HOT)
def drain(S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST):
    """Deliver what is held and due (after the caller made room in OUT)."""
    _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, C[C_HMASK])


@njit(**HOT)
def due_requests(now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, req, max_req):
    """The request packets due at ``now`` (rows of ``req``, 20 bytes each, at most
    ``max_req``), lowest gaps first; gaps out of retries are flagged lost (and skipped
    at once if N is at them).  Returns the number of requests."""
    k = 0
    for i in range(S[S_NGAPS]):
        if k >= max_req:
            break
        if G[i, G_LOST] != 0:
            continue
        if G[i, G_SENT] == 0:
            if now - G[i, G_T_SEEN] < C[C_DELAY_NS]:
                continue
            G[i, G_T_FIRST] = now
        else:
            if now - G[i, G_T_LAST] < C[C_TIMEOUT_NS]:
                continue
            if G[i, G_RETRIES] >= C[C_RETRIES]:
                G[i, G_LOST] = 1
                continue
            G[i, G_RETRIES] += 1
        G[i, G_T_LAST] = now
        G[i, G_SENT] += 1
        cnt = min(G[i, G_HI] - G[i, G_LO], C[C_REQ_MAX])
        _put_header(req[k], 0, S[S_SESS0], S[S_SESS1], G[i, G_LO], cnt)
        S[S_REQUESTS] += 1
        S[S_REQ_MSGS] += cnt
        k += 1
    _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, C[C_HMASK])
    return k


@njit(**HOT)
def rx_list(base, dg_off, dg_len, n, from_answer, now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST):
    """``rx_datagram`` for each datagram of a list over ``base`` (in-memory feeds,
    tests, benchmarks).  Returns messages delivered."""
    d = 0
    for i in range(n):
        o = dg_off[i]
        ln = dg_len[i]
        d += rx_datagram(base[o:o + ln], ln, from_answer, now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST)
    return d


@njit(**HOT, inline="always")
def _admit(src, allow):
    if allow.shape[0] == 0:
        return True
    for i in range(allow.shape[0]):
        if (src & allow[i, 1]) == allow[i, 0]:
            return True
    return False


@njit(**HOT)
def rx_turn(dfd, dmvec, draw, dnames, allow, afd, amvec, araw, rmvec, riov, req, now,
            S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST):
    """One receive turn: ``recvmmsg`` the answers waiting on the request socket ``afd``
    (connected to the request server, so only its datagrams arrive), then the data
    socket ``dfd`` (datagrams from outside ``allow`` counted S_FOREIGN_SOURCE), handle
    each, and send the requests due on ``afd``.  The caller takes OUT between turns.
    Returns datagrams handled."""
    _drain(S, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, C[C_HMASK])
    na = recv_batch(afd, amvec, amvec.shape[0])
    for i in range(na):
        rx_datagram(araw[i], amvec[i, 7] & 0xFFFFFFFF, 1, now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST)
    nd = recv_batch(dfd, dmvec, dmvec.shape[0])
    for i in range(nd):
        if not _admit(dnames[i, 0], allow):
            S[S_FOREIGN_SOURCE] += 1
            continue
        rx_datagram(draw[i], dmvec[i, 7] & 0xFFFFFFFF, 0, now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST)
    nr = due_requests(now, S, C, G, HB, POOL, REF, FREE, OUT, OSEQ, LOST, req, min(req.shape[0], rmvec.shape[0]))
    if nr > 0:
        rb = req.ctypes.data
        for j in range(nr):
            riov[j, 0] = rb + REQ_BYTES * j
            riov[j, 1] = REQ_BYTES
        j = 0
        while j < nr:
            r = send_batch(afd, rmvec, j, nr - j)
            j += r if r > 0 else 1
    return na + nd
