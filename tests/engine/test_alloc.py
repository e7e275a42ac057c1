"""Zero heap allocation per message after start-up, proven around a million applied
messages: numba's runtime (NRT) counts the same allocations for a kernel call that
applies 1,024 messages as for one that applies 1,000,000 (they are the call
boundary's argument wrappers, all freed on return), and tracemalloc sees no growth
on the Python side."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

SCRIPT = r"""
import json, os, sys, tracemalloc
import numpy as np
from numba.core.runtime import rtsys
from obpipe.engine import _book_kernels as BK
from obpipe.engine.book import Book
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.ring import schema
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.spsc import Ring

inst = sys.argv[1]
N = 1_000_000
msgs = generate(N + 4096 + 1024, SynthParams(n_symbols=4, seed=3))
msgs["ts_recv_ns"] = 1  # stamped, so the latency histogram is exercised too
md = Ring.create(inst, "md", schema.MD_DTYPE, 1 << 21)
ev = Ring.create(inst, "events", schema.EVENT_DTYPE, 1 << 12)
snaps = SnapshotRegion.create(inst, "snap", 4, 10)
try:
    book = Book([4096] * 4, 10, events=(ev.ctrl, ev.records), snapshots=snaps)
    row = np.zeros(schema.STATS_WORDS, np.int64)
    args = (book.lad, book.S, book.C, book.ev, book.ev_ctrl, 10, book.dirty, snaps.words, snaps.base(0),
            snaps.slot_words, book.pay, book._lv_px, book._lv_qty, row, np.zeros(256, np.int64),
            np.zeros(256, np.int64))
    # warm-up: compile, touch every array once
    md.push(msgs[:4096])
    BK.drain(md.ctrl, md.records, 1024, 1 << 30, *args, 0, 0)
    book.apply(msgs[:1024])
    md.push(msgs[4096:])
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    a0 = rtsys.get_allocation_stats()
    small = BK.drain(md.ctrl, md.records, 1024, 1024, *args, 0, 0)       # 1,024 messages
    a1 = rtsys.get_allocation_stats()
    applied = BK.drain(md.ctrl, md.records, 1024, 1 << 30, *args, 0, 0)  # the other 1,000,000
    a2 = rtsys.get_allocation_stats()
    for j in range(0, N, 1024):                                           # the checked Python path
        book.apply(msgs, j, 1024)
    t1 = tracemalloc.get_traced_memory()[0]
    a3 = rtsys.get_allocation_stats()
    print(json.dumps(dict(small=int(small), applied=int(applied), py_growth=t1 - t0,
                          alloc_small=a1.alloc - a0.alloc, alloc_big=a2.alloc - a1.alloc,
                          leaked=(a3.alloc - a3.free) - (a0.alloc - a0.free),
                          mi_leaked=(a3.mi_alloc - a3.mi_free) - (a0.mi_alloc - a0.mi_free),
                          msgs=int(book.C[schema.ST_BOOK_MSGS]))))
finally:
    for x in (md, ev, snaps):
        x.unlink()
"""


N_BIG = 1_000_000


@pytest.mark.timeout(300)
def test_million_messages_allocate_nothing(instance):
    env = dict(os.environ, NUMBA_NRT_STATS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SCRIPT, instance], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["small"] == 1024 and r["applied"] == N_BIG
    assert r["msgs"] >= 2 * N_BIG  # both paths really ran
    # a million messages cost no more allocations than 1,024: nothing per message
    assert r["alloc_big"] == r["alloc_small"], r
    assert r["leaked"] == 0 and r["mi_leaked"] == 0, r  # and every call-boundary wrapper was freed
    assert r["py_growth"] < 16 * 1024, r  # no per-message (or per-batch) growth
