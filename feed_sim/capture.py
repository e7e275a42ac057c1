"""Capture files (``.obcap``): the feed's datagrams exactly as they were sent.

A 32-byte file header, then one record per datagram (faulted ones included, so a
replay reproduces a faulted run's counters exactly)::

    header  8s magic b"OBPCAP\\0\\1", u32 version (1), u32 header bytes (32),
            i64 CLOCK_REALTIME ns at creation, i64 CLOCK_MONOTONIC ns at creation
    record  u32 length, u32 flags (0), i64 send time (CLOCK_MONOTONIC ns),
            length bytes of datagram, zero padding to a multiple of 8

Everything little-endian.  Layout in docs/PROTOCOL.md; records are written and indexed
by the kernels in ``feed_sim._send_kernels``.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obpipe.feed_sim import _send_kernels as SK

MAGIC = b"OBPCAP\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIqq")
assert HEADER.size == 32


class CaptureError(ValueError):
    """A file that is not a readable capture (message names the file and the problem)."""


class CaptureWriter:
    """Appends capture records; ``write`` takes bytes already packed by ``capture_pack``."""

    def __init__(self, path):
        self.path = Path(path)
        self.f = open(self.path, "wb")
        self.f.write(HEADER.pack(MAGIC, VERSION, HEADER.size, time.time_ns(), time.monotonic_ns()))
        self.datagrams = 0
        self.bytes = HEADER.size

    def write(self, packed: np.ndarray, n_datagrams: int) -> None:
        self.f.write(memoryview(packed))
        self.datagrams += n_datagrams
        self.bytes += len(packed)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def is_capture(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == MAGIC
    except OSError:
        return False


@dataclass
class Capture:
    """A capture file in memory: ``raw`` its bytes (uint8, length padded to 8) and the
    index of its datagrams (payload offset, length, send time, message count)."""

    path: Path
    raw: np.ndarray
    off: np.ndarray
    length: np.ndarray
    ts: np.ndarray
    msgs: np.ndarray
    created_realtime_ns: int
    truncated_bytes: int  # bytes of an incomplete last record (a capture cut short), ignored

    def __len__(self) -> int:
        return len(self.off)

    def datagram(self, i: int) -> bytes:
        return self.raw[self.off[i]:self.off[i] + self.length[i]].tobytes()


def read(path) -> Capture:
    """Load and index a capture.  Raises ``CaptureError`` for a file that is not one;
    an incomplete last record (the writer was killed) is ignored and reported in
    ``truncated_bytes``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) < HEADER.size:
        raise CaptureError(f"{path}: not an obpipe capture (shorter than its 32-byte header)")
    magic, version, hdr, created, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CaptureError(f"{path}: not an obpipe capture (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION or hdr != HEADER.size:
        raise CaptureError(f"{path}: capture version {version} / header {hdr} bytes; this obpipe reads "
                           f"version {VERSION} / {HEADER.size}")
    raw = np.zeros(-(-len(data) // 8) * 8 + 8, np.uint8)
    raw[:len(data)] = np.frombuffer(data, np.uint8)
    cap = len(data) // SK.REC_HDR + 1
    off, ln, ts, msgs = (np.zeros(cap, np.int64) for _ in range(4))
    n, end, status = SK.capture_index(raw.view(np.int64), HEADER.size, len(data), off, ln, ts, msgs)
    if status == 2:
        raise CaptureError(f"{path}: corrupt capture record at byte {end}")
    return Capture(path, raw, off[:n], ln[:n], ts[:n], msgs[:n], created, len(data) - int(end))
