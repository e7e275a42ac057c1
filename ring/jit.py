"""Compile options of obpipe's hot kernels: ``@njit(**HOT)``, ``@njit(**HOT_NOALIAS)``.

``HOT`` is numba's ``nogil=True, cache=True`` plus ``_nrt=False``.  With the NRT on,
numba counts references to every array variable, and a kernel whose helpers are
inlined at IR level (``inline="always"``) copies its array arguments into each
helper's variables: an atomic increment and decrement (``lock incq``/``lock decq``)
per copy, which LLVM's refcount pruning removes only inside simple control flow, so
in a hot loop the reference counting can cost more than the work (the matching
kernel's profile and its A/B: docs/DECISIONS.md "No reference counting in the
kernel").  The counters and outputs are the same without it.  A kernel
compiled this way cannot allocate (numba refuses to compile one that does), which
the hot paths never do: their arrays are preallocated and owned by the caller.

``HOT_NOALIAS`` also marks the kernel's array arguments ``noalias`` for LLVM, so a
store through one array does not force reloads through the others (the matching
kernel's gain is in the same DECISIONS entry).  Only for kernels whose array arguments never share memory.  numba
has the ``noalias`` flag (its parallel back end sets it) but no decorator option for
it; ``_enable_noalias`` adds that option, and where a numba version lacks the
internals it falls back to plain ``HOT``: slower, never wrong.
"""
from __future__ import annotations

from obpipe.ring import _jitcache  # noqa: F401  (first: numba's cache directory, before any kernel is decorated)


def _enable_noalias() -> bool:
    try:
        from numba.core import compiler, cpu
        from numba.core.options import TargetOptions

        if "noalias" not in compiler.Flags.options:
            return False
        if not isinstance(getattr(cpu.CPUTargetOptions, "noalias", None), TargetOptions.Mapping):
            cpu.CPUTargetOptions.noalias = TargetOptions.Mapping("noalias")
        return True
    except (ImportError, AttributeError):
        return False


NOALIAS = _enable_noalias()
HOT = {"nogil": True, "cache": True, "_nrt": False}
HOT_NOALIAS = {**HOT, "noalias": True} if NOALIAS else dict(HOT)
