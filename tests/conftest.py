"""Shared fixtures: unique segment instances per test, the embedded Kafka broker, the
fuzz scale, and a session check that the suite leaves no /dev/shm/obpipe.* segment
behind.  Plain helpers live in tests/helpers.py."""
from __future__ import annotations

import os
import shutil

import posix_ipc
import pytest

from obpipe.ring.shm import list_segments
# (REPO, SHARED_DATA and consume_all are re-exported for test files written before
# tests/helpers.py existed; new code imports them from tests.helpers)
from tests.helpers import PREFIX, REPO, SHARED_DATA, STATE_HOME, consume_all, new_instance  # noqa: F401


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
    shutil.rmtree(STATE_HOME, ignore_errors=True)
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
    name = new_instance()
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


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL server's URL (tests.helpers.postgres_server); stopped by pid after the test."""
    from tests.helpers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_server():
    """A started tests.helpers.PgServer (``.url``; ``stop``/``start`` for an outage); removed after the test."""
    from tests.helpers import PgServer

    srv = PgServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
