"""ITCH 5.0 in MoldUDP64 through the whole pipeline, over real UDP: a generated
day-like order-by-order stream (``feed_sim.l3_synth``, encoded as ITCH) replayed by
``obpipe run --replay FILE.itch50`` with every 1,000th packet dropped: every gap is
requested and healed, nothing is lost, the final books equal the offline per-order book
and the recorded top of book equals it at 1,000 sampled messages; with the feed's
retransmission off, the losses are counted and every book says stale."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe import config
from obpipe.engine.l3 import L3Book
from obpipe.feed_sim import itch
from obpipe.ring import schema
from obpipe.ring.shm import list_segments
from tests.helpers import ITCH_DAY_NS as DAY, finish, itch_day, popen_obpipe, run_config

pytestmark = pytest.mark.multiproc

SYMBOLS = ["AAPL", "MSFT", "NVDA", "QQQ", "SPY", "TSLA"]
N = 2_000_000


def _stream(tmp_path, n: int, name: str = "01302019.gen.itch50"):
    """(path, records as the decoder gives them back, names)."""
    path = tmp_path / name
    itch_day(path, n, SYMBOLS, seed=11)
    recs, names, c = itch.decode(np.fromfile(path, np.uint8), SYMBOLS, day_ns=DAY)
    assert names == SYMBOLS and c["records"] == len(recs) == n, c
    return path, recs


def _run(tmp_path, instance, path, *args, extra=""):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16, extra=extra)
    p = popen_obpipe("run", "--config", cfg, "--json", "--quiet", "--replay", str(path),
                     "--symbol", ",".join(SYMBOLS), *args)
    return finish(p, timeout=240)


def _offline(recs, n_levels=10, samples=None):
    """The offline per-order book after all of ``recs`` (and its top after each sampled
    index: {index: (symbol, bid px, bid qty, ask px, ask qty)})."""
    cfg = config.load()
    book = L3Book([cfg.book.ladder_width] * len(SYMBOLS), 1 << 20, n_levels)
    tops, at = {}, 0
    for i in sorted(int(x) for x in (samples if samples is not None else ())):
        book.apply(recs, at, i + 1 - at)
        at = i + 1
        s = int(recs[i]["symbol"])
        tops[i] = (s, *book.bbo(s))
    book.apply(recs, at, len(recs) - at)
    return book, tops


@pytest.mark.timeout(420)
def test_dropped_packets_are_healed_and_the_books_equal_the_offline_book(tmp_path, instance):
    from obpipe.ticks import TickStore

    path, recs = _stream(tmp_path, N)
    where = tmp_path / "ticks"
    final, err = _run(tmp_path, instance, path, "--rate", "1000000", "--drop-every", "1000",
                      extra=f'[ticks]\nenabled = true\nwhere = "{where}"\n')
    rx = final["rx"]
    m = rx["mold"]
    assert rx["protocol"] == "moldudp64" and final["feed"]["sent"] == N + 2 + len(SYMBOLS)  # (+ S, R.., S)
    dropped = final["feed"]["injected"]["drop"] if "injected" in final["feed"] else None
    assert m["gaps_seen"] >= 30 and m["gaps_healed"] == m["gaps_seen"] and m["gaps_lost"] == 0, (m, rx["kernel_drops"], final["feed"])
    assert m["messages_lost"] == 0 and m["recovered"] >= 30 * 40 and rx["stale_marks"] == 0, (m, dropped)
    assert final["applied"] == N and final["book"]["bad_msgs"] == 0 and final["book"]["l3_unknown_refs"] == 0 and final["book"]["l3_peak_orders"] > 1000
    book, _ = _offline(recs)
    for s, name in enumerate(SYMBOLS):
        snap = final["symbols"][name]
        assert not snap["stale"]
        assert snap["bids"] == [list(x) for x in book.top(s, 0, 10)], name
        assert snap["asks"] == [list(x) for x in book.top(s, 1, 10)], name
    # the recorded top of book at 1,000 sampled messages (the last quote at or before each)
    rng = np.random.default_rng(3)
    samples = rng.choice(N, 1000, replace=False)
    _, tops = _offline(recs, samples=samples)
    with TickStore.open(str(where)) as st:
        q = st.sql("SELECT symbol, seq, bid_px_tick, bid_qty, ask_px_tick, ask_qty FROM ticks.quotes "
                   "ORDER BY seq").to_pydict()
    by_sym = {}
    for i, name in enumerate(q["symbol"]):
        by_sym.setdefault(name, []).append(i)
    checked = 0
    for i, (s, bp, bq, ap, aq) in tops.items():
        seq = int(recs[i]["seq"])
        idx = by_sym[SYMBOLS[s]]
        seqs = [q["seq"][j] for j in idx]
        k = int(np.searchsorted(seqs, seq, side="right")) - 1
        if k < 0:
            continue
        j = idx[k]
        got = (q["bid_px_tick"][j], q["bid_qty"][j], q["ask_px_tick"][j], q["ask_qty"][j])
        want = (None if bp == schema.NO_PX else bp, bq, None if ap == schema.NO_PX else ap, aq)
        assert got == want, (i, seq, SYMBOLS[s], got, want)
        checked += 1
    assert checked > 900
    assert list_segments(instance) == []


@pytest.mark.timeout(300)
def test_without_retransmission_the_losses_are_counted_and_every_book_is_stale(tmp_path, instance):
    path, recs = _stream(tmp_path, 200_000)
    final, err = _run(tmp_path, instance, path, "--rate", "500000", "--drop-every", "1000",
                      "--retransmit-window", "0", extra="[rx]\nmold_retries = 2\nmold_timeout_ms = 10\n")
    m = final["rx"]["mold"]
    assert m["gaps_lost"] > 0 and m["messages_lost"] > 0 and m["recovered"] == 0
    assert final["rx"]["stale_marks"] == m["gaps_lost"] - m["lost_merged"]
    assert final["applied"] < len(recs)
    assert all(final["symbols"][name]["stale"] for name in SYMBOLS)

