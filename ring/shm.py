"""POSIX shared-memory segments with a validated header, and their lifecycle.

A segment is ``/obpipe.<instance>.<part>`` (posix_ipc + mmap).  Its creator writes the
64-byte header (``schema.SEG_HEADER_DTYPE``) before anyone attaches, and unlinks it on
shutdown; ``clean_stale`` removes segments whose owner process is gone.  Attaching
validates every header field the caller cares about and raises ``HeaderMismatch``
naming the first one that differs.
"""
from __future__ import annotations

import mmap
import os
import pwd
import re
import stat
import time

import numpy as np
import posix_ipc
import psutil

from obpipe.ring import schema
from obpipe.ring.errors import ForeignSegment, HeaderMismatch, SegmentExists, SegmentMissing, SegmentTooLarge

_NAME_PART = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHM_DIR = "/dev/shm"


def _shm_free_bytes() -> int | None:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def seg_name(instance: str, part: str) -> str:
    """``/obpipe.<instance>.<part>``; both parts are checked to be safe file names."""
    for what, v in (("instance", instance), ("part", part)):
        if not _NAME_PART.fullmatch(v):
            raise ValueError(f"segment {what} {v!r} must match {_NAME_PART.pattern}")
    return f"/{schema.SEG_PREFIX}.{instance}.{part}"


def process_start_ns(pid: int) -> int:
    """Start time of ``pid`` in ns since the epoch (0 if it does not exist)."""
    try:
        return int(psutil.Process(pid).create_time() * 1e9)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _owner_alive(pid: int, start_ns: int) -> bool:
    if pid <= 0:
        return False
    now = process_start_ns(pid)
    # create_time() is rounded to clock ticks; a reused pid starts much later.
    return now != 0 and abs(now - start_ns) < 1_000_000_000


class Segment:
    """One mapped segment.  ``words`` is the whole mapping as int64 words; ``header``
    is a 1-element structured view of the first 64 bytes."""

    def __init__(self, name: str, mm: mmap.mmap, size: int, created: bool):
        self.name = name
        self.size = size
        self.created = created
        self._mm = mm
        self.buf = np.frombuffer(mm, dtype=np.uint8, count=size)
        self.words = self.buf.view(np.int64)
        self.header = self.buf[:64].view(schema.SEG_HEADER_DTYPE)

    @classmethod
    def create(cls, name: str, size: int, *, kind: int, record_dtype: np.dtype, record_size: int,
               capacity: int, owner_pid: int | None = None) -> "Segment":
        """Create, size, zero and stamp a new segment.  Raises ``SegmentExists``."""
        free = _shm_free_bytes()
        if free is not None and size > free:
            raise SegmentTooLarge(f"segment {name} needs {size:,} bytes but {SHM_DIR} has {free:,} free; "
                                  f"lower the ring capacities in the config")
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as e:
            raise SegmentExists(
                f"shared memory segment {name} already exists (another instance running, or a stale "
                f"segment: `obpipe clean` removes those)") from e
        try:
            try:
                mm = mmap.mmap(shm.fd, size)
            finally:
                shm.close_fd()
        except OSError as e:
            posix_ipc.unlink_shared_memory(name)
            raise SegmentTooLarge(f"cannot map segment {name} of {size:,} bytes: {e}") from e
        seg = cls(name, mm, size, created=True)
        pid = os.getpid() if owner_pid is None else owner_pid
        h = seg.header[0]
        h["layout_version"] = schema.LAYOUT_VERSION
        h["kind"] = kind
        h["record_size"] = record_size
        h["capacity"] = capacity
        h["dtype_crc"] = schema.dtype_crc(record_dtype)
        h["owner_pid"] = pid
        h["owner_start_ns"] = process_start_ns(pid)
        # Magic last: a segment is valid only once its header is complete.
        h["magic"] = np.int64(schema.SEG_MAGIC)
        return seg

    @classmethod
    def attach(cls, name: str, *, kind: int, record_dtype: np.dtype | None = None,
               record_size: int | None = None, capacity: int | None = None) -> "Segment":
        """Map an existing segment and check its header.  Raises ``SegmentMissing`` or
        ``HeaderMismatch`` (naming the field)."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as e:
            raise SegmentMissing(f"shared memory segment {name} does not exist") from e
        except posix_ipc.PermissionsError:
            raise ForeignSegment(foreign_reason(name)) from None
        try:
            size = shm.size
            if size < 64 or size % 8:
                raise HeaderMismatch(f"shared ring header mismatch in {name}: size {size} bytes is not an obpipe "
                                     f"segment (smaller than its 64-byte header, or not whole 8-byte words)")
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        seg = cls(name, mm, size, created=False)
        try:
            seg._validate(kind, record_dtype, record_size, capacity)
        except HeaderMismatch:
            seg.close()
            raise
        return seg

    def _validate(self, kind, record_dtype, record_size, capacity) -> None:
        h = self.header[0]
        checks = [("magic", int(schema.SEG_MAGIC), int(h["magic"]))]
        checks.append(("layout version", schema.LAYOUT_VERSION, int(h["layout_version"])))
        checks.append(("kind", kind, int(h["kind"])))
        if record_size is None and record_dtype is not None:
            record_size = record_dtype.itemsize
        if record_size is not None:
            checks.append(("record size", record_size, int(h["record_size"])))
        if record_dtype is not None:
            checks.append(("record layout (dtype crc)", schema.dtype_crc(record_dtype), int(h["dtype_crc"])))
        if capacity is not None:
            checks.append(("capacity", capacity, int(h["capacity"])))
        for field, want, got in checks:
            if want != got:
                if field == "kind":
                    want = schema.SEG_KIND_NAMES.get(want, want)
                    got = schema.SEG_KIND_NAMES.get(got, got)
                raise HeaderMismatch(
                    f"shared ring header mismatch in {self.name}: {field} is {got}, expected {want}"
                    + (" (not an obpipe segment, or not yet initialised)" if field == "magic" else ""))

    def close(self) -> None:
        """Drop this process's mapping (numpy views keep it alive until they go)."""
        self.header = self.words = self.buf = None
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass  # views handed out elsewhere still export the buffer; GC unmaps it

    def unlink(self) -> None:
        """Remove the name (creator only).  Existing mappings stay valid."""
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass


