"""The bottom layer every obpipe process imports: shared-memory rings, seqlock
snapshots, the stats block and their lifecycle; the schema of every record; the
child-process runtime (``runtime``, ``placement``, ``interrupt``) and the config file
reader (``settings``).

Every kernel module imports ``jit`` (or ``atomics``), which first points numba's kernel
cache at a directory keyed by every obpipe source file (``_jitcache``), so a changed
kernel never runs stale code compiled into another kernel's cache entry.
"""
