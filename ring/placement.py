"""Which cores each process role runs on (psutil affinity)."""
from __future__ import annotations

import os

import psutil


def usable_cores() -> list[int]:
    try:
        return sorted(psutil.Process().cpu_affinity())
    except (AttributeError, psutil.Error):
        return list(range(os.cpu_count() or 1))


def cores_for(role: str, setting, cores: list[int] | None = None, realtime: bool = False) -> list[int]:
    """Cores for ``role`` ("book", "rx", "feed", "analysis", "publisher", "supervisor")
    given the config value.

    ``"auto"`` with ``realtime`` (rx and the book writer SCHED_FIFO) on exactly 2 cores:
    rx and the book writer share the last core, where the data passes from one to the
    other by a same-core wake-up, far cheaper than one across cores (docs/LATENCY.md);
    the SCHED_IDLE analysis and publisher run there too, on what the
    two leave; the feed and the supervisor get the other core.

    ``"auto"``: with 2+ cores the book writer gets the last core to itself.  The
    analysis and the publisher get the core before it when there are 3+ cores, and on 2
    cores they share the book writer's core, as SCHED_IDLE processes by default
    (measured against rx's core in docs/DECISIONS.md).  rx, the feed and the supervisor share the remaining cores; with
    1 core everyone shares it.  An explicit list is intersected with the usable cores
    (an empty intersection is an error naming it).
    """
    cores = usable_cores() if cores is None else cores
    if setting == "auto":
        if len(cores) < 2:
            return list(cores)
        if realtime and len(cores) == 2:
            return [cores[-1]] if role in ("book", "rx", "analysis", "publisher") else [cores[0]]
        if role == "book":
            return [cores[-1]]
        if role in ("analysis", "publisher"):
            return [cores[-2]] if len(cores) >= 3 else [cores[-1]]
        return cores[:-2] if len(cores) >= 3 else cores[:-1]
    picked = [c for c in setting if c in cores]
    if not picked:
        raise ValueError(f"pinning.{role} = {setting}: none of these cores is usable (usable: {cores})")
    return picked


def writer_and_reader_cores(cores: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(writer cores, reader cores): with 2+ cores the writer alone on the last one and
    readers on the rest, as the pipeline places the book writer; else no pinning."""
    cores = usable_cores() if cores is None else cores
    return (cores[-1:], cores[:-1]) if len(cores) > 1 else ([], [])


def pin(cores: list[int]) -> None:
    """Pin the calling process; a no-op where affinity is unsupported."""
    try:
        psutil.Process().cpu_affinity(cores)
    except (AttributeError, psutil.Error, OSError):
        pass
