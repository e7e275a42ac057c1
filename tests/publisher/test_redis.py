"""Live state in Redis (Debian's redis-server, started per test on loopback and stopped by
pid): our own server starts without persistence and stops; the Redis writer writes each
changed snapshot once per round, publishes BBO changes, counts a Redis that went away
and writes again when it is back; ``obpipe run`` leaves the final books in Redis, where
they expire; Redis stopped mid-run costs the book nothing."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from obpipe import config
from obpipe.publisher import redis_server as redis_server_mod
from obpipe.publisher.redis_server import EmbeddedRedis, RedisServerError, ping, server_pid
from obpipe.publisher.redis_writer import RedisWriter, RedisWriterSpec
from obpipe.ring import kernels as K
from obpipe.ring import schema as sc
from obpipe.ring.shm import list_segments
from obpipe.ring.snapshot import SnapshotRegion
from obpipe.ring.stats import StatsBlock
from obpipe.status import Status
from obpipe.supervisor import RunOptions, specs_from_config
from tests.helpers import ENV, finish, obpipe, popen_obpipe, run_config, running_pipeline, wait_running
from tests.helpers import poll as _poll

redis = pytest.importorskip("redis")
pytestmark = [pytest.mark.multiproc,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="no redis-server (Debian package redis-server; `make redis` installs it)")]

SYMS = ("AAA", "BBB")


@pytest.fixture
def redis_server():
    """A redis-server on a free 127.0.0.1 port (a port, so a test can start it again where
    its clients look); stopped by pid after the test."""
    server = EmbeddedRedis.start(0)
    try:
        yield server
    finally:
        server.stop(timeout_s=2)
        assert not server.alive()
        with pytest.raises(ProcessLookupError):
            os.kill(server.pid, 0)


def _client(url: str):
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def _expected_hash(s: dict) -> dict:
    """The ``bbo`` hash a symbol's ``snapshot_dict`` (``obpipe stats --json``) must give."""
    def v(x):
        return "" if x is None else str(x)
    return {"bid_px_tick": v(s["bid_px_tick"]), "bid_qty": v(s["bid_qty"]), "ask_px_tick": v(s["ask_px_tick"]),
            "ask_qty": v(s["ask_qty"]), "last_trade_px_tick": v(s["last_trade_px_tick"]),
            "last_trade_qty": v(s["last_trade_qty"]), "last_trade_side": v(s["last_trade_side"]),
            "msgs_applied": v(s["msgs_applied"]), "seq": v(s["seq"]), "ts_exch_ns": v(s["ts_exch_ns"]),
            "version": v(s["version"])}


# -- the server ------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_our_server_keeps_nothing_listens_only_on_its_socket_and_stops_by_pid():
    server = EmbeddedRedis.start(tag="t")
    try:
        assert server.url.startswith("unix://") and server.port == 0
        c = _client(server.url)
        assert c.config_get("save") == {"save": ""} and c.config_get("appendonly") == {"appendonly": "no"}
        assert c.config_get("port") == {"port": "0"}  # no TCP listener at all
        assert oct(os.stat(server.socket_path).st_mode & 0o777) == "0o700"
        c.close()
        work_dir = Path(server.socket_path).parent
    finally:
        server.stop(timeout_s=2)
    assert not server.alive() and not ping(server.url) and not work_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


