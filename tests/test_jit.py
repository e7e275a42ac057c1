"""The hot kernels are built with ``ring._jit.HOT``: no NRT reference counting (whose
atomic incref/decref pairs took two thirds of the matching kernel's time), and the
matching loop's arrays ``noalias``.  A kernel added with plain ``@njit`` would run,
just slower; these tests name it."""
from __future__ import annotations

import importlib

import pytest
from numba.core.registry import CPUDispatcher

from ring import _jit

HOT_MODULES = ("ring._kernels", "ring._net", "ring.latency", "engine._book_kernels", "engine._match_kernels",
               "engine._rx_kernels", "engine.lobster", "analysis._kernels", "feed_sim._send_kernels",
               "feed_sim._synth_kernels", "feed_sim._wire_kernels")


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
    assert _jit.NOALIAS, "ring._jit could not add numba's noalias option: the matching loop runs ~8% slower"
    from engine import _match_kernels as MK

    assert MK.process.targetoptions.get("noalias") is True
    assert "noalias" not in MK._modify.targetoptions  # only the loop whose caller owns distinct arrays
