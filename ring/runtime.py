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
_PR_SET_NAME = 15


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


def set_name(name: str) -> None:
    """The process's name as ``top``, ``ps -o comm`` and ``perf sched`` show it (Linux
    keeps 15 bytes); a no-op where unsupported."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def child_setup(parent_pid: int, cores, name: str = "") -> None:
    """Die with the supervisor, leave Ctrl-C to it, pin to ``cores``, sleep with a 1 us
    timer slack (idle sleeps of ~50 us wake on time, not 50 us late), and take the name
    ``obpipe-<name>`` (so the parts are told apart in ``top``)."""
    if name:
        set_name(f"obpipe-{name}")
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


def realtime_permitted(priority: int) -> bool:
    """Whether this process may make itself (and its children) ``SCHED_FIFO`` at
    ``priority``: tried on the calling thread and undone (Linux: CAP_SYS_NICE or
    RLIMIT_RTPRIO; a container may deny it even to root)."""
    try:
        old = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):
        return False
    if not go_realtime(priority):
        return False
    os.sched_setscheduler(0, *old)
    return True


def go_realtime(priority: int) -> bool:
    """This process as ``SCHED_FIFO`` at ``priority`` (0: leave it as it is); whether it
    took.  Only for parts whose every wait blocks (rx and the book writer): a spinning
    real-time process would hold its core from everything else."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (AttributeError, OSError):
        return False


def sched_policy(pid: int) -> str:
    """How ``pid`` is scheduled, for ``obpipe stats``: ``"fifo:10"``, ``"rr:5"``,
    ``"normal"``, ``"batch"``, ``"idle"``; ``""`` if it is gone."""
    try:
        pol = os.sched_getscheduler(pid)
        prio = os.sched_getparam(pid).sched_priority
    except (AttributeError, OSError):
        return ""
    name = {os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr", os.SCHED_OTHER: "normal",
            getattr(os, "SCHED_BATCH", -1): "batch", getattr(os, "SCHED_IDLE", -2): "idle"}.get(pol, str(pol))
    return f"{name}:{prio}" if pol in (os.SCHED_FIFO, os.SCHED_RR) else name


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
