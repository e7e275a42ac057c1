"""The hot kernels are built with ``ring.jit.HOT``: no NRT reference counting (whose
atomic incref/decref pairs took two thirds of the matching kernel's time), and the
matching loop's arrays ``noalias``.  A kernel added with plain ``@njit`` would run,
just slower; these tests name it."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from numba.core.registry import CPUDispatcher

from obpipe.ring import jit as _jit

SUBPACKAGES = ("ring", "engine", "exchange", "feed_sim", "analysis", "publisher", "story")


def _modules():
    """Every module of obpipe's subpackages (but ``__main__``s), found on disk."""
    for sub in SUBPACKAGES:
        pkg = importlib.import_module(f"obpipe.{sub}")
        for m in pkgutil.iter_modules(pkg.__path__, f"obpipe.{sub}."):
            if not m.name.endswith("__main__"):
                yield m.name


# measurement harnesses (tests and bench/ drive them), not hot paths: they may allocate
HARNESSES = ("obpipe.ring.stress", "obpipe.engine._stress")
HOT_MODULES = tuple(m for m in _modules()
                    if m not in HARNESSES and any(isinstance(d, CPUDispatcher) and d.py_func.__module__ == m
                           for d in vars(importlib.import_module(m)).values()))


def test_the_kernel_modules_are_found_by_looking_not_by_a_list():
    for m in ("obpipe.ring.kernels", "obpipe.exchange._match_kernels", "obpipe.engine._book_kernels",
              "obpipe.feed_sim.wire_kernels", "obpipe.analysis._kernels", "obpipe.engine.lobster"):
        assert m in HOT_MODULES
    assert "obpipe.exchange.matching" not in HOT_MODULES  # (its kernels are _match_kernels')


def _kernels(modname):
    mod = importlib.import_module(modname)
    return {name: d for name, d in vars(mod).items()
            if isinstance(d, CPUDispatcher) and d.py_func.__module__ == modname}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("modname", HOT_MODULES)
def test_every_kernel_of_a_hot_module_is_compiled_without_reference_counting(modname):
    kernels = _kernels(modname)
    assert kernels, f"{modname} defines no kernels"
    counted = sorted(n for n, d in kernels.items() if d.targetoptions.get("_nrt", True) is not False)
    assert counted == [], f"{modname}: compiled with the NRT (use @njit(**HOT)): {counted}"
    assert [n for n, d in kernels.items() if not d.targetoptions.get("nogil")] == []
    assert [n for n, d in kernels.items() if type(d._cache).__name__ == "NullCache"] == []  # cache=True


@pytest.mark.timeout(60)
def test_this_numba_takes_the_noalias_option_and_the_matching_loop_uses_it():
    assert _jit.NOALIAS, "obpipe.ring.jit could not add numba's noalias option: the matching loop runs ~8% slower"
    from obpipe.exchange import _match_kernels as MK

    assert MK.process.targetoptions.get("noalias") is True
    assert "noalias" not in MK._modify.targetoptions  # only the loop whose caller owns distinct arrays
