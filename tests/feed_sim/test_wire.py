"""Wire protocol: encode/decode round trip, exact fault accounting, garbage input."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.feed_sim.wire import DROP, Faults, PacketBuffer, Tracker, datagrams, expected_counts, plan
from obpipe.ring import schema as sc

RING = 1 << 18


def _receiver():
    ctrl = np.zeros(sc.RING_DATA_OFFSET // 8, np.int64)
    rec = np.zeros(RING, sc.MD_DTYPE)
    return Tracker(), ctrl, rec


def _receive(tr, ctrl, rec, datagram: bytes | memoryview, ts=7):
    raw = np.zeros(2048 // 8, np.int64)
    b = bytes(datagram)
    raw.view(np.uint8)[: len(b)] = np.frombuffer(b, np.uint8)
    return WK.rx_packet(raw, len(b), 0, tr.T, tr.miss, tr.C, tr.allow, ctrl, rec, ts)


def _delivered(ctrl, rec):
    return rec[: ctrl[sc.RING_W_HEAD]]


@pytest.mark.timeout(120)
def test_round_trip_delivers_every_message_in_order():
    md = generate(20_000, SynthParams(n_symbols=3, seed=4))
    buf = PacketBuffer(1000)
    n = buf.encode(md, session=9, seq0=1)
    assert n == -(-20_000 // 45) and buf.nbytes[0] == 24 + 45 * 32 and buf.nbytes[0] <= 1472
    tr, ctrl, rec = _receiver()
    for i in range(n):
        _receive(tr, ctrl, rec, buf.packet(i))
    got = _delivered(ctrl, rec)
    assert len(got) == 20_000
    for f in ("kind", "side", "symbol", "qty", "px_tick", "ts_exch_ns"):
        assert np.array_equal(got[f], md[f]), f
    assert np.array_equal(got["seq"], np.arange(1, 20_001)) and (got["ts_recv_ns"] == 7).all()
    c = tr.counters()
    assert c["packets"] == n and c["delivered"] == 20_000 and c["gap_messages"] == 0 and c["malformed"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("faults", [
    Faults(drop_every=7),
    Faults(drop_prob=0.05, seed=3),
    Faults(duplicate_every=5),
    Faults(reorder_every=6),
    Faults(truncate_every=11, corrupt_every=13, bad_magic_every=17, bad_version_every=19),
    Faults(drop_every=9, duplicate_every=10, reorder_every=13, corrupt_every=23, drop_prob=0.01, seed=5),
])
def test_injected_faults_are_counted_exactly(faults):
    md = generate(30_000, SynthParams(n_symbols=2, seed=8))
    buf = PacketBuffer(1000)
    n = buf.encode(md, session=1, seq0=1, per_packet=40)
    actions = plan(n, faults)
    want = expected_counts(buf, actions)
    tr, ctrl, rec = _receiver()
    for d in datagrams(buf, actions):
        _receive(tr, ctrl, rec, d)
    _receive(tr, ctrl, rec, buf.heartbeat(1, 30_001))  # the closing heartbeat reveals a trailing gap
    c = tr.counters()
    for k, v in want.items():
        assert c[k] == v, (k, c[k], v)
    assert sum(want.values()) > 0 or not faults.any()
    # what was delivered is exactly the messages of the packets that arrived in order
    got = _delivered(ctrl, rec)
    keep = np.repeat((actions[:n] == 0) | (actions[:n] == 2), 40)[:30_000]
    assert np.array_equal(got["seq"], np.arange(1, 30_001)[keep])
    assert np.array_equal(got["px_tick"], md["px_tick"][keep])


def test_fault_plan_is_exact_and_seeded():
    a = plan(1000, Faults(drop_every=10))
    assert (a == DROP).sum() == 100 and a[9] == DROP and a[0] == 0
    p1, p2 = plan(5000, Faults(drop_prob=0.1, seed=1)), plan(5000, Faults(drop_prob=0.1, seed=1))
    assert np.array_equal(p1, p2) and 400 < (p1 == DROP).sum() < 600
    assert not np.array_equal(p1, plan(5000, Faults(drop_prob=0.1, seed=2)))


def test_partial_overlap_delivers_only_the_new_tail():
    md = generate(90, SynthParams(n_symbols=1, seed=2))
    buf = PacketBuffer(4)
    buf.encode(md[:45], 1, 1)
    first = bytes(buf.packet(0))
    buf.encode(md[20:65], 1, 21)  # overlaps messages 21..45, new 46..65
    overlap = bytes(buf.packet(0))
    tr, ctrl, rec = _receiver()
    _receive(tr, ctrl, rec, first)
    assert _receive(tr, ctrl, rec, overlap) == 20
    c = tr.counters()
    # an overlap is accepted (it delivers); its old prefix is counted in duplicate_messages
    assert c["duplicates"] == 0 and c["duplicate_messages"] == 25 and c["delivered"] == 65 and c["accepted"] == 2


def _packet(md, session, seq0):
    buf = PacketBuffer(4)
    buf.encode(md, session, seq0)
    return bytes(buf.packet(0))


def _dispositions(c) -> int:
    return sum(c[WK.TRACKER_NAMES[i]] for i in WK.DISPOSITIONS)


def test_a_foreign_session_is_counted_and_never_applied():
    md = generate(90, SynthParams(n_symbols=1, seed=2))
    tr, ctrl, rec = _receiver()
    assert _receive(tr, ctrl, rec, _packet(md[:45], 7, 1)) == 45  # the first session seen is followed
    for seq in (1, 46, 1000):  # another session: a restart at 1, the next seq, a jump
        assert _receive(tr, ctrl, rec, _packet(md[45:], 8, seq)) == 0
    assert _receive(tr, ctrl, rec, _packet(md[:10], 0, 46)) == 0  # session 0 is never followed
    c = tr.counters()
    assert c["foreign_session"] == 4 and c["session"] == 7 and c["sessions"] == 1 and c["delivered"] == 45
    assert c["gap_messages"] == 0 and _dispositions(c) == c["packets"] == 5


def test_a_configured_session_is_the_only_one_followed():
    md = generate(45, SynthParams(n_symbols=1, seed=2))
    tr, ctrl, rec = _receiver()
    tr.T[WK.T_SESSION] = 99  # rx.run writes [rx] session so
    assert _receive(tr, ctrl, rec, _packet(md, 7, 1)) == 0  # the first packet seen is another session's
    assert _receive(tr, ctrl, rec, _packet(md, 99, 1)) == 45
    c = tr.counters()
    assert c["foreign_session"] == 1 and c["session"] == 99 and c["delivered"] == 45


def test_a_new_session_from_seq_1_is_followed_only_when_configured():
    md = generate(90, SynthParams(n_symbols=1, seed=2))
    tr, ctrl, rec = _receiver()
    tr.C[:] = WK.receiver_config(accept_new_session=True)
    _receive(tr, ctrl, rec, _packet(md[:45], 1, 1))
    assert _receive(tr, ctrl, rec, _packet(md[45:], 2, 46)) == 0  # not the start of a session
    assert _receive(tr, ctrl, rec, _packet(md[:10], 2, 1)) == 10  # a restarted feed
    c = tr.counters()
    assert c["sessions"] == 2 and c["session"] == 2 and c["foreign_session"] == 1 and c["gap_messages"] == 0


def test_a_forward_jump_beyond_the_window_is_implausible_and_not_adopted():
    md = generate(90, SynthParams(n_symbols=1, seed=2))
    tr, ctrl, rec = _receiver()
    tr.C[:] = WK.receiver_config(window=1000, resync=3)
    _receive(tr, ctrl, rec, _packet(md[:45], 1, 1))
    hb = PacketBuffer(1).heartbeat(1, 1 << 62)  # the freeze: every later packet would be late
    assert _receive(tr, ctrl, rec, hb) == 0
    assert _receive(tr, ctrl, rec, _packet(md[:45], 1, 46 + 1001)) == 0
    assert _receive(tr, ctrl, rec, _packet(md[45:], 1, 46)) == 45  # the real next packet still applies
    c = tr.counters()
    assert c["implausible_seq"] == 2 and c["delivered"] == 90 and c["heartbeats"] == 0
    assert c["late_messages"] == 0 and c["gap_messages"] == 0 and _dispositions(c) == c["packets"]
    # a feed that really moved on (rx was down): `resync` contiguous packets, the last adopted as a gap
    big = generate(135, SynthParams(n_symbols=1, seed=3))
    seq = 91 + 5000
    for i in range(3):
        got = _receive(tr, ctrl, rec, _packet(big[45 * i:45 * (i + 1)], 1, seq + 45 * i))
    assert got == 45
    c = tr.counters()
    assert c["implausible_seq"] == 4 and c["gap_messages"] == 5000 + 90 and c["gap_events"] == 1
    assert _dispositions(c) == c["packets"]


def test_a_foreign_source_is_counted_and_never_read():
    md = generate(45, SynthParams(n_symbols=1, seed=2))
    from obpipe.feed_sim.wire import allow_list, source_key

    tr, ctrl, rec = _receiver()
    tr.allow = allow_list([("127.0.0.1", 5000)])
    raw = np.zeros(2048 // 8, np.int64)
    b = _packet(md, 1, 1)
    raw.view(np.uint8)[: len(b)] = np.frombuffer(b, np.uint8)
    other_port, other_host = source_key("127.0.0.1", 5001)[0], source_key("127.0.0.2", 5000)[0]
    for src in (other_port, other_host, 0):
        assert WK.rx_packet(raw, len(b), src, tr.T, tr.miss, tr.C, tr.allow, ctrl, rec, 1) == 0
    assert WK.rx_packet(raw, len(b), source_key("127.0.0.1", 5000)[0], tr.T, tr.miss, tr.C, tr.allow,
                        ctrl, rec, 1) == 45
    c = tr.counters()
    assert c["foreign_source"] == 3 and c["delivered"] == 45 and c["sessions"] == 1
    tr2, ctrl2, rec2 = _receiver()
    tr2.allow = allow_list([("127.0.0.1", 0)])  # any port of the host
    assert WK.rx_packet(raw, len(b), other_port, tr2.T, tr2.miss, tr2.C, tr2.allow, ctrl2, rec2, 1) == 45
    assert WK.rx_packet(raw, len(b), other_host, tr2.T, tr2.miss, tr2.C, tr2.allow, ctrl2, rec2, 1) == 0


@pytest.mark.timeout(60)
def test_garbage_datagrams_never_crash_and_are_counted():
    rng = np.random.default_rng(0)
    tr, ctrl, rec = _receiver()
    for i in range(5000):
        n = int(rng.integers(0, 1600))
        d = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if i % 3 == 0 and n >= 24:  # a valid-looking header over random bytes
            d = bytearray(d)
            d[0:2] = sc.WIRE_MAGIC.to_bytes(2, "little")
            d[2] = sc.WIRE_VERSION
            d = bytes(d)
        _receive(tr, ctrl, rec, d[:1472])
    c = tr.counters()
    assert c["packets"] == 5000 and c["malformed"] == 5000 and c["delivered"] == 0
    assert c["malformed_magic"] > 0 and c["malformed_length"] > 0