@pytest.mark.timeout(60)
def test_a_missing_binary_or_busy_port_is_an_error_that_says_so(redis_server, monkeypatch):
    with pytest.raises(RedisServerError, match="cannot run /nonexistent/redis-server"):
        EmbeddedRedis.start(binary="/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="port is in use"):
        EmbeddedRedis.start(redis_server.port, timeout_s=5)  # the fixture's server holds that port
    # past the up-front check, the fixture's server answering on that port does not pass for ours
    monkeypatch.setattr(redis_server_mod, "_port_busy", lambda port: False)
    with pytest.raises(RedisServerError, match="(?s)exited with status 1.*Address already in use"):
        EmbeddedRedis.start(redis_server.port, timeout_s=5)
    assert ping(redis_server.url) and server_pid(redis_server.url) == redis_server.pid


# -- config and spec -------------------------------------------------------------------

def test_redis_config_is_checked_and_becomes_the_writers_spec():
    for table, key in (({"url": "http://x:1"}, "redis.url"), ({"interval_ms": 0}, "redis.interval_ms"),
                       ({"ttl_s": 0.02}, "redis.ttl_s"), ({"interval_ms": 1000, "ttl_s": 2}, "redis.ttl_s"),
                       ({"timeout_s": 0}, "redis.timeout_s"), ({"key_prefix": "a b"}, "redis.key_prefix"),
                       ({"bogus": 1}, "redis.bogus")):
        with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
            config.from_dict({"redis": table})
    cfg = config.from_dict({"instance": {"name": "rs"}, "book": {"symbols": list(SYMS)}, "pinning":
                            {"background_idle": False},
                            "redis": {"url": "redis://h:1/2", "interval_ms": 5, "ttl_s": 3, "timeout_s": 0.5,
                                      "key_prefix": "px"}})
    s = specs_from_config(cfg, RunOptions(), redis_url="redis://h:1/2")
    assert s.redis == RedisWriterSpec(instance="rs", symbols=SYMS, url="redis://h:1/2", interval_ms=5, ttl_s=3,
                                      timeout_s=0.5, prefix="px", cores=(), background=False,
                                      parent_pid=os.getpid())
    assert pickle.loads(pickle.dumps(s.redis)) == s.redis
    assert s.at_port(9).redis == s.redis
    assert specs_from_config(cfg, RunOptions()).redis is None  # no Redis to write to
    off = config.replace(cfg, redis={"enabled": False})
    assert specs_from_config(off, RunOptions(), redis_url="redis://h:1").redis is None


# -- the writer, against a snapshot region of the test's own ---------------------------

def _publish(region: SnapshotRegion, slot: int, version: int, bid=(100, 5), ask=(102, 7), bids=(), asks=()):
    """Write a snapshot into ``slot`` as the book writer would (seqlock, checksum)."""
    w = region.empty_payload().copy()
    r = w.view(region.dtype)
    r["bid_px_tick"], r["bid_qty"] = bid
    r["ask_px_tick"], r["ask_qty"] = ask
    r["seq"], r["ts_exch_ns"], r["version"], r["msgs_applied"] = 10 * version, 1000 + version, version, version
    for i, (p, q) in enumerate(bids):
        r["bid_px"][0, i], r["bid_lvl_qty"][0, i] = p, q
    for i, (p, q) in enumerate(asks):
        r["ask_px"][0, i], r["ask_lvl_qty"][0, i] = p, q
    w[-1] = K.payload_check(w, region.payload_words)
    K.snap_write(region.words, region.base(slot), w, region.payload_words)


@pytest.mark.timeout(120)
def test_writer_writes_changed_snapshots_once_per_round_publishes_bbo_changes_and_survives_redis_going_away(
        instance, redis_server):
    stats = StatsBlock.create(instance)
    region = SnapshotRegion.create(instance, "snap", len(SYMS), 4)
    c = _client(redis_server.url)
    sub = c.pubsub()
    try:
        sub.psubscribe(f"obpipe:{instance}:bbo:*")
        assert sub.get_message(timeout=2)["type"] == "psubscribe"
        row = np.zeros(sc.STATS_WORDS, np.int64)
        spec = RedisWriterSpec(instance=instance, symbols=SYMS, url=redis_server.url, ttl_s=2.0, timeout_s=0.5)
        w = RedisWriter(spec, region, stats, row)
        _publish(region, 0, 1, bids=[(100, 5), (99, 3)], asks=[(102, 7)])
        assert w.round()
        # every symbol is written once, the empty one with "" prices; both BBOs are published
        assert row[sc.ST_REDIS_WRITES] == 2 and row[sc.ST_REDIS_PUBLISHES] == 2 and row[sc.ST_REDIS_UP] == 1
        aaa = c.hgetall(f"obpipe:{instance}:bbo:AAA")
        assert {k: aaa[k] for k in ("bid_px_tick", "bid_qty", "ask_px_tick", "ask_qty", "seq", "ts_exch_ns",
                                    "version", "last_trade_px_tick", "last_trade_side")} == {
            "bid_px_tick": "100", "bid_qty": "5", "ask_px_tick": "102", "ask_qty": "7", "seq": "10",
            "ts_exch_ns": "1001", "version": "1", "last_trade_px_tick": "", "last_trade_side": "-1"}
        assert abs(int(aaa["written_ns"]) - time.time_ns()) < 5e9
        assert json.loads(c.get(f"obpipe:{instance}:depth:AAA")) == {
            "seq": 10, "version": 1, "bids": [[100, 5], [99, 3]], "asks": [[102, 7]]}
        assert c.hget(f"obpipe:{instance}:bbo:BBB", "bid_px_tick") == ""
        assert 0 < c.pttl(f"obpipe:{instance}:bbo:AAA") <= 2000 and 0 < c.pttl(f"obpipe:{instance}:stats") <= 2000
        assert c.hget(f"obpipe:{instance}:stats", "redis_writes") == "2"
        msgs = [sub.get_message(timeout=2) for _ in range(2)]
        assert sorted(m["channel"] for m in msgs) == [f"obpipe:{instance}:bbo:AAA", f"obpipe:{instance}:bbo:BBB"]
        a = json.loads(next(m["data"] for m in msgs if m["channel"].endswith("AAA")))
        assert a == {"symbol": "AAA", "bid_px_tick": 100, "bid_qty": 5, "ask_px_tick": 102, "ask_qty": 7,
                     "seq": 10, "ts_exch_ns": 1001}

        # nothing changed: nothing written, nothing published (one write per change, however many rounds)
        assert w.round() and w.round()
        assert row[sc.ST_REDIS_WRITES] == 2 and row[sc.ST_REDIS_PUBLISHES] == 2
        # a new snapshot with the same BBO: written, not published; a BBO change: both
        _publish(region, 0, 2)
        assert w.round() and (row[sc.ST_REDIS_WRITES], row[sc.ST_REDIS_PUBLISHES]) == (3, 2)
        _publish(region, 0, 3, bid=(101, 1))
        _publish(region, 0, 4, bid=(101, 2))  # two changes between rounds: one write, the latest
        assert w.round() and (row[sc.ST_REDIS_WRITES], row[sc.ST_REDIS_PUBLISHES]) == (4, 3)
        assert c.hget(f"obpipe:{instance}:bbo:AAA", "bid_qty") == "2"
        assert json.loads(sub.get_message(timeout=2)["data"])["bid_qty"] == 2
        assert sub.get_message(timeout=0.2) is None

        # Redis goes away: the round fails quickly, counted, with a back-off
        sub.close()
        c.close()
        redis_server.stop(timeout_s=2)
        t0 = time.monotonic()
        assert not w.round() and not w.round()
        assert time.monotonic() - t0 < 3 * spec.timeout_s + 1
        assert row[sc.ST_REDIS_ERRORS] == 2 and row[sc.ST_REDIS_UP] == 0 and w.backoff_s > 0
        _publish(region, 1, 1, bid=(200, 1), ask=(201, 1))
        # ... and back, empty, on the same port: everything is written again
        back = EmbeddedRedis.start(redis_server.port)
        try:
            c = _client(back.url)
            assert w.round()
            assert row[sc.ST_REDIS_RECONNECTS] == 1 and row[sc.ST_REDIS_UP] == 1 and w.backoff_s == 0
            assert row[sc.ST_REDIS_WRITES] == 6
            assert c.hget(f"obpipe:{instance}:bbo:AAA", "version") == "4"
            assert c.hget(f"obpipe:{instance}:bbo:BBB", "bid_px_tick") == "200"
            # refreshed before they expire while the writer runs; gone once it stops
            time.sleep(1.0)
            assert w.round() and row[sc.ST_REDIS_WRITES] == 8 and c.pttl(f"obpipe:{instance}:bbo:AAA") > 1500
            time.sleep(2.2)
            assert c.keys(f"obpipe:{instance}:*") == []
            c.close()
        finally:
            back.stop(timeout_s=2)
        w.close()
    finally:
        sub.close()
        c.close()
        region.unlink()
        region.close()
        stats.unlink()
        stats.close()


# -- obpipe run ------------------------------------------------------------------------

def _redis_cfg(tmp_path, instance, url="", **more) -> str:
    lines = [f'url = "{url}"'] + [f"{k} = {v}" for k, v in more.items()]
    return run_config(tmp_path, instance, md_capacity=1 << 16, extra="[redis]\n" + "\n".join(lines) + "\n")


def _final_books_in_redis(c, instance, final):
    for sym, s in final["symbols"].items():
        h = c.hgetall(f"obpipe:{instance}:bbo:{sym}")
        assert {k: h[k] for k in _expected_hash(s)} == _expected_hash(s), sym
        depth = json.loads(c.get(f"obpipe:{instance}:depth:{sym}"))
        assert (depth["bids"], depth["asks"], depth["seq"]) == (s["bids"], s["asks"], s["seq"]), sym
    st = c.hgetall(f"obpipe:{instance}:stats")
    assert int(st["applied"]) == final["applied"] and int(st["rx_messages"]) == final["messages"]


@pytest.mark.timeout(300)
def test_run_writes_live_books_and_publishes_bbo_changes_and_its_keys_expire(tmp_path, instance, redis_server):
    cfg = _redis_cfg(tmp_path, instance, redis_server.url, ttl_s=4, interval_ms=10)  # (4 s: the end of a run on a busy machine)
    c = _client(redis_server.url)
    got: list[dict] = []
    sub = c.pubsub()
    sub.psubscribe(f"obpipe:{instance}:bbo:*")
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            m = sub.get_message(timeout=0.2)
            if m and m["type"] == "pmessage":
                got.append(json.loads(m["data"]))

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        with running_pipeline(cfg, "--rate", "20000", "--duration", "4") as p:
            wait_running(cfg, min_msgs=1)
            # during the run: the live books are there, fresh, and no older than the book's
            key = f"obpipe:{instance}:bbo:AAA"
            h = _poll(lambda: c.hgetall(key), lambda h: h and int(h.get("msgs_applied", 0)) > 0)
            assert abs(int(h["written_ns"]) - time.time_ns()) < 2e9
            live = json.loads(obpipe("stats", "--config", cfg, "--json", timeout=60).stdout)
            assert int(h["version"]) <= live["symbols"]["AAA"]["version"]
            assert int(c.hget(f"obpipe:{instance}:stats", "applied")) > 0
            assert live["redis"]["state"] == "running" and live["redis"]["redis_writes"] > 0
            final, err = finish(p)
    finally:
        stop.set()
        t.join(5)
        sub.close()
    r = final["redis"]
    assert (r["url"], r["embedded"], r["redis_errors"], r["state"]) == (redis_server.url, False, 0, "stopped")
    assert final["applied"] == final["messages"] == final["feed"]["sent"]
    _final_books_in_redis(c, instance, final)
    # bounded: at most one write per symbol per round; every published change is a real BBO
    assert 0 < r["redis_writes"] <= len(final["symbols"]) * r["rounds"]
    assert r["publishes"] == len(got) > 4 and {m["symbol"] for m in got} == set(final["symbols"])
    last = {m["symbol"]: m for m in got}
    for sym, s in final["symbols"].items():
        assert (last[sym]["bid_px_tick"], last[sym]["bid_qty"], last[sym]["ask_px_tick"], last[sym]["ask_qty"]) \
            == (s["bid_px_tick"], s["bid_qty"], s["ask_px_tick"], s["ask_qty"])
    # a stopped instance leaves nothing: every key expires
    assert 0 < c.pttl(f"obpipe:{instance}:bbo:AAA") <= 4000
    _poll(lambda: c.keys(f"obpipe:{instance}:*"), lambda k: k == [], timeout_s=10)
    c.close()
    assert list_segments(instance) == []


@pytest.mark.timeout(400)
def test_redis_stopped_mid_run_costs_the_book_nothing_and_writes_resume(tmp_path, instance, redis_server):
    cfg = _redis_cfg(tmp_path, instance, redis_server.url, timeout_s=0.3)
    port, back = redis_server.port, None
    try:
        with running_pipeline(cfg, "--rate", "50000", "--duration", "120") as p:
            wait_running(cfg, min_msgs=1)
            st = Status(instance)
            try:
                _poll(st.collect, lambda d: d["redis"]["redis_writes"] > 10)
                redis_server.stop(timeout_s=1)  # Redis goes away mid-run
                d = _poll(st.collect, lambda d: d["redis"]["up"] == 0 and d["redis"]["redis_errors"] > 0,
                          timeout_s=30)
                assert d["book"]["state"] == "running"
                writes_down = d["redis"]["redis_writes"]
                time.sleep(1.0)
                d = st.collect()
                assert d["redis"]["redis_writes"] == writes_down and d["redis"]["redis_errors"] > 1
                back = EmbeddedRedis.start(port)  # back, empty, on the same address
                d = _poll(st.collect, lambda d: d["redis"]["redis_writes"] > writes_down + 10, timeout_s=30)
                assert d["redis"]["up"] == 1 and d["redis"]["reconnects"] == 1
                c = _client(back.url)
                assert c.hget(f"obpipe:{instance}:bbo:AAA", "bid_qty") not in (None, "")
            finally:
                st.close()
            p.send_signal(signal.SIGINT)
            final, err = finish(p)
        # the book took every message the feed sent, with Redis down for part of it
        assert final["exit_code"] == 0 and final["restarts"]["redis"] == 0
        assert final["applied"] == final["messages"] == final["feed"]["sent"] and final["gap_messages"] == 0
        r = final["redis"]
        assert r["redis_errors"] > 1 and r["reconnects"] == 1 and r["up"] == 1
        assert "failed" in err and "writing again" in err
        _final_books_in_redis(c, instance, final)
        c.close()
    finally:
        if back is not None:
            back.stop(timeout_s=2)
    assert list_segments(instance) == []


@pytest.mark.timeout(300)
def test_a_killed_redis_writer_is_restarted_and_writes_again(tmp_path, instance, redis_server):
    cfg = _redis_cfg(tmp_path, instance, redis_server.url)
    c = _client(redis_server.url)
    with running_pipeline(cfg, "--rate", "20000", "--duration", "120") as p:
        wait_running(cfg, min_msgs=1)
        st = Status(instance)
        try:
            d = _poll(st.collect, lambda d: d["redis"]["redis_writes"] > 10)
            pid = d["processes"]["redis"]["pid"]
            os.kill(pid, signal.SIGKILL)
            d = _poll(st.collect, lambda d: d["processes"]["redis"] is not None
                      and d["processes"]["redis"]["pid"] != pid and d["redis"]["state"] == "running")
            c.delete(f"obpipe:{instance}:bbo:AAA")  # the new writer writes every symbol on its first round
            _poll(lambda: c.hgetall(f"obpipe:{instance}:bbo:AAA"), lambda h: h.get("bid_qty", "") != "")
        finally:
            st.close()
        p.send_signal(signal.SIGINT)
        final, err = finish(p)
    assert final["restarts"]["redis"] == 1 and "redis died" in err and final["exit_code"] == 0
    assert final["applied"] == final["messages"] == final["feed"]["sent"]
    _final_books_in_redis(c, instance, final)
    c.close()
    assert list_segments(instance) == []


@pytest.mark.timeout(300)
def test_without_redis_server_the_run_goes_on_and_says_so(tmp_path, instance):
    cfg = _redis_cfg(tmp_path, instance)
    p = popen_obpipe("run", "--config", cfg, "--json", "--rate", "20000", "--duration", "1",
                     env={**ENV, "PATH": str(tmp_path)})  # (no redis-server on this PATH)
    final, err = finish(p)
    assert "running without Redis" in err and "no redis-server binary on PATH" in err
    assert final["redis"]["state"] == "unused" and final["redis"]["url"] is None
    assert final["applied"] == final["messages"] == final["feed"]["sent"] > 0
    assert list_segments(instance) == []


@pytest.mark.timeout(300)
def test_run_starts_its_own_redis_and_stops_it(tmp_path, instance):
    cfg = _redis_cfg(tmp_path, instance)
    p = popen_obpipe("run", "--config", cfg, "--json", "--rate", "20000", "--duration", "2")
    final, err = finish(p)
    r = final["redis"]
    assert r["embedded"] and r["url"].startswith("unix://") and r["redis_writes"] > 0 and r["redis_errors"] == 0
    pid = final["supervisor"]["redis_pid"]
    assert pid > 0 and f"Redis (redis-server) pid {pid}" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(r["url"][len("unix://"):])
    assert list_segments(instance) == []


@pytest.mark.timeout(300)
def test_no_redis_runs_without_a_server_or_writer_even_with_a_url_configured(tmp_path, instance, redis_server):
    cfg = _redis_cfg(tmp_path, instance, redis_server.url)
    final, err = finish(popen_obpipe("run", "--config", cfg, "--json", "--rate", "20000", "--duration", "1",
                                     "--no-redis"))
    assert final["redis"]["state"] == "unused" and final["redis"]["url"] is None and "Redis" not in err
    assert final["applied"] == final["messages"] > 0
    c = _client(redis_server.url)
    assert c.keys("*") == []  # nothing written
    c.close()


@pytest.mark.timeout(300)
def test_an_exchange_run_keeps_each_accounts_open_orders_and_positions_in_redis(tmp_path, instance, redis_server):
    """``obpipe run --source exchange``: its store writer puts every account's open-order
    count and positions in Redis while the traders trade, and the final ones (all
    cancelled on disconnect: open 0) equal the store's positions."""
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16,
                     extra=f'[redis]\nurl = "{redis_server.url}"\nttl_s = 20\n[exchange]\nport = 0\n'
                           f'[traders]\nclients = 4\nrate = 5000\n')
    c = _client(redis_server.url)
    seen_open = 0
    with running_pipeline(cfg, "--source", "exchange", "--duration", "120") as p:
        deadline = time.monotonic() + 100  # (a cold numba cache: the store writer compiles the matching kernels)
        while p.poll() is None and time.monotonic() < deadline and seen_open == 0:
            for k in c.keys(f"obpipe:{instance}:account:*"):
                seen_open = max(seen_open, int(c.hget(k, "open_orders") or 0))
            time.sleep(0.1)
        time.sleep(1)
        p.send_signal(signal.SIGINT)
        final, err = finish(p)
    assert seen_open > 0  # live: accounts with resting orders while they traded
    positions = json.loads(obpipe("positions", "--config", cfg, "--json", timeout=60).stdout)
    assert positions and final["book"]["trades"] > 0
    keys = c.keys(f"obpipe:{instance}:account:*")
    got = {}
    for k in keys:
        h = c.hgetall(k)
        assert h["open_orders"] == "0" and 0 < c.pttl(k) <= 20_000  # (anonymous: cancelled on disconnect)
        for f, v in h.items():
            if f.startswith("qty:"):
                got[(int(k.rsplit(":", 1)[1]), f[4:])] = int(v)
    assert got == {(r["account"], r["symbol_name"]): r["qty"] for r in positions}
    c.close()
    assert list_segments(instance) == []
