"""The PostgreSQL path: the same store, service and queries against a real server.

The ``pg_url`` fixture (tests/conftest.py) starts its own server (Debian's postgresql,
as the ``postgres`` user, on a free 127.0.0.1 port, in a temporary directory) and stops
it by pid; without the server binary, that user or psycopg the tests skip and say why.
"""
from __future__ import annotations

import json
import time

import pytest

from obpipe.story import api
from obpipe.story.config import StoryConfig
from obpipe.story.service import StoryService
from obpipe.story.store import Store
from tests.helpers import make_signal, make_summary


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_postgres_store_is_idempotent_narrates_and_answers_like_sqlite(pg_url, tmp_path):
    day = 1_340_236_800 * 10**9  # 2012-06-21 00:00 UTC, epoch ns
    recs = [("obpipe.signals", json.dumps(make_signal("sweep", seq=i, ts_exch_ns=day + 34_200_000_000_000 + i * 10 ** 8))
             .encode()) for i in range(1, 6)]
    poison = json.dumps(make_signal("sweep", seq=9, ts_exch_ns=day + 34_200_000_000_000,
                                    bbo={"bid_tick": 2**63, "ask_tick": 1, "bid_qty": 1, "ask_qty": 1})).encode()
    recs.append(("obpipe.signals", 0, 41, poison))  # kept in rejects (BYTEA in PostgreSQL), not stored
    t0 = day + 34_200_300_000_000  # ten 100 ms summaries; the 4th has a crossed book (null spread)
    recs += [("obpipe.summaries", json.dumps(make_summary(
        start_ns=t0 + k * 10 ** 8, end_ns=t0 + (k + 1) * 10 ** 8, mid_tick=22382.0 + k, trades=k,
        spread_ticks={"min": None, "mean": None, "max": None} if k == 3 else {"min": 1.0, "mean": 1.0 + k, "max": 9.0},
        volume={"buy": 10 * k, "sell": 1})).encode()) for k in range(10)]
    results = []
    for url in (pg_url, str(tmp_path / "s.db")):
        st = Store.open(url)
        Store.open(url).close()  # a second open migrates nothing and fails on nothing
        svc = StoryService(StoryConfig(), st, "unused:1", log=lambda m: None)
        svc.handle(recs)
        svc.handle(recs)  # delivered twice
        assert svc.counters["signals_new"] == 5 and svc.counters["signals_seen_before"] == 5
        assert st.query("SELECT COUNT(*) FROM signals")[0][0] == 5
        # 4 buckets over the 900 ms from the first start to the last, 225 ms each: 3, 2, 2, 3 summaries
        chart = api.summaries_query(st, "AMZN", points=4)
        assert [b["n"] for b in chart] == [3, 2, 2, 3] and [b["trades"] for b in chart] == [3, 7, 11, 24]
        assert [b["mid_tick"] for b in chart] == [22383.0, 22385.5, 22387.5, 22390.0]
        assert chart[1]["spread_mean"] == 5.0 and chart[1]["spread_min"] == 1.0  # (the null is left out)
        assert [b["volume_buy"] for b in chart] == [30, 70, 110, 240] and json.dumps(chart)
        results.append((api.stories_query(st, "AMZN", since="1h"), api.summaries_query(st, "AMZN"), chart,
                        api.signals_query(st, kinds=["sweep"], limit=3, offset=1)))
        rejects = st.query("SELECT topic, kafka_partition, kafka_offset, reason, raw FROM rejects")
        assert [(*r[:4], bytes(r[4])) for r in rejects] == [("obpipe.signals", 0, 41, "schema", poison)]
        assert svc.counters["rejected"] == 2  # (delivered twice, kept once)
        st.execute("UPDATE signals SET stored_ns = stored_ns - 7200000000000 WHERE seq <= 2")
        st.conn().commit()
        assert st.delete_older("signals", time.time_ns() - 3600 * 10**9, batch=1) == 2  # stored 2 h ago, kept 1 h
        st.close()
    assert st.kind == "sqlite" and results[0] == results[1]  # same answers from both databases
    assert len(results[0][0]) == 1 and len(results[0][0][0]["signal_ids"]) == 5
