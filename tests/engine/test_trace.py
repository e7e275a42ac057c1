"""``obpipe trace``: one row per message of the traced symbol, each the book's top N
levels after that message (checked against the slow reference book on a capture of the
synthetic feed), prices in currency units and empty levels as empty fields (checked
literally on the AMZN LOBSTER file), the aligned text form holding the same values."""
from __future__ import annotations

import csv
import io
import socket

import numpy as np
import pytest

from obpipe import config
from obpipe.engine import trace as tr
from obpipe.feed_sim import feed as feedmod
from obpipe.feed_sim.synth import SynthParams, generate
from obpipe.ring import schema
from tests.engine.reference_book import RefBook
from tests.helpers import LOBSTER_MSG, obpipe

START_NS = 1_700_000_000_000_000_000


@pytest.mark.timeout(180)
def test_a_capture_traced_equals_the_reference_book_after_every_message_of_the_symbol(tmp_path):
    cap = tmp_path / "s.obcap"
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        feedmod.run(feedmod.FeedSpec(port=sink.getsockname()[1], count=20_000, seed=7, start_ns=START_NS,
                                     capture=str(cap)))
    finally:
        sink.close()
    cfg = config.load()
    sym, levels = 1, 3
    src = tr.from_capture(str(cap), cfg.book.symbols[sym], tuple(cfg.book.symbols), cfg.book.widths(), 0.01)
    out = io.BytesIO()
    n = tr.trace(src, levels, csv=True, out=out)
    rows = list(csv.reader(io.StringIO(out.getvalue().decode())))
    assert rows[0] == tr.header(levels) and len(rows) == n + 1

    md = generate(20_000, SynthParams(n_symbols=len(cfg.book.symbols), seed=7))
    for f in ("kind", "side", "symbol", "qty", "px_tick", "seq"):  # (the capture holds the seeded stream)
        assert (src.md[f] == md[f]).all(), f
    assert (src.md["ts_exch_ns"] >= START_NS).all()
    ref = RefBook(cfg.book.widths()[sym])
    mine = md[md["symbol"] == sym]
    assert n == len(mine) > 1000
    empty_seen = 0
    for m, got, row in zip(mine, src.md[src.md["symbol"] == sym], rows[1:]):
        ref.apply(int(m["kind"]), int(m["side"]), int(m["px_tick"]), int(m["qty"]))
        want = [str(int(m["seq"])), str(int(got["ts_exch_ns"]))]
        bids, asks = ref.top(0, levels), ref.top(1, levels)
        for k in range(levels):
            for lv in (bids, asks):
                want += [f"{lv[k][0] / 100:.2f}", str(lv[k][1])] if k < len(lv) else ["", ""]
                empty_seen += k >= len(lv)
        assert row == want, (m, ref.top(0, levels), ref.top(1, levels))
    assert empty_seen  # (the check covered empty levels too)


@pytest.mark.timeout(120)
def test_a_lobster_trace_prints_currency_units_and_empty_levels_as_empty_fields():
    r = obpipe("trace", str(LOBSTER_MSG), "--levels", "2", "--csv", timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "seq,ts_ns,bid_px_1,bid_qty_1,ask_px_1,ask_qty_1,bid_px_2,bid_qty_2,ask_px_2,ask_qty_2"
    # message 2 adds 21 at 223.81 (the sample's tick: half a cent, so three decimals); 3 executes it
    day = 1340251200 * 10**9  # 2012-06-21 00:00 New York, in UTC epoch ns
    assert lines[2] == f"2,{day + 34200189607670},223.810,21,,,,,,"
    assert lines[3] == f"3,{day + 34200190226476},,,,,,,,"
    assert len(lines) == 1 + 57_515
    buf = io.BytesIO()  # (the aligned text form, in process: the command line is tested above)
    tr.trace(tr.from_lobster(str(LOBSTER_MSG), None, 2), 2, csv=False, out=buf)
    text = buf.getvalue().decode().splitlines()
    assert len(text) == len(lines)
    for t, c in zip(text[1000:1100], lines[1000:1100]):
        assert [f or "-" for f in c.split(",")] == t.split()
    with pytest.raises(tr.TraceError, match="holds AMZN, not MSFT"):
        tr.from_lobster(str(LOBSTER_MSG), "MSFT", 2)


def test_tick_units():
    assert tr.tick_units(0.01) == (1, 2) and tr.tick_units(0.005) == (5, 3) and tr.tick_units(1) == (1, 0)
    assert tr.tick_units(0.25) == (25, 2)
    with pytest.raises(tr.TraceError):
        tr.tick_units(0)
    assert schema.NO_PX < 0


@pytest.mark.timeout(120)
def test_an_itch_trace_is_the_per_order_book_after_every_message_of_the_stock(tmp_path):
    from obpipe.engine.l3 import L3Book
    from tests.helpers import itch_day

    path = tmp_path / "01302019.t.itch50"
    md = itch_day(path, 20_000, ["AAPL", "MSFT", "NVDA"], seed=4)
    buf = io.BytesIO()
    tr.trace(tr.from_itch(str(path), "MSFT", 4096, 0.01, 1 << 16), 3, csv=True, out=buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue().decode())))[1:]
    mine = md[md["symbol"] == 1]
    assert len(rows) == len(mine) > 1000
    book = L3Book([4096] * 3, 1 << 16, 3)
    at = 0
    for k in (0, 17, len(mine) // 2, len(mine) - 1):  # the book after the k-th MSFT message
        i = int(np.flatnonzero(md["symbol"] == 1)[k])
        book.apply(md, at, i + 1 - at)
        at = i + 1
        want = [str(int(mine[k]["seq"]) + 4), str(int(mine[k]["ts_exch_ns"]))]  # (ITCH seq: after S and 3 R)
        for lv in range(3):
            for side in (0, 1):
                t = book.top(1, side, 3)
                want += [f"{t[lv][0] / 100:.2f}", str(t[lv][1])] if lv < len(t) else ["", ""]
        assert rows[k] == want, (k, rows[k], want)
