"""Errors raised by ring/: attaching to, creating and validating shared segments."""
from __future__ import annotations


class RingError(Exception):
    """Base class of every error raised by ``ring``."""


class SegmentExists(RingError):
    """Raised by ``Segment.create`` when the name is taken (another live instance, or a
    stale segment that ``obpipe clean`` would remove)."""


class SegmentMissing(RingError):
    """Raised by ``Segment.attach`` when no segment of that name exists."""


class SegmentTooLarge(RingError):
    """Raised by ``Segment.create`` when a segment would not fit in /dev/shm (or cannot
    be mapped); nothing is left behind."""


class HeaderMismatch(RingError):
    """Raised by ``Segment.attach`` (and so by ``Ring.attach``, ``SnapshotRegion.attach``,
    ``StatsBlock.attach``) when the segment's header differs from what the caller's
    code expects: wrong magic, layout version, kind, record size, layout or capacity.
    The message names the field, the expected and the found value."""


class ForeignSegment(RingError):
    """A segment this user may not open or remove (created by another user); the
    message names the segment, its owner and its mode."""
