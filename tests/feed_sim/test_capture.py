"""Capture files and replays: byte-exact round trip, pacing, bad files, LOBSTER seeding."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from obpipe.feed_sim import capture as capmod
from obpipe.feed_sim import feed as feedmod
from obpipe.feed_sim.sender import UdpSender
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.feed_sim.wire import Faults
from tests.helpers import ENV, LOBSTER_MSG, REPO


class Sink:
    """A UDP socket on 127.0.0.1 that keeps every datagram it gets (read in a thread)."""

    def __init__(self):
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.got: list[bytes] = []
        self.times: list[float] = []
        self._run = True
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _loop(self):
        while self._run:
            try:
                d = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.got.append(d)
            self.times.append(time.monotonic())

    def wait_for(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self):
        self._run = False
        self.t.join(2)
        self.sock.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.mark.timeout(120)
def test_a_capture_holds_exactly_the_datagrams_sent_faults_included(tmp_path, sink):
    md = generate(45 * 300, SynthParams(n_symbols=3, seed=2))
    path = tmp_path / "f.obcap"
    s = UdpSender(("127.0.0.1", sink.port), faults=Faults(drop_every=7, duplicate_every=11, reorder_every=13,
                                                          corrupt_every=17, truncate_every=19), rate=2_000_000,
                  capture=str(path))
    s.send(md)
    s.finish()
    s.close()
    sink.wait_for(s.datagrams_sent)
    cap = capmod.read(path)
    assert len(cap) == s.datagrams_sent == len(sink.got) and cap.truncated_bytes == 0
    assert [cap.datagram(i) for i in range(len(cap))] == sink.got
    assert (np.diff(cap.ts) >= 0).all()  # send times in order
    # message counts come from the headers: every message once, plus the duplicated packets' again
    assert cap.msgs.sum() == len(md) - 45 * s.injected["drop"] + 45 * s.injected["duplicate"]


@pytest.mark.timeout(120)
def test_replaying_a_capture_resends_it_byte_for_byte_and_paces_by_its_recording(tmp_path, sink):
    path = tmp_path / "f.obcap"
    # 0.4 s of feed at 50k msgs/s
    res = feedmod.run(feedmod.FeedSpec(port=sink.port, rate=50_000, count=20_000, seed=5, capture=str(path)))
    sink.wait_for(res["datagrams"])
    original = list(sink.got)
    assert res["captured"] == res["datagrams"] == len(original)
    sink.got.clear()
    t = time.monotonic()
    again = feedmod.run(feedmod.FeedSpec(port=sink.port, replay=str(path), speed=0.5))
    took = time.monotonic() - t
    sink.wait_for(len(original))
    assert sink.got == original
    assert again["messages"] == 20_000 and again["source"] == "capture"
    assert took >= 0.7  # 0.4 s recorded, at half speed: >= 0.8 s (a paced send is never early)
    sink.got.clear()
    t = time.monotonic()
    feedmod.run(feedmod.FeedSpec(port=sink.port, replay=str(path), rate=0))  # as fast as possible
    assert time.monotonic() - t < took
    sink.wait_for(len(original))
    assert sink.got == original


@pytest.mark.timeout(120)
def test_a_fixed_rate_is_kept_and_never_exceeded(sink):
    t = time.monotonic()
    res = feedmod.run(feedmod.FeedSpec(port=sink.port, rate=100_000, count=45 * 1000))
    took = time.monotonic() - t
    assert res["messages"] == 45_000 and took >= 0.44  # 45k at 100k/s: the last packet is due at 0.4496 s


@pytest.mark.timeout(60)
def test_bad_capture_files_get_clear_errors_and_a_cut_off_tail_is_ignored(tmp_path, sink):
    p = tmp_path / "x.obcap"
    p.write_bytes(b"not a capture at all, just some text here....")
    with pytest.raises(capmod.CaptureError, match="not an obpipe capture"):
        capmod.read(p)
    good = tmp_path / "g.obcap"
    feedmod.run(feedmod.FeedSpec(port=sink.port, count=45 * 10, capture=str(good)))
    data = good.read_bytes()
    n = len(capmod.read(good))
    assert n == 11  # 10 packets + the closing heartbeat
    cut = tmp_path / "cut.obcap"
    cut.write_bytes(data[:-20])  # the writer was killed mid-record (the 40-byte heartbeat record)
    c = capmod.read(cut)
    assert len(c) == n - 1 and c.truncated_bytes == 20
    bad = bytearray(data)
    bad[32 + 4] = 1  # the first record's flags word: not 0
    (tmp_path / "bad.obcap").write_bytes(bytes(bad))
    with pytest.raises(capmod.CaptureError, match="corrupt capture record at byte 32"):
        capmod.read(tmp_path / "bad.obcap")
    with pytest.raises(feedmod.FeedError, match="exactly as recorded"):
        feedmod.run(feedmod.FeedSpec(port=sink.port, replay=str(good), faults=Faults(drop_every=2)))
    with pytest.raises(feedmod.FeedError, match="no such file"):
        feedmod.run(feedmod.FeedSpec(port=sink.port, replay=str(tmp_path / "missing.csv")))


@pytest.mark.timeout(180)
def test_obpipe_replay_command_sends_a_lobster_file_with_a_progress_bar(sink):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "obpipe", "replay", str(LOBSTER_MSG), "--port", str(sink.port),
                          "--count", "9000", "--rate", "300000", "--progress", "--json"],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=150)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["source"] == "lobster" and res["messages"] == 9000 and res["datagrams"] == 201  # 200 packets + heartbeat
    assert "100.0%  9,000/9,000 msgs" in out.stderr and "[######" in out.stderr
    sink.wait_for(201)
    assert len(sink.got) == 201
    bad = subprocess.run([sys.executable, "-m", "obpipe", "replay", str(LOBSTER_MSG) + ".nope", "--port", "9"],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr


@pytest.mark.timeout(120)
def test_a_recorded_pace_replay_stops_on_time_and_keeps_the_recorded_spacing(sink):
    from obpipe.engine import lobster

    md = lobster.load_lobster(str(LOBSTER_MSG))
    t = time.monotonic()
    res = feedmod.run(feedmod.FeedSpec(port=sink.port, replay=str(LOBSTER_MSG), speed=1000, duration_s=1.0,
                                       lobster_loader=lobster.load_lobster))  # (the loader the wiring gives)
    took = time.monotonic() - t
    assert took < 3.0 and 0 < res["messages"] < len(md)
    # at 1000x the first second of sending covers about the first 1,000 s of the recorded day
    ts = md["ts_exch_ns"]
    sent_until = ts[min(res["messages"], len(md)) - 1] - ts[0]
    assert 0.5e12 < sent_until < 1.2e12


def _stamps(datagrams) -> np.ndarray:
    """Every message's ts_exch_ns in wire datagrams (header 24 bytes, messages 32)."""
    out = []
    for d in datagrams:
        w = np.frombuffer(d, np.int64)
        n = (len(d) - 24) // 32
        out.extend(w[3 + 4 * j + 3] for j in range(n))
    return np.array(out, np.int64)


