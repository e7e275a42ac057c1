"""MoldUDP64: packets read back by an independent struct reader, the retransmission
window, and the receiver healing (or declaring lost) every gap of seeded faulty
streams, in memory and over real UDP on 127.0.0.1."""
from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from obpipe.feed_sim import moldudp64 as M
from obpipe.feed_sim.wire import DROP, DUPLICATE, REORDER, Faults, plan

HB_STEP_NS = 1_000_000  # the simulated clock advances 1 ms per batch of datagrams


def make_stream(n: int, seed: int, lo: int = 1, hi: int = 60) -> np.ndarray:
    """``n`` random messages in the length-prefixed framing (length[2] big-endian + body)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi + 1, n)
    off = np.concatenate(([0], np.cumsum(lens + 2)[:-1]))
    buf = rng.integers(0, 256, int((lens + 2).sum()), dtype=np.uint8)
    buf[off] = lens >> 8
    buf[off + 1] = lens & 0xFF
    return buf


def split_stream(buf: bytes) -> list[bytes]:
    out, p = [], 0
    while p < len(buf):
        (n,) = struct.unpack_from(">H", buf, p)
        out.append(bytes(buf[p + 2:p + 2 + n]))
        p += 2 + n
    return out


def read_packet(b: bytes) -> tuple[bytes, int, int, list[bytes]]:
    """The test's own reader of a downstream packet: (session, seq, count, messages)."""
    session, seq, count = struct.unpack_from(">10sQH", b, 0)
    msgs, p = [], 20
    for _ in range(0 if count == 0xFFFF else count):
        (n,) = struct.unpack_from(">H", b, p)
        msgs.append(bytes(b[p + 2:p + 2 + n]))
        p += 2 + n
    assert p == len(b), "blocks do not fill the packet"
    return session, seq, count, msgs


def answer_requests(packer: M.MoldPacker, reqs: list[bytes]) -> list[bytes]:
    out = []
    for r in reqs:
        session, seq, count = struct.unpack(">10sQH", r)
        assert session == packer.session and count > 0
        out += packer.answer(seq, count)
    return out


def simulate(packer, rx, off, ln, answers=True, chunk=64, answer_lag=1, settle_rounds=40):
    """Feed the datagram list to ``rx`` ``chunk`` at a time on a simulated clock; the
    answers to each batch's requests arrive ``answer_lag`` batches later (held meanwhile).
    Ends with an end of session and request rounds until the receiver is complete.
    Returns everything delivered: (bytes, seqs, lost rows)."""
    data, seqs, lost = [], [], []
    pending = [[] for _ in range(answer_lag + 1)]
    now = 0

    def turn(datagrams_off=None, datagrams_len=None):
        nonlocal now
        if datagrams_off is not None:
            rx.ingest_list(packer.buf, datagrams_off, datagrams_len, now_ns=now)
        for a in pending.pop(0):
            rx.ingest(a, now, from_answer=True)
        reqs = rx.requests(now)
        pending.append(answer_requests(packer, reqs) if answers else [])
        d = rx.take()
        data.append(d.data.tobytes())
        seqs.append(d.seq)
        lost.append(d.lost + np.array([0, 0, sum(len(s) for s in seqs[:-1])]) if len(d.lost) else d.lost)
        now += HB_STEP_NS

    for i in range(0, len(off), chunk):
        turn(off[i:i + chunk], ln[i:i + chunk])
    rx.ingest(packer.end_of_session(), now)
    for _ in range(settle_rounds):
        turn()
        now += int(rx.C[M.C_TIMEOUT_NS])
        if rx.complete and rx.counters()["open_gaps"] == 0:
            break
    turn()
    return b"".join(data), np.concatenate(seqs), np.concatenate([x for x in lost if len(x)] or [np.zeros((0, 3), int)])


