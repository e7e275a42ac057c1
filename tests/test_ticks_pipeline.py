"""``obpipe run`` with ``[ticks] enabled``: the recorder stores every event the book
emitted (relayed by the analysis), one row for one event, and the last stored quote of
each symbol is its final book; a killed recorder is restarted and stores its spool, once."""
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


@pytest.mark.timeout(400)
def test_a_lobster_day_recorded_gives_the_files_tops_executions_and_bars(tmp_path, instance):
    """The AMZN sample replayed with recording on: after each row's part of the replay
    stream the last stored quote is that order-book row's top (every row: the stream
    carries the file's corrections), the trades are the file's executions (time, price,
    size) in UTC epoch ns of 2012-06-21, and 1-minute bars recomputed here from the
    stored trades equal the stored bars."""
    import numpy as np

    from obpipe.engine import lobster
    from obpipe.ring import schema as sc
    from obpipe.ticks.store import TickStore
    from tests.helpers import LOBSTER_MSG, LOBSTER_OB

    where = tmp_path / "ticks"
    # an events ring that holds the whole day: the analysis (SCHED_IDLE) may fall behind on a
    # busy machine without the book dropping events (it never waits for the analysis)
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17, events_capacity=1 << 18,
                     extra=f'[book]\nsymbols = ["AMZN"]\nladder_width = 8192\n[ticks]\nenabled = true\n'
                           f'where = "{where}"\ndepth_interval_ms = 0\n')
    final, err = finish(popen_obpipe("run", "--config", cfg, "--replay", str(LOBSTER_MSG), "--rate", "500000",
                                     "--json", "--quiet"), timeout=300)
    assert final["book"]["events_dropped"] == 0 and final["book"]["events"] < 1 << 18
    assert final["analysis"]["ticks_dropped"] == 0 and final["ticks"]["events"] == final["book"]["events"]
    md, d = lobster.load_messages(LOBSTER_MSG, return_tick=True)
    ob = lobster.load_orderbook(LOBSTER_OB, tick_divisor=d)
    stream, ends = lobster.replay_stream(md, ob)
    assert final["applied"] == len(stream)
    st = TickStore.open(str(where))
    try:
        q = st.quotes("AMZN", 0, 2**63 - 1).to_pydict()
        tr = st.trades("AMZN", 0, 2**63 - 1).to_pydict()
        bars = st.bars("AMZN", 0, 2**63 - 1, "1m").to_pydict()
    finally:
        st.close()
    # quotes: the top after each row's part of the stream is that row's
    qseq = np.array(q["seq"])
    assert (np.diff(qseq) > 0).all()  # one quote per top change, in stream order
    none = lambda v: sc.NO_PX if v is None else v  # noqa: E731
    top = np.array([[none(a), aq, none(b), bq] for a, aq, b, bq in
                    zip(q["ask_px_tick"], q["ask_qty"], q["bid_px_tick"], q["bid_qty"])], np.int64)
    k = np.searchsorted(qseq, ends, side="right") - 1  # the last quote at or before each part's end
    assert (k >= 0).all()
    rows = ob[1:1 + len(ends), :4]  # (ends[k]: the stream through 1-based row k + 2)
    bad = np.flatnonzero((top[k] != rows).any(axis=1))
    assert len(bad) == 0, (f"{len(bad)} of {len(rows)} rows differ; first: row {bad[0] + 2}: {top[k[bad[0]]]} vs "
                           f"{rows[bad[0]]}; ticks {final['ticks']}; stderr: {err[-3000:]}")
    # trades: the file's visible and hidden executions and crosses, in order, in UTC epoch ns
    # (from message 2: the replay starts from row 1, the book after message 1)
    ex = md[1:][np.isin(md["kind"][1:], (sc.K_EXECUTE, sc.K_TRADE))]
    assert tr["ts_ns"] == ex["ts_exch_ns"].tolist() and tr["px_tick"] == ex["px_tick"].tolist()
    assert tr["qty"] == ex["qty"].tolist() and len(tr["qty"]) > 1000
    day = 1_340_236_800 * 10**9  # 2012-06-21 00:00 UTC
    assert day + 13 * 3600 * 10**9 <= tr["ts_ns"][0] and tr["ts_ns"][-1] < day + 21 * 3600 * 10**9
    # 1-minute bars from the trades
    want = {}
    for t, p, n, s in zip(tr["ts_ns"], tr["px_tick"], tr["qty"], tr["seq"]):
        b = t - t % 60_000_000_000
        w = want.setdefault(b, [p, p, p, p, 0, 0])
        w[1], w[2], w[3] = max(w[1], p), min(w[2], p), p
        w[4] += n
        w[5] += 1
    got = {b: [o, h, lo, c, v, n] for b, o, h, lo, c, v, n in zip(
        bars["ts_ns"], bars["open_tick"], bars["high_tick"], bars["low_tick"], bars["close_tick"], bars["volume"],
        bars["trades"])}
    assert got == want and len(got) > 300


