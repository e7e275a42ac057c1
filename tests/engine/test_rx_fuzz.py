"""Fuzzing rx over real UDP (issue 13): a seeded campaign of mutated and random
datagrams into a running rx process.  rx never crashes, every datagram is counted in
exactly one disposition, every counter equals the reference receiver's
(``reference_rx.RefRx``), the md ring holds exactly the messages the reference
delivers, and the book they build equals ``reference_book.RefBook`` fed the same."""
from __future__ import annotations

import bisect
import itertools
import socket
import struct
import time

import numpy as np
import pytest

from obpipe.engine import rx
from obpipe.engine.book import Book
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.feed_sim.wire import tracker_counters
from obpipe.ring import schema as sc
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.stats import ROW_RX, StatsBlock
from tests.helpers import running_rx

from .reference_book import RefBook
from .reference_rx import RefRx

N_SYM = 4
WIDTH = 4096
BATCH = 2000  # datagrams in flight at most (rx's 8 MB socket buffer holds many more)
SESSION = 0x1234ABCD
WINDOW = 1 << 16  # a small window, so wild sequence numbers hit both sides of it
RESYNC = 4


def _fold(x: int) -> int:
    return ((x >> 32) ^ x) & 0xFFFFFFFF


def _packet(session: int, seq: int, words: list[int]) -> bytes:
    chk = 0
    for x in words:
        chk ^= x
    count = len(words) // 4
    h0 = sc.WIRE_MAGIC | (sc.WIRE_VERSION << 16) | (session << 32)
    h2 = count | (sc.WIRE_MSG_BYTES << 16) | (_fold(chk) << 32)
    return struct.pack(f"<qqQ{len(words)}q", h0 - (1 << 64) if h0 >= 1 << 63 else h0, seq, h2, *words)


class _Msgs:
    """The real stream's messages as wire words (plain ints: fast to slice)."""

    def __init__(self, md):
        w0 = (md["kind"].astype(np.int64) | md["side"].astype(np.int64) << 8 | md["symbol"].astype(np.int64) << 16
              | md["qty"].astype(np.int64) << 32)
        words = np.zeros((len(md), 4), np.int64)
        words[:, 0], words[:, 2], words[:, 3] = w0, md["px_tick"], md["ts_exch_ns"]
        self.words = words.reshape(-1).tolist()
        self.n = len(md)

    def __call__(self, i: int, n: int) -> list[int]:
        return self.words[4 * i:4 * (i + n)]