# ------------------------------------------------------------------------ packets
@pytest.mark.timeout(120)
def test_packets_read_back_by_an_independent_reader():
    stream = make_stream(5000, seed=3, lo=0, hi=80)
    stream = np.concatenate((stream, np.frombuffer(struct.pack(">H", 1460) + bytes(1460), np.uint8),  # too long
                             make_stream(10, seed=4)))
    msgs = split_stream(stream.tobytes())
    packer = M.MoldPacker("SESSION01", mtu=600, max_msgs=50, max_packets=1000, first_seq=7)
    n, pos = packer.pack(stream[:-3])  # the last block incomplete: left for the next call
    assert pos < len(stream) - 3
    n2_first = n
    got, want_seq = [], 7
    for b in packer.packets():
        session, seq, count, body = read_packet(b)
        assert session == b"SESSION01 " and seq == want_seq and count == len(body) and 0 < count <= 50
        assert len(b) <= 600
        got += body
        want_seq += count
    n, pos = packer.pack(stream, pos)
    assert pos == len(stream) and n >= 1
    for b in packer.packets():
        session, seq, count, body = read_packet(b)
        assert seq == want_seq
        got += body
        want_seq += count
    assert got == [m for m in msgs if len(m) != 1460]  # the oversize message skipped, not numbered
    assert packer.counters()["oversize"] == 1 and packer.next_seq == 7 + len(msgs) - 1 == want_seq
    assert packer.counters()["packets"] == n2_first + n
    # heartbeat and end of session: header only, announcing the next sequence
    assert read_packet(packer.heartbeat()) == (b"SESSION01 ", want_seq, 0, [])
    assert read_packet(packer.end_of_session()) == (b"SESSION01 ", want_seq, 0xFFFF, [])
    assert M.request_packet("SESSION01", 9, 3) == struct.pack(">10sQH", b"SESSION01 ", 9, 3)
    assert M.session_bytes(42) == b"0000000042"


@pytest.mark.timeout(120)
def test_window_answers_clipped_to_what_it_still_holds():
    stream = make_stream(5000, seed=5)
    msgs = split_stream(stream.tobytes())
    packer = M.MoldPacker(1, window=1024, max_packets=200, answer_packets=64)
    packer.pack(stream)
    assert packer.window_range() == (5001 - 1024, 5001)

    def answered(seq, count):
        out = []
        for b in packer.answer(seq, count):
            _, s, c, body = read_packet(b)
            assert s == (out[-1][0] + 1 if out else s)
            out += [(s + i, m) for i, m in enumerate(body)]
        return out

    a = answered(4000, 10)
    assert [s for s, _ in a] == list(range(4000, 4010)) and [m for _, m in a] == msgs[3999:4009]
    assert answered(100, 10) == []  # older than the window: nothing
    assert [s for s, _ in answered(3970, 20)] == list(range(3977, 3990))  # straddling: the part still held
    assert [s for s, _ in answered(4999, 10)] == [4999, 5000] and answered(5001, 1) == []
    assert len(packer.answer(3977, 1024)) > 1  # a long answer spans packets
    # the byte bound clips too: a 4 KB arena holds fewer than 1,024 messages of ~30 bytes
    small = M.MoldPacker(1, window=1024, window_bytes=4096, max_packets=200)
    small.pack(stream)
    first, end = small.window_range()
    assert end == 5001 and 5001 - 4096 // 25 <= first and [s for s, _ in [
        (read_packet(b)[1], 0) for b in small.answer(first - 5, 3)]] == []
    _, s, _, body = read_packet(small.answer(first, 2)[0])
    assert s == first and body == msgs[first - 1:first + 1]


# ------------------------------------------------------------------- healing, in memory
@pytest.mark.timeout(120)
def test_drops_reorders_and_duplicates_heal_into_the_exact_stream():
    stream = make_stream(400_000, seed=11)
    packer = M.MoldPacker("HEAL", window=1 << 19, max_packets=20_000)
    n, pos = packer.pack(stream)
    assert pos == len(stream)
    actions = plan(n, Faults(drop_prob=0.001, duplicate_every=101, reorder_every=89, seed=7))
    dropped = actions[:n] == DROP
    assert dropped.sum() >= 4
    off, ln = packer.apply_faults(actions)
    rx = M.MoldRx(timeout_ns=3 * HB_STEP_NS)
    data, seqs, lost = simulate(packer, rx, off, ln)
    c = rx.counters()
    assert data == stream.tobytes()
    assert np.array_equal(seqs, np.arange(1, packer.next_seq))
    assert len(lost) == 0 and c["gaps_lost"] == 0 and c["messages_lost"] == 0 and c["hold_drops"] == 0
    assert c["recovered"] >= int(packer.pk_cnt[:n][dropped].sum())  # only an answer can fill a dropped packet
    assert c["gaps_seen"] >= dropped.sum() // 2 and c["round_trips"] >= 1 and c["requests"] >= c["round_trips"]
    assert c["gaps_seen"] + c["gaps_split"] == c["gaps_healed"] and c["open_gaps"] == 0
    assert c["duplicates"] >= (actions == DUPLICATE).sum() and c["max_held"] > 0 and c["held"] == 0
    assert c["late"] > 0 or c["healed_unrequested"] > 0  # the reordered packets filled their own gaps
    assert (actions == REORDER).sum() > 0 and c["malformed"] == 0


