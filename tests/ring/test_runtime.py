"""The child-process runtime (``obpipe.ring.runtime``): the stop flag every pipeline child
polls."""
from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import started


def _poll_flag(flag, polls) -> None:
    while not flag.is_set():
        polls.value += 1


@pytest.mark.timeout(60)
def test_a_stop_flag_can_be_set_after_a_child_polling_it_was_sigkilled():
    # (CI hang: with multiprocessing.Event, is_set() takes a lock; the analysis SIGKILLed
    # while holding it left the lock taken, and the supervisor's set() at shutdown hung)
    import multiprocessing as mp

    from obpipe.ring.runtime import StopFlag
    ctx = mp.get_context("spawn")
    for _ in range(3):
        flag, polls = StopFlag(ctx), ctx.RawValue("q", 0)
        p = ctx.Process(target=_poll_flag, args=(flag, polls))
        p.start()
        with started(p):
            deadline = time.monotonic() + 30
            while polls.value < 10000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert polls.value >= 10000  # polling in a tight loop now
            p.kill()
            p.join(10)
        t = threading.Thread(target=flag.set, daemon=True)
        t.start()
        t.join(2)
        assert not t.is_alive(), "set() blocked on a lock the killed child held"
        assert flag.is_set()
