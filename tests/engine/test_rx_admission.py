"""rx admits only its feed (issue 13 item 7), over real UDP on 127.0.0.1 against a
running pipeline: a forged heartbeat far ahead does not freeze the book, datagrams of
another session are never applied, and datagrams from outside the allow-list (by
default: the feed obpipe started) are never read.  Each attack is counted, and the book
equals the one built from the real feed alone."""
from __future__ import annotations

import json
import signal
import socket
import time

import numpy as np
import pytest

from obpipe.engine.book import Book
from obpipe.feed_sim.sender import UdpSender
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.feed_sim.wire import PacketBuffer
from obpipe.ring import schema
from obpipe.ring.shm import list_segments
from tests.helpers import finish, obpipe, run_config, running_pipeline, wait_running

SYMBOLS = ("AAA", "BBB", "CCC", "DDD")


def _forged(session: int, seq: int, n_symbols: int = 4) -> list[bytes]:
    """Valid-looking packets an attacker would send: a clear of every symbol, then adds
    far from the market (any of them applied would change the book)."""
    md = np.zeros(2 * n_symbols, schema.MD_DTYPE)
    md["kind"][:n_symbols] = schema.K_CLEAR
    md["symbol"][:n_symbols] = np.arange(n_symbols)
    md["kind"][n_symbols:] = schema.K_ADD
    md["symbol"][n_symbols:] = np.arange(n_symbols)
    md["qty"][n_symbols:] = 777
    md["px_tick"][n_symbols:] = 1
    buf = PacketBuffer(4)
    n = buf.encode(md, session, seq)
    return [bytes(buf.packet(i)) for i in range(n)]


def _reference(md) -> dict:
    ref = Book([4096] * len(SYMBOLS), 10)
    ref.apply(md)
    return {name: ([list(x) for x in ref.top(i, 0, 10)], [list(x) for x in ref.top(i, 1, 10)])
            for i, name in enumerate(SYMBOLS)}


def _books(d) -> dict:
    return {name: (s["bids"], s["asks"]) for name, s in d["symbols"].items()}


def _wait_rx(cfg, timeout_s=180) -> dict:
    """Stats once rx runs (its port is known): the book writer may run before it."""
    deadline = time.monotonic() + timeout_s
    while True:
        d = wait_running(cfg)
        if d["rx"]["state"] == "running" and d["rx"]["port"] > 0:
            return d
        assert time.monotonic() < deadline, f"rx never ran: {d['rx']}"
        time.sleep(0.2)


def _wait_applied(cfg, n, timeout_s=60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        d = wait_running(cfg)
        if d["book"]["msgs"] >= n or time.monotonic() > deadline:
            return d
        time.sleep(0.2)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_forged_far_heartbeat_and_a_foreign_session_leave_the_book_unchanged(tmp_path, instance):
    """--no-feed, no allow-list: the session and the sequence window are the defences.
    The attacker even knows the session (the worst case)."""
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17)
    n = 45 * 2000
    md = generate(n, SynthParams(n_symbols=4, seed=9))
    with running_pipeline(cfg, "--no-feed") as p:
        port = _wait_rx(cfg)["rx"]["port"]
        session = 0x5EC12E7
        feed = UdpSender(("127.0.0.1", port), session=session, rate=500_000)
        feed.send(md[: n // 2])
        _wait_applied(cfg, n // 2)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # the freeze: one 24-byte heartbeat announcing seq 2^62
        attacker.sendto(PacketBuffer(1).heartbeat(session, 1 << 62), ("127.0.0.1", port))
        # the injection: clears and adds of a session of its own (a restart at 1, and the next seq)
        forged = _forged(session + 1, 1) + _forged(session + 1, n // 2 + 1) + _forged(1, n // 2 + 1)
        for d in forged:
            attacker.sendto(d, ("127.0.0.1", port))
        attacker.close()
        feed.send(md[n // 2:])
        feed.finish()
        feed.close()
        mid = _wait_applied(cfg, n)
        p.send_signal(signal.SIGINT)
        final, _ = finish(p)
    rx = final["rx"]
    assert final["applied"] == n and final["book"]["clears"] == 0 and rx["late_messages"] == 0
    assert _books(final) == _reference(md)
    assert rx["implausible_seq"] == 1 and rx["foreign_session"] == len(forged) == 3
    assert rx["gap_messages"] == 0 and rx["session"] == session and rx["delivered"] == n
    # `obpipe stats --json` showed the counters live
    assert mid["rx"]["foreign_session"] == 3 and mid["rx"]["implausible_seq"] == 1
    assert list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_datagrams_from_outside_the_allow_list_are_counted_and_never_applied(tmp_path, instance):
    """obpipe's own feed: rx admits only the port that feed sends from, so a local
    process sending perfectly valid packets (any session, in sequence) is ignored."""
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17)
    n = 45 * 4000
    with running_pipeline(cfg, "--messages", str(n), "--rate", "60000", "--seed", "5") as p:
        d = _wait_rx(cfg)
        port, session = d["rx"]["port"], d["rx"].get("session", 5)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        forged = [PacketBuffer(1).heartbeat(session, 1 << 62)]
        for s in (session, 1, 5):  # the real session (were it leaked), the old default (1), the seed
            forged += _forged(s, d["rx"]["messages"] + 1)
        for x in forged:
            attacker.sendto(x, ("127.0.0.1", port))
        attacker.close()
        final, _ = finish(p, timeout=180)
    rx = final["rx"]
    assert final["applied"] == n and final["book"]["clears"] == 0 and rx["late_messages"] == 0
    assert _books(final) == _reference(generate(n, SynthParams(n_symbols=4, seed=5)))
    assert rx["foreign_source"] == len(forged) == 4 and rx["session"] != 0
    assert rx["foreign_session"] == 0 and rx["implausible_seq"] == 0 and rx["gap_messages"] == 0
    assert list_segments(instance) == []


def test_rx_config_keys_are_validated_with_errors_naming_the_key(tmp_path, instance):
    for extra, want in (('[rx]\nallow_sources = ["localhost"]\n', "rx.allow_sources"),
                        ('[rx]\nallow_sources = ["127.0.0.1:0"]\n', "rx.allow_sources"),
                        ("[rx]\nmax_seq_jump = 0\n", "rx.max_seq_jump"),
                        ("[rx]\nsession = -1\n", "rx.session")):
        out = obpipe("run", "--config", run_config(tmp_path, instance, extra=extra), "--messages", "10", timeout=60)
        assert out.returncode == 2 and want in out.stderr, out.stderr