@pytest.mark.timeout(120)
def test_without_retransmission_exactly_the_dropped_messages_are_lost():
    stream = make_stream(200_000, seed=12)
    packer = M.MoldPacker("LOSS", window=1 << 18, max_packets=10_000)
    n, _ = packer.pack(stream)
    actions = plan(n, Faults(drop_prob=0.003, seed=9))
    dropped = actions[:n] == DROP
    off, ln = packer.apply_faults(actions)
    rx = M.MoldRx(timeout_ns=3 * HB_STEP_NS, retries=2)
    data, seqs, lost = simulate(packer, rx, off, ln, answers=False)
    c = rx.counters()
    want_lost = int(packer.pk_cnt[:n][dropped].sum())
    assert c["messages_lost"] == want_lost > 0 and int((lost[:, 1] - lost[:, 0]).sum()) == want_lost
    kept = np.repeat(~dropped, packer.pk_cnt[:n])
    assert np.array_equal(seqs, np.arange(1, packer.next_seq)[kept])
    assert split_stream(data) == [m for m, k in zip(split_stream(stream.tobytes()), kept) if k]
    # every lost range is a run of dropped packets, reported where it was skipped
    for lo, hi, k in lost:
        assert not kept[lo - 1:hi - 1].any()
        assert (seqs[k - 1] == lo - 1) if k else (lo == 1)
    assert c["gaps_lost"] == c["gaps_seen"] + c["gaps_split"] and c["recovered"] == 0
    assert c["lost_retries"] + c["lost_hold_full"] + c["lost_table_full"] == len(lost) and rx.complete


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(6))
def test_any_arrival_splits_the_stream_into_delivered_in_order_and_reported_lost(seed):
    """Random drops, duplicates, jittered order, garbage, tight bounds and sometimes no
    answers: every sequence is delivered (its exact bytes, in order) or inside a
    reported lost range, never both, never neither."""
    rng = np.random.default_rng(100 + seed)
    stream = make_stream(20_000, seed=seed)
    msgs = split_stream(stream.tobytes())
    tight = seed % 2 == 1  # tight bounds (most gaps end lost), else room for everything
    # (all is packed up front: a window of 4,096 refuses all but the last requests)
    packer = M.MoldPacker("FUZZ", window=1 << (12 if tight else 15), mtu=int(rng.choice([120, 600, 1472])),
                          max_packets=20_000)
    n, _ = packer.pack(stream)
    idx = np.arange(n)
    idx = idx[rng.random(n) > 0.05]  # drops
    idx = np.concatenate((idx, rng.choice(idx, len(idx) // 20)))  # duplicates
    idx = idx[np.argsort(idx + rng.normal(0, 4, len(idx)))]  # jitter
    off, ln = packer.dg_off[idx].copy(), packer.dg_len[idx].copy()
    ln[rng.random(len(ln)) < 0.01] -= 3  # cut datagrams (malformed)
    if tight:
        bounds = dict(hold=int(rng.choice([64, 1024, 8192])), pool=int(rng.choice([2, 16, 256])),
                      max_gaps=int(rng.choice([2, 8, 64])))
    else:
        bounds = dict(hold=1 << 15, pool=2048, max_gaps=256)
    lag = int(rng.integers(0, 3))  # answers arrive lag + 1 turns after their requests
    answers = seed % 3 != 0
    rx = M.MoldRx(**bounds, timeout_ns=HB_STEP_NS * (1 if tight else lag + 2), retries=int(rng.integers(0, 3)))
    data, seqs, lost = simulate(packer, rx, off, ln, answers=answers, chunk=int(rng.integers(1, 64)),
                                answer_lag=lag)
    c = rx.counters()
    assert np.all(np.diff(seqs) > 0) and split_stream(data) == [msgs[s - 1] for s in seqs]
    covered = np.zeros(packer.next_seq, np.int64)
    covered[seqs] += 1
    for lo, hi, _ in lost:
        covered[lo:hi] += 1
    assert (covered[1:] == 1).all(), "a sequence delivered twice, or neither delivered nor reported lost"
    assert c["messages_lost"] == int((lost[:, 1] - lost[:, 0]).sum()) if len(lost) else c["messages_lost"] == 0
    assert c["gaps_seen"] + c["gaps_split"] == c["gaps_healed"] + c["gaps_lost"] and c["open_gaps"] == 0
    assert c["delivered"] == len(seqs) and c["held"] == 0 and c["malformed"] > 0 and rx.complete
    if answers and not tight:
        assert c["messages_lost"] == 0 and c["recovered"] > 0


@pytest.mark.timeout(120)
def test_a_gap_older_than_the_window_is_lost_and_a_straddling_one_half_healed():
    stream = make_stream(6000, seed=13)
    packer = M.MoldPacker("OLD", window=2048, max_packets=400)
    n, _ = packer.pack(stream)
    keep = np.ones(n, bool)
    keep[[1, 2]] = False  # two packets early in the stream: long gone from the window at the end
    straddle = int(np.searchsorted(packer.pk_seq[:n], 6001 - 2048)) - 1  # holds the window's first message
    keep[straddle] = False
    rx = M.MoldRx(delay_ns=10**12, timeout_ns=HB_STEP_NS, retries=1)  # ask only after everything was sent
    rx.ingest_list(packer.buf, packer.dg_off[:n][keep], packer.dg_len[:n][keep])
    rx.ingest(packer.end_of_session())
    lo_s, cnt_s = int(packer.pk_seq[straddle]), int(packer.pk_cnt[straddle])
    first = packer.window_range()[0]
    assert lo_s < first < lo_s + cnt_s
    now = 10**12
    for _ in range(5):
        for a in answer_requests(packer, rx.requests(now)):
            rx.ingest(a, now, from_answer=True)
        now += 2 * HB_STEP_NS
    d = rx.take()
    c = rx.counters()
    old = int(packer.pk_cnt[1] + packer.pk_cnt[2])
    assert c["messages_lost"] == old + (first - lo_s) and c["recovered"] == lo_s + cnt_s - first
    assert [tuple(r[:2]) for r in d.lost] == [(int(packer.pk_seq[1]), int(packer.pk_seq[3])), (lo_s, first)]
    assert packer.counters()["refused"] >= 1 and packer.counters()["clipped"] >= 1
    assert len(d.seq) == 6000 - c["messages_lost"] and np.all(np.diff(d.seq) > 0) and rx.complete


@pytest.mark.timeout(120)
def test_the_hold_bounds_are_honoured():
    stream = make_stream(30_000, seed=14)
    packer = M.MoldPacker("HOLD", window=1 << 15, max_packets=2000)
    n, _ = packer.pack(stream)
    keep = np.ones(n, bool)
    keep[[3, 300]] = False
    # the hold index: 1,024 messages may wait; a gap blocking more is declared lost
    rx = M.MoldRx(hold=1024, pool=1000, delay_ns=10**12)
    rx.ingest_list(packer.buf, packer.dg_off[:n][keep], packer.dg_len[:n][keep])
    c = rx.counters()
    assert 0 < c["max_held"] <= 1024 and c["lost_hold_full"] == 2 and c["hold_drops"] == 0
    d = rx.take()
    lost_msgs = int(packer.pk_cnt[3] + packer.pk_cnt[300])
    assert c["messages_lost"] == lost_msgs and len(d.seq) + c["held"] == 30_000 - lost_msgs
    assert np.all(np.diff(d.seq) > 0) and [tuple(r[:2]) for r in d.lost] == [
        (int(packer.pk_seq[3]), int(packer.pk_seq[4])), (int(packer.pk_seq[300]), int(packer.pk_seq[301]))]
    # the pool: 4 packet buffers, so at most 4 packets' messages wait
    rx = M.MoldRx(hold=1 << 14, pool=4, delay_ns=10**12)
    rx.ingest_list(packer.buf, packer.dg_off[:n][keep], packer.dg_len[:n][keep])
    c = rx.counters()
    assert c["max_held"] <= int(np.sort(packer.pk_cnt[:n])[-4:].sum()) and c["lost_hold_full"] == 2
    # the gap table: 2 rows; a third gap declares the oldest lost
    rx = M.MoldRx(max_gaps=2, delay_ns=10**12)
    keep3 = np.ones(n, bool)
    keep3[[2, 4, 6]] = False
    rx.ingest_list(packer.buf, packer.dg_off[:n][keep3], packer.dg_len[:n][keep3])
    c = rx.counters()
    assert c["lost_table_full"] == 1 and c["open_gaps"] == 2 and c["messages_lost"] == int(packer.pk_cnt[2])
    # OUT full: a packet that can be neither delivered nor held is dropped, then asked for again
    rx = M.MoldRx(hold=1024, pool=2, out_bytes=2048, out_msgs=1024, delay_ns=0, timeout_ns=1)
    packer = M.MoldPacker("HOLD", window=1 << 15, max_packets=60)
    packer.pack(stream)
    before = sum(rx.ingest(packer.packet(i)) for i in range(60))
    assert rx.counters()["hold_drops"] > 0 and before < packer.next_seq - 1
    got = [rx.take().seq]
    hb = packer.heartbeat()  # announces 1 + the last sequence: a dropped last packet is a gap too
    for t in range(1, 200):
        rx.ingest(hb, t)
        for a in answer_requests(packer, rx.requests(t)):
            rx.ingest(a, t, from_answer=True)
            got.append(rx.take().seq)
    assert np.array_equal(np.concatenate(got), np.arange(1, packer.next_seq)) and rx.counters()[
        "messages_lost"] == 0


@pytest.mark.timeout(120)
def test_malformed_and_foreign_packets_are_counted_never_applied():
    packer = M.MoldPacker("GOOD", max_packets=10)
    packer.pack(make_stream(20, seed=15))
    good = bytes(packer.packet(0))
    _, seq, count, _ = read_packet(good)
    rx = M.MoldRx()
    bad = [
        good[:19],  # shorter than a header
        good[:-1],  # the last block cut
        good + b"\0",  # a trailing byte
        good[:18] + struct.pack(">H", count + 1) + good[20:],  # count says one more
        good[:18] + struct.pack(">H", count - 1) + good[20:],  # count says one fewer
        good[:10] + struct.pack(">Q", 0) + good[18:],  # sequence 0
        good[:10] + struct.pack(">Q", 1 << 63) + good[18:],  # a negative sequence
        packer.heartbeat() + b"x",  # a heartbeat with a body
    ]
    for b in bad:
        assert rx.ingest(b) == 0
    c = rx.counters()
    assert c["malformed"] == len(bad) and c["delivered"] == 0 and rx.session is None  # garbage adopts nothing
    assert rx.ingest(good) == count and rx.session == b"GOOD      "
    other = b"OTHER     " + good[10:]
    far = good[:10] + struct.pack(">Q", 1 << 40) + good[18:]
    assert rx.ingest(other) == 0 and rx.ingest(far) == 0 and rx.ingest(good) == 0
    c = rx.counters()
    assert (c["wrong_session"], c["implausible_seq"], c["duplicates"], c["delivered"]) == (1, 1, 1, count)
    assert c["packets"] == len(bad) + 4 and c["open_gaps"] == 0


@pytest.mark.timeout(60)
def test_sessions_a_late_start_and_the_next_session():
    stream = make_stream(500, seed=18)
    a, b = M.MoldPacker("DAY1", max_packets=50), M.MoldPacker("DAY2", max_packets=50)
    na, _ = a.pack(stream)
    nb, _ = b.pack(stream)
    # start_seq 0: the receiver starts where the stream is, nothing before it is missing
    late = M.MoldRx(start_seq=0)
    assert late.ingest(a.packet(3)) == int(a.pk_cnt[3]) and late.counters()["gaps_seen"] == 0
    rx = M.MoldRx()
    rx.ingest(a.packet(0))
    assert rx.ingest(b.packet(0)) == 0 and rx.counters()["wrong_session"] == 1  # day 1 still runs
    for i in range(1, na):
        rx.ingest(a.packet(i))
    rx.ingest(a.end_of_session())
    assert rx.complete and rx.take().seq[-1] == 500
    assert sum(rx.ingest(b.packet(i)) for i in range(nb)) == 500  # day 2, from its sequence 1
    c = rx.counters()
    assert rx.session == b"DAY2      " and c["sessions"] == 2 and not rx.complete and c["messages_lost"] == 0
    assert rx.take().data.tobytes() == stream.tobytes()
    stay = M.MoldRx(next_session=False)
    stay.ingest(a.packet(0))
    stay.ingest(M.MoldPacker("DAY1").end_of_session())  # (announces 1: nothing missing)
    assert stay.ingest(b.packet(0)) == 0 and stay.counters()["wrong_session"] == 1


# ------------------------------------------------------------------------- real UDP
def _udp_client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    return s


@pytest.mark.timeout(60)
def test_request_server_bounds_each_turn_and_counts_bad_requests():
    packer = M.MoldPacker("SRV", window=1 << 12, max_packets=500)
    stream = make_stream(3000, seed=16)
    packer.pack(stream)
    msgs = split_stream(stream.tobytes())
    with M.RequestServer(packer, max_requests=4, max_packets=6) as srv:
        cli = _udp_client()
        try:
            addr = ("127.0.0.1", srv.port)
            cli.sendto(M.request_packet("SRV", 10, 5), addr)
            cli.sendto(b"short", addr)
            cli.sendto(M.request_packet("NOPE", 10, 5), addr)
            cli.sendto(M.request_packet("SRV", 10, 0), addr)
            deadline = time.monotonic() + 2
            while srv.counters()["requests"] < 4 and time.monotonic() < deadline:
                srv.poll()
            _, seq, _, body = read_packet(cli.recv(4096))
            assert (seq, body) == (10, msgs[9:14])
            c = srv.counters()
            assert (c["requests"], c["answered"], c["malformed"], c["wrong_session"]) == (4, 1, 2, 1)
            # a flood: 40 requests for 3,000 messages each; each turn reads 4 and sends at most 6 packets
            for _ in range(40):
                cli.sendto(M.request_packet("SRV", 1, 3000), addr)
            time.sleep(0.05)
            before = srv.counters()
            assert srv.poll() == 4
            after = srv.counters()
            assert after["answer_packets"] - before["answer_packets"] == 6
            assert after["over_budget"] - before["over_budget"] == 3  # the first took the whole budget
            assert after["clipped"] - before["clipped"] == 1
        finally:
            cli.close()


@pytest.mark.timeout(60)
def test_real_udp_drops_at_the_sender_are_healed_in_order():
    stream = make_stream(60_000, seed=17)
    packer = M.MoldPacker("UDP", window=1 << 17, max_packets=3000)
    n, _ = packer.pack(stream)
    actions = plan(n, Faults(drop_every=50, duplicate_every=77, seed=1))
    off, ln = packer.apply_faults(actions)
    send = _udp_client()
    srv = rx = None
    try:
        srv = M.RequestServer(packer)
        send_port = send.getsockname()[1]
        rx = M.MoldReceiver(("127.0.0.1", srv.port), allow=(("127.0.0.1", send_port),), timeout_ns=20_000_000)
        stranger = _udp_client()
        stranger.sendto(bytes(packer.packet(0)), ("127.0.0.1", rx.port))  # not the feed: never admitted
        stranger.close()
        data, seqs = [], []

        def turn():
            rx.poll()
            srv.poll()
            d = rx.take()
            data.append(d.data.tobytes())
            seqs.append(d.seq)

        dest = ("127.0.0.1", rx.port)
        for i in range(len(off)):
            send.sendto(packer.buf[off[i]:off[i] + ln[i]], dest)
            if i % 16 == 15:
                turn()
        send.sendto(packer.end_of_session(), dest)
        deadline = time.monotonic() + 20
        while not (rx.complete and rx.counters()["open_gaps"] == 0) and time.monotonic() < deadline:
            turn()
            time.sleep(0.001)
        turn()
        c = rx.counters()
        assert b"".join(data) == stream.tobytes() and np.array_equal(np.concatenate(seqs), np.arange(1, 60_001))
        assert c["messages_lost"] == 0 and c["gaps_healed"] >= 1 and c["round_trips"] >= 1
        assert c["recovered"] == int(packer.pk_cnt[:n][actions[:n] == DROP].sum())
        assert c["foreign_source"] == 1 and c["answer_packets"] >= 1 and c["duplicates"] >= 1
        assert srv.counters()["answered"] >= 1 and c["round_trip_mean_ns"] > 0
    finally:
        send.close()
        if rx is not None:
            rx.close()
        if srv is not None:
            srv.close()
