"""Single-producer / single-consumer ring of fixed-size records in shared memory.

Layout of segment ``/obpipe.<instance>.<part>``:

    0    header (schema.SEG_HEADER_DTYPE): magic, version, kind, record size, capacity
    128  producer line: head (records ever pushed), producer's cached tail
    256  consumer line: tail (records ever popped), consumer's cached head
    384  capacity slots of record_size bytes

The hot path is the kernels in ``ring.kernels`` (``ring_push``, ``ring_pop``,
``ring_claim``/``ring_publish``, ``ring_available``/``ring_release``), which other
kernels call directly with ``ring.ctrl`` and ``ring.slots``.  The methods here are the
checked Python entry points for glue code and tests; each call moves a whole batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from obpipe.ring import kernels as K
from obpipe.ring import schema
from obpipe.ring.shm import Segment, seg_name
from obpipe.ring.errors import HeaderMismatch


@dataclass(frozen=True)
class Backoff:
    """How an idle consumer waits: spin, then yield, then sleep (2 cores: be polite)."""

    spin_iters: int = 2000  # pause-loop iterations before yielding (~10 us)
    yield_iters: int = 20  # sched_yield() calls before sleeping
    sleep_us: int = 50  # sleep per idle round once spinning and yielding found nothing
    doorbell: bool = False  # instead of sleeping, block until woken by the data (rx: poll; book: the md ring's doorbell)
    handoff: bool = False  # rx: yield the core after waking the book writer (real-time, one shared core)


class Ring:
    """A mapped SPSC ring.  Use ``Ring.create`` (owner) or ``Ring.attach`` (peer)."""

    def __init__(self, seg: Segment, dtype: np.dtype, capacity: int):
        self.seg = seg
        self.dtype = dtype
        self.capacity = capacity
        self.words = schema.words_of(dtype)
        end = schema.RING_DATA_OFFSET + capacity * dtype.itemsize
        raw = seg.buf[schema.RING_DATA_OFFSET:end]
        #: Control words (whole segment as int64); pass to kernels.
        self.ctrl = seg.words
        #: Slots as (capacity, words) int64; pass to kernels.
        self.slots = raw.view(np.int64).reshape(capacity, self.words)
        #: Slots as structured records (debugging/tests; not a queue view).
        self.records = raw.view(dtype)

    @staticmethod
    def segment_size(dtype: np.dtype, capacity: int) -> int:
        return schema.RING_DATA_OFFSET + capacity * dtype.itemsize

    @classmethod
    def create(cls, instance: str, part: str, dtype: np.dtype, capacity: int,
               owner_pid: int | None = None) -> "Ring":
        """Create ``/obpipe.<instance>.<part>`` with ``capacity`` (a power of two) slots."""
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 2, got {capacity}")
        schema.words_of(dtype)
        seg = Segment.create(seg_name(instance, part), cls.segment_size(dtype, capacity),
                             kind=schema.SEG_RING, record_dtype=dtype, record_size=dtype.itemsize,
                             capacity=capacity, owner_pid=owner_pid)
        ring = cls(seg, dtype, capacity)
        K.ring_reset(ring.ctrl)
        return ring

    @classmethod
    def attach(cls, instance: str, part: str, dtype: np.dtype, capacity: int | None = None) -> "Ring":
        """Attach to an existing ring; its header must match ``dtype`` (and ``capacity``)."""
        seg = Segment.attach(seg_name(instance, part), kind=schema.SEG_RING, record_dtype=dtype,
                             capacity=capacity)
        cap = int(seg.header[0]["capacity"])
        if cap < 2 or cap & (cap - 1) or seg.size < cls.segment_size(dtype, cap):
            seg.close()
            raise HeaderMismatch(f"shared ring header mismatch in {seg.name}: capacity {cap} "
                                 f"does not fit its {seg.size}-byte segment or is not a power of two")
        return cls(seg, dtype, cap)

    # --- checked entry points (batch granularity) -------------------------------------

    def _as_words(self, records: np.ndarray, writable: bool = False) -> np.ndarray:
        if records.dtype != self.dtype:
            raise TypeError(f"records have dtype {records.dtype}, ring holds {self.dtype}")
        if writable and not (records.flags.c_contiguous and records.flags.writeable):
            raise ValueError("pop needs a C-contiguous, writeable output array")
        return np.ascontiguousarray(records).view(np.int64).reshape(-1, self.words)

    def push(self, records: np.ndarray) -> int:
        """Push a batch; returns how many were accepted (the rest are the caller's drops)."""
        src = self._as_words(records)
        n = int(K.ring_push(self.ctrl, self.slots, src, 0, src.shape[0]))
        K.ring_wake(self.ctrl)  # a consumer dozing on the doorbell
        return n

    def pop(self, out: np.ndarray, max_n: int | None = None) -> int:
        """Pop up to ``len(out)`` (or ``max_n``) records into ``out``; returns the count."""
        dst = self._as_words(out, writable=True)
        return int(K.ring_pop(self.ctrl, self.slots, dst, dst.shape[0] if max_n is None else max(max_n, 0)))

    def wait(self, backoff: Backoff, timeout_s: float | None = None) -> int:
        """Block politely until records are available (or ``timeout_s``); returns how many."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            n = int(K.ring_wait(self.ctrl, backoff.spin_iters, backoff.yield_iters))
            if n:
                return n
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            time.sleep(backoff.sleep_us * 1e-6)

    @property
    def head(self) -> int:
        return int(K.ring_counters(self.ctrl)[0])

    @property
    def tail(self) -> int:
        return int(K.ring_counters(self.ctrl)[1])

    def __len__(self) -> int:
        head, tail = K.ring_counters(self.ctrl)
        return int(head - tail)

    @property
    def high_water(self) -> int:
        """Highest fill the consumer has seen (sampled at each reload of the head)."""
        return int(self.ctrl[schema.RING_W_HWM])

    def close(self) -> None:
        self.ctrl = self.slots = self.records = None
        self.seg.close()

    def unlink(self) -> None:
        self.seg.unlink()
