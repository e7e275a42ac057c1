"""SPSC ring: batch semantics in one process, and 20M records between two processes."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.ring import schema as sc
from obpipe.ring.stress import run_ring_stress
from obpipe.ring.errors import HeaderMismatch, SegmentExists, SegmentMissing, SegmentTooLarge
from obpipe.ring.shm import list_segments
from obpipe.ring.spsc import Backoff, Ring


def _records(start, n):
    r = np.zeros(n, sc.MD_DTYPE)
    r["seq"] = np.arange(start, start + n)
    r["px_tick"] = -np.arange(start, start + n)
    return r


@pytest.mark.timeout(60)
def test_push_pop_wraps_and_full_ring_accepts_only_what_fits(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 8)
    try:
        assert ring.push(_records(0, 5)) == 5
        out = np.zeros(3, sc.MD_DTYPE)
        assert ring.pop(out) == 3 and out["seq"].tolist() == [0, 1, 2]
        # 2 left, 6 free: a batch of 10 is accepted only in part; the caller drops 4
        assert ring.push(_records(5, 10)) == 6
        assert len(ring) == 8 and ring.push(_records(99, 1)) == 0
        out = np.zeros(16, sc.MD_DTYPE)
        assert ring.pop(out) == 8
        assert out["seq"][:8].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]  # crossed the wrap
        assert out["px_tick"][:8].tolist() == [-3, -4, -5, -6, -7, -8, -9, -10]
        assert ring.pop(out) == 0
        assert (ring.head, ring.tail) == (11, 11)
    finally:
        ring.unlink()


@pytest.mark.timeout(60)
def test_attach_sees_the_same_ring_and_wait_times_out(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 16)
    try:
        peer = Ring.attach(instance, "md", sc.MD_DTYPE, capacity=16)
        assert peer.wait(Backoff(10, 2, 100), timeout_s=0.05) == 0
        ring.push(_records(0, 4))
        assert peer.wait(Backoff(10, 2, 100), timeout_s=1) == 4
        out = np.zeros(4, sc.MD_DTYPE)
        assert peer.pop(out) == 4 and len(ring) == 0
        with pytest.raises(TypeError, match="dtype"):
            peer.push(np.zeros(2, sc.EVENT_DTYPE))
        peer.close()
    finally:
        ring.unlink()


def test_capacity_must_be_a_power_of_two(instance):
    with pytest.raises(ValueError, match="power of two"):
        Ring.create(instance, "md", sc.MD_DTYPE, 1000)


@pytest.mark.timeout(60)
def test_wrong_record_size_layout_or_capacity_is_refused_with_a_clear_error(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 16)
    try:
        with pytest.raises(HeaderMismatch, match="record size is 40, expected 88"):
            Ring.attach(instance, "md", sc.EVENT_DTYPE)
        same_size = np.dtype([("a", "<i8"), ("b", "<i8"), ("c", "<i8"), ("d", "<i8"), ("e", "<i8")])
        with pytest.raises(HeaderMismatch, match="record layout"):
            Ring.attach(instance, "md", same_size)
        with pytest.raises(HeaderMismatch, match="capacity is 16, expected 32"):
            Ring.attach(instance, "md", sc.MD_DTYPE, capacity=32)
        with pytest.raises(SegmentExists, match="already exists"):
            Ring.create(instance, "md", sc.MD_DTYPE, 16)
    finally:
        ring.unlink()
    with pytest.raises(SegmentMissing, match="does not exist"):
        Ring.attach(instance, "md", sc.MD_DTYPE)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_20M_records_between_two_processes_no_loss_dup_or_reorder(instance):
    res = run_ring_stress(instance, 20_000_000, capacity=1 << 12, batch=256, timeout_s=200)
    assert res["received"] == 20_000_000
    assert res["bad"] == 0, f"first bad record at {res['first_bad']}"
    assert res["head"] == res["tail"] == 20_000_000
    assert res["stalls"] > 0  # a small ring: the producer really hit a full ring and waited


# -- regressions a review demonstrated (each test failed before its fix) -----------------

def test_oversized_ring_is_refused_and_leaves_nothing(instance):
    with pytest.raises(SegmentTooLarge, match="free"):
        Ring.create(instance, "md", sc.MD_DTYPE, 1 << 40)
    assert list_segments(instance) == []


def test_pop_into_a_non_contiguous_array_is_refused_not_lost(instance):
    ring = Ring.create(instance, "md", sc.MD_DTYPE, 8)
    try:
        ring.push(np.zeros(4, sc.MD_DTYPE))
        with pytest.raises(ValueError, match="contiguous"):
            ring.pop(np.zeros(8, sc.MD_DTYPE)[::2])
        assert len(ring) == 4
    finally:
        ring.unlink()
