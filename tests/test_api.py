"""The Python API (``import obpipe``; docs/API.md): its surface is ``obpipe.__all__`` and
nothing private; ``attach`` reads what ``obpipe stats --json`` prints of a real running
pipeline, and ``replay`` of the capture that fed it ends at the same books; a running
per-order book answers queue positions as the offline book does, and an ITCH replay
ends at its books; a LOBSTER replay's top of book is the vendor's order-book row after
every message (and, on the messages alone, ``obpipe trace``'s); the examples run and
print what an independent computation says."""
from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

import obpipe
from obpipe.engine import lobster
from obpipe.engine import trace as tr
from tests.helpers import (ENV, LOBSTER_MSG, LOBSTER_OB, REPO, finish, itch_day, obpipe as obpipe_cli, poll,
                           run_config, running_pipeline, wait_running)

EXAMPLES = REPO / "examples"


def _example(name: str, *args: str, timeout: float = 120) -> str:
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=REPO,
                       env=ENV, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


# --- the surface --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_public_surface_is_all_and_nothing_private():
    assert "__version__" in obpipe.__all__ and obpipe.__version__ == "0.1.0"
    for name in obpipe.__all__:
        obj = getattr(obpipe, name)  # resolves (lazily, from obpipe.api)
        mod = getattr(obj, "__module__", None)
        if mod is not None:
            assert not any(p.startswith("_") for p in mod.split(".")), (name, mod)
        if callable(obj) and not isinstance(obj, np.dtype):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
            for attr, member in vars(obj).items() if isinstance(obj, type) else ():
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    assert (member.__doc__ or "").strip(), f"{name}.{attr} has no docstring"
    leaked = [n for n, v in vars(obpipe).items() if isinstance(v, types.ModuleType) and n.startswith("_")]
    assert leaked == []
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        obpipe.nope  # noqa: B018
    # import obpipe (and a part) stays cheap: no numba, no API module until a name is touched
    code = ("import sys, obpipe, obpipe.config, obpipe.ring.schema; print('numba' in sys.modules, "
            "'obpipe.api' in sys.modules); obpipe.attach; print('obpipe.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr


def test_to_pandas_names_the_extra_when_pandas_is_missing(monkeypatch):
    r = obpipe.replay(LOBSTER_MSG, batch_size=1 << 14)
    monkeypatch.setitem(sys.modules, "pandas", None)  # (import pandas now raises ImportError)
    with pytest.raises(ImportError, match=r"pip install obpipe\[pandas\]"):
        r.to_pandas()


# --- attach: a real running pipeline -----------------------------------------------------------


def _stats(cfg) -> dict:
    r = obpipe_cli("stats", "--config", cfg, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_attach_reads_the_books_stats_prints_and_a_capture_replay_ends_at_them(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17)
    cap = tmp_path / "feed.obcap"
    with running_pipeline(cfg, "--no-feed") as p:
        wait_running(cfg)
        f = obpipe_cli("feed", "--instance", instance, "--count", "30000", "--rate", "300000", "--seed", "5",
                       "--capture", str(cap), "--json")
        assert f.returncode == 0, f.stderr[-2000:]
        d = poll(lambda: _stats(cfg), lambda d: d["book"]["msgs"] >= 30_000, timeout_s=30)
        assert d["rx"]["gap_messages"] == 0 and d["book"]["msgs"] == 30_000  # (quiescent from here)

        with obpipe.attach(instance, config=cfg) as inst:
            assert inst.symbols() == list(d["symbols"]) == ["AAA", "BBB", "CCC", "DDD"]
            assert inst.alive() and inst.tick_size == 0.01
            for i, (name, s) in enumerate(d["symbols"].items()):
                b = inst.bbo(name)
                assert (b.bid_px_tick, b.bid_qty, b.ask_px_tick, b.ask_qty, b.seq, b.ts_exch_ns) == (
                    s["bid_px_tick"], s["bid_qty"], s["ask_px_tick"], s["ask_qty"], s["seq"], s["ts_exch_ns"])
                assert b.spread_tick == s["spread_tick"] and inst.bbo(i) == b
                assert b.bid_px == pytest.approx(s["bid_px_tick"] / 100, abs=1e-9)
                snap = inst.book(name, depth=10)
                assert [[int(x["px_tick"]), int(x["qty"])] for x in snap.bids] == s["bids"]
                assert [[int(x["px_tick"]), int(x["qty"])] for x in snap.asks] == s["asks"]
                assert len(snap.bids) >= 3 and np.allclose(snap.asks["px"], snap.asks["px_tick"] / 100)
                assert snap.bbo == b and snap.msgs_applied == s["msgs_applied"] and snap.version == s["version"]
                assert len(inst.book(name, depth=2).asks) == 2
            mine = inst.stats()
            assert mine["book"]["msgs"] == 30_000 and mine["latency_ns"] == d["latency_ns"]
            lat = inst.latency()
            assert lat["count"] == d["latency_ns"]["count"] == int(lat["buckets"].sum()) > 0
            assert lat["p50"] == d["latency_ns"]["p50"] <= lat["p90"] <= lat["p99"] == d["latency_ns"]["p99"]
            assert lat["bucket_upper_ns"][np.flatnonzero(lat["buckets"])[0]] <= lat["p50"]
            w = inst.watch("BBB", every=0.02)
            seen = [next(w) for _ in range(3)]
            assert all(x.bbo == inst.bbo("BBB") and x.version == d["symbols"]["BBB"]["version"] for x in seen)
            with pytest.raises(RuntimeError, match="aggregated book"):
                inst.queue_position(12345)
            with pytest.raises(KeyError, match="no symbol 'ZZZ'"):
                inst.bbo("ZZZ")
            with pytest.raises(ValueError, match="4 symbols, 2 names given"):
                obpipe.attach(instance, ["a", "b"])

            out = _example("watch_instance.py", instance, "--config", cfg, "--symbol", "CCC", "--count", "3",
                           "--every", "0.05")
            s = d["symbols"]["CCC"]
            line = (f"CCC  bid {s['bid_qty']} @ {s['bid_px_tick']} ({s['bid_px_tick'] / 100})  ask {s['ask_qty']} @ "
                    f"{s['ask_px_tick']} ({s['ask_px_tick'] / 100})  seq {s['seq']}  msgs {s['msgs_applied']}")
            assert out.splitlines() == [line] * 3

            p.send_signal(signal.SIGINT)
            finish(p)
            assert not inst.alive() and list(w) == []  # the watch ends with the instance
        with pytest.raises(ValueError, match="closed"):
            inst.bbo("AAA")

    # the capture of that feed, replayed in process, ends at the books the pipeline held
    for name, s in d["symbols"].items():
        r = obpipe.replay(cap, name, levels=10, config=cfg, batch_size=4096)
        last = r.depth[-1]
        n = len(s["bids"])
        assert last["bid_px_tick"][:n].tolist() == [x[0] for x in s["bids"]]
        assert last["bid_qty"][:n].tolist() == [x[1] for x in s["bids"]]
        assert last["ask_px_tick"][:len(s["asks"])].tolist() == [x[0] for x in s["asks"]]
        e = r.events
        assert e["msgs"][-1] <= last["msgs"] == s["msgs_applied"]
        assert (e["bid_px_tick"][-1], e["ask_qty"][-1]) == (s["bid_px_tick"], s["ask_qty"])
        assert len(r.depth) == -(-r.messages // 4096)


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_queue_position_and_books_of_a_running_per_order_book_equal_an_itch_replays(tmp_path, instance):
    from obpipe.engine.l3 import L3Book
    names = ["AAPL", "MSFT", "NVDA"]
    path = tmp_path / "01302019.t.itch50"
    md = itch_day(path, 12_000, names, seed=8)
    book = L3Book([4096] * 3, 1 << 16, 10)  # the offline per-order book of the whole stream
    book.apply(md)
    live = book.orders()
    deep = max(live, key=lambda r: book.queue_position(r)[1])
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16, extra='[rx]\nprotocol = "moldudp64"\n[book]\n'
                     'symbols = ["AAPL", "MSFT", "NVDA"]\nl3_orders = 65536\n')
    with running_pipeline(cfg, "--no-feed") as p:
        wait_running(cfg)
        fed = obpipe_cli("replay", str(path), "--instance", instance, "--rate", "0", "--no-progress", timeout=120)
        assert fed.returncode == 0, fed.stderr
        wait_running(cfg, min_msgs=len(md))
        with obpipe.attach(config=cfg) as inst:
            assert inst.instance == instance and inst.symbols() == names
            for ref in sorted(live)[:: max(1, len(live) // 10)] + [deep]:
                a, o = inst.queue_position(ref), live[ref]
                assert (a.symbol, a.side, a.px_tick, a.qty) == (o.symbol, o.side, o.px_tick, o.qty)
                assert (a.shares_ahead, a.orders_ahead) == book.queue_position(ref)
            assert inst.queue_position(deep).orders_ahead > 0
            assert inst.queue_position(int(md[0]["ref"])) is None  # (the first add: gone by the end)
            running = {n: inst.book(n) for n in names}
        # the command line asks the same writer: `obpipe queue` (JSON per order; exit 2: one not live)
        q = obpipe_cli("queue", str(deep), str(int(md[0]["ref"])), "--config", cfg, "--json", timeout=60)
        assert q.returncode == 2, q.stderr
        rows = [json.loads(x) for x in q.stdout.splitlines()]
        o = live[deep]
        assert rows[0]["live"] and (rows[0]["symbol_name"], rows[0]["px_tick"], rows[0]["qty"]) == (
            names[o.symbol], o.px_tick, o.qty)
        assert (rows[0]["shares_ahead"], rows[0]["orders_ahead"]) == book.queue_position(deep)
        assert rows[1] == {"ref": int(md[0]["ref"]), "live": False}
        text = obpipe_cli("queue", str(deep), "--config", cfg, timeout=60)
        assert text.returncode == 0 and f"order {deep}: {names[o.symbol]} " in text.stdout and "ahead of it" in text.stdout
        p.send_signal(signal.SIGINT)
        finish(p)
    for s, n in enumerate(names):  # the same file replayed in process ends at the running books
        last = obpipe.replay(path, n, levels=10, config=cfg).depth[-1]
        for side, lv in (("bid", running[n].bids), ("ask", running[n].asks)):
            assert last[f"{side}_px_tick"][:len(lv)].tolist() == lv["px_tick"].tolist() == [
                x[0] for x in book.top(s, 0 if side == "bid" else 1, 10)]
            assert last[f"{side}_qty"][:len(lv)].tolist() == lv["qty"].tolist()


# --- replay ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_lobster_replay_is_the_vendors_order_book_after_every_message():
    r = obpipe.replay(LOBSTER_MSG, levels=3)
    assert r.kind == "lobster+orderbook" and r.symbol == "AMZN" and r.tick_size == 0.005
    e = r.events
    ob = lobster.load_orderbook(LOBSTER_OB, tick_divisor=50)  # (the message file's tick: half a cent)
    assert len(ob) == 57_515 and e.dtype == obpipe.EVENT_RECORD
    assert (np.diff(e["seq"]) >= 0).all() and set(np.unique(e["kind"])) == {obpipe.EV_BBO, obpipe.EV_TRADE}
    # the book after row k: the last event of rows <= k (every top-of-book change is an event)
    last = e[np.searchsorted(e["seq"], np.arange(1, len(ob) + 1), side="right") - 1]
    assert (last["seq"] >= 1).all()
    for col, f in ((0, "ask_px_tick"), (1, "ask_qty"), (2, "bid_px_tick"), (3, "bid_qty")):
        assert (last[f] == ob[:, col]).all(), f
    got = e["bid_px"][e["bid_px_tick"] != obpipe.NO_PX]
    assert np.isnan(e["bid_px"][e["bid_px_tick"] == obpipe.NO_PX]).all()
    assert np.array_equal(got, np.round(e["bid_px_tick"][e["bid_px_tick"] != obpipe.NO_PX] * 0.005, 3))
    t = e[e["kind"] == obpipe.EV_TRADE]
    assert (t["trade_qty"] > 0).all() and (t["trade_px_tick"] != obpipe.NO_PX).all() and len(t) > 1000

    df = r.to_pandas()
    assert len(df) == len(e) and str(df.index.tz) == "UTC" and df.index[0].strftime("%H:%M") == "13:30"
    assert (df["ask_qty"].to_numpy() == e["ask_qty"]).all()
    dp = r.to_pandas("depth")
    assert list(dp.columns[:6]) == ["seq", "ts_exch_ns", "msgs", "bid_px_tick_1", "bid_qty_1", "bid_px_1"]
    assert dp["seq"].iloc[-1] == 57_515 and dp["bid_px_tick_1"].iloc[-1] == ob[-1, 2]

    # the messages alone: what `obpipe trace` prints, at every message where the top changed
    m = obpipe.replay(LOBSTER_MSG, orderbook=False, batch_size=5000)
    assert m.kind == "lobster" and m.messages == 57_515
    buf = io.BytesIO()
    tr.trace(tr.from_lobster(str(LOBSTER_MSG), None, 1), 1, csv=True, out=buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue().decode())))[1:]
    top = [tuple(x[2:]) for x in rows]
    changed = {int(rows[i][0]) for i in range(len(rows)) if top[i] != (top[i - 1] if i else ("",) * 4)}
    me = m.events
    assert set(me["seq"][me["kind"] == obpipe.EV_BBO].tolist()) == changed
    for x in me[:: 97]:
        row = rows[int(x["seq"]) - 1]
        want = ["" if np.isnan(x[f"{s}_px"]) else f"{x[f'{s}_px']:.3f}" for s in ("bid", "ask")]
        assert [row[2], row[4]] == want and int(row[1]) == x["ts_exch_ns"]


@pytest.mark.timeout(120)
def test_an_itch_replay_is_the_per_order_book_and_depth_follows_exchange_time(tmp_path):
    from obpipe.engine.l3 import L3Book
    path = tmp_path / "01302019.t.itch50"
    md = itch_day(path, 20_000, ["AAPL", "MSFT", "NVDA"], seed=4)
    with pytest.raises(ValueError, match="symbol= is required"):
        obpipe.replay(path)
    r = obpipe.replay(path, "MSFT", levels=4, depth_every_s=0.001)
    assert r.kind == "itch"
    book = L3Book([4096] * 3, 1 << 16, 4)
    book.apply(md)
    want = book.top(1, 0, 4), book.top(1, 1, 4)
    last = r.depth[-1]
    assert list(zip(last["bid_px_tick"].tolist(), last["bid_qty"].tolist())) == want[0]
    assert list(zip(last["ask_px_tick"].tolist(), last["ask_qty"].tolist())) == want[1]
    assert last["msgs"] == (md["symbol"] == 1).sum()
    assert r.events["bid_px_tick"][-1] == want[0][0][0] and r.events["ask_qty"][-1] == want[1][0][1]
    ts = r.depth["ts_exch_ns"]  # a depth record at each millisecond the feed crossed
    assert len(r.depth) > 100 and (np.diff(ts // 1_000_000) >= 1).all()
    again = np.concatenate([b.events for b in r])  # (iterating replays again, on a fresh book)
    assert all(np.array_equal(again[f], r.events[f], equal_nan=again[f].dtype.kind == "f")
               for f in obpipe.EVENT_RECORD.names)


# --- the examples ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_lobster_examples_print_what_the_order_book_file_says(tmp_path):
    out_csv = tmp_path / "bbo.csv"
    out = _example("lobster_bbo_1s.py", "--out", str(out_csv))
    # independently: the vendor's order-book row after the last message at or before each second
    t = lobster.load_messages(LOBSTER_MSG)["ts_exch_ns"]  # (UTC epoch ns, parsed digit-exactly)
    ob = lobster.load_orderbook(LOBSTER_OB, tick_divisor=50)
    secs = np.arange(-(-t[0] // 10**9), t[-1] // 10**9 + 1) * 10**9
    at = ob[np.searchsorted(t, secs, side="right") - 1]
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == len(secs) == 23_399 and out.startswith(f"AMZN: {len(secs):,} seconds of BBO")
    assert [float(r["bid_px"]) for r in rows] == (at[:, 2] * 0.005).round(3).tolist()
    assert [int(r["ask_qty"]) for r in rows] == at[:, 1].tolist()

    out = _example("spread_distribution.py", "--top", "5").splitlines()
    q = (ob[:, 0] != obpipe.NO_PX) & (ob[:, 2] != obpipe.NO_PX)
    held = np.diff(t, append=t[-1])[q]
    spread = (ob[:, 0] - ob[:, 2])[q]
    ticks, inv = np.unique(spread, return_inverse=True)
    share = np.bincount(inv, weights=held) / held.sum()
    best = np.argsort(-share)[:5]
    assert out[0].startswith("AMZN: ") and f"mean spread {np.average(spread, weights=held):.3f} ticks" in out[0]
    assert [(int(x.split()[0]), x.split()[2]) for x in out[2:]] == [(int(ticks[k]), f"{share[k]:.2%}") for k in best]
