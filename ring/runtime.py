"""What every supervised child process (rx, book writer, feed) does first."""
from __future__ import annotations

import ctypes
import os
import signal
import time

from obpipe.ring import schema
from obpipe.ring.net import set_timer_slack
from obpipe.ring.stats import StatsBlock

from obpipe.ring.placement import pin

_PR_SET_PDEATHSIG = 1


class StopFlag:
    """A stop flag shared with spawned children: one byte of shared memory, no lock.
    (A ``multiprocessing.Event`` takes a lock in ``is_set()``; a child SIGKILLed while
    holding it leaves that lock taken for good, and the supervisor's ``set()`` at shutdown
    then waits forever.)"""

    def __init__(self, ctx):
        self._v = ctx.RawValue(ctypes.c_int8, 0)

    def set(self) -> None:
        self._v.value = 1

    def is_set(self) -> bool:
        return self._v.value != 0


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a SIGKILLed supervisor
    must not leave a child spinning on a core); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the children's own parent checks still apply
    if parent_pid and os.getppid() != parent_pid:
        os._exit(3)


def child_setup(parent_pid: int, cores) -> None:
    """Die with the supervisor, leave Ctrl-C to it, pin to ``cores``, and sleep with a
    1 us timer slack (idle sleeps of ~50 us wake on time, not 50 us late)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    if cores:
        pin(list(cores))
    set_timer_slack()


def background_priority(on: bool = True, pid: int = 0) -> None:
    """Run as SCHED_IDLE (Linux; ``on``) or back as a normal process (``on=False``).

    The analysis and the publisher go SCHED_IDLE only once they are ready (kernels
    compiled or loaded, broker reached), and the supervisor returns them to normal
    (``pid``: another process) before it tells them to stop: while
    the book writer runs they take only the CPU it and rx leave, so sharing a core with
    them does not delay them; but compiling at start-up and draining at shutdown must
    not wait for an idle CPU, which a busy machine may never have (beside a normal busy
    process a SCHED_IDLE one gets next to nothing: docs/DECISIONS.md "SCHED_IDLE only
    while the book writer runs"). A no-op where unsupported."""
    try:
        policy = os.SCHED_IDLE if on else os.SCHED_OTHER
        os.sched_setscheduler(pid, policy, os.sched_param(0))
    except (AttributeError, OSError):  # (ProcessLookupError: it is gone)
        pass


def claim_row(instance: str, row_index: int) -> tuple[StatsBlock, "object"]:
    """Attach the instance's stats block and mark ``row_index`` as this process's,
    starting; returns (block, row)."""
    stats = StatsBlock.attach(instance)
    row = stats.row(row_index)
    row[schema.ST_PID] = os.getpid()
    row[schema.ST_STATE] = schema.STATE_STARTING
    return stats, row


def mark_running(row) -> None:
    """Announce "running" with a fresh heartbeat first, so the supervisor's stale-heartbeat
    check never sees a running part whose first loop turn has not finished yet."""
    row[schema.ST_HEARTBEAT_NS] = time.monotonic_ns()
    row[schema.ST_STATE] = schema.STATE_RUNNING
