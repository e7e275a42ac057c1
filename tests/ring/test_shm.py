"""Segment header validation and lifecycle: stale segments, `obpipe clean`."""
from __future__ import annotations

import multiprocessing as mp
import os

import posix_ipc
import pytest

from obpipe.ring import schema as sc
from obpipe.ring.shm import clean_stale, list_segments, seg_name
from obpipe.ring.errors import HeaderMismatch
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring
from obpipe.ring.stats import StatsBlock


def test_segment_names_are_checked():
    assert seg_name("main", "md") == "/obpipe.main.md"
    with pytest.raises(ValueError, match="instance"):
        seg_name("../x", "md")


@pytest.mark.timeout(30)
def test_garbage_segment_is_refused_naming_the_magic(instance):
    name = seg_name(instance, "md")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096)
    os.pwrite(shm.fd, b"\xff" * 64, 0)
    shm.close_fd()
    with pytest.raises(HeaderMismatch, match="magic"):
        Ring.attach(instance, "md", sc.MD_DTYPE)


@pytest.mark.timeout(30)
def test_wrong_kind_and_version_are_refused(instance):
    stats = StatsBlock.create(instance)
    with pytest.raises(HeaderMismatch, match="kind is stats, expected ring"):
        Ring.attach(instance, "stats", sc.MD_DTYPE)
    stats.seg.header[0]["layout_version"] = 999
    with pytest.raises(HeaderMismatch, match="layout version is 999"):
        StatsBlock.attach(instance)
    stats.unlink()


@pytest.mark.timeout(30)
def test_snapshot_attach_checks_levels(instance):
    region = SnapshotRegion.create(instance, "snap", 2, 10)
    try:
        assert SnapshotRegion.attach(instance, "snap").n_levels == 10
        with pytest.raises(HeaderMismatch, match="record size"):
            SnapshotRegion.attach(instance, "snap", n_levels=5)
    finally:
        region.unlink()


def _create_and_die(instance):
    Ring.create(instance, "md", sc.MD_DTYPE, 8)
    StatsBlock.create(instance)
    os._exit(0)  # killed owner: never unlinks


@pytest.mark.multiproc
@pytest.mark.timeout(60)
def test_clean_removes_segments_of_a_dead_owner_and_keeps_live_ones(instance):
    p = mp.get_context("spawn").Process(target=_create_and_die, args=(instance,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert list_segments(instance) == [f"/obpipe.{instance}.md", f"/obpipe.{instance}.stats"]
    live = Ring.create(instance, "live", sc.MD_DTYPE, 8)  # owned by this (live) process
    try:
        dry = clean_stale(instance, dry_run=True)
        assert len(dry) == 2 and list_segments(instance) != []
        removed = clean_stale(instance)
        assert sorted(n for n, _ in removed) == [f"/obpipe.{instance}.md", f"/obpipe.{instance}.stats"]
        assert all("is gone" in why for _, why in removed)
        assert list_segments(instance) == [f"/obpipe.{instance}.live"]
    finally:
        live.unlink()


# -- regressions a review demonstrated (each test failed before its fix) -----------------

def test_garbage_segment_of_odd_size_is_a_header_mismatch(instance):
    shm = posix_ipc.SharedMemory(seg_name(instance, "md"), posix_ipc.O_CREX, size=4099)
    shm.close_fd()
    with pytest.raises(HeaderMismatch, match="not an obpipe segment"):
        Ring.attach(instance, "md", sc.MD_DTYPE)
