"""What the same-run A/B scripts (bench/*_ab.py) share: a fresh numba cache per run, a
kernel module loaded from a file under a name of its own, and a file's source at a git
revision.  Imported first by each script (it sets the numba cache before numba loads)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# A fresh numba cache per run: the two kernels are loaded from files under module names
# of their own, and numba cannot reload such a module's cached functions in a later
# process (ModuleNotFoundError '<dynamic>').
_CACHE = tempfile.TemporaryDirectory(prefix="obpipe-ab-numba-")
os.environ["NUMBA_CACHE_DIR"] = _CACHE.name
os.environ.pop("OBPIPE_NUMBA_CACHE", None)

REPO = Path(__file__).resolve().parent.parent

# a revision before the one-namespace layout (issue 14) imports ring by its old names
_OLD_IMPORTS = (("from ring._jit ", "from obpipe.ring.jit "), ("from ring._atomics ", "from obpipe.ring.atomics "),
                ("from ring._kernels ", "from obpipe.ring.kernels "), ("from ring._net ", "from obpipe.ring.net "),
                ("from ring.", "from obpipe.ring."), ("from ring import ", "from obpipe.ring import "),
                ("from . import _book_kernels as BK", "from obpipe.engine import _book_kernels as BK"))


def load(name: str, path: Path):
    """The module in file ``path`` as ``name`` (also in sys.modules: a copy may import another by it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def source_at(rev: str | None, *paths: str) -> str:
    """The source of the first of ``paths`` that exists at git revision ``rev`` (None: the
    working tree), its imports of ring by the old names rewritten."""
    for path in paths:
        if rev is None:
            if (REPO / path).exists():
                src = (REPO / path).read_text()
                break
            continue
        got = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True)
        if got.returncode == 0:
            src = got.stdout
            break
    else:
        raise SystemExit(f"none of {paths} at {rev or 'the working tree'}")
    for before, after in _OLD_IMPORTS:
        src = src.replace(before, after)
    return src
