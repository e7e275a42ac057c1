"""Shared fixtures: unique segment instances per test, and a session check that the
suite leaves no /dev/shm/obpipe.* segment behind."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import posix_ipc
import pytest

from obpipe.ring.shm import list_segments

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
_counter = itertools.count()
#: Every instance a test creates starts with this (so concurrent sessions don't collide).
PREFIX = f"t{os.getpid()}x"


def _ours():
    return [s for s in list_segments() if s.startswith(f"/obpipe.{PREFIX}")]


@pytest.fixture(scope="session", autouse=True)
def no_segment_left_behind():
    yield
    left = sorted(_ours())
    for name in left:  # clean up so one failure does not poison later runs
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
    assert not left, f"tests left shared memory segments behind: {left}"


#: `make fuzz` runs the fuzz and abuse campaigns (marker ``fuzz``) this many times
#: longer than the suite does (OBPIPE_FUZZ_SCALE=10); the suite runs them at 1.
FUZZ_SCALE = max(1, int(os.environ.get("OBPIPE_FUZZ_SCALE", "1") or 1))


@pytest.fixture
def fuzz_scale() -> int:
    """How many times its base campaign a fuzz test runs: 1 in the suite, 10 under `make fuzz`."""
    return FUZZ_SCALE


@pytest.fixture
def instance():
    """A unique instance name; every segment of it is unlinked after the test."""
    name = f"{PREFIX}{next(_counter)}"
    yield name
    for seg in list_segments(name):
        try:
            posix_ipc.unlink_shared_memory(seg)
        except posix_ipc.ExistentialError:
            pass



@pytest.fixture
def kafka_broker():
    """An in-memory Tansu broker on a free 127.0.0.1 port; stopped (by pid) after the test."""
    from obpipe.publisher.broker import EmbeddedBroker

    broker = EmbeddedBroker.start()
    try:
        yield broker
    finally:
        broker.stop(timeout_s=2)
        assert not broker.alive()
        with pytest.raises(ProcessLookupError):
            os.kill(broker.pid, 0)


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0, idle_s: float = 2.0) -> list[dict]:
    """Every message of ``topic`` (all partitions, from the beginning) as dicts: reads
    until ``expect`` arrived and then ``idle_s`` passed without more (to see extras),
    or ``timeout_s``."""
    import time

    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "obpipe-tests", "enable.auto.commit": False,
                  "log_level": 0, "fetch.wait.max.ms": 100})
    out = []
    try:
        deadline = time.monotonic() + timeout_s
        parts = []
        while not parts and time.monotonic() < deadline:
            md = c.list_topics(topic, timeout=5).topics.get(topic)
            parts = sorted(md.partitions) if md is not None and not md.error else []
            if not parts:
                time.sleep(0.2)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        last = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.2)
            got = [m for m in msgs if m.error() is None]
            out.extend(orjson.loads(m.value()) for m in got)
            if got:
                last = time.monotonic()
            elif len(out) >= expect and time.monotonic() - last >= idle_s:
                break
    finally:
        c.close()
    return out
