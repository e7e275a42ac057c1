"""Ctrl-C ends every long-running command within 2 s, wherever it is, with status 0
and no traceback (ring.interrupt): `obpipe tail` at random moments (starting,
waiting for a topic, reading), `obpipe kafka`, `obpipe feed`, `obpipe exchange`."""
from __future__ import annotations

import os
import random
import select
import signal
import time

import pytest

from obpipe.publisher.broker import ensure_topics, free_port
from obpipe.publisher.schema import topic_names
from tests.helpers import make_signal, popen_obpipe, produce, started

pytestmark = [pytest.mark.multiproc]
LIMIT_S = 2.0


def _wait_line(proc, stream, needle: str, timeout_s: float) -> str:
    """Read ``stream`` until a line holding ``needle`` (AssertionError on timeout or exit)."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        if select.select([stream], [], [], 0.2)[0]:
            line = stream.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return line
    raise AssertionError(f"no line with {needle!r} within {timeout_s} s; got {seen!r}")


def _wait_threads(proc, timeout_s: float) -> None:
    """Wait until ``proc`` runs more than one thread (its Kafka client has started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(os.listdir(f"/proc/{proc.pid}/task")) > 1:
                return
        except FileNotFoundError:
            break
        time.sleep(0.01)
    raise AssertionError(f"tail never started its Kafka client (exit status {proc.poll()})")


def _interrupt(proc) -> tuple[float, str, str]:
    """SIGINT, then the seconds until the process ended, and its remaining output (a
    process still running after 15 s is left to the caller's ``started`` to stop)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    return time.monotonic() - t0, out, err


def _assert_clean_stop(proc, dt, err):
    assert dt < LIMIT_S, f"took {dt:.2f} s to stop after SIGINT; stderr: {err[-1500:]}"
    assert proc.returncode == 0, (proc.returncode, err[-1500:])
    assert "Traceback" not in err, err[-1500:]


@pytest.mark.timeout(240)
def test_ctrl_c_ends_tail_within_2_s_at_any_moment(kafka_broker):
    """Before the topics exist, while reading, and at seeded random moments of start-up:
    once with KeyboardInterrupt raised wherever tail was, a SIGINT inside the Consumer's
    constructor or close() could crash it (SIGSEGV) or leave it hanging."""
    bs = kafka_broker.bootstrap
    # 1. waiting for a topic that does not exist yet
    with started(popen_obpipe("tail", "--kafka", bs, "--timeout", "60"), grace_s=5) as proc:
        _wait_line(proc, proc.stderr, "waiting for topic", 60)
        dt, _, err = _interrupt(proc)
    _assert_clean_stop(proc, dt, err)
    # 2. reading, and 3. at random moments from start-up on, while signals keep coming
    assert ensure_topics(bs, topic_names()) == []
    rnd = random.Random(13)
    for i in range(12):
        with started(popen_obpipe("tail", "--kafka", bs, "--timeout", "60"), grace_s=5) as proc:
            if i == 0:
                deadline = time.monotonic() + 30
                line = ""
                while not line and time.monotonic() < deadline:
                    produce(bs, topic_names()[0], [("AMZN", make_signal("sweep", seq=i))])
                    if select.select([proc.stdout], [], [], 0.3)[0]:
                        line = proc.stdout.readline()
                assert " sweep " in line
            else:
                # from the moment its Kafka client runs (its threads exist: start-up is over; a signal
                # while the interpreter itself starts is Python's, ring/interrupt.py), plus 0..1 s
                _wait_threads(proc, 60)
                t_end = time.monotonic() + rnd.uniform(0.0, 1.0)
                while time.monotonic() < t_end:
                    produce(bs, topic_names()[0], [("AMZN", make_signal("imbalance", seq=i))])
                    time.sleep(0.05)
            dt, _, err = _interrupt(proc)
        _assert_clean_stop(proc, dt, err)


@pytest.mark.timeout(900)
def test_ctrl_c_ends_kafka_feed_and_exchange_within_2_s(tmp_path):
    port = free_port()
    cases = [
        (("kafka", "--port", str(port)), "stdout", "Ctrl-C stops it"),
        (("exchange", "--port", "0", "--anonymous"), "stderr", "listening on"),
        # a feed sending to a port nobody reads: started (its progress is on stderr when asked)
        (("feed", "--port", str(free_port()), "--rate", "10000", "--duration", "60", "--progress"),
         "stderr", "synthetic"),
    ]
    for args, stream, needle in cases:
        with started(popen_obpipe(*args), grace_s=5) as proc:
            _wait_line(proc, getattr(proc, stream), needle, 300)  # (a cold numba cache compiles first)
            time.sleep(0.3)
            dt, _, err = _interrupt(proc)
        assert dt < LIMIT_S, (args, dt, err[-1500:])
        assert proc.returncode == 0 and "Traceback" not in err, (args, proc.returncode, err[-1500:])
