"""Story service without Kafka: narratives, the store, the query layer, the HTTP API."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from obpipe.story import api
from obpipe.story.config import StoryConfig, load
from obpipe.story.narratives import NarrativeConfig, bursts, stories
from obpipe.story.service import StoryService, check
from obpipe.story.store import Store, signal_row
from obpipe.config import ConfigError
from tests.helpers import POISON_KINDS, make_signal, make_summary, poison_record

T0 = 1_340_271_000 * 10**9  # 2012-06-21 09:30:00 UTC, epoch ns (feed time)


def _sum(**over):
    return make_summary(**{"start_ns": T0 + 300_000_000, "end_ns": T0 + 1_300_000_000, **over})


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
    recs = [_rec(_sig("liquidity_withdrawal", i, i * 200)) for i in range(1, 8)] + [_rec(_sum())]
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
    bad_kind = _sig("sweep", 1, 0)
    bad_kind["kind"] = "moonshot"
    svc.handle([("obpipe.signals", b"{not json"), ("obpipe.signals", b"{not json either"),
                ("obpipe.signals", json.dumps({**_sig("sweep", 9, 0), "v": 2}).encode()),
                ("obpipe.signals", json.dumps(bad_kind).encode()),
                ("obpipe.summaries", json.dumps(_sig("sweep", 2, 0)).encode()),  # a signal on the summaries topic
                _rec(_sig("sweep", 5, 0))])
    assert svc.counters["malformed"] == 4 and svc.counters["unknown_version"] == 1
    assert store.query("SELECT id FROM signals") == [("AMZN-5-sweep",)]
    assert len(said) == 4  # once per reason: not JSON (x2 -> 1), unknown version, unknown kind, wrong type


def test_retention_deletes_rows_stored_longer_ago_than_keep_hours_in_batches(store):
    svc = StoryService(load(None, retention={"keep_hours": 1.0, "batch": 3}), store, "unused:1",
                       log=lambda m: None)
    old = [_rec(_sig("sweep", i, -2 * 3600e3 + i * 10_000)) for i in range(1, 11)]  # 2 h of feed time before T0
    new = [_rec(_sig("sweep", 100 + i, i * 10_000)) for i in range(1, 4)]
    svc.handle(old + new)
    assert svc.retention() == 0  # all stored just now: feed time does not decide
    hours_ago = time.time_ns() - 2 * 3600 * 10**9  # as if the old ones had been ingested 2 h ago
    for table, where in (("signals", "seq < 100"), ("stories", "start_ns < ?")):
        store.execute(f"UPDATE {table} SET stored_ns = ? WHERE {where}", (hours_ago,) + ((T0,) if "?" in where else ()))
    store.conn().commit()
    assert svc.retention() == 10 + 10  # 10 signals (in batches of 3) and their 10 stories (10 s apart)
    assert store.query("SELECT COUNT(*) FROM signals")[0][0] == 3
    assert all(s["start_ns"] >= T0 for s in api.stories_query(store))


def test_one_far_future_timestamp_neither_wipes_the_database_nor_is_stored(store):
    """A replay's 2012 rows, then a forged ts_exch_ns a year ahead and a live one: the
    forged one is rejected (kept, counted), retention deletes nothing."""
    svc = StoryService(load(None, retention={"keep_hours": 1.0}), store, "unused:1", log=lambda m: None)
    svc.handle([_rec(_sig("sweep", i, i * 10_000)) for i in range(1, 11)])
    now = time.time_ns()
    forged = make_signal("imbalance", seq=11, ts_exch_ns=now + 365 * 86_400 * 10**9)
    live = make_signal("imbalance", seq=12, ts_exch_ns=now)
    svc.handle([_rec(forged), _rec(live)])
    assert svc.retention() == 0
    assert store.query("SELECT COUNT(*) FROM signals")[0][0] == 11
    assert svc.counters["implausible_time"] == svc.counters["rejected"] == 1
    assert store.query("SELECT reason, raw FROM rejects") == [("implausible time", json.dumps(forged).encode())]


@pytest.mark.parametrize("field,value", [
    ("ts_exch_ns", 34_201_234_000_000),  # ns after midnight (1970): before 1990
    ("ts_exch_ns", 631_152_000 * 10**9 - 1),  # 1989-12-31 23:59:59.999999999
    ("ts_exch_ns", "now+1d+1s"), ("ts_detect_ns", "now+1d+1s"), ("start_ns", 1), ("end_ns", "now+1d+1s"),
    ("ts_emit_ns", 10**9)])
def test_implausible_timestamps_are_rejected_counted_and_kept(store, field, value):
    now = time.time_ns()
    if value == "now+1d+1s":
        value = now + 86_401 * 10**9
    if field in ("start_ns", "end_ns", "ts_emit_ns"):
        m = _sum(**{field: value}) if field != "start_ns" else _sum(start_ns=value)
    else:
        m = _sig("sweep", 1, 0)
        m[field] = value
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda s: None)
    svc.handle([_rec(m), _rec(_sig("sweep", 2, 0))])
    assert svc.counters["implausible_time"] == svc.counters["rejected"] == 1
    assert svc.counters["signals_new"] == 1 and svc.counters["summaries_new"] == 0
    assert store.query("SELECT reason FROM rejects") == [("implausible time",)]


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
    from obpipe.story.http import serve

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


def test_rejects_are_listed_by_the_cli_with_reason_and_raw_bytes(tmp_path, capsys):
    from obpipe.story.cli import main

    s = Store.open(str(tmp_path / "r.db"))
    svc = StoryService(StoryConfig(), s, "unused:1", log=lambda m: None)
    svc.handle([("obpipe.signals", 0, 5, poison_record("integer >= 2^63")), ("obpipe.signals", 0, 6, b"\xff<b>")])
    s.close()
    assert main(["rejects", "--db", str(tmp_path / "r.db"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rejects"] == 2 and [(r["offset"], r["reason"]) for r in out["newest"]] == [(6, "not JSON"),
                                                                                          (5, "schema")]
    assert out["newest"][0]["raw"] == "\\xff<b>" and "seq" in out["newest"][1]["detail"]
    assert main(["rejects", "--db", str(tmp_path / "r.db")]) == 0
    assert capsys.readouterr().out.startswith("2 rejected records kept; the newest 2:")


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_a_poison_record_is_rejected_kept_and_counted_and_the_next_burst_still_narrates(store, kind):
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda s: None)
    raw = poison_record(kind)
    svc.handle([("obpipe.signals", raw), _rec(_sig("sweep", 6, -100))])  # never raises
    svc.handle([_rec(_sig("sweep", 8, 100))])  # a later signal whose burst reaches the poison's time
    assert svc.counters["rejected"] == svc.counters["malformed"] == 1
    assert svc.counters["signals_new"] == 2
    rows = store.query("SELECT topic, kafka_partition, kafka_offset, raw FROM rejects")
    assert rows == [("obpipe.signals", -1, -1, raw)]  # (not from Kafka: partition -1, offsets from -1 down)
    assert [s["signal_ids"] for s in api.stories_query(store, "AMZN")] == [["AMZN-6-sweep", "AMZN-8-sweep"]]


def test_every_integer_field_of_the_schema_is_checked_for_floats():
    from obpipe.story.service import _INT_PATHS

    assert {"seq", "ts_exch_ns", "ts_detect_ns"} <= {p[0] for p in _INT_PATHS["signal"]}
    assert ("bbo", "bid_qty") in _INT_PATHS["signal"] and ("values", "sweep", "levels") in _INT_PATHS["signal"]
    assert ("volume", "buy") in _INT_PATHS["summary"] and ("events",) in _INT_PATHS["summary"]
    assert ("values", "microprice_shift", "shift_ticks") not in _INT_PATHS["signal"]  # a number


def test_a_template_naming_a_missing_field_is_refused_at_load_naming_template_and_field(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[narratives.templates]\nsweep = "Swept {levels} levels, {lots} lots"\n')
    with pytest.raises(ConfigError, match=r"narratives\.templates\.sweep: .*'lots'.*sweep stories do not have"):
        load(p)
    p.write_text('[narratives.templates]\nimbalance = "{tob:d}"\n')  # a str: a bad format spec
    with pytest.raises(ConfigError, match=r"narratives\.templates\.imbalance: .*not a valid template"):
        load(p)
    p.write_text('[narratives.templates]\nsweep = "{n} sweeps, {volume} lots, {side}"\n')
    assert load(p).narratives.templates["sweep"].startswith("{n}")
    from obpipe.story.narratives import DEFAULT_TEMPLATES, template_error
    assert all(template_error(k, t) is None for k, t in DEFAULT_TEMPLATES.items())  # the built-in ones pass


def test_a_late_or_resent_old_signal_recomputes_its_burst_not_every_later_one(store):
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda m: None)
    svc.handle([_rec(_sig("sweep", i, i * 5000)) for i in range(1, 201)])  # 200 bursts of one, 5 s apart
    before = svc.counters["stories_written"]
    svc.handle([_rec(_sig("sweep", 1000, 5000 + 300))])  # late: joins the first burst
    svc.handle([_rec(_sig("sweep", 1, 5000))])  # re-sent (already stored): nothing to recompute
    assert svc.counters["stories_written"] - before == 1
    got = api.stories_query(store, "AMZN", limit=1000)
    assert len(got) == 200 and got[0]["signal_ids"] == ["AMZN-1-sweep", "AMZN-1000-sweep"]
    # the same stories as a computation from scratch
    rows = store.query("SELECT id, ts_exch_ns, tick_size, vals FROM signals ORDER BY ts_exch_ns, id")
    ref = stories("AMZN", "sweep", "bid", [{"id": r[0], "ts_exch_ns": r[1], "tick_size": r[2],
                                            "values": json.loads(r[3])} for r in rows], svc.rules)
    assert sorted(store.query("SELECT id, symbol, kind, side, start_ns, end_ns, severity, text, signal_ids "
                              "FROM stories")) == sorted(ref)


def test_stories_built_batch_by_batch_in_any_order_equal_stories_built_from_scratch(store):
    import random

    rng = random.Random(13)
    kinds = ("sweep", "imbalance", "liquidity_withdrawal", "microprice_shift")  # (spread texts read summaries)
    sigs = [_sig(kinds[i % 4], i, rng.randrange(0, 60_000), symbol=("AMZN", "BRK.B")[i % 2]) for i in range(1, 601)]
    recs = [_rec(m) for m in sigs] + [_rec(m) for m in rng.sample(sigs, 100)]  # with re-deliveries
    rng.shuffle(recs)
    svc = StoryService(StoryConfig(), store, "unused:1", log=lambda m: None)
    while recs:
        k = rng.randrange(1, 60)
        svc.handle(recs[:k])
        recs = recs[k:]
    ref = []
    for sym, kind, side in store.query("SELECT DISTINCT symbol, kind, side FROM signals"):
        rows = store.query("SELECT id, ts_exch_ns, tick_size, vals FROM signals WHERE symbol = ? AND kind = ? "
                           "AND side IS ? ORDER BY ts_exch_ns, id", (sym, kind, side))
        ref += stories(sym, kind, side, [{"id": r[0], "ts_exch_ns": r[1], "tick_size": r[2],
                                          "values": json.loads(r[3])} for r in rows], svc.rules)
    got = store.query("SELECT id, symbol, kind, side, start_ns, end_ns, severity, text, signal_ids FROM stories")
    assert sorted(got) == sorted(ref) and len(ref) > 40


def test_a_version_1_database_is_migrated_and_its_rows_count_as_stored_at_the_migration(tmp_path):
    import re
    import sqlite3

    from obpipe.story import store as store_mod

    path = tmp_path / "v1.db"
    c = sqlite3.connect(path)  # the version-1 schema: no stored_ns, no rejects
    for ddl in store_mod._DDL:
        if "rejects" not in ddl and "_stored" not in ddl:
            c.execute(re.sub(r",\s*stored_ns BIGINT NOT NULL", "", ddl))
    c.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    c.execute(f"INSERT INTO signals ({', '.join(store_mod.SIGNAL_COLS)}) VALUES ({', '.join('?' * 13)})",
              signal_row(_sig("sweep", 1, 0)))
    c.commit()
    c.close()
    t0 = time.time_ns()
    s = Store.open(str(path))
    try:
        assert s.query("SELECT value FROM meta") == [("2",)]
        (stored,), = s.query("SELECT stored_ns FROM signals")
        assert t0 <= stored <= time.time_ns()
        svc = StoryService(load(None, retention={"keep_hours": 1.0}), s, "unused:1", log=lambda m: None)
        svc.handle([("obpipe.signals", b"nope")])
        assert svc.retention() == 0 and s.query("SELECT COUNT(*) FROM rejects")[0][0] == 1
    finally:
        s.close()