@pytest.mark.timeout(300)
def test_the_commands_read_a_recorded_run_ticks_sql_and_a_parquet_export(tmp_path, instance):
    import csv
    import io
    import json

    import pyarrow.parquet as pq

    from tests.helpers import obpipe

    where = tmp_path / "ticks"
    cfg = run_config(tmp_path, instance, extra=f'[ticks]\nenabled = true\nwhere = "{where}"\n')
    final, _ = finish(popen_obpipe("run", "--config", cfg, "--json", "--messages", "50000", "--rate", "100000"))
    sym = sorted(final["symbols"])[0]
    span = ("--from", "0", "--to", "now")
    trades = json.loads(obpipe("ticks", sym, *span, "--what", "trades", "--json", "--config", cfg).stdout)
    assert trades and all(t["symbol"] == sym for t in trades)
    csv_rows = list(csv.DictReader(io.StringIO(obpipe("ticks", sym, *span, "--what", "trades", "--csv",
                                                       "--config", cfg).stdout)))
    assert [int(r["seq"]) for r in csv_rows] == [t["seq"] for t in trades]
    bars = json.loads(obpipe("ticks", sym, *span, "--what", "bars1s", "--json", "--config", cfg).stdout)
    assert sum(b["volume"] for b in bars) == sum(t["qty"] for t in trades)
    n = obpipe("sql", f"SELECT count() AS n FROM trades WHERE symbol = '{sym}'", "--json", "--config", cfg)
    assert json.loads(n.stdout) == [{"n": len(trades)}]
    refused = obpipe("sql", "DROP TABLE trades", "--config", cfg)
    assert refused.returncode == 2 and "read-only" in refused.stderr.lower() or "refus" in refused.stderr.lower()
    out = tmp_path / "q.parquet"
    e = obpipe("export", "--what", "quotes", "--symbol", sym, *span, "--out", str(out), "--config", cfg)
    assert e.returncode == 0, e.stderr
    got = pq.read_table(out).to_pylist()
    shown = json.loads(obpipe("ticks", sym, *span, "--json", "--config", cfg).stdout)
    assert len(got) == len(shown) > 100 and [r["seq"] for r in got] == [r["seq"] for r in shown]
    bad = obpipe("ticks", sym, "--from", "yesterday-ish", "--config", cfg)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


@pytest.mark.timeout(300)
def test_a_killed_recorder_is_restarted_and_its_spool_stored_once(tmp_path, instance):
    """SIGKILL of the recorder holding rows not stored yet (in its spool, maybe in the
    middle of an insert): the supervisor restarts it, the new one stores what the spool
    holds, none twice (an interrupted chunk is retried under the same token); every row
    taken is stored or counted lost, and only rows taken but not yet spooled can be."""
    import json
    import os
    import signal
    import time

    from obpipe.ticks.store import TickStore
    from tests.helpers import obpipe, running_pipeline, wait_running

    where = tmp_path / "ticks"
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16,
                     extra=f'[ticks]\nenabled = true\nwhere = "{where}"\nflush_ms = 300\nflush_rows = 20000\n')
    with running_pipeline(cfg, "--rate", "100000", "--duration", "60") as p:
        wait_running(cfg, min_msgs=1)
        deadline = time.monotonic() + 90
        while True:  # a recorder that has stored a chunk and holds rows again
            s = json.loads(obpipe("stats", "--config", cfg, "--json", timeout=60).stdout)
            if s["ticks"]["flushes"] >= 1 and s["ticks"]["pending"] > 1000:
                break
            assert time.monotonic() < deadline, s["ticks"]
            time.sleep(0.2)
        pid = s["processes"]["ticks"]["pid"]
        os.kill(pid, signal.SIGKILL)
        while True:
            s = json.loads(obpipe("stats", "--config", cfg, "--json", timeout=60).stdout)
            proc = s["processes"].get("ticks") or {}  # (None while the supervisor restarts it)
            if proc.get("pid") not in (None, 0, pid) and s["ticks"]["state"] == "running":
                break
            assert time.monotonic() < deadline, s["ticks"]
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        final, err = finish(p)
    tk = final["ticks"]
    assert final["restarts"]["ticks"] == 1 and "the previous recorder was killed" in err
    assert tk["pending"] == 0 and (tk["lost_at_restart"] > 0) == ("taken but not spooled: lost" in err)
    assert not os.path.exists(f"{where}.spool")  # all stored: the spool is gone
    st = TickStore.open(str(where))
    try:
        n = st.counts()
        dup = {t: int(st.sql(f"SELECT count() - uniqExact(seq) AS d FROM ticks.{t}").column(0)[0].as_py())
               for t in ("quotes", "trades")}
    finally:
        st.close()
    assert dup == {"quotes": 0, "trades": 0}  # (one quote and at most one trade per message)
    assert n["quotes"] + n["trades"] == tk["quotes"] + tk["trades"] and n["depth"] == tk["depth"]
    # every row taken (events, depth samples) is stored or counted lost
    assert tk["quotes"] + tk["trades"] + tk["depth"] + tk["lost_at_restart"] == tk["events"] + tk["depth_taken"]
    assert tk["events"] == final["analysis"]["ticks_relayed"] and tk["spooled"] == tk["events"] + tk["depth_taken"]
