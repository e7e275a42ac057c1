"""The exchange's journal: every request batch, appended before any of it is acknowledged.

File layout (little-endian; docs/PROTOCOL.md "Journal"):

    header, 64 bytes   magic b"OBJRNL\\0\\1", u32 version (1), u32 header bytes (64),
                       u32 md session, u32 symbols, i64 band ticks, i64 capacity,
                       i64 CLOCK_REALTIME ns at creation, 16 bytes zero
    batch, repeated    32-byte batch header: u32 magic 0x4843_5442 ("BTCH"), u32 count,
                       i64 ts_ns (the batch's market-data stamp), u32 crc32 of the
                       requests, u32 cancel reason (0; ``RS_DISCONNECT`` on the
                       exchange's cancel-on-disconnect batches, so the store can say
                       why), 8 bytes zero; then ``count`` 32-byte requests
                       (``schema.ORDER_IN_DTYPE``, account filled in by the exchange)

The matching kernel is deterministic, so replaying the requests rebuilds exactly the same
books (same orders, same priorities), the same next order id and the same market-data
sequence.  A batch cut short by a crash (short, or its crc wrong, with no intact batch
after it) was never acknowledged: recovery drops it and truncates the file there.  A
bad batch followed by an intact one is corruption, and recovery refuses to start.
Recovery reads through an mmap (journals over 2 GiB; one copy of the requests).

One writer: ``open`` takes an exclusive, non-blocking ``flock`` on the file and keeps it
until ``close`` (a second exchange on the same journal gets a ``JournalError`` naming the
file instead of interleaving its batches: two writers would replay into another book).
A new journal is created 0600 (it holds every account's orders) and its directory is
fsynced, so the file itself survives a power loss, not only its contents.

One ``os.write`` per batch (``O_APPEND``; a short write is continued): a process
killed after the write returned has its batch in the page cache, which survives the
process.  ``fsync`` decides what
survives a power loss: ``batch`` (fsync every batch before its acknowledgements go
out: group commit), ``interval`` (at most every ``interval_ms``), ``none``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
import zlib

import numpy as np

from obpipe.ring import schema

MAGIC = b"OBJRNL\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIIIqqq16x")
BATCH = struct.Struct("<IIqII8x")
BATCH_MAGIC = 0x48435442
REQ = schema.ORDER_IN_DTYPE.itemsize
MAX_BATCH = 1 << 16  # requests per batch ([exchange] max_batch is at most this)
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
        self._dirty = False

    @classmethod
    def open(cls, path: str, n_symbols: int, band_ticks: int, capacity: int, fsync: str = "batch",
             interval_ms: float = 10.0, session: int | None = None):
        """Open (or create) ``path``.  Returns ``(journal, requests, recovery)``:
        ``requests`` every journaled request in order (ORDER_IN_DTYPE), ``recovery`` a
        dict (batches, requests, truncated_bytes, created)."""
        if fsync not in FSYNC_POLICIES:
            raise JournalError(f"fsync policy {fsync!r}: one of {', '.join(FSYNC_POLICIES)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            created = False
        except FileNotFoundError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            created = True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise JournalError(f"{path}: journal is locked by another writer (another exchange runs on "
                                       f"it); one journal, one exchange") from None
                raise
            if created:
                os.fchmod(fd, 0o600)  # whatever the umask
                _fsync_dir(path)
            size = os.fstat(fd).st_size
            if size == 0:
                sess = session if session else int.from_bytes(os.urandom(4), "little") or 1
                os.write(fd, HEADER.pack(MAGIC, VERSION, HEADER.size, sess, n_symbols, band_ticks, capacity,
                                         time.time_ns()))
                os.fsync(fd)
                j = cls(path, fd, sess, fsync, interval_ms)
                return j, np.zeros(0, schema.ORDER_IN_DTYPE), {"batches": 0, "requests": 0, "truncated_bytes": 0,
                                                               "created": True}
            sess, reqs, batches, good = _read(path, fd, size, n_symbols, band_ticks, capacity)
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

    def append(self, reqs: np.ndarray, ts_ns: int, reason: int = 0) -> None:
        """Write one batch (and fsync it, per the policy) before it is acknowledged;
        ``reason``: why its cancels happened, when the exchange itself sent them."""
        if len(reqs) > MAX_BATCH:
            raise ValueError(f"a journal batch holds at most {MAX_BATCH} requests, got {len(reqs)}")
        body = reqs.tobytes()
        view = memoryview(BATCH.pack(BATCH_MAGIC, len(reqs), ts_ns, zlib.crc32(body), reason) + body)
        while view:  # a short write (disk nearly full) is retried; an error raises: nothing is acknowledged
            n = os.write(self.fd, view)
            view = view[n:]
        self.batches += 1
        self.requests += len(reqs)
        self._dirty = True
        if self.fsync == "batch":
            self.sync()
        elif self.fsync == "interval":
            self.tick()

    def sync(self) -> None:
        os.fsync(self.fd)
        self.syncs += 1
        self._dirty = False
        self._last_sync = time.monotonic_ns()

    def tick(self) -> None:
        """``interval`` policy: fsync written batches once the interval has passed (the
        exchange calls this every loop turn, so a quiet spell does not leave them unsynced)."""
        if self._dirty and self.fsync == "interval" and time.monotonic_ns() - self._last_sync >= self.interval_ns:
            self.sync()

    def close(self) -> None:
        if self.fd >= 0:
            if self.fsync != "none":
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def _fsync_dir(path: str) -> None:
    """Make a new file's directory entry durable (fsync the directory)."""
    d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(d)
    finally:
        os.close(d)


