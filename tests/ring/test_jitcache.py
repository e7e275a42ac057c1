"""The numba cache directory follows the sources, so no kernel runs stale code."""
from __future__ import annotations

import shutil

import numba

from obpipe import ring
from obpipe.ring._jitcache import source_hash
from tests.helpers import REPO


def test_cache_dir_is_keyed_by_all_kernel_sources(tmp_path):
    assert numba.config.CACHE_DIR == ring._jitcache.CACHE_DIR
    assert numba.config.CACHE_DIR.endswith(f"obpipe-{source_hash()}")
    for pkg in ("ring", "engine"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    h0 = source_hash(tmp_path)
    assert h0 == source_hash(REPO.__class__(tmp_path))  # stable
    f = tmp_path / "engine" / "_book_kernels.py"
    f.write_text(f.read_text() + "\n# a change in a kernel another module inlines\n")
    assert source_hash(tmp_path) != h0
