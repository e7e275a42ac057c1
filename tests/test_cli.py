"""The command line as a user runs it: `obpipe run`, `stats`, `clean`, config errors."""
from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from obpipe import config
from obpipe.ring.shm import list_segments
from tests.helpers import finish, obpipe, run_config, running_pipeline, wait_running


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_run_bounded_count_applies_every_message_and_cleans_up(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 20)  # room for the whole run: no drops
    # paced: unpaced, the sender can outrun rx (they share a core here) and overflow the
    # socket buffer, and then the exact counts below would not hold
    out = obpipe("run", "--config", cfg, "--count", "300000", "--rate", "1000000", "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["exit_code"] == 0
    assert d["feed"]["sent"] == 300_000 and d["kernel_drops"] == 0
    assert d["messages"] == d["applied"] == d["book"]["msgs"] == 300_000
    assert d["gap_messages"] == d["duplicates"] == d["malformed"] == d["ring_drops"] == 0
    assert d["packets"] == d["feed"]["datagrams"]
    lat = d["latency_ns"]  # every message rx stamped got a receive -> apply latency
    assert lat["count"] == 300_000 and 0 < lat["p50"] <= lat["p99"] <= lat["p999"] < 10**10
    assert d["book"]["bad_msgs"] == 0 and d["book"]["qty_underflow"] == 0 and d["book"]["crossed"] == 0
    # the analysis consumed every event the book writer emitted (no stand-in drain)
    assert d["book"]["events"] == d["analysis"]["events"] > 0 and d["supervisor"]["events_read"] == 0
    assert d["analysis"]["summaries"] > 0 and d["book"]["events_dropped"] == 0
    assert d["book"]["state"] == "stopped"
    sym = d["symbols"]["AAA"]
    assert sym["bid_px_tick"] < sym["ask_px_tick"] and len(sym["bids"]) == 10
    assert list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_full_md_ring_drops_and_counts_never_blocks(tmp_path, instance):
    cfg = run_config(tmp_path, instance, "[book]\nmax_batch = 16\n", md_capacity=32)
    out = obpipe("run", "--config", cfg, "--count", "1000000", "--rate", "0", "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["ring_drops"] > 0  # 45-message packets into a 32-slot ring: never all fit
    assert d["rx"]["delivered"] + d["ring_drops"] + d["rx"]["duplicate_messages"] == d["messages"]
    assert d["applied"] == d["rx"]["delivered"]  # what the ring accepted was applied
    assert list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_bounded_run_with_injected_drops_counts_them_exactly(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 21)
    out = obpipe("run", "--config", cfg, "--messages", "450000", "--rate", "1000000", "--drop-every", "1000",
                 "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["kernel_drops"] == 0
    assert d["feed"]["injected"]["drop"] == 10  # 10,000 packets of 45
    assert d["gap_messages"] == 10 * 45 and d["applied"] == 450_000 - 450
    assert d["duplicates"] == d["out_of_order"] == d["malformed"] == d["ring_drops"] == 0


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_stats_reads_a_running_instance_and_ctrl_c_stops_it_cleanly(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16)
    with running_pipeline(cfg, "--rate", "50000") as p:
        d = wait_running(cfg, min_msgs=1001)
        assert d["symbols"]["AAA"]["msgs_applied"] > 0
        human = obpipe("stats", "--config", cfg, timeout=60)
        assert "book writer pid" in human.stdout and "AAA" in human.stdout
        assert "applied msgs" in human.stdout and "high water" in human.stdout and "feed pid" in human.stdout
        p.send_signal(signal.SIGINT)
        final, _ = finish(p, timeout=60)
        # every message sent is applied or counted: nothing vanishes, even when stopped mid-stream
        assert final["packets"] == final["feed"]["datagrams"] and final["gap_messages"] == 0
        assert final["messages"] == final["feed"]["sent"]
        assert final["applied"] == final["rx"]["delivered"] == final["messages"] - final["ring_drops"]
        assert final["applied"] >= d["book"]["msgs"]
        assert list_segments(instance) == []


def test_stats_without_an_instance_says_so(tmp_path, instance):
    s = obpipe("stats", "--config", run_config(tmp_path, instance), timeout=60)
    assert s.returncode == 1 and f"no running instance '{instance}'" in s.stderr


def test_unknown_config_key_is_an_error_naming_it(tmp_path, instance):
    out = obpipe("run", "--config", run_config(tmp_path, instance, "[book]\nladder_widht = 10\n"), "--count", "10",
                 timeout=60)
    assert out.returncode == 2
    assert "book.ladder_widht: unknown key" in out.stderr and "Traceback" not in out.stderr
    out = obpipe("run", "--config", run_config(tmp_path, instance, "[book]\nmax_batch = 0\n"), timeout=60)
    assert out.returncode == 2 and "book.max_batch: must be 1.." in out.stderr
    out = obpipe("run", "--config", run_config(tmp_path, instance, "[book]\nsymbols = 5\n"), timeout=60)
    assert out.returncode == 2 and "book.symbols: expected" in out.stderr


@pytest.mark.parametrize("table, msg", [
    ({"analysis": {"sweep": {"levelz": 3}}}, "analysis.sweep.levelz: unknown key"),
    ({"analysis": {"sweep": {"levels": 1}}}, "analysis.sweep.levels: must be >= 2"),
    ({"analysis": {"withdrawal": {"drop_fraction": 1.5}}}, "analysis.withdrawal.drop_fraction: must be in (0, 1]"),
    ({"analysis": {"spread": {"ratio": 2.0, "rearm_ratio": 3.0}}}, "analysis.spread.rearm_ratio: must be <= ratio"),
    ({"analysis": {"summary_interval_ms": 0}}, "analysis.summary_interval_ms: must be a finite number > 0"),
    ({"kafka": {"bootstrap_servers": "localhost"}}, "kafka.bootstrap_servers: must be host:port"),
    ({"kafka": {"client": {"bootstrap.servers": "x:1"}}}, "kafka.client.bootstrap.servers: set by obpipe"),
    ({"kafka": {"topic_prefix": "a b"}}, "kafka.topic_prefix"),
])
def test_bad_analysis_and_kafka_settings_name_the_key(table, msg):
    with pytest.raises(config.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config.from_dict(table)


def test_clean_reports_nothing_to_do_or_what_it_removed(instance):
    out = obpipe("clean", "--instance", instance, timeout=60)
    assert out.returncode == 0 and "no stale obpipe segments" in out.stdout


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_dying_book_writer_gives_a_nonzero_exit(tmp_path, instance):
    cfg = run_config(tmp_path, instance)
    with running_pipeline(cfg, "--rate", "20000") as p:
        os.kill(wait_running(cfg)["book"]["pid"], signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 1
        assert "book died (exit code -9) (not restartable)" in stderr, stderr[-2000:]
        assert list_segments(instance) == []


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_final_books_equal_a_reference_built_offline_from_the_delivered_messages(tmp_path, instance):
    import socket

    import numpy as np

    from obpipe.engine.book import Book
    from obpipe.feed_sim.sender import UdpSender
    from obpipe.feed_sim.synth import SynthParams, generate
    from obpipe.feed_sim.wire import DUPLICATE, SEND, Faults

    n = 200_000
    cfg = run_config(tmp_path, instance, md_capacity=1 << 20)
    out = obpipe("run", "--config", cfg, "--messages", str(n), "--rate", "1000000", "--seed", "3",
                 "--drop-every", "50", "--dup-every", "70", "--reorder-every", "90", "--json", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["kernel_drops"] == 0 and d["ring_drops"] == 0 and d["gap_messages"] > 0 and d["out_of_order"] > 0
    # offline: the same stream and fault plan (decided per packet number, so independent
    # of how the feed chunks it), keeping what arrives in order
    md = generate(n, SynthParams(n_symbols=4, seed=3))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sender = UdpSender(sink.getsockname(), faults=Faults(drop_every=50, duplicate_every=70, reorder_every=90,
                                                         seed=3))
    sender.send(md)
    sender.close()
    sink.close()
    a = np.concatenate(sender.actions)
    delivered = md[np.repeat((a == SEND) | (a == DUPLICATE), 45)[:n]]
    assert len(delivered) == d["applied"]
    ref = Book([4096] * 4, 10)
    ref.apply(delivered)
    for s, name in enumerate(("AAA", "BBB", "CCC", "DDD")):
        got = d["symbols"][name]
        assert [tuple(x) for x in got["bids"]] == ref.top(s, 0, 10), name
        assert [tuple(x) for x in got["asks"]] == ref.top(s, 1, 10), name


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_malformed_packets_from_the_command_line_are_counted_exactly_and_never_applied(tmp_path, instance):
    cfg = run_config(tmp_path, instance, md_capacity=1 << 20)
    out = obpipe("run", "--config", cfg, "--messages", "225000", "--rate", "1000000", "--truncate-every", "97",
                 "--corrupt-every", "101", "--bad-magic-every", "103", "--bad-version-every", "107", "--json",
                 "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    injected = sum(d["feed"]["injected"][k] for k in ("truncate", "corrupt", "bad_magic", "bad_version"))
    assert injected > 150 and d["malformed"] == injected and d["kernel_drops"] == 0
    r = d["rx"]
    assert r["malformed_length"] == d["feed"]["injected"]["truncate"]
    assert r["malformed_check"] == d["feed"]["injected"]["corrupt"]
    assert r["malformed_magic"] == d["feed"]["injected"]["bad_magic"]
    assert r["malformed_version"] == d["feed"]["injected"]["bad_version"]
    assert d["gap_messages"] == 45 * injected and d["applied"] == 225_000 - 45 * injected
    assert d["book"]["bad_msgs"] == 0  # nothing malformed reached the book


# -- regressions a review demonstrated (each test failed before its fix) -----------------

def test_bad_command_line_values_are_clear_errors(tmp_path, instance):
    cfg = run_config(tmp_path, instance)
    out = obpipe("run", "--config", cfg, "--rate", "-5", timeout=60)
    assert out.returncode == 2 and "run.rate: must be >= 0" in out.stderr and "Traceback" not in out.stderr
    out = obpipe("run", "--config", cfg, "--instance", "bad name", timeout=60)
    assert out.returncode == 2 and "instance.name" in out.stderr and "Traceback" not in out.stderr


def test_supervisor_failing_after_creating_segments_removes_them(instance):
    from obpipe.supervisor import RunOptions, run
    from obpipe import config

    cfg = config.from_dict({"instance": {"name": instance}, "rings": {"md_capacity": 64, "events_capacity": 64}})
    err = []

    def in_thread():  # signal.signal() raises outside the main thread, after the segments exist
        try:
            run(cfg, RunOptions(count=10, quiet=True))
        except ValueError as e:
            err.append(e)

    cores = os.sched_getaffinity(0)
    try:
        t = threading.Thread(target=in_thread)
        t.start()
        t.join(60)
    finally:  # run() pinned its process, this one, to the supervisor's core: every later child would inherit it
        os.sched_setaffinity(0, cores)
    assert err and "main thread" in str(err[0])
    assert list_segments(instance) == []
