"""Helpers for the publisher tests: example messages of every kind and a produce helper
(the ``kafka_broker`` fixture lives in tests/conftest.py)."""
from __future__ import annotations

import orjson
import pytest

from obpipe.publisher.schema import EXAMPLE_VALUES, signal_id

#: Example ``values`` per signal kind (valid under schema v1).
VALUES = EXAMPLE_VALUES
SIDES = {"spread_widening": None, "imbalance": "bid", "microprice_shift": "ask", "sweep": "bid",
         "liquidity_withdrawal": "ask"}


def make_signal(kind: str = "sweep", symbol: str = "AMZN", seq: int = 1187342, **over) -> dict:
    """A valid v1 signal of ``kind`` (09:30:01.234 feed time); ``over`` replaces fields."""
    msg = {"type": "signal", "v": 1, "id": signal_id(symbol, seq, kind, SIDES[kind]), "symbol": symbol, "kind": kind,
           "side": SIDES[kind], "seq": seq, "ts_exch_ns": 34_201_234_000_000, "ts_detect_ns": 1_767_000_601_234_567_890,
           "tick_size": 0.01, "bbo": {"bid_tick": 22381, "ask_tick": 22387, "bid_qty": 300, "ask_qty": 100},
           "values": dict(VALUES[kind])}
    msg.update(over)
    return msg


def make_summary(symbol: str = "AMZN", **over) -> dict:
    """A valid v1 summary (interval ending 09:30:01.300 feed time); ``over`` replaces fields."""
    msg = {"type": "summary", "v": 1, "symbol": symbol, "seq": 1187400, "start_ns": 34_200_300_000_000,
           "end_ns": 34_201_300_000_000, "ts_emit_ns": 1_767_000_601_301_000_000, "tick_size": 0.01,
           "bbo": {"bid_tick": 22381, "ask_tick": 22383, "bid_qty": 300, "ask_qty": 200}, "mid_tick": 22382.0,
           "spread_ticks": {"min": 2.0, "mean": 2.4, "max": 3.0}, "imbalance": {"tob": 0.2, "depth": -0.05},
           "volume": {"buy": 500, "sell": 300}, "trades": 12, "messages": 420, "msgs_per_s": 420.0, "events": 96}
    msg.update(over)
    return msg


def produce(bootstrap: str, topic: str, records) -> None:
    """Produce ``(key, value)`` pairs (value: dict → JSON, bytes as is) and wait for delivery."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "log_level": 0, "linger.ms": 0})
    for key, value in records:
        p.produce(topic, key=key.encode(), value=value if isinstance(value, bytes) else orjson.dumps(value))
    assert p.flush(10) == 0, "messages not delivered within 10 s"