def campaign(seed: int, n: int, md):
    """About ``n`` datagrams, each with whether it comes from the foreign source, made
    as they are taken (memory stays flat at any fuzz_scale).  A real feed of small
    packets in order, and around it random junk and mutations of the real packets (bit
    flips, truncation, header fields, other sessions, wild sequence numbers, resends,
    skipped packets, runs beyond the window)."""
    import random
    from collections import deque

    R = random.Random(seed)
    msgs = _Msgs(md)
    weights = np.cumsum([.30, .15, .10, .08, .08, .06, .07, .06, .04, .04, .02]).tolist()
    seq, mi, last = 1, 0, None
    sent = deque(maxlen=50)  # the latest real packets made (for resends)
    top = msgs.n - 4
    for _ in range(n):
        k = bisect.bisect_right(weights, R.random() * weights[-1])
        if last is None or k == 1 or k == 8:  # the next real packet (the first datagram is one); 8: skipped
            c = R.randint(1, 4)
            if mi + c > msgs.n:
                mi = 0
            pk = _packet(SESSION, seq, msgs(mi, c))
            seq += c
            mi += c
            sent.append(pk)
            if k == 8 and last is not None:
                continue  # a gap that a resend below may fill later
            last = pk
            yield pk, False
            continue
        if k == 0:  # random junk, mostly short; half with a valid magic and version
            d = bytearray(R.randbytes(R.randrange(0, 64)))
            if len(d) >= 3 and R.random() < 0.5:
                d[0:2] = sc.WIRE_MAGIC.to_bytes(2, "little")
                d[2] = sc.WIRE_VERSION
            out = bytes(d)
        elif k == 2:  # bit flips anywhere in a real packet
            d = bytearray(last)
            for _ in range(R.randint(1, 3)):
                bit = R.randrange(8 * len(d))
                d[bit // 8] ^= 1 << (bit % 8)
            out = bytes(d)
        elif k == 3:  # truncated (or extended) real packet
            cut = R.randrange(len(last) + 16)
            out = last[:cut] if cut <= len(last) else last + bytes(cut - len(last))
        elif k == 4:  # header field changes: count, message size, check, version, magic (body untouched)
            h0, q, h2 = struct.unpack_from("<qqQ", last)
            f = R.randrange(5)
            if f == 0:
                h2 = (h2 & ~0xFFFF) | R.randrange(1 << 16)
            elif f == 1:
                h2 = (h2 & ~(0xFFFF << 16)) | R.randrange(1 << 16) << 16
            elif f == 2:
                h2 ^= R.randrange(1, 1 << 32) << 32
            elif f == 3:
                h0 ^= R.randrange(1, 256) << 16
            else:
                h0 ^= R.randrange(1, 1 << 16)
            out = struct.pack("<qqQ", h0, q, h2 & (1 << 64) - 1) + last[24:]
        elif k == 5:  # another session: a start at seq 1, the current seq, or anywhere
            s = R.choice([0, 1, SESSION ^ 1, R.randrange(1 << 32)])
            q = R.choice([1, seq, R.randrange(-10, 1 << 40)])
            out = _packet(s, q, msgs(R.randrange(top), R.randrange(5)))
        elif k == 6:  # wild sequence numbers in the right session: heartbeats and packets
            q = R.choice([1 << 62, (1 << 63) - 1, -(1 << 63), -1, 0, seq + WINDOW + 1,
                          seq + R.randrange(1, 2 * WINDOW), seq - R.randrange(1, 1000)])
            out = _packet(SESSION, q, msgs(R.randrange(top), R.randrange(3)))
        elif k == 7:  # a resend of a recent real packet (a duplicate, or late if it fills a gap)
            out = sent[R.randrange(len(sent))]
        elif k == 9:  # a perfectly valid next packet, but from another source
            yield _packet(SESSION, seq, msgs(mi % top, 2)), True
            continue
        else:  # a run of contiguous packets beyond the window (adopted after RESYNC of them)
            q = seq + WINDOW + R.randrange(1, 1000)
            for _ in range(R.randint(1, RESYNC + 1)):
                c = R.randint(1, 3)
                yield _packet(SESSION, q, msgs(R.randrange(top), c)), False
                q += c
            seq = max(seq, q)
            continue
        yield out, False


def _send_and_account(datagrams, row, md_ring, good, bad, ref, p) -> tuple[Book, list[RefBook]]:
    """Send the campaign in flow-controlled batches (rx's socket never overflows, so the
    accounting is exact) while the reference receiver takes the same datagrams.  After
    each batch the md ring holds exactly the messages the reference delivered for it;
    both go into a book.  Then every counter is checked; returns the two books."""
    to = ("127.0.0.1", int(row[sc.ST_RX_PORT]))
    packets = row[sc.RX_TRACKER_BASE:sc.RX_TRACKER_BASE + WK.NT]
    buf = np.zeros(1 << 20, sc.MD_DTYPE)
    book = Book([WIDTH] * N_SYM, 10)
    refs = [RefBook(WIDTH) for _ in range(N_SYM)]
    sent = delivered = 0
    while True:
        batch = list(itertools.islice(datagrams, BATCH))
        if not batch:
            break
        want = []
        for d, f in batch:
            if f:
                bad.sendto(d, to)
                ref.foreign_source()
            else:
                good.sendto(d, to)
                want += ref.receive(d)
        sent += len(batch)
        deadline = time.monotonic() + 60
        while packets[WK.T_PACKETS] < sent:
            assert p.is_alive() and time.monotonic() < deadline, "rx stopped taking datagrams"
            time.sleep(0.0005)
        recs = buf[:md_ring.pop(buf)]
        w = np.array(want, np.int64).reshape(-1, 4)
        assert len(recs) == len(w), (sent, len(recs), len(w))
        assert np.array_equal(recs["kind"], w[:, 0] & 0xFF) and np.array_equal(recs["side"], (w[:, 0] >> 8) & 0xFF)
        assert np.array_equal(recs["symbol"], (w[:, 0] >> 16) & 0xFFFF) and np.array_equal(recs["qty"], w[:, 0] >> 32)
        assert np.array_equal(recs["px_tick"], w[:, 1]) and np.array_equal(recs["seq"], w[:, 2])
        assert np.array_equal(recs["ts_exch_ns"], w[:, 3])
        book.apply(recs)
        for w0, px, _, _ in want:
            s = (w0 >> 16) & 0xFFFF
            if s < N_SYM:
                refs[s].apply(w0 & 0xFF, (w0 >> 8) & 0xFF, px, (w0 >> 32) & 0xFFFFFFFF)
        delivered += len(recs)
    assert rx.kernel_drops(to[1]) == 0, "the kernel dropped datagrams: the accounting below cannot be exact"
    c = tracker_counters(packets)
    assert c["packets"] == sent == sum(c[WK.TRACKER_NAMES[i]] for i in WK.DISPOSITIONS)
    for name in WK.TRACKER_NAMES.values():
        assert c[name] == ref.c[name], (name, c[name], ref.c[name])
    for name in ("foreign_source", "foreign_session", "implausible_seq", "malformed_check", "malformed_length",
                 "malformed_magic", "malformed_version", "duplicates", "out_of_order", "accepted", "heartbeats"):
        assert c[name] > 0, name  # the campaign reached every disposition
    assert c["ring_drops"] == 0 and c["delivered"] == delivered > 0 and p.is_alive()
    return book, refs


@pytest.mark.fuzz
@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_a_million_mutated_and_random_datagrams_are_each_counted_and_only_valid_ones_reach_the_book(
        instance, fuzz_scale):
    n = 1_000_000 * fuzz_scale
    md = generate(200_000, SynthParams(n_symbols=N_SYM, seed=31))
    stats = StatsBlock.create(instance)
    md_ring = Ring.create(instance, "md", sc.MD_DTYPE, 1 << 20)
    good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good.bind(("127.0.0.1", 0))
    bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bad.bind(("127.0.0.1", 0))
    spec = rx.RxSpec(instance, backoff=Backoff(200, 10, 50), allow=(("127.0.0.1", good.getsockname()[1]),),
                     max_seq_jump=WINDOW, resync_packets=RESYNC)
    row = stats.row(ROW_RX)
    try:
        with running_rx(spec, row) as p:
            book, refs = _send_and_account(campaign(1300 + fuzz_scale, n, md), row, md_ring, good, bad,
                                           RefRx(window=WINDOW, resync=RESYNC), p)
    finally:
        good.close()
        bad.close()
        for x in (md_ring, stats):
            x.unlink()
            x.close()
    # the book rx's messages built equals the reference book fed the reference receiver's messages
    for s, r in enumerate(refs):
        assert book.bbo(s) == r.bbo(), s
        for side in (0, 1):
            assert book.top(s, side, 10) == r.top(side, 10), (s, side)
