"""A /dev/shm/obpipe.* segment created by another user: `obpipe clean` and `obpipe run`
name it and exit non-zero, never a PermissionError traceback (issue 13, item 9).

Root may open any file, so the commands run in a forked child that has become
``nobody`` (the segment is root's, mode 0600): exactly another user's segment as that
user sees it.  The child runs ``obpipe.cli.main`` in-process (every module imported
before the fork: nobody cannot read root's Python installation)."""
from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
import traceback

import posix_ipc
import pytest

import obpipe.supervisor  # noqa: F401  (imported before the fork, see the docstring)
import obpipe.config  # noqa: F401
from obpipe import cli
from obpipe.ring.shm import list_segments
from tests.helpers import REPO

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


def _as_nobody(argv: list[str], timeout_s: float = 60.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``obpipe <argv>`` run as uid/gid nobody."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        rc = 99
        out, err = io.StringIO(), io.StringIO()
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.chdir(REPO)
            sys.stdout, sys.stderr = out, err
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            err.write(traceback.format_exc())
        finally:
            os.write(w, json.dumps([rc, out.getvalue(), err.getvalue()]).encode())
            os.close(w)
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout_s
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"obpipe {' '.join(argv)} did not end in {timeout_s} s")
        time.sleep(0.05)
    with os.fdopen(r, "rb") as f:
        rc, out, err = json.loads(f.read())
    return rc, out, err


@pytest.fixture
def foreign_segment(instance):
    """A segment of ``instance`` owned by root with mode 0600 (removed by ``instance``)."""
    name = f"/obpipe.{instance}.md"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    shm.close_fd()
    return name


@pytest.mark.timeout(120)
def test_clean_names_another_users_segment_and_exits_nonzero(instance, foreign_segment):
    rc, out, err = _as_nobody(["clean", "--instance", instance])
    assert "Traceback" not in err, err
    assert rc == 1
    assert f"/dev/shm{foreign_segment} belongs to uid 0 (root), mode 600" in err
    assert list_segments(instance) == [foreign_segment]  # left alone


@pytest.mark.timeout(120)
def test_run_names_another_users_segment_and_exits_nonzero(instance, foreign_segment):
    rc, out, err = _as_nobody(["run", "--instance", instance, "--count", "10", "--no-kafka", "--no-ticks"])
    assert "Traceback" not in err, err
    assert rc == 2
    assert f"instance {instance!r}: segment /dev/shm{foreign_segment} belongs to uid 0 (root)" in err
    assert list_segments(instance) == [foreign_segment]
