"""obpipe: market-data and order-book engine whose hot paths run at native speed.

The Python API (docs/API.md) is this package's public surface, listed in ``__all__``:
``attach(instance)`` reads a running instance's books, ``replay(path)`` runs a LOBSTER,
capture or ITCH file through a book in process.  The names load on first use (from
``obpipe.api``), so ``import obpipe`` and the parts' own imports (``obpipe.ring``, ...)
stay cheap: no numba until an API name is touched.

The parts themselves are the top-level packages ``ring``, ``engine``, ``feed_sim``,
``analysis``, ``publisher``, ...; the glue is ``obpipe.config`` and ``obpipe.cli``.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The public surface: ``__version__`` and the names of ``obpipe.api`` below.
__all__ = [
    "attach",
    "replay",
    "Instance",
    "Replay",
    "ReplayBatch",
    "Bbo",
    "Snapshot",
    "OrderAnswer",
    "EVENT_RECORD",
    "LEVEL_RECORD",
    "depth_record",
    "NO_PX",
    "EV_BBO",
    "EV_TRADE",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """An API name, imported from ``obpipe.api`` on first use (then a plain attribute)."""
    if name in __all__:
        from obpipe import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'obpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
