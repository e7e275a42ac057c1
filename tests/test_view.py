"""The terminal view of `obpipe stats` and the feed's progress bar (rich), and their
plain-text forms: styled trouble (drops, gaps, stale heartbeats and books) on a
terminal, not one escape code in a pipe, sparklines of each rate's history, and
`--json` as it was."""
from __future__ import annotations

import copy
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import orjson
import posix_ipc
import pytest
from rich.console import Console

from obpipe.feed_sim import feed as feedmod
from obpipe.ring.shm import list_segments
from obpipe.status import RateHistory, Status, render, render_view, sparkline
from tests.helpers import ENV, LOBSTER_MSG, REPO, finish, new_instance, popen_obpipe, run_config, \
    stop_process, wait_running

ESC = "\x1b"
RED = "\x1b[1;31m"  # status.DROP ("bold red") in the standard 16 colours
YELLOW = "\x1b[1;33m"  # status.GAP ("bold yellow")
#: a pipe must stay plain even when the environment asks rich for colour
COLOUR_ENV = dict(ENV, FORCE_COLOR="1", TTY_COMPATIBLE="1", TERM="xterm-256color")


def _obpipe_coloured(*args, timeout=100) -> subprocess.CompletedProcess:
    """``obpipe <args>`` into pipes, with ``COLOUR_ENV``."""
    return subprocess.run([sys.executable, "-m", "obpipe", *args], capture_output=True, text=True, cwd=REPO,
                          env=COLOUR_ENV, timeout=timeout)


# -- pure: the sparkline and the rate history -------------------------------------------

def test_sparkline_heights_are_linear_in_the_largest_value_with_zero_its_own_block():
    # 6 * v / 12 rounded half up is the height above the lowest block
    assert sparkline(range(13)) == "▁▃▃▄▄▅▅▆▆▇▇██"
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([-5, 0, 10]) == "▁▁█"  # a counter that restarted reads as no traffic
    assert sparkline([1, 1_000_000]) == "▂█"  # any loss at all stands above none
    assert sparkline([8, 4, 2, 1, 9, 3], width=3) == "▃█▄"  # the last `width`, scaled among themselves
    assert sparkline([]) == ""


def test_rate_history_keeps_the_last_samples_of_each_rate_in_order():
    h = RateHistory(size=3)
    for i in range(5):
        h.add({"rx_msgs_per_s": i * 10, **({"gap_msgs_per_s": i} if i >= 3 else {})})
    assert h.get("rx_msgs_per_s") == [20, 30, 40]
    assert h.get("gap_msgs_per_s") == [3, 4]
    assert h.get("nosuch") == []


# -- the feed's progress: rich on a terminal, plain lines elsewhere ------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_plain_lines_at_most_one_a_second():
    out = io.StringIO()
    p = feedmod.Progress("lobster x.csv", 1000, True, out)
    p.start()
    for done in range(0, 1000, 10):  # a burst of updates within a second: one line
        p.update(done)
    p.close(1000)
    lines = out.getvalue().split("\n")
    assert ESC not in out.getvalue() and "\r" not in out.getvalue()
    assert len(lines) == 3 and lines[2] == ""  # the first update, the last state; newline-ended
    assert lines[0].startswith("lobster x.csv [    ") and "  0/1,000 msgs" in lines[0]
    assert "[##############################] 100.0%  1,000/1,000 msgs" in lines[1] and "ETA 0:00" in lines[1]
    off = io.StringIO()
    q = feedmod.Progress("synthetic", None, False, off)
    q.start()
    q.update(5)
    q.close(5)
    assert off.getvalue() == ""


def test_progress_on_a_terminal_is_a_rich_bar_with_rate_and_time_left():
    out = _Tty()
    p = feedmod.Progress("synthetic", 4000, True, out)
    p.start()
    p.update(1000)
    p.close(4000)
    s = out.getvalue()
    assert ESC in s and "\x1b[?25h" in s  # drawn in place, and the cursor given back
    assert "4,000/4,000 msgs" in s and "100%" in s and " msgs/s" in s and "0:00:00" in s


# -- a running pipeline with real gaps and ring drops --------------------------------------

