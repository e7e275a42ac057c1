"""The publisher's bounded queues against a real broker that is down, then up: signals
dropped oldest-first, summaries coalesced per symbol, everything counted, and
publishing resumes by itself."""
from __future__ import annotations

import time

import numpy as np
import pytest

from obpipe.publisher.broker import EmbeddedBroker, free_port
from obpipe.publisher.process import Publisher, PublisherSpec
from obpipe.publisher.schema import validate
from obpipe.ring import schema as sc
from obpipe.ring.spsc import Ring
from tests.helpers import consume_all

pytestmark = [pytest.mark.timeout(90), pytest.mark.multiproc]


def _records(n_signals: int, n_summaries: int) -> np.ndarray:
    r = np.zeros(n_signals + n_summaries, sc.SIGNAL_DTYPE)
    r["bid_px_tick"], r["ask_px_tick"], r["bid_qty"], r["ask_qty"] = 10_000, 10_002, 5, 7
    r["ts_exch_ns"] = 34_200_000_000_000 + np.arange(len(r)) * 1000
    r["ts_detect_ns"] = time.time_ns()
    sig = r[:n_signals]
    sig["rtype"], sig["kind"], sig["side"] = sc.OUT_SIGNAL, sc.SIG_SWEEP, sc.SIDE_BID
    sig["seq"] = np.arange(1, n_signals + 1)
    sig["iv"][:, 0], sig["iv"][:, 1], sig["iv"][:, 2] = 3, 150, 3
    sig["iv"][:, 3], sig["iv"][:, 4], sig["iv"][:, 5] = 10_001, 10_003, 200_000
    summ = r[n_signals:]
    summ["rtype"] = sc.OUT_SUMMARY
    summ["symbol"] = np.arange(n_summaries) % 2
    summ["seq"] = 1000 + np.arange(n_summaries)
    summ["iv"][:, 0] = summ["ts_exch_ns"] + 100_000_000
    summ["fv"][:, :6] = [1.0, 1.5, 2.0, 0.1, -0.2, 10_001.0]
    return r


def test_backpressure_drops_oldest_signals_coalesces_summaries_then_resumes(instance):
    """Kafka down at start: the producer takes its bound, the pending queue its bound,
    older signals are dropped and repeated summaries coalesced; then Kafka comes up."""
    port = free_port()  # nothing listens yet: Kafka is down at start
    spec = PublisherSpec(instance=instance, symbols=("AAA", "BBB"), bootstrap=f"127.0.0.1:{port}",
                         pending_max=5, producer_queue_max=3, message_timeout_ms=60_000)
    ring = Ring.create(instance, "signals", sc.SIGNAL_DTYPE, 64)
    row = np.zeros(sc.STATS_WORDS, np.int64)
    broker = None
    try:
        pub = Publisher(spec, ring, row)
        assert ring.push(_records(20, 6)) == 26
        for _ in range(5):
            pub.step(0.01)
        # 3 handed to the producer (its bound), the newest 5 pending, 12 dropped oldest-first
        assert row[sc.ST_PUB_IN_FLIGHT] == 3 and row[sc.ST_PUB_PRODUCED] == 3
        assert row[sc.ST_PUB_SIGNALS_DROPPED] == 12
        assert [int(orjson_seq(d)) for _, d in pub.sig_q] == [16, 17, 18, 19, 20]
        assert row[sc.ST_PUB_COALESCED] == 4 and sorted(pub.sum_q) == ["AAA", "BBB"]
        assert row[sc.ST_PUB_PENDING] == 7 and row[sc.ST_PUB_DELIVERED] == 0

        broker = EmbeddedBroker.start(port)  # Kafka comes back on the same address
        deadline = time.monotonic() + 30
        while row[sc.ST_PUB_DELIVERED] < 10 and time.monotonic() < deadline:
            pub.step(0.05)
        assert row[sc.ST_PUB_DELIVERED] == 10 and row[sc.ST_PUB_DELIVERED_SIGNALS] == 8
        assert row[sc.ST_PUB_FAILED] == 0 and row[sc.ST_PUB_BROKER_UP] == 1
        pub.close(5)
        sigs = consume_all(broker.bootstrap, "obpipe.signals", 8, timeout_s=20, idle_s=1)
        summs = consume_all(broker.bootstrap, "obpipe.summaries", 2, timeout_s=20, idle_s=1)
        for m in sigs + summs:
            validate(m)
        assert sorted(m["seq"] for m in sigs) == [1, 2, 3, 16, 17, 18, 19, 20]
        assert {m["symbol"]: m["seq"] for m in summs} == {"AAA": 1004, "BBB": 1005}  # the latest of each
        assert sigs[0]["values"] == {"levels": 3, "volume": 150, "trades": 3, "first_tick": 10_001,
                                     "last_tick": 10_003, "elapsed_ns": 200_000}
    finally:
        ring.unlink()
        ring.close()
        if broker is not None:
            broker.stop(timeout_s=2)


def test_a_restarted_publisher_counts_what_its_predecessor_held_as_lost(instance):
    ring = Ring.create(instance, "signals", sc.SIGNAL_DTYPE, 64)
    row = np.zeros(sc.STATS_WORDS, np.int64)
    row[sc.ST_PUB_PENDING], row[sc.ST_PUB_IN_FLIGHT] = 4, 3  # as a SIGKILLed publisher left them
    try:
        Publisher(PublisherSpec(instance=instance, symbols=("AAA",), bootstrap=f"127.0.0.1:{free_port()}"), ring, row)
        assert row[sc.ST_PUB_LOST] == 7 and row[sc.ST_PUB_PENDING] == row[sc.ST_PUB_IN_FLIGHT] == 0
    finally:
        ring.unlink()
        ring.close()


def test_a_record_with_an_unknown_symbol_is_counted_not_fatal(instance):
    ring = Ring.create(instance, "signals", sc.SIGNAL_DTYPE, 64)
    row = np.zeros(sc.STATS_WORDS, np.int64)
    try:
        pub = Publisher(PublisherSpec(instance=instance, symbols=("AAA",), bootstrap=f"127.0.0.1:{free_port()}"),
                        ring, row)
        recs = _records(2, 0)
        recs["symbol"][1] = 9
        ring.push(recs)
        pub.step(0)
        assert row[sc.ST_PUB_ENCODE_ERRORS] == 1 and row[sc.ST_PUB_SIGNALS_IN] == 1
    finally:
        ring.unlink()
        ring.close()


def orjson_seq(data: bytes) -> int:
    import orjson

    return orjson.loads(data)["seq"]
