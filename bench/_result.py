"""What every bench script's JSON starts with: the machine and the run (no side
effects on import; bench/_ab.py, by contrast, sets a fresh numba cache)."""
from __future__ import annotations

import os
import platform
import time


def machine(**more) -> dict:
    """Cores, Python, numpy, numba and CPU, plus ``more`` (versions a script names)."""
    import numba
    import numpy as np

    from obpipe.ring.placement import usable_cores

    return {"cores": os.cpu_count(), "usable_cores": usable_cores(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "cpu": platform.processor() or platform.machine(),
            **more}


def header(repeats: int, **machine_more) -> dict:
    """The start of a result: machine, UTC start time, repeats, load average (a shared
    machine: other work skews the figures)."""
    return {"machine": machine(**machine_more), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "repeats": repeats, "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