@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    """A pipeline losing messages on purpose: a packet in 50 dropped by the feed (gaps)
    and a 32-slot md ring that never holds a 45-message packet (ring drops)."""
    instance = new_instance()
    cfg = run_config(tmp_path_factory.mktemp("view"), instance, "[book]\nmax_batch = 16\n", md_capacity=32)
    p = popen_obpipe("run", "--config", cfg, "--json", "--quiet", "--rate", "20000", "--drop-every", "50",
                     "--duration", "120")
    try:
        wait_running(cfg, min_msgs=1000)
        yield cfg, instance
        p.send_signal(signal.SIGINT)
        finish(p, timeout=60)
    finally:
        stop_process(p)
        for seg in list_segments(instance):
            try:
                posix_ipc.unlink_shared_memory(seg)
            except posix_ipc.ExistentialError:
                pass


def _styled(d: dict, history=None, stale_s: float = 2.5) -> str:
    """The view laid out for 120 columns (one table under another) on a 220-column
    console (no counter line wraps)."""
    f = io.StringIO()
    Console(file=f, force_terminal=True, color_system="standard", width=220).print(
        render_view(d, history, stale_s, 120))
    return f.getvalue()


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_the_terminal_view_colours_drops_gaps_stale_heartbeats_and_stale_books(lossy):
    cfg, instance = lossy
    st = Status(instance, ["AAA", "BBB", "CCC", "DDD"])
    analysis_pid = 0
    try:
        d0 = st.collect()
        analysis_pid = d0["processes"]["analysis"]["pid"]
        os.kill(analysis_pid, signal.SIGSTOP)  # its heartbeat stops (the supervisor kills after 5 s)
        time.sleep(1.3)
        d = st.collect()
    finally:
        if analysis_pid:
            os.kill(analysis_pid, signal.SIGCONT)
        st.close()
    rx = d["rx"]
    assert rx["gap_messages"] > 0 and rx["ring_drops"] > 0 and rx["kernel_drops"] == 0
    assert d["processes"]["analysis"]["heartbeat_age_s"] >= 1.2 and d["analysis"]["state"] == "running"
    d = copy.deepcopy(d)
    d["symbols"]["BBB"]["stale"] = True  # (set by a lost MoldUDP64 range: not in this protocol)
    out = _styled(d, stale_s=1.0)
    assert f"gap_msgs {YELLOW}{rx['gap_messages']:,}" in out
    assert f"ring_drops {RED}{rx['ring_drops']:,}" in out
    assert "kernel_drops 0" in out  # no loss there: no style
    assert f"{RED}STALE (messages lost)" in out and f"{RED}BBB" in out and f"{RED}AAA" not in out
    row = next(line for line in out.splitlines()
               if re.match(rf"analysis +{analysis_pid} +running ", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line)))
    assert RED in row.split("running", 1)[1]  # its heartbeat cell
    assert RED not in next(line for line in out.splitlines() if re.match(r"supervisor +\d", line))
    # and the plain report of the same dict: the same words, not one escape code
    plain = render(d)
    assert ESC not in plain and f"gap_msgs {rx['gap_messages']:,}" in plain and "STALE (messages lost)" in plain


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_stats_into_a_pipe_has_no_escape_codes_even_when_colour_is_forced(lossy):
    cfg, _ = lossy
    once = _obpipe_coloured("stats", "--config", cfg)
    assert once.returncode == 0, once.stderr[-2000:]
    assert ESC not in once.stdout and "book writer pid" in once.stdout and "applied msgs" in once.stdout
    assert "gap_msgs " in once.stdout and "high water" in once.stdout
    # --watch into a pipe: one report per interval, a blank line between; Ctrl-C ends it cleanly
    p = popen_obpipe("stats", "--config", cfg, "--watch", "--interval", "0.3", env=COLOUR_ENV)
    try:
        time.sleep(2.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
        took = time.monotonic() - t0
    finally:
        stop_process(p)
    assert p.returncode == 0 and took < 2.0 and "Traceback" not in err, (p.returncode, took, err[-2000:])
    assert ESC not in out and out.count("book writer pid") >= 3 and "\n\ninstance " in out


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_stats_json_keeps_its_keys_and_its_format(lossy):
    cfg, _ = lossy
    s = _obpipe_coloured("stats", "--config", cfg, "--json")
    assert s.returncode == 0, s.stderr[-2000:]
    d = json.loads(s.stdout)
    assert s.stdout == orjson.dumps(d, option=orjson.OPT_INDENT_2).decode() + "\n"  # 2-space indent, as before
    # the keys of today's report (more may come; none may go)
    assert {"instance", "book", "feed", "rx", "supervisor", "analysis", "publisher", "redis", "ticks", "processes",
            "latency_ns", "rings", "symbols", "snapshot_read_retries", "rates"} <= d.keys()
    assert {"pid", "state", "heartbeat_age_s", "msgs", "batches", "events", "events_dropped"} <= d["book"].keys()
    assert {"packets", "messages", "gap_messages", "ring_drops", "kernel_drops", "session"} <= d["rx"].keys()
    assert {"feed_msgs_per_s", "rx_msgs_per_s", "rx_packets_per_s", "applied_msgs_per_s", "events_per_s",
            "analysed_events_per_s", "signals_per_s", "published_per_s", "gap_msgs_per_s",
            "ring_drops_per_s"} <= d["rates"].keys()
    assert {"p50", "p99", "p999", "count"} <= d["latency_ns"].keys()
    assert d["rings"].keys() >= {"md", "events", "signals"}
    assert d["rings"]["md"].keys() >= {"fill", "high_water", "capacity"}
    assert list(d["symbols"]) == ["AAA", "BBB", "CCC", "DDD"]
    assert {"bid_px_tick", "ask_px_tick", "spread_tick", "imbalance", "stale", "bids",
            "asks"} <= d["symbols"]["AAA"].keys()
    assert {"pid", "cpu_percent", "core", "heartbeat_age_s"} <= d["processes"]["book"].keys()


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_stats_watch_on_a_terminal_redraws_in_place_with_sparklines_and_stops_on_ctrl_c(lossy):
    cfg, _ = lossy
    master, slave = pty.openpty()
    env = {k: v for k, v in ENV.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(TERM="xterm-256color", COLUMNS="170", LINES="80")
    p = subprocess.Popen([sys.executable, "-m", "obpipe", "stats", "--config", cfg, "--watch", "--interval", "0.3"],
                         stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    out, t_int, took = b"", None, None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            if t_int is None and out.count(b"history") >= 4:  # four frames with a history column
                t_int = time.monotonic()
                p.send_signal(signal.SIGINT)
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # (the child closed the terminal)
                    chunk = b""
                if not chunk and p.poll() is not None:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        took = time.monotonic() - t_int if t_int is not None else None
    finally:
        os.close(master)
        stop_process(p)
    text = out.decode(errors="replace")
    assert t_int is not None, text[-3000:]
    assert p.returncode == 0 and took < 2.0 and "Traceback" not in text, (p.returncode, took, text[-3000:])
    assert ESC in text and "█" in text  # styled, and a rate's largest sample as the full block
    assert f"{ESC}[?25h" in text[-200:]  # the cursor given back at the end
    assert text.count("instance ") >= 4 and "book writer pid" in text


# -- the replay's progress into a pipe -------------------------------------------------------

@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_replay_progress_into_a_pipe_is_plain_lines(tmp_path):
    from obpipe.publisher.broker import free_port

    out = _obpipe_coloured("replay", str(LOBSTER_MSG), "--port", str(free_port()), "--count", "24000", "--rate",
                           "16000", "--progress")
    assert out.returncode == 0, out.stderr[-2000:]
    err = out.stderr
    assert ESC not in err and "\r" not in err
    lines = [x for x in err.split("\n") if x]
    seconds = float(re.search(r" in ([0-9.]+) s ", out.stdout).group(1))  # of sending (1.5 at this rate)
    assert 2 <= len(lines) <= 2 + seconds  # at most one line a second, and the last
    assert all(x.startswith("lobster AMZN_") and " msgs/s" in x for x in lines), lines
    assert "100.0%  24,000/24,000 msgs" in lines[-1] and err.endswith("\n")
