"""Seqlock snapshot region: one writer process, any number of reader processes.

Segment ``/obpipe.<instance>.<part>``: the 64-byte header (``record_size`` = payload
bytes, ``capacity`` = number of slots, one per symbol), then from byte
``schema.SNAP_DATA_OFFSET`` one slot per symbol.  A slot is a sequence word alone on
its cache line followed by the payload (``schema.snapshot_dtype(n_levels)``), rounded
up to whole cache lines.  The writer publishes with ``_kernels.snap_write``; readers
copy with ``_kernels.snap_read`` and retry while a write is in progress.  Every payload
ends with ``check`` (XOR of all other words), which ``read`` verifies.
"""
from __future__ import annotations

import numpy as np

from obpipe.ring import kernels as K
from obpipe.ring import schema
from obpipe.ring.shm import Segment, seg_name
from obpipe.ring.errors import HeaderMismatch


class TornSnapshot(RuntimeError):
    """Raised by ``SnapshotRegion.read`` when a copy passed the seqlock but failed its
    checksum: a bug in the writer or memory corruption, never expected."""


class SnapshotRegion:
    """Mapped snapshot slots.  ``create`` for the writer, ``attach`` for readers."""

    def __init__(self, seg: Segment, n_slots: int, n_levels: int):
        self.seg = seg
        self.n_slots = n_slots
        self.n_levels = n_levels
        self.dtype = schema.snapshot_dtype(n_levels)
        self.payload_words = self.dtype.itemsize // 8
        self.slot_words = schema.snapshot_slot_words(n_levels)
        #: The whole segment as int64 words; pass to kernels with ``base(slot)``.
        self.words = seg.words
        self._buf = np.zeros(self.payload_words, np.int64)
        #: Reader-side counters of this process: reads, retries, give-ups.
        self.reads = 0
        self.retries = 0
        self.failed = 0

    @staticmethod
    def segment_size(n_slots: int, n_levels: int) -> int:
        return schema.SNAP_DATA_OFFSET + n_slots * schema.snapshot_slot_words(n_levels) * 8

    def base(self, slot: int) -> int:
        """int64 word index of ``slot``'s sequence word."""
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"snapshot slot {slot} out of range 0..{self.n_slots - 1}")
        return schema.SNAP_DATA_OFFSET // 8 + slot * self.slot_words

    @classmethod
    def create(cls, instance: str, part: str, n_slots: int, n_levels: int = schema.DEFAULT_SNAPSHOT_LEVELS,
               owner_pid: int | None = None) -> "SnapshotRegion":
        dt = schema.snapshot_dtype(n_levels)
        seg = Segment.create(seg_name(instance, part), cls.segment_size(n_slots, n_levels), kind=schema.SEG_SNAPSHOT,
                             record_dtype=dt, record_size=dt.itemsize, capacity=n_slots, owner_pid=owner_pid)
        region = cls(seg, n_slots, n_levels)
        empty = region.empty_payload()
        for s in range(n_slots):
            K.snap_write(region.words, region.base(s), empty, region.payload_words)
        return region

    @classmethod
    def attach(cls, instance: str, part: str, n_levels: int | None = None) -> "SnapshotRegion":
        name = seg_name(instance, part)
        seg = Segment.attach(name, kind=schema.SEG_SNAPSHOT)
        h = seg.header[0]
        size = int(h["record_size"])
        found_levels = (size // 8 - schema.SNAP_HEADER_WORDS - 1) // 4
        want = found_levels if n_levels is None else n_levels
        try:
            dt = schema.snapshot_dtype(want)
            seg._validate(schema.SEG_SNAPSHOT, dt, None, None)
            n_slots = int(h["capacity"])
            if seg.size < cls.segment_size(n_slots, want):
                raise HeaderMismatch(f"shared ring header mismatch in {name}: {n_slots} slots do not fit "
                                     f"its {seg.size}-byte segment")
        except (HeaderMismatch, ValueError) as e:
            seg.close()
            if isinstance(e, ValueError):
                raise HeaderMismatch(f"shared ring header mismatch in {name}: record size {size} is not "
                                     f"a snapshot payload") from e
            raise
        return cls(seg, n_slots, want)

    def empty_payload(self) -> np.ndarray:
        """The payload words of an empty book (NO_PX prices, NaN ratios)."""
        rec = np.zeros(1, self.dtype)
        for f in ("bid_px_tick", "ask_px_tick", "spread_tick", "last_trade_px_tick", "bid_px", "ask_px"):
            rec[f] = schema.NO_PX
        for f in ("imbalance", "depth_imbalance", "microprice_tick"):
            rec[f] = np.nan
        rec["last_trade_side"] = -1
        rec["n_levels"] = self.n_levels
        w = rec.view(np.int64)
        w[-1] = K.payload_check(w, self.payload_words)
        return w

    def read(self, slot: int, max_tries: int = 1_000_000) -> np.void:
        """A consistent copy of ``slot``'s payload (a structured record).

        Raises ``TimeoutError`` if the writer stays mid-write for ``max_tries`` attempts,
        ``TornSnapshot`` if a copy fails its checksum.
        """
        r = K.snap_read(self.words, self.base(slot), self._buf, self.payload_words, max_tries)
        self.reads += 1
        if r < 0:
            self.failed += 1
            raise TimeoutError(f"snapshot slot {slot} of {self.seg.name} stayed mid-write for {max_tries} tries")
        self.retries += int(r)
        if K.payload_check(self._buf, self.payload_words) != self._buf[-1]:
            raise TornSnapshot(f"snapshot slot {slot} of {self.seg.name} failed its checksum")
        return self._buf.copy().view(self.dtype)[0]

    def close(self) -> None:
        self.words = None
        self.seg.close()

    def unlink(self) -> None:
        self.seg.unlink()
