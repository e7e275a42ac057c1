"""The exchange's journal: every request batch, appended before any of it is acknowledged.

File layout (little-endian; docs/PROTOCOL.md "Journal"):

    header, 64 bytes   magic b"OBJRNL\\0\\1", u32 version (1), u32 header bytes (64),
                       u32 md session, u32 symbols, i64 band ticks, i64 capacity,
                       i64 CLOCK_REALTIME ns at creation, 16 bytes zero
    batch, repeated    32-byte batch header: u32 magic 0x4843_5442 ("BTCH"), u32 count,
                       i64 ts_ns (the batch's market-data stamp), u32 crc32 of the
                       requests, 12 bytes zero; then ``count`` 32-byte requests
                       (``schema.ORDER_IN_DTYPE``, account filled in by the exchange)

The matching kernel is deterministic, so replaying the requests rebuilds exactly the same
books (same orders, same priorities), the same next order id and the same market-data
sequence.  A batch cut short by a crash (short, or its crc wrong at the very end of the
file) was never acknowledged: recovery drops it and truncates the file there.  A bad
batch followed by more data is corruption, and recovery refuses to start.

One ``os.write`` per batch (``O_APPEND``): a process killed after the write returned
has its batch in the page cache, which survives the process.  ``fsync`` decides what
survives a power loss: ``batch`` (fsync every batch before its acknowledgements go
out: group commit), ``interval`` (at most every ``interval_ms``), ``none``.
"""
from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np

from ring import schema

MAGIC = b"OBJRNL\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIIIqqq16x")
BATCH = struct.Struct("<IIqI12x")
BATCH_MAGIC = 0x48435442
REQ = schema.ORDER_IN_DTYPE.itemsize
FSYNC_POLICIES = ("batch", "interval", "none")
assert HEADER.size == 64 and BATCH.size == 32 and REQ == 32


class JournalError(ValueError):
    """Raised by ``Journal.open`` for a journal that cannot be used (wrong file, other
    settings, corruption in the middle); the message says which."""


class Journal:
    """An open journal.  ``open`` creates it or reads it back; ``append`` writes one batch."""

    def __init__(self, path: str, fd: int, session: int, fsync: str, interval_ms: float):
        self.path = path
        self.fd = fd
        self.session = session
        self.fsync = fsync
        self.interval_ns = int(interval_ms * 1e6)
        self._last_sync = time.monotonic_ns()
        self.batches = 0
        self.requests = 0
        self.syncs = 0

    @classmethod
    def open(cls, path: str, n_symbols: int, band_ticks: int, capacity: int, fsync: str = "batch",
             interval_ms: float = 10.0, session: int | None = None):
        """Open (or create) ``path``.  Returns ``(journal, requests, recovery)``:
        ``requests`` every journaled request in order (ORDER_IN_DTYPE), ``recovery`` a
        dict (batches, requests, truncated_bytes, created)."""
        if fsync not in FSYNC_POLICIES:
            raise JournalError(f"fsync policy {fsync!r}: one of {', '.join(FSYNC_POLICIES)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                sess = session if session else int.from_bytes(os.urandom(4), "little") or 1
                os.write(fd, HEADER.pack(MAGIC, VERSION, HEADER.size, sess, n_symbols, band_ticks, capacity,
                                         time.time_ns()))
                os.fsync(fd)
                j = cls(path, fd, sess, fsync, interval_ms)
                return j, np.zeros(0, schema.ORDER_IN_DTYPE), {"batches": 0, "requests": 0, "truncated_bytes": 0,
                                                               "created": True}
            data = os.pread(fd, size, 0)
            sess, reqs, batches, good = _read(path, data, n_symbols, band_ticks, capacity)
            if good < size:
                os.ftruncate(fd, good)
                os.fsync(fd)
            j = cls(path, fd, sess, fsync, interval_ms)
            j.batches, j.requests = batches, len(reqs)
            return j, reqs, {"batches": batches, "requests": len(reqs), "truncated_bytes": size - good,
                             "created": False}
        except BaseException:
            os.close(fd)
            raise

    def append(self, reqs: np.ndarray, ts_ns: int) -> None:
        """Write one batch (and fsync it, per the policy) before it is acknowledged."""
        body = reqs.tobytes()
        os.write(self.fd, BATCH.pack(BATCH_MAGIC, len(reqs), ts_ns, zlib.crc32(body)) + body)
        self.batches += 1
        self.requests += len(reqs)
        if self.fsync == "batch":
            os.fsync(self.fd)
            self.syncs += 1
        elif self.fsync == "interval":
            now = time.monotonic_ns()
            if now - self._last_sync >= self.interval_ns:
                os.fsync(self.fd)
                self.syncs += 1
                self._last_sync = now

    def close(self) -> None:
        if self.fd >= 0:
            if self.fsync != "none":
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def _read(path, data: bytes, n_symbols: int, band_ticks: int, capacity: int):
    if len(data) < HEADER.size:
        raise JournalError(f"{path}: {len(data)} bytes, shorter than a journal header (not a journal?)")
    magic, version, hsize, sess, nsym, band, cap, _created = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise JournalError(f"{path}: not an obpipe journal (magic {magic!r})")
    if version != VERSION or hsize != HEADER.size:
        raise JournalError(f"{path}: journal version {version}, this exchange reads version {VERSION}")
    for name, have, want in (("symbols", nsym, n_symbols), ("band_ticks", band, band_ticks),
                             ("capacity", cap, capacity)):
        if have != want:
            raise JournalError(f"{path}: journal was written with {name} = {have}, the exchange has {want}; "
                               f"replaying it with other settings would build another book")
    pos = HEADER.size
    spans = []
    batches = 0
    while pos < len(data):
        bad = None
        if pos + BATCH.size > len(data):
            bad = "short batch header"
        else:
            magic, count, _ts, crc = BATCH.unpack_from(data, pos)
            end = pos + BATCH.size + count * REQ
            if magic != BATCH_MAGIC:
                bad = "bad batch magic"
            elif end > len(data):
                bad = "short batch"
            elif zlib.crc32(data[pos + BATCH.size:end]) != crc:
                bad = "batch checksum mismatch"
        if bad is not None:
            if bad in ("short batch header", "short batch") or _tail_only(data, pos):
                break  # the last write, cut short by a crash: never acknowledged
            raise JournalError(f"{path}: {bad} at byte {pos} with more data after it: the journal is corrupt")
        spans.append((pos + BATCH.size, end))
        batches += 1
        pos = end
    buf = b"".join(data[a:b] for a, b in spans)
    reqs = np.frombuffer(buf, schema.ORDER_IN_DTYPE).copy() if buf else np.zeros(0, schema.ORDER_IN_DTYPE)
    return sess, reqs, batches, pos


def _tail_only(data: bytes, pos: int) -> bool:
    """A bad batch at ``pos`` is the crash-cut tail if no later batch header follows it."""
    return data.find(struct.pack("<I", BATCH_MAGIC), pos + 4) < 0