def _read(path, fd: int, size: int, n_symbols: int, band_ticks: int, capacity: int):
    """Parse the journal through an mmap (no 2 GiB read limit, no whole-file copy):
    (session, requests, batches, bytes that are whole batches)."""
    import mmap

    if size < HEADER.size:
        raise JournalError(f"{path}: {size} bytes, shorter than a journal header (not a journal?)")
    data = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
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
        total = 0
        while pos < size:
            bad = _bad_batch(data, pos, size)
            if bad is not None:
                if _valid_batch_after(data, pos, size):
                    raise JournalError(f"{path}: {bad} at byte {pos} with whole batches after it: the journal is "
                                       f"corrupt")
                break  # the last write, cut short by a crash: never acknowledged
            count = BATCH.unpack_from(data, pos)[1]
            spans.append((pos + BATCH.size, count))
            total += count
            pos += BATCH.size + count * REQ
        reqs = np.empty(total, schema.ORDER_IN_DTYPE)
        flat = reqs.view(np.uint8)
        src = np.frombuffer(data, np.uint8)
        k = 0
        for start, count in spans:
            flat[k:k + count * REQ] = src[start:start + count * REQ]
            k += count * REQ
        del src
        return sess, reqs, len(spans), pos
    finally:
        data.close()


def _bad_batch(data, pos: int, size: int) -> str | None:
    """Why the batch at ``pos`` is not a whole, intact batch (None: it is)."""
    if pos + BATCH.size > size:
        return "short batch header"
    magic, count, _ts, crc, _reason = BATCH.unpack_from(data, pos)
    if magic != BATCH_MAGIC:
        return "bad batch magic"
    if count > MAX_BATCH:
        return f"batch count {count} over {MAX_BATCH}"
    end = pos + BATCH.size + count * REQ
    if end > size:
        return "short batch"
    if zlib.crc32(data[pos + BATCH.size:end]) != crc:
        return "batch checksum mismatch"
    return None


def _valid_batch_after(data, pos: int, size: int) -> bool:
    """Is there a whole, intact batch anywhere after ``pos`` (at a 32-byte boundary)?
    Then a bad batch at ``pos`` is corruption, not a crash-cut tail."""
    needle = struct.pack("<I", BATCH_MAGIC)
    q = data.find(needle, pos + 1)
    while q >= 0:
        if (q - HEADER.size) % REQ == 0 and _bad_batch(data, q, size) is None:
            return True
        q = data.find(needle, q + 1)
    return False