@pytest.mark.timeout(120)
def test_a_synthetic_feed_stamps_utc_epoch_ns_from_its_wall_clock_start(sink):
    t0 = time.time_ns()
    res = feedmod.run(feedmod.FeedSpec(port=sink.port, count=4500, rate=0, seed=3))
    t1 = time.time_ns()
    sink.wait_for(res["datagrams"])
    ts = _stamps(sink.got)
    assert len(ts) == 4500 and t0 <= res["start_ns"] <= t1
    # the stream's clock starts at the feed's start and runs at the model's pace (seconds, not days, here)
    assert res["start_ns"] <= ts[0] and ts[-1] - ts[0] < 3_600 * 10**9 and (np.diff(ts) >= 0).all()


@pytest.mark.timeout(120)
def test_the_same_seed_and_start_give_the_same_synthetic_stream(tmp_path, sink):
    start = 1_767_364_200_000_000_000
    runs = []
    for i in range(2):
        cap = tmp_path / f"{i}.obcap"
        feedmod.run(feedmod.FeedSpec(port=sink.port, count=9000, seed=4, start_ns=start, session=77,
                                     capture=str(cap)))
        c = capmod.read(cap)
        runs.append([bytes(c.raw[c.off[k]:c.off[k] + c.length[k]]) for k in range(len(c))])
    assert runs[0] == runs[1] and _stamps(runs[0])[0] >= start
    a = feedmod.run(feedmod.FeedSpec(port=sink.port, count=45, seed=4, session=0))
    b = feedmod.run(feedmod.FeedSpec(port=sink.port, count=45, seed=4, session=0))
    assert a["session"] != b["session"] and a["session"] and b["session"]  # random per run unless given
