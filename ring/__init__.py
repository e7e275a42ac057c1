"""Shared-memory rings, seqlock snapshots, the stats block and their lifecycle.

Importing ``ring`` first points numba's kernel cache at a directory keyed by every
obpipe source file (``ring._jitcache``), so a changed kernel never runs stale code
compiled into another kernel's cache entry.
"""
from . import _jitcache  # noqa: F401  (side effect: numba cache directory)
