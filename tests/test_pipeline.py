"""The running pipeline under replay, pauses, crashes and hangs (real processes, real
UDP on 127.0.0.1): capture/replay reproduces a run exactly, a LOBSTER replay builds the
right book, a paused book writer makes rx drop and count, a killed or hung rx is
restarted, an external feed drives a feedless run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest

from obpipe.ring.placement import usable_cores
from obpipe.ring.runtime import realtime_permitted

from obpipe.engine.book import Book
from obpipe.ring import schema
from obpipe.ring.shm import list_segments
from obpipe.ring.spsc import Ring
from obpipe.ring.stats import ROW_BOOK, ROW_RX, StatsBlock
from tests.helpers import (LOBSTER_MSG, LOBSTER_OB, finish, obpipe, popen_obpipe, run_config, running_pipeline, started,
                           wait_running)

T = schema.RX_TRACKER_BASE


def _books(d):
    return {name: (s["bids"], s["asks"]) for name, s in d["symbols"].items()}


def _counts(d):
    return {k: d[k] for k in ("packets", "messages", "gap_messages", "duplicates", "out_of_order", "malformed",
                              "applied", "ring_drops")}


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_replaying_a_faulted_capture_reproduces_the_run_exactly(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 20)
    cap = tmp_path / "run.obcap"
    a = obpipe("run", "--config", cfg, "--messages", "150000", "--rate", "1000000", "--seed", "4",
               "--drop-every", "50", "--dup-every", "70", "--reorder-every", "90", "--truncate-every", "110",
               "--corrupt-every", "130", "--capture", str(cap), "--json", "--quiet")
    assert a.returncode == 0, a.stderr[-3000:]
    b = obpipe("run", "--config", cfg, "--replay", str(cap), "--rate", "1000000", "--json", "--quiet")
    assert b.returncode == 0, b.stderr[-3000:]
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert da["kernel_drops"] == db["kernel_drops"] == 0
    assert da["feed"]["captured"] == da["feed"]["datagrams"] == db["feed"]["datagrams"] == da["packets"]
    assert da["gap_messages"] > 0 and da["duplicates"] > 0 and da["out_of_order"] > 0 and da["malformed"] > 0
    assert _counts(db) == _counts(da)
    assert _books(db) == _books(da)
    assert list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_lobster_replay_through_the_pipeline_builds_the_offline_book(tmp_path, instance):
    from obpipe.engine.lobster import load_lobster

    cfg = run_config(tmp_path, instance, md_capacity=1 << 17,
                     extra='[book]\nsymbols = ["AMZN"]\nladder_width = 8192\n')
    out = obpipe("run", "--config", cfg, "--replay", str(LOBSTER_MSG), "--rate", "500000", "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    md = load_lobster(str(LOBSTER_MSG))
    assert d["feed"]["sent"] == d["applied"] == len(md) and d["gap_messages"] == 0 and d["kernel_drops"] == 0
    ref = Book([8192], 10, uncross=True)  # (a LOBSTER replay uncrosses; the stream's corrections leave it nothing)
    ref.apply(md)
    assert d["book"]["uncrossed_levels"] == ref.counters()["uncrossed_levels"] and d["book"]["crossed"] == 0
    got = d["symbols"]["AMZN"]
    assert [tuple(x) for x in got["bids"]] == ref.top(0, 0, 10)
    assert [tuple(x) for x in got["asks"]] == ref.top(0, 1, 10)
    # the day ends on the order-book file's last row (the replay stream's corrections)
    from obpipe.engine import lobster

    _, d_ = lobster.load_messages(LOBSTER_MSG, return_tick=True)
    last = lobster.load_orderbook(LOBSTER_OB, tick_divisor=d_)[-1]
    assert (tuple(got["bids"][0]), tuple(got["asks"][0])) == ((last[2], last[3]), (last[0], last[1]))


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_paused_book_writer_fills_the_md_ring_rx_drops_and_counts_and_all_resumes(tmp_path, instance):
    # the way before the doorbell and real-time scheduling: both sleep when idle, normal priority
    cfg = run_config(tmp_path, instance, md_capacity=4096, extra="[supervisor]\nheartbeat_timeout_s = 60.0\n"
                     "[backoff]\nwake = \"sleep\"\n[pinning]\nrealtime = false\n")
    with running_pipeline(cfg, "--rate", "200000", "--duration", "7") as p:
        d = wait_running(cfg, min_msgs=20_000)
        assert d["processes"]["rx"]["sched"] == d["processes"]["book"]["sched"] == "normal"
        stats = StatsBlock.attach(instance)
        md = Ring.attach(instance, "md", schema.MD_DTYPE)
        try:
            rx, book = stats.row(ROW_RX), stats.row(ROW_BOOK)
            os.kill(d["book"]["pid"], signal.SIGSTOP)
            try:
                time.sleep(0.5)
                pk0, drops0, applied0 = int(rx[T + 3]), int(rx[T + 16]), int(book[schema.ST_BOOK_MSGS])
                time.sleep(1.0)
                # rx keeps receiving; the ring is full, so it drops and counts; the book is frozen
                assert int(rx[T + 3]) > pk0 + 100
                assert int(rx[T + 16]) > drops0 > 0 and len(md) == md.capacity
                assert int(book[schema.ST_BOOK_MSGS]) == applied0
            finally:
                os.kill(d["book"]["pid"], signal.SIGCONT)
            time.sleep(1.0)
            assert int(book[schema.ST_BOOK_MSGS]) > applied0 + 50_000  # carries on
        finally:
            stats.close()
            md.close()
        final, _ = finish(p)
    assert final["ring_drops"] > 0 and final["gap_messages"] == 0 and final["kernel_drops"] == 0
    assert final["messages"] == final["feed"]["sent"]
    assert final["applied"] == final["rx"]["delivered"] == final["messages"] - final["ring_drops"]
    assert final["rings"]["md"]["high_water"] == 4096
    assert final["restarts"] == {"book": 0, "rx": 0, "analysis": 0, "feed": 0} and list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_killed_rx_is_restarted_on_its_port_and_the_run_carries_on(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16)
    with running_pipeline(cfg, "--rate", "100000", "--duration", "8") as p:
        d = wait_running(cfg, min_msgs=20_000)
        assert d["rates"]["applied_msgs_per_s"] > 10_000 and d["rates"]["feed_msgs_per_s"] > 10_000
        assert 0 < d["rings"]["md"]["high_water"] <= d["rings"]["md"]["capacity"]
        assert d["processes"]["rx"]["heartbeat_age_s"] < 2 and d["processes"]["feed"]["pid"] > 0
        # [pinning] realtime = "auto": SCHED_FIFO where permitted on 2+ cores, and on 2 cores
        # rx and the book writer share one core (the feed and the supervisor the other)
        rt = len(usable_cores()) >= 2 and realtime_permitted(10)
        want = "fifo:10" if rt else "normal"
        assert d["processes"]["rx"]["sched"] == d["processes"]["book"]["sched"] == want
        if rt and len(usable_cores()) == 2:
            assert d["processes"]["rx"]["affinity"] == d["processes"]["book"]["affinity"] == usable_cores()[-1:]
            assert d["processes"]["feed"]["affinity"] == usable_cores()[:1]
        os.kill(d["rx"]["pid"], signal.SIGKILL)
        time.sleep(2.0)
        later = wait_running(cfg)
        assert later["processes"]["rx"]["sched"] == want  # a restarted rx too
        assert later["rx"]["pid"] != d["rx"]["pid"] and later["rx"]["port"] == d["rx"]["port"]
        final, stderr = finish(p)
    assert "rx died (exit code -9); restarting (1/3)" in stderr
    assert final["restarts"]["rx"] == 1 and final["supervisor"]["restarts"] == 1
    assert final["applied"] > later["book"]["msgs"] >= d["book"]["msgs"]
    # what rx missed while down is a counted gap: every message sent is received or counted
    # missing (one packet of slack: the kill may land inside a packet's bookkeeping)
    assert abs(final["feed"]["sent"] - final["messages"] - final["gap_messages"]) <= 45
    assert final["applied"] == final["rx"]["delivered"] and final["ring_drops"] == 0


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_hung_rx_is_killed_on_its_stale_heartbeat_and_restarted(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16, extra="[supervisor]\nheartbeat_timeout_s = 1.0\n")
    with running_pipeline(cfg, "--rate", "100000", "--duration", "8") as p:
        d = wait_running(cfg, min_msgs=20_000)
        os.kill(d["rx"]["pid"], signal.SIGSTOP)
        final, stderr = finish(p)
    assert f"rx (pid {d['rx']['pid']}) heartbeat stale" in stderr and "restarting (1/3)" in stderr
    assert final["supervisor"]["stale_kills"] == 1 and final["restarts"]["rx"] == 1
    assert final["gap_messages"] > 0 and final["applied"] > d["book"]["msgs"]


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_run_without_a_feed_is_driven_by_obpipe_feed_sent_to_its_instance(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17)
    with running_pipeline(cfg, "--no-feed") as p:
        wait_running(cfg)
        f = obpipe("feed", "--instance", instance, "--count", "90000", "--rate", "500000", "--seed", "9", "--json")
        assert f.returncode == 0, f.stderr[-2000:]
        sent = json.loads(f.stdout)
        assert sent["messages"] == 90_000 and sent["datagrams"] == 2001  # 2,000 packets + the closing heartbeat
        deadline = time.monotonic() + 30
        while wait_running(cfg)["book"]["msgs"] < 90_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        final, _ = finish(p)
    assert final["applied"] == final["messages"] == 90_000 and final["gap_messages"] == 0
    assert final["rx"]["heartbeats"] == 1 and list_segments(instance) == []


def test_an_unrestartable_part_in_the_restart_list_is_a_config_error(tmp_path, instance):
    out = obpipe("run", "--config", run_config(tmp_path, instance, extra='[supervisor]\nrestart = ["rx", "book"]\n'),
                 "--messages", "10", timeout=60)
    assert out.returncode == 2 and "supervisor.restart: 'book' is not restartable" in out.stderr


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_lobster_replay_is_published_under_its_files_ticker_in_utc_epoch_time(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 17)  # [book] symbols: the defaults, AAA .. DDD
    out = obpipe("run", "--config", cfg, "--replay", str(LOBSTER_MSG), "--count", "3000", "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert list(d["symbols"]) == ["AMZN"] and d["symbols"]["AMZN"]["msgs_applied"] == 3000
    ts = d["symbols"]["AMZN"]["ts_exch_ns"]  # 2012-06-21, a few seconds after 09:30 New York = 13:30 UTC
    assert 1_340_285_400 * 10**9 <= ts < 1_340_285_400 * 10**9 + 3_600 * 10**9
    # --symbol names one: an index of [book] symbols, or a name
    out = obpipe("run", "--config", cfg, "--replay", str(LOBSTER_MSG), "--count", "300", "--symbol", "1",
                 "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["symbols"]["BBB"]["msgs_applied"] == 300 and d["symbols"]["AAA"]["msgs_applied"] == 0
    bad = obpipe("run", "--config", cfg, "--replay", str(LOBSTER_MSG), "--symbol", "9", "--json", "--quiet")
    assert bad.returncode == 2 and "--symbol 9" in bad.stderr
    assert list_segments(instance) == []


# -- regressions a review demonstrated (each test failed before its fix) -----------------

@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_book_writer_exits_when_its_supervisor_is_killed(tmp_path, instance):
    cfg = run_config(tmp_path, instance)
    writer = 0
    try:
        with started(popen_obpipe("run", "--config", cfg, "--rate", "20000", "--quiet", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)) as p:
            writer = wait_running(cfg)["book"]["pid"]
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and psutil.pid_exists(writer) and \
                    psutil.Process(writer).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.1)
            assert not psutil.pid_exists(writer) or psutil.Process(writer).status() == psutil.STATUS_ZOMBIE
            out = obpipe("clean", "--instance", instance, timeout=60)  # the killed supervisor's segments
            assert out.returncode == 0 and out.stdout.count("removed") == 5  # stats, md, events, signals, snap
            assert list_segments(instance) == []
    finally:
        if writer and psutil.pid_exists(writer):
            try:
                os.kill(writer, signal.SIGKILL)
            except ProcessLookupError:
                pass
