"""A LOBSTER message file run order by order (``lobster.load_messages_l3``) through the
per-order book: every submission enters, every cancel, delete and execution of an order
the file submitted finds it, and what the book counts as unknown or still live equals a
plain-dict replay of the file's order ids."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.engine import lobster
from obpipe.engine.l3 import L3Book
from obpipe.ring import schema
from tests.helpers import LOBSTER_MSG


@pytest.mark.timeout(120)
def test_the_amzn_day_per_order_matches_a_dict_replay_of_its_order_ids():
    md, d = lobster.load_messages_l3(LOBSTER_MSG)
    raw = np.loadtxt(LOBSTER_MSG, delimiter=",", dtype=np.float64)
    typ, oid, size = raw[:, 1].astype(int), raw[:, 2].astype(np.int64), raw[:, 3].astype(np.int64)
    assert len(md) == int((typ <= 6).sum()) and d == 50
    assert (md["seq"] == np.flatnonzero(typ <= 6) + 1).all()
    live, unknown, execs = {}, 0, 0
    for t, i, q in zip(typ.tolist(), oid.tolist(), size.tolist()):
        if t == 1:
            live[i] = q
        elif t in (2, 3, 4):
            if i not in live:
                unknown += 1
                continue
            execs += t == 4
            left = 0 if t == 3 else live[i] - q
            if left > 0:
                live[i] = left
            else:
                del live[i]
    book = L3Book([lobster.auto_width(md["px_tick"][md["px_tick"] > 0])], 1 << 16, 10)
    book.apply(md)
    c = book.counters()
    assert c["l3_unknown_refs"] == unknown > 1000  # (orders resting before the file's first message)
    assert c["l3_live_orders"] == len(live) and c["l3_duplicate_refs"] == 0
    assert c["trades"] == execs + int((typ == 5).sum()) + int((typ == 6).sum())
    some = next(iter(live))
    o = book.order(some)
    assert o is not None and o.qty == live[some] and o.px_tick * d == int(raw[np.flatnonzero(oid == some)[0], 4])
    assert md["kind"][typ[typ <= 6] == 6].tolist() == [schema.L3_CROSS] * int((typ == 6).sum())
