"""The recorder's spool (ticks/spool.py): rows appended come out in order, chunk by
chunk; a chunk whose insert landed but was not marked done (the recorder killed between
the two) is retried whole under the same token and stored once, bars included; the
leftovers of a stopped spool are stored by the readers' entry point and the spool
removed; a cut-off last record is not read."""
from __future__ import annotations

import os

import numpy as np
import pytest

from obpipe.ring import schema
from obpipe.ticks import TickStore, unavailable
from obpipe.ticks.spool import EVENTS, Spool, spool_dir, store_leftovers

if unavailable():
    pytest.skip(f"tick store tests need chdb and pyarrow: {unavailable()}", allow_module_level=True)

SYMBOLS = ("AAA", "BBB")
T0 = 1_700_000_000 * 10**9


def _events(n: int, seq0: int = 1) -> np.ndarray:
    """Alternating quotes and trades of two symbols, one seq each."""
    ev = np.zeros(n, schema.EVENT_DTYPE)
    i = np.arange(n)
    ev["kind"] = np.where(i % 2, schema.EV_TRADE, schema.EV_BBO)
    ev["symbol"] = (i // 2) % 2
    ev["seq"] = seq0 + i
    ev["ts_exch_ns"] = T0 + i * 1_000_000
    ev["bid_px_tick"], ev["ask_px_tick"], ev["bid_qty"], ev["ask_qty"] = 100, 101, 5, 7
    ev["trade_px_tick"] = np.where(i % 2, 100 + i % 3, schema.NO_PX)
    ev["trade_qty"] = np.where(i % 2, 1 + i % 5, 0)
    ev["side"] = np.where(i % 2, i % 4 // 2, 0)
    return ev


@pytest.mark.timeout(120)
def test_a_chunk_interrupted_after_its_insert_is_stored_once(tmp_path):
    where = str(tmp_path / "ticks")
    ev = _events(10_000)
    sp = Spool(spool_dir(where), SYMBOLS)
    sp.append(EVENTS, ev[:6000])
    sp.append(EVENTS, ev[6000:])
    assert sp.pending() == 10_000 and sp.symbols == SYMBOLS
    with TickStore.open(where) as st:
        rows, token = sp.next_chunk(EVENTS, 4000)
        assert (rows == ev[:4000]).all()
        st.insert_events(rows, sp.symbols, token)  # ... and killed before chunk_stored
        sp.close()
        sp = Spool(spool_dir(where))  # the successor
        assert sp.exists and sp.symbols == SYMBOLS and sp.pending() == 10_000
        sp.append(EVENTS, _events(500, seq0=10_001))  # rows arriving meanwhile do not widen the chunk
        again, token2 = sp.next_chunk(EVENTS, 8000)
        assert token2 == token and len(again) == 4000
        st.insert_events(again, sp.symbols, token2)
        sp.chunk_stored(EVENTS, len(again))
        while sp.store_chunk(st, 3000):
            pass
        assert sp.pending() == 0
        n = st.counts()
        assert n["quotes"] == n["trades"] == 5250
        vol = st.sql("SELECT sum(volume) AS v FROM ticks.bars_1m").column(0)[0].as_py()
        assert vol == int(ev["trade_qty"].sum()) + int(_events(500, 10_001)["trade_qty"].sum())
        # an insert without a token is never deduplicated: the same block twice is stored twice
        st.insert_events(ev[:10], SYMBOLS)
        st.insert_events(ev[:10], SYMBOLS)
        assert st.counts()["quotes"] == 5250 + 10
    assert sp.clear_if_stored() and not os.path.exists(spool_dir(where))


@pytest.mark.timeout(120)
def test_leftovers_are_stored_by_the_readers_and_a_cut_record_is_not_read(tmp_path):
    where = str(tmp_path / "ticks")
    sp = Spool(spool_dir(where), SYMBOLS)
    ev = _events(1001)
    sp.append(EVENTS, ev)
    depth = np.zeros(3, Spool.dtype("depth4"))
    depth["ts_ns"] = T0 + np.arange(3)
    depth["symbol"] = [0, 1, 0]
    depth["bid_px"], depth["ask_px"] = schema.NO_PX, schema.NO_PX
    depth["bid_px"][:, 0], depth["bid_qty"][:, 0] = 100, 3
    depth["ask_px"][:, :2], depth["ask_qty"][:, :2] = [101, 102], 4
    sp.append("depth4", depth)
    sp.close()
    with open(os.path.join(spool_dir(where), "events.spool"), "ab") as f:
        f.write(b"\x01" * 40)  # half a record: a write cut short by a kill
    assert Spool(spool_dir(where)).pending() == 1001 + 3
    with TickStore.open(where) as st:
        assert store_leftovers(where, st, chunk_rows=300) == 1001 + 3
        n = st.counts()
        d = st.depth("AAA", 0, 2**62).to_pylist()
    assert (n["quotes"], n["trades"], n["depth"]) == (501, 500, 3)
    assert [r["ask_px_tick"] for r in d] == [[101, 102], [101, 102]] and d[0]["bid_qty"] == [3]
    assert not os.path.exists(spool_dir(where))
