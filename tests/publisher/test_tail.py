"""``obpipe tail``: line formatting, reading from a live broker, filtering, bad input."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

import orjson
import pytest

from obpipe.publisher.broker import ensure_topics, free_port
from obpipe.publisher.schema import SIGNAL_KINDS, topic_names
from obpipe.publisher.tail import format_line, main
from tests.helpers import REPO, make_signal, make_summary, produce, started

pytestmark = [pytest.mark.timeout(60)]
SIGNALS, SUMMARIES = topic_names()


def test_format_signal_line():
    line = format_line(make_signal("sweep"))
    assert line.startswith("09:30:01.234 AMZN  sweep ")
    for part in (" bid ", "levels=4", "volume=1200", "trades=5", "22383->22386", "in 2.1 ms"):
        assert part in line


@pytest.mark.parametrize("kind,parts", [
    ("spread_widening", [" - ", "spread=6 ticks", "baseline=2.1", "ratio=2.9x"]),
    ("imbalance", ["tob=+0.62", "depth=+0.40", "bid_depth=1200", "ask_depth=514"]),
    ("microprice_shift", ["shift=-3.5 ticks", "22384.5->22381.0", "in 12.0 ms"]),
    ("liquidity_withdrawal", ["depth 3000->900 (-70%)", "in 50.0 ms", "touch 22381"]),
])
def test_format_every_kind(kind, parts):
    line = format_line(make_signal(kind))
    assert f"AMZN  {kind}" in line
    for part in parts:
        assert part in line, (part, line)


def test_format_summary_line():
    line = format_line(make_summary())
    assert line.startswith("09:30:01.300 AMZN  summary")
    for part in ("bid 22381 x 300", "ask 22383 x 200", "spread 2.0/2.4/3.0", "imb +0.20", "vol b/s 500/300",
                 "msgs 420/s"):
        assert part in line, (part, line)
    empty = format_line(make_summary(bbo={"bid_tick": None, "ask_tick": None, "bid_qty": 0, "ask_qty": 0},
                                     spread_ticks={"min": None, "mean": None, "max": None},
                                     imbalance={"tob": None, "depth": None}, mid_tick=None))
    assert "bid - x 0" in empty and "spread -/-/-" in empty and "imb -" in empty


def test_format_rejects_bad_messages():
    with pytest.raises(KeyError):
        format_line({"type": "signal", "v": 1})
    with pytest.raises(ValueError):
        format_line({"type": "quote"})


def _signals(kinds, symbol="AMZN"):
    return [(symbol, make_signal(k, symbol=symbol, seq=100 + i)) for i, k in enumerate(kinds)]


@pytest.mark.multiproc
def test_tail_json_from_beginning_stops_at_count(kafka_broker, capsys):
    bs = kafka_broker.bootstrap
    assert ensure_topics(bs, topic_names()) == []
    produce(bs, SIGNALS, _signals(["spread_widening", "sweep", "imbalance"]))
    assert main(["--kafka", bs, "--from-beginning", "--count", "2", "--json", "--timeout", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [orjson.loads(x)["kind"] for x in out] == ["spread_widening", "sweep"]


@pytest.mark.multiproc
def test_tail_kind_filter_and_summaries(kafka_broker, capsys):
    bs = kafka_broker.bootstrap
    assert ensure_topics(bs, topic_names()) == []
    produce(bs, SIGNALS, _signals(["spread_widening", "sweep", "imbalance", "sweep"]))
    produce(bs, SUMMARIES, [("AMZN", make_summary())])
    assert main(["--kafka", bs, "--from-beginning", "--kind", "sweep", "--count", "2", "--timeout", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(" sweep " in x for x in out) and "levels=4" in out[0]

    assert main(["--kafka", bs, "--from-beginning", "--what", "all", "--kind", "imbalance", "--count", "2",
                 "--timeout", "10"]) == 0
    out = sorted(capsys.readouterr().out.splitlines())
    assert len(out) == 2 and " imbalance " in out[0] and " summary " in out[1]


@pytest.mark.multiproc
def test_tail_skips_bad_messages_and_continues(kafka_broker, capsys):
    bs = kafka_broker.bootstrap
    assert ensure_topics(bs, topic_names()) == []
    produce(bs, SIGNALS, [("AMZN", b"not json {"), ("AMZN", make_signal("sweep") | {"v": 2}), ("AMZN", b"[1, 2]"),
                          ("AMZN", {"type": "signal", "v": 1}), *_signals(["imbalance"])])
    assert main(["--kafka", bs, "--from-beginning", "--count", "1", "--timeout", "10"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines() == [format_line(make_signal("imbalance", seq=100))]
    skipped = [x for x in cap.err.splitlines() if x.startswith("skipped: ")]
    assert len(skipped) == 4, cap.err
    assert "not JSON" in skipped[0] and "v=2" in skipped[1] and "not a JSON object" in skipped[2]
    assert "skipped 4 message(s)" in cap.err


@pytest.mark.multiproc
def test_tail_shows_only_new_messages_by_default_and_ctrl_c_exits_0(kafka_broker):
    bs = kafka_broker.bootstrap
    assert ensure_topics(bs, topic_names()) == []
    produce(bs, SIGNALS, _signals(["sweep"]))  # before tail starts: not shown
    proc = subprocess.Popen([sys.executable, "-m", "obpipe.publisher.tail", "--kafka", bs, "--timeout", "20"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with started(proc, grace_s=5):
        # tail's assignment time is unknown: keep producing new signals until one shows
        line, deadline = "", time.monotonic() + 15
        while not line and time.monotonic() < deadline and proc.poll() is None:
            produce(bs, SIGNALS, _signals(["imbalance"]))
            if select.select([proc.stdout], [], [], 0.3)[0]:
                line = proc.stdout.readline()  # tail writes whole lines, flushed
        assert " imbalance " in line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and err == ""
        assert " sweep " not in line + out


@pytest.mark.multiproc
def test_tail_waits_for_topic_then_reads_it_all(kafka_broker):
    bs = kafka_broker.bootstrap
    proc = subprocess.Popen([sys.executable, "-m", "obpipe.publisher.tail", "--kafka", bs, "--count", "1", "--timeout", "20"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with started(proc, grace_s=5):
        assert "waiting for topic obpipe.signals" in proc.stderr.readline()
        produce(bs, SIGNALS, _signals(["liquidity_withdrawal"]))  # auto-created after tail started
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "liquidity_withdrawal" in out and "depth 3000->900" in out, err


def test_tail_unreachable_broker_says_so_once(capsys):
    t0 = time.monotonic()
    assert main(["--kafka", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 0
    assert time.monotonic() - t0 < 6
    err = capsys.readouterr().err
    assert err.count("cannot reach the Kafka broker") == 1, err


def test_bad_kind_exits_2_naming_valid_kinds(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--kind", "sweep", "--kind", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and all(k in err for k in SIGNAL_KINDS)
