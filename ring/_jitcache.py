"""Where numba caches obpipe's compiled kernels: a directory keyed by the sources.

numba's ``cache=True`` keys a cached function by *its own* source file only.  A
kernel that calls (and so inlines or links) kernels of another module keeps running
its cached machine code after that other module changed - with stale constants and
layouts, which is silent memory corruption (seen here: a changed book layout and a
cached caller gave ``free(): invalid pointer``).  So every obpipe kernel shares one
cache directory named by a hash of all obpipe sources and the numba version: any
change to any kernel source starts a fresh cache.  Imported by ``jit`` and ``atomics``, which
every kernel module imports before it decorates a kernel.

The base directory is ``$NUMBA_CACHE_DIR`` if set, else ``~/.cache/obpipe/numba``
(``$XDG_CACHE_HOME`` respected); ``OBPIPE_NUMBA_CACHE=off`` leaves numba alone.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PACKAGES = ("obpipe", "ring", "engine", "exchange", "feed_sim", "analysis", "publisher")


def source_hash(root: Path | None = None) -> str:
    """sha1 (16 hex digits) of the numba version and every .py file of the packages."""
    import numba

    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    h = hashlib.sha1(numba.__version__.encode())
    for pkg in _PACKAGES:
        d = root / pkg
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def configure() -> str | None:
    """Point numba's cache at the directory for the current sources; returns it."""
    if os.environ.get("OBPIPE_NUMBA_CACHE", "").lower() == "off":
        return None
    import numba

    base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "obpipe", "numba")
    path = os.path.join(base, f"obpipe-{source_hash()}")
    numba.config.CACHE_DIR = path
    return path


CACHE_DIR = configure()
