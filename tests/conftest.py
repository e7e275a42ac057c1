"""Shared fixtures: unique segment instances per test, and a session check that the
suite leaves no /dev/shm/obpipe.* segment behind."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import posix_ipc
import pytest

from ring._shm import list_segments

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

