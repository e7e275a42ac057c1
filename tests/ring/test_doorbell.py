"""The md ring's doorbell: a consumer blocked in ``ring_doze`` wakes when the producer
publishes and rings (``ring_wake``), not at its timeout; no wake-up is lost; an idle
rx blocks in ``poll_in`` until a datagram arrives."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from numba import njit

from obpipe.ring import kernels as K
from obpipe.ring import schema as sc
from obpipe.ring.atomics import poll_in
from obpipe.ring.spsc import Ring

pytestmark = pytest.mark.timeout(60)


def _one(i):
    r = np.zeros(1, sc.MD_DTYPE)
    r["seq"] = i
    return r


def test_a_dozing_consumer_wakes_when_the_producer_rings_not_at_its_timeout(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 16)
    try:
        K.ring_doze(ring.ctrl, 1)  # compile
        got = {}

        def consumer():
            t = time.monotonic()
            got["n"] = int(K.ring_doze(ring.ctrl, 10_000_000_000))  # 10 s
            got["s"] = time.monotonic() - t

        th = threading.Thread(target=consumer)
        th.start()
        deadline = time.monotonic() + 10
        while ring.ctrl[sc.RING_W_SLEEP] != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert ring.ctrl[sc.RING_W_SLEEP] == 1  # raised while it dozes
        time.sleep(0.05)
        assert th.is_alive()  # still blocked: nothing was pushed
        ring.push(_one(1))  # Ring.push rings the doorbell
        th.join(10)
        assert got["n"] == 1 and got["s"] < 2.0
        assert ring.ctrl[sc.RING_W_SLEEP] == 0
    finally:
        ring.close()
        ring.unlink()


def test_an_empty_ring_dozes_until_the_timeout_and_a_full_one_not_at_all(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 16)
    try:
        t = time.monotonic()
        assert K.ring_doze(ring.ctrl, 50_000_000) == 0
        assert time.monotonic() - t >= 0.045
        ring.push(_one(1))
        t = time.monotonic()
        assert K.ring_doze(ring.ctrl, 5_000_000_000) == 1
        assert time.monotonic() - t < 1.0
        assert K.ring_wait(ring.ctrl, 0, 0, 5_000_000_000) == 1  # the backoff's last step
    finally:
        ring.close()
        ring.unlink()


def test_no_wake_up_is_lost_over_thousands_of_hand_offs(instance):
    """Producer and consumer race on every record: a lost wake-up would leave the
    consumer dozing to its 2 s timeout (counted), and the whole exchange would take
    seconds per loss.  A doze that ends early with nothing to read is no loss: the
    producer's ring for the previous record can land after the consumer took that
    record and dozed again."""
    n = 3000
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 16)
    out = np.zeros(1, sc.MD_DTYPE)
    timeouts, wrong = [], []
    try:
        K.ring_doze(ring.ctrl, 1)

        def consumer():
            seen = 0
            while seen < n:
                if ring.pop(out) == 1:
                    if out["seq"][0] != seen:
                        wrong.append((seen, int(out["seq"][0])))
                    seen += 1
                    continue
                t = time.monotonic()
                if K.ring_doze(ring.ctrl, 2_000_000_000) == 0 and time.monotonic() - t > 1.5:
                    timeouts.append(seen)  # (a doze may also end early and empty: a late ring for the last record)

        th = threading.Thread(target=consumer)
        th.start()
        rng = np.random.default_rng(7)
        t = time.monotonic()
        for i in range(n):
            while ring.push(_one(i)) != 1:
                time.sleep(0)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 1e-4)
        th.join(60)
        assert not th.is_alive()
        assert timeouts == [] and wrong == []
        assert time.monotonic() - t < 30
    finally:
        ring.close()
        ring.unlink()


@njit(nogil=True)
def _poll(fd, ms):
    return poll_in(fd, ms)


def test_poll_in_blocks_until_a_datagram_arrives_or_times_out():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        t = time.monotonic()
        assert _poll(rx.fileno(), 30) == 0
        assert time.monotonic() - t >= 0.025
        threading.Timer(0.05, lambda: tx.sendto(b"x", rx.getsockname())).start()
        t = time.monotonic()
        assert _poll(rx.fileno(), 5000) == 1
        assert time.monotonic() - t < 2.0
        assert rx.recv(16) == b"x"
    finally:
        rx.close()
        tx.close()
