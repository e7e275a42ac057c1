"""The embedded Tansu broker: start, round trip, stop by pid, and clear errors."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from obpipe.publisher import broker as brokermod
from obpipe.publisher.broker import BrokerError, EmbeddedBroker, ensure_topics, free_port, reachable
from tests.helpers import REPO, produce, started

pytestmark = [pytest.mark.timeout(60), pytest.mark.multiproc]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 10.0) -> list[tuple[bytes, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False, "log_level": 0})
    try:
        parts = c.list_topics(topic, timeout=5).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got, deadline = [], time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append((m.key(), m.value()))
        return got
    finally:
        c.close()


def test_start_round_trip_stop():
    b = EmbeddedBroker.start()
    try:
        assert b.alive() and b.bootstrap == f"127.0.0.1:{b.port}"
        assert reachable(b.bootstrap) and reachable(f"PLAINTEXT://{b.bootstrap},127.0.0.1:1")
        assert ensure_topics(b.bootstrap, ["t.rt"]) == []
        produce(b.bootstrap, "t.rt", [("AMZN", b"hello"), ("AMZN", b"world")])
        assert _consume(b.bootstrap, "t.rt", 2) == [(b"AMZN", b"hello"), (b"AMZN", b"world")]
    finally:
        b.stop()
    assert not b.alive() and _gone(b.pid)
    assert not reachable(b.bootstrap, timeout_s=0.5)
    b.stop()  # idempotent


def test_context_manager_and_fixed_port():
    port = free_port()
    with EmbeddedBroker.start(port) as b:
        assert b.port == port and reachable(f"127.0.0.1:{port}")
    assert _gone(b.pid)


def test_ensure_topics_creates_missing_only(kafka_broker):
    bs = kafka_broker.bootstrap
    produce(bs, "t.auto", [("k", b"v")])  # Tansu auto-creates an unknown topic on produce
    assert ensure_topics(bs, ["t.a", "t.b", "t.a", "t.auto"], partitions=2) == []
    assert ensure_topics(bs, ["t.a"]) == []  # already there: not an error
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bs, "log_level": 0}).list_topics(timeout=5)
    assert len(md.topics["t.a"].partitions) == 2 and len(md.topics["t.b"].partitions) == 2
    assert len(md.topics["t.auto"].partitions) >= 1


def test_ensure_topics_unreachable_returns_error():
    errors = ensure_topics(f"127.0.0.1:{free_port()}", ["x"], timeout_s=1)
    assert len(errors) == 1 and "cannot list topics" in errors[0]


def test_busy_port_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}: the port is in use"):
            EmbeddedBroker.start(port)


def test_tansu_exiting_on_a_bound_port_is_an_error(monkeypatch):
    # Tansu itself logs AddrInUse and exits with status 0, while the other socket
    # still answers: without the up-front check, start must notice that the child
    # never held the listener.
    monkeypatch.setattr(brokermod, "_port_busy", lambda port: False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BrokerError, match=r"exited with status 0 .*AddrInUse"):
            EmbeddedBroker.start(s.getsockname()[1])


def test_binary_that_exits_or_is_missing(tmp_path):
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: no storage' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"fake-tansu exited with status 3 .*boom: no storage"):
        EmbeddedBroker.start(binary=str(fake))
    with pytest.raises(BrokerError, match="/nonexistent/tansu"):
        EmbeddedBroker.start(binary="/nonexistent/tansu")


def test_binary_that_never_listens_times_out(tmp_path):
    fake = tmp_path / "silent-tansu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match="did not listen .* within 0.3 s"):
        EmbeddedBroker.start(binary=str(fake), timeout_s=0.3)


def test_stop_kills_when_clients_hold_it():
    # On SIGTERM Tansu waits for connected clients; stop falls back to SIGKILL.
    b = EmbeddedBroker.start()
    with socket.create_connection(("127.0.0.1", b.port)):
        t0 = time.monotonic()
        b.stop(timeout_s=0.3)
        assert time.monotonic() - t0 < 3
    assert _gone(b.pid)


def test_broker_dies_with_its_parent():
    # PR_SET_PDEATHSIG: a SIGKILLed parent takes the broker with it.
    code = ("from obpipe.publisher.broker import EmbeddedBroker; import time; "
            "b = EmbeddedBroker.start(); print(b.pid, b.port, b.log_path.parent, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    pid = log_dir = None
    try:
        with started(parent, grace_s=5):
            pid, port, log_dir = parent.stdout.readline().split()
            pid, port = int(pid), int(port)
            assert reachable(f"127.0.0.1:{port}")
            parent.kill()
            parent.wait(5)
            deadline = time.monotonic() + 5
            while not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.02)  # init reaps the orphan once it exits
            assert _gone(pid)
    finally:
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)  # its owner died before stop()


def _run_kafka_command(args):
    return subprocess.Popen([sys.executable, "-m", "obpipe.publisher.broker", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kafka_command_runs_until_sigint():
    """Also when two signals arrive back to back (a threading.Event set from the signal
    handler once deadlocked here)."""
    port = free_port()
    proc = _run_kafka_command(["--port", str(port)])
    pid = None
    try:
        with started(proc, grace_s=5):
            line = proc.stdout.readline()
            assert f"on 127.0.0.1:{port}; bootstrap.servers=127.0.0.1:{port}; Ctrl-C stops it" in line
            pid = int(line.split(" pid ")[1].split()[0])
            assert reachable(f"127.0.0.1:{port}")
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            assert _gone(pid) and not reachable(f"127.0.0.1:{port}", timeout_s=0.5)
    finally:
        if pid is not None and not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_kafka_command_on_a_busy_port_fails(kafka_broker):
    proc = _run_kafka_command(["--port", str(kafka_broker.port)])
    with started(proc, grace_s=5):
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 1 and "the port is in use" in err
