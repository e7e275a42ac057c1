"""Story service without Kafka: narratives, the store, the query layer, the HTTP API."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from story import api
from story.config import StoryConfig, load
from story.narratives import NarrativeConfig, bursts, stories
from story.service import StoryService, check
from story.store import Store, signal_row
from obpipe.config import ConfigError
from tests.publisher.conftest import make_signal, make_summary

T0 = 34_200_000_000_000  # 09:30:00 feed time


def _sig(kind, seq, t_ms, symbol="AMZN", **values):
    m = make_signal(kind, symbol, seq=seq, ts_exch_ns=T0 + int(t_ms * 1e6))
    m["values"].update(values)
    return m


def _rec(m):
    topic = "obpipe.signals" if m["type"] == "signal" else "obpipe.summaries"
    return topic, json.dumps(m).encode()


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "s.db"))
    yield s
    s.close()


def test_bursts_cut_at_gaps_and_stories_are_the_same_whatever_the_arrival_order():
    sigs = [_sig("sweep", i, t) for i, t in enumerate([0, 300, 900, 2500, 2600, 9000], 1)]
    assert [len(b) for b in bursts(sigs, int(1e9))] == [3, 2, 1]
    cfg = NarrativeConfig(merge_gap_ms=1000)
    a = stories("AMZN", "sweep", "bid", sigs, cfg)
    assert [r[0] for r in a] == ["AMZN-1-sweep", "AMZN-4-sweep", "AMZN-6-sweep"]
    assert json.loads(a[0][8]) == ["AMZN-1-sweep", "AMZN-2-sweep", "AMZN-3-sweep"]
    assert a[0][7] == "Aggressive buying: 3 sweeps through up to 4 levels, 3600 lots in 902 ms"
    assert a[0][6] > a[2][6]  # three sweeps are more severe than one


def test_texts_carry_the_numbers_behind_them():
    cfg = NarrativeConfig()
    w = stories("AMZN", "liquidity_withdrawal", "bid",
                [_sig("liquidity_withdrawal", 1, 0, drop_fraction=0.84, elapsed_ns=35_000_000, touch_tick=22381)], cfg)
    assert w[0][7] == "Liquidity vanished on the bid: depth near the touch fell 84% in 35 ms at 223.81"
    assert w[0][6] == 0.84
    sp = stories("AMZN", "spread_widening", None, [_sig("spread_widening", 2, 0, spread_ticks=6)], cfg,
                 median_spread=lambda sym, ts: 1.5)
    assert sp[0][7] == "Spread instability: spread 6 ticks, 4x its 60 s median"
    mp = stories("AMZN", "microprice_shift", "ask", [_sig("microprice_shift", 3, 0)], cfg)
    assert mp[0][7].startswith("Microprice moved down 3.5 ticks in 12 ms, to 223.81")


def test_a_batch_delivered_twice_stores_once_and_gives_the_same_stories(store):
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda m: None)
    recs = [_rec(_sig("liquidity_withdrawal", i, i * 200)) for i in range(1, 8)] + [_rec(make_summary())]
    svc.handle(recs)
    first = api.stories_query(store, "AMZN", since=None)
    svc.handle(recs[3:])  # re-delivered after a crash before the offset commit
    assert svc.counters["signals_new"] == 7 and svc.counters["signals_seen_before"] == 4
    assert svc.counters["summaries_new"] == 1 and svc.counters["summaries_seen_before"] == 1
    assert store.query("SELECT COUNT(*) FROM signals")[0][0] == 7
    assert api.stories_query(store, "AMZN") == first and len(first) == 1
    assert len(first[0]["signal_ids"]) == 7


def test_a_late_signal_that_bridges_two_bursts_merges_their_stories(store):
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda m: None)
    svc.handle([_rec(_sig("sweep", 1, 0)), _rec(_sig("sweep", 3, 1800))])
    assert len(api.stories_query(store, "AMZN")) == 2
    svc.handle([_rec(_sig("sweep", 2, 900))])  # arrives last, lies between them
    s = api.stories_query(store, "AMZN")
    assert [x["id"] for x in s] == ["AMZN-1-sweep"] and len(s[0]["signal_ids"]) == 3


def test_malformed_and_unknown_version_records_are_counted_and_skipped(store):
    said = []
    svc = StoryService(StoryConfig(), store, "unused:1", log=said.append)
    bad_kind = make_signal("sweep")
    bad_kind["kind"] = "moonshot"
    svc.handle([("obpipe.signals", b"{not json"), ("obpipe.signals", b"{not json either"),
                ("obpipe.signals", json.dumps({**make_signal(), "v": 2}).encode()),
                ("obpipe.signals", json.dumps(bad_kind).encode()),
                ("obpipe.summaries", json.dumps(make_signal()).encode()),  # a signal on the summaries topic
                _rec(make_signal("sweep", seq=5))])
    assert svc.counters["malformed"] == 4 and svc.counters["unknown_version"] == 1
    assert store.query("SELECT id FROM signals") == [("AMZN-5-sweep",)]
    assert len(said) == 4  # once per reason: not JSON (x2 -> 1), unknown version, unknown kind, wrong type


def test_retention_deletes_old_rows_in_batches(store):
    svc = StoryService(load(None, retention={"keep_hours": 1.0, "batch": 3}), store, "unused:1",
                       log=lambda m: None)
    old = [_rec(_sig("sweep", i, -2 * 3600e3 + i * 10_000)) for i in range(1, 11)]  # 2 h before T0
    new = [_rec(_sig("sweep", 100 + i, i * 10_000)) for i in range(1, 4)]
    svc.handle(old + new)
    assert svc.retention() >= 10
    assert store.query("SELECT COUNT(*) FROM signals")[0][0] == 3
    assert all(s["start_ns"] >= T0 for s in api.stories_query(store))


def test_queries_check_their_parameters(store):
    store.insert([signal_row(_sig("sweep", 1, 0))], [])
    with pytest.raises(api.BadQuery, match="kind"):
        api.stories_query(store, "AMZN", ["nope"])
    with pytest.raises(api.BadQuery, match="symbol"):
        api.stories_query(store, "AMZN'; DROP TABLE signals; --")
    with pytest.raises(api.BadQuery, match="since"):
        api.signals_query(store, since="yesterday")
    with pytest.raises(api.BadQuery, match="limit"):
        api.signals_query(store, limit=0)
    assert [s["id"] for s in api.signals_query(store, "AMZN", since="10m")] == ["AMZN-1-sweep"]
    assert store.query("SELECT COUNT(*) FROM signals")[0][0] == 1


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("[db]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match="db.urll: unknown key"):
        load(p)
    p.write_text("[narratives.templates]\nsweep = 'broken {'\n")
    with pytest.raises(ConfigError, match="narratives.templates.sweep"):
        load(p)


@pytest.mark.timeout(60)
def test_http_api_answers_validates_and_serves_the_page(store):
    from story.http import serve

    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda m: None)
    svc.handle([_rec(_sig("sweep", 1, 0)), _rec(make_summary(start_ns=T0, end_ns=T0 + 100_000_000))])
    srv, _ = serve(store, "127.0.0.1", 0, stats=lambda: dict(svc.counters))
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        get = lambda path: json.loads(urllib.request.urlopen(base + path, timeout=10).read())  # noqa: E731
        assert [s["id"] for s in get("/api/stories?symbol=AMZN&since=10m")] == ["AMZN-1-sweep"]
        assert get("/api/summaries?symbol=AMZN")[0]["mid_tick"] == 22382.0
        assert [b["n"] for b in get("/api/summaries?symbol=AMZN&points=900")] == [1]
        assert get("/api/signals?kind=sweep&limit=1")[0]["values"]["levels"] == 4
        assert get("/api/symbols") == [{"symbol": "AMZN", "summaries": 1, "stories": 1,
                                        "newest_ns": T0 + 100_000_000}]
        assert get("/api/stats")["signals_new"] == 1
        for bad in ("/api/stories?kind=nope", "/api/stories?limit=x", "/api/stories?colour=red",
                    "/api/signals?symbol=a%27%3B--",
                    "/api/summaries?points=0", "/api/summaries?points=2.5"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + bad, timeout=10)
            assert e.value.code == 400 and "error" in json.loads(e.value.read())
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "<canvas" in page and '<script src="/page.js"' in page
        assert "/api/stories" in urllib.request.urlopen(base + "/page.js", timeout=10).read().decode()
    finally:
        srv.shutdown()
