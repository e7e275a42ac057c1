"""rx over real UDP on 127.0.0.1: a seeded feed with exact injected faults is counted
exactly, malformed packets never reach the md ring, and what reaches it is exactly the
messages of the packets that arrived in order."""
from __future__ import annotations

import time

import numpy as np
import pytest

from obpipe.engine import rx
from obpipe.feed_sim import wire_kernels as WK
from obpipe.feed_sim.sender import UdpSender
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.feed_sim.wire import DUPLICATE, SEND, Faults, tracker_counters
from obpipe.ring import schema as sc
from obpipe.ring.spsc import Backoff, Ring
from obpipe.ring.stats import ROW_RX, StatsBlock
from tests.helpers import running_rx


def _tracker(row):
    return tracker_counters(row[sc.RX_TRACKER_BASE:sc.RX_TRACKER_BASE + WK.NT])


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_udp_feed_with_exact_faults_is_counted_exactly(instance):
    stats = StatsBlock.create(instance)
    md_ring = Ring.create(instance, "md", sc.MD_DTYPE, 1 << 21)
    row = stats.row(ROW_RX)
    try:
        with running_rx(rx.RxSpec(instance, backoff=Backoff(200, 10, 50)), row):
            _send_faulted_feed_and_check(row, md_ring)
    finally:
        for x in (md_ring, stats):
            x.unlink()
            x.close()


def _send_faulted_feed_and_check(row, md_ring):
    n_msgs = 1_000_000
    port = int(row[sc.ST_RX_PORT])
    md = generate(n_msgs, SynthParams(n_symbols=4, seed=21))
    faults = Faults(drop_every=1000, duplicate_every=777, reorder_every=501, corrupt_every=997,
                    truncate_every=1999, bad_magic_every=2503, bad_version_every=3001)
    sender = UdpSender(("127.0.0.1", port), session=5, faults=faults, rate=1_000_000)
    sender.send(md)
    sender.finish()
    deadline = time.monotonic() + 60
    while _tracker(row)["packets"] < sender.datagrams_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    got = _tracker(row)
    assert rx.kernel_drops(port) == 0, "the kernel dropped datagrams: the counts below cannot be exact"
    assert got["packets"] == sender.datagrams_sent
    want = sender.expected
    assert want["gap_messages"] > 0 and want["duplicates"] > 0 and want["out_of_order"] > 0
    for k in ("gap_messages", "duplicates", "out_of_order", "late_messages", "malformed", "delivered"):
        assert got[k] == want[k], (k, got[k], want[k])
    assert got["ring_drops"] == 0 and got["sessions"] == 1
    # the md ring holds exactly the messages of the packets that arrived in order
    actions = np.concatenate(sender.actions)
    keep = np.repeat((actions == SEND) | (actions == DUPLICATE), 45)[:n_msgs]
    recs = md_ring.records[: md_ring.head]
    assert np.array_equal(recs["seq"], np.arange(1, n_msgs + 1)[keep])
    assert np.array_equal(recs["px_tick"], md["px_tick"][keep])
    assert (recs["ts_recv_ns"] > 0).all() and (np.diff(recs["ts_recv_ns"]) >= 0).all()
