"""The stats block: per-process counters, each row written only by its owner.

Segment ``/obpipe.<instance>.stats``: the header (``capacity`` = rows, ``record_size``
= ``schema.STATS_WORDS * 8``), then from byte ``schema.STATS_DATA_OFFSET`` one row per
process role.  A row is ``STATS_WORDS`` int64 counters (4 cache lines, so owners never
share a line).  Owners update their row with ``store_relaxed`` at batch ends; anyone
may read (``snapshot``), seeing each counter whole (aligned 8-byte words) but rows not
necessarily at one instant.
"""
from __future__ import annotations

import numpy as np

from obpipe.ring import schema
from obpipe.ring.latency import N_BUCKETS
from obpipe.ring.shm import Segment, seg_name

#: Row of each process role.
ROW_SUPERVISOR = 0
ROW_RX = 1
ROW_BOOK = 2
ROW_ANALYSIS = 3
ROW_PUBLISHER = 4
ROW_FEED = 5
ROW_REDIS = 6  # the Redis writer (publisher.redis_writer)
ROW_TICKS = 7  # the tick recorder (ticks.recorder)
#: Rows from 8: the receive->apply latency histogram (``ring.latency``), owned by the book
#: writer: one int64 count per log-linear bucket.
ROW_LATENCY = 8
LATENCY_ROWS = -(-N_BUCKETS // schema.STATS_WORDS)
#: The order-query row (``schema.Q_*``): a reader asks, the book writer answers.
ROW_QUERY = ROW_LATENCY + LATENCY_ROWS
N_ROWS = 16

_ROW_DTYPE = np.dtype([("w", "<i8", (schema.STATS_WORDS,))])


class StatsBlock:
    def __init__(self, seg: Segment, n_rows: int):
        self.seg = seg
        self.n_rows = n_rows
        start = schema.STATS_DATA_OFFSET // 8
        #: (n_rows, STATS_WORDS) int64 view; an owner passes ``rows[i]`` to its kernels.
        self.rows = seg.words[start:start + n_rows * schema.STATS_WORDS].reshape(n_rows, schema.STATS_WORDS)

    @staticmethod
    def segment_size(n_rows: int) -> int:
        return schema.STATS_DATA_OFFSET + n_rows * schema.STATS_WORDS * 8

    @classmethod
    def create(cls, instance: str, n_rows: int = N_ROWS, owner_pid: int | None = None) -> "StatsBlock":
        seg = Segment.create(seg_name(instance, "stats"), cls.segment_size(n_rows), kind=schema.SEG_STATS,
                             record_dtype=_ROW_DTYPE, record_size=_ROW_DTYPE.itemsize, capacity=n_rows,
                             owner_pid=owner_pid)
        return cls(seg, n_rows)

    @classmethod
    def attach(cls, instance: str) -> "StatsBlock":
        seg = Segment.attach(seg_name(instance, "stats"), kind=schema.SEG_STATS, record_dtype=_ROW_DTYPE)
        return cls(seg, int(seg.header[0]["capacity"]))

    def row(self, i: int) -> np.ndarray:
        return self.rows[i]

    def snapshot(self) -> np.ndarray:
        """A copy of every row (for display)."""
        return self.rows.copy()

    def close(self) -> None:
        self.rows = None
        self.seg.close()

    def unlink(self) -> None:
        self.seg.unlink()
