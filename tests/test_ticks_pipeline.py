"""``obpipe run`` with ``[ticks] enabled``: the recorder stores every event the book
emitted (relayed by the analysis), one row for one event, and the last stored quote of
each symbol is its final book; a killed recorder is restarted and says what it lost."""
from __future__ import annotations

import pytest

from obpipe.ring.shm import list_segments
from tests.helpers import finish, popen_obpipe, run_config

pytest.importorskip("chdb", reason="chdb is not installed (make installs it)")
pytestmark = pytest.mark.multiproc


@pytest.mark.timeout(300)
def test_a_run_stores_every_event_the_book_emitted_one_row_each(tmp_path, instance):
    from obpipe.ticks.store import TickStore

    where = tmp_path / "ticks"
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16,
                     extra=f'[ticks]\nenabled = true\nwhere = "{where}"\nflush_ms = 200\nflush_rows = 20000\n')
    final, err = finish(popen_obpipe("run", "--config", cfg, "--json", "--messages", "200000", "--rate", "200000"))
    book, an, tk = final["book"], final["analysis"], final["ticks"]
    assert final["applied"] == final["messages"] == 200_000
    assert book["events_dropped"] == 0 and an["events"] == book["events"] > 1000
    assert an["ticks_relayed"] == book["events"] and an["ticks_dropped"] == 0
    assert tk["events"] == book["events"] and tk["pending"] == 0 and tk["errors"] == 0
    assert tk["state"] == "stopped" and tk["flushes"] > 1
    st = TickStore.open(str(where))
    try:
        n = st.counts()
        assert n["quotes"] + n["trades"] == book["events"] == tk["quotes"] + tk["trades"]
        assert n["trades"] == book["trades"] > 0 and n["depth"] == tk["depth"] > 0
        for sym, s in final["symbols"].items():  # the last quote of each symbol is its final top of book
            q = st.quotes(sym, 0, 2**63 - 1).to_pylist()
            assert q, sym
            last = q[-1]
            assert (last["bid_px_tick"], last["bid_qty"], last["ask_px_tick"], last["ask_qty"]) == \
                (s["bid_px_tick"], s["bid_qty"], s["ask_px_tick"], s["ask_qty"]), (sym, last, s)
    finally:
        st.close()
    assert list_segments(instance) == []