def list_segments(instance: str | None = None) -> list[str]:
    """Names (``/obpipe.…``) of obpipe segments in /dev/shm, optionally of one instance."""
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    pre = f"{schema.SEG_PREFIX}." + (f"{instance}." if instance else "")
    return sorted("/" + e for e in entries if e.startswith(pre))


def segment_owner(name: str) -> tuple[int, int] | None:
    """(owner_pid, owner_start_ns) from a segment's header, or None if it has none.
    Raises ``ForeignSegment`` when this user may not open it (another user's)."""
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        return None
    except posix_ipc.PermissionsError:
        raise ForeignSegment(foreign_reason(name)) from None
    try:
        if shm.size < 64:
            return None
        hdr = os.pread(shm.fd, 64, 0)
    finally:
        shm.close_fd()
    h = np.frombuffer(hdr, dtype=schema.SEG_HEADER_DTYPE)[0]
    if int(h["magic"]) != schema.SEG_MAGIC:
        return None
    return int(h["owner_pid"]), int(h["owner_start_ns"])


def foreign_reason(name: str) -> str:
    """Why this process cannot open segment ``name``: whose it is and its mode."""
    try:
        st = os.stat(SHM_DIR + name)
    except OSError:
        return f"segment {SHM_DIR}{name}: permission denied"
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = "?"
    return (f"segment {SHM_DIR}{name} belongs to uid {st.st_uid} ({user}), mode {stat.S_IMODE(st.st_mode):o}, "
            f"and this user (uid {os.geteuid()}) may not open it: remove it as its owner or root, or use "
            f"another [instance] name")


def clean_stale(instance: str | None = None, dry_run: bool = False,
                foreign: list | None = None) -> list[tuple[str, str]]:
    """Unlink segments whose owning supervisor is gone.

    Returns ``(name, reason)`` for each removed (or, with ``dry_run``, removable)
    segment.  A segment without a valid header is removed too ("no valid header").
    A segment this user may not open (another user's) is left alone and, when
    ``foreign`` is a list, appended to it as ``(name, reason)``.
    """
    removed = []
    for name in list_segments(instance):
        try:
            owner = segment_owner(name)
        except ForeignSegment as e:
            if foreign is not None:
                foreign.append((name, str(e)))
            continue
        if owner is None:
            try:
                age = time.time() - os.stat(SHM_DIR + name).st_mtime
            except OSError:
                continue
            if age < 5:
                continue  # maybe being created right now (the magic is written last)
            reason = "no valid header"
        elif not _owner_alive(*owner):
            reason = f"owner pid {owner[0]} is gone"
        else:
            continue
        if not dry_run:
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                continue
            except posix_ipc.PermissionsError:  # (a sticky /dev/shm: not ours to remove)
                if foreign is not None:
                    foreign.append((name, foreign_reason(name)))
                continue
        removed.append((name, reason))
    return removed
