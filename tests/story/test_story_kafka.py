"""The story service against a real broker (Tansu on a free loopback port, stopped by
pid): kill -9 while it consumes a seeded replay's signals loses and repeats nothing, the
engine does not notice, and a broker outage leaves the queries answering."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from publisher.broker import EmbeddedBroker
from story.store import Store
from tests.conftest import REPO, consume_all
from tests.publisher.conftest import make_signal, make_summary, produce
from tests.test_cli import _config
from tests.test_pipeline import LOBSTER_MSG

pytestmark = [pytest.mark.multiproc]


class StoryProc:
    """``obpipe-story run`` as a child process."""

    def __init__(self, tmp_path: Path, bootstrap: str, db: Path, tag: str, http: bool = False, batch_max: int = 1000):
        cfg = tmp_path / f"story-{tag}.toml"
        cfg.write_text(f'[kafka]\nbootstrap_servers = "{bootstrap}"\ngroup_id = "g-{tmp_path.name}"\n'
                       f"batch_max = {batch_max}\n[http]\nenabled = {'true' if http else 'false'}\nport = 0\n"
                       "[retention]\nkeep_hours = 0.0\n")
        self.err_path = tmp_path / f"story-{tag}.err"
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "story", "run", "--config", str(cfg), "--db", str(db)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.err)
        self.port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.err_path.read_text()
            if "consuming" in text:
                if http:
                    self.port = int(text.split("http://127.0.0.1:")[1].split("/")[0])
                return
            assert self.p.poll() is None, text
            time.sleep(0.1)
        raise AssertionError("story service did not start")

    def stop(self) -> str:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            self.p.wait(timeout=30)
        self.err.close()
        return self.err_path.read_text()

    def kill(self) -> None:
        self.p.kill()
        self.p.wait(timeout=30)
        self.err.close()


def _count(db: Path, table: str) -> int:
    s = Store.open(str(db))
    try:
        return s.query(f"SELECT COUNT(*) FROM {table}")[0][0]
    finally:
        s.close()


def _wait(fn, cond, timeout_s=90.0):
    deadline = time.monotonic() + timeout_s
    while True:
        v = fn()
        if cond(v):
            return v
        assert time.monotonic() < deadline, f"not reached in {timeout_s} s: {v}"
        time.sleep(0.2)


@pytest.mark.timeout(400)
def test_kill_9_mid_replay_then_restart_stores_exactly_the_published_signals(tmp_path, instance, kafka_broker):
    bs = kafka_broker.bootstrap
    db = tmp_path / "story.db"
    story = StoryProc(tmp_path, bs, db, "first", batch_max=5)
    cfg = _config(tmp_path, instance, md_capacity=1 << 17, events_capacity=1 << 17,
                  extra=f'[book]\nsymbols = ["AMZN"]\nladder_width = 8192\n[kafka]\nbootstrap_servers = "{bs}"\n')
    engine = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", cfg, "--replay", str(LOBSTER_MSG),
                               "--rate", "12000", "--json", "--quiet"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _count(db, "signals"), lambda n: n > 0, timeout_s=180)  # it is consuming
        assert engine.poll() is None, "the replay ended before the kill"
        story.kill()  # SIGKILL, mid-stream
        out, err = engine.communicate(timeout=300)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait(30)
    assert engine.returncode == 0, err[-3000:]
    d = json.loads(out)
    # the engine never noticed: everything it detected was published, nothing dropped or failed
    assert d["kafka_errors"] == 0 and d["publish_dropped"] == 0 and d["publisher"]["failed"] == 0
    assert d["published"] == d["signals"] + d["summaries"] > 100
    published = consume_all(bs, "obpipe.signals", d["signals"])
    published_sums = consume_all(bs, "obpipe.summaries", d["summaries"])

    story = StoryProc(tmp_path, bs, db, "second", batch_max=5)
    _wait(lambda: (_count(db, "signals"), _count(db, "summaries")),
          lambda c: c == (len(published), len(published_sums)), timeout_s=120)
    time.sleep(1.0)
    log = story.stop()
    s = Store.open(str(db))
    stored = {r[0] for r in s.query("SELECT id FROM signals")}
    assert stored == {m["id"] for m in published} and len(stored) == len(published) == d["signals"]
    assert {tuple(r) for r in s.query("SELECT symbol, start_ns FROM summaries")} == {
        (m["symbol"], m["start_ns"]) for m in published_sums}
    in_stories = [i for (ids,) in s.query("SELECT signal_ids FROM stories") for i in json.loads(ids)]
    assert sorted(in_stories) == sorted(stored)  # every signal in exactly one story
    s.close()
    assert "signals_seen_before" in log


@pytest.mark.timeout(300)
def test_broker_down_queries_still_answer_and_it_reconnects_by_itself(tmp_path):
    db = tmp_path / "story.db"
    b1 = EmbeddedBroker.start()
    port = int(b1.bootstrap.rsplit(":", 1)[1])
    b2 = None
    story = None
    try:
        produce(b1.bootstrap, "obpipe.signals", [("AMZN", make_signal("sweep", seq=i)) for i in range(1, 6)])
        produce(b1.bootstrap, "obpipe.summaries", [("AMZN", make_summary())])
        story = StoryProc(tmp_path, b1.bootstrap, db, "one", http=True)
        _wait(lambda: _count(db, "signals"), lambda n: n == 5)
        b1.stop(timeout_s=2)
        base = f"http://127.0.0.1:{story.port}"
        stats = _wait(lambda: json.loads(urllib.request.urlopen(base + "/api/stats", timeout=10).read()),
                      lambda st: st["kafka_errors"] > 0, timeout_s=60)
        assert stats["broker_up"] is False
        stories = json.loads(urllib.request.urlopen(base + "/api/stories?symbol=AMZN", timeout=10).read())
        assert len(stories) == 1 and len(stories[0]["signal_ids"]) == 5  # answered from the database
        assert story.p.poll() is None
        b2 = EmbeddedBroker.start(port=port)  # back, on the same port (empty: in-memory)
        produce(b2.bootstrap, "obpipe.signals", [("AMZN", make_signal("sweep", seq=i)) for i in range(100, 103)])
        _wait(lambda: _count(db, "signals"), lambda n: n == 8, timeout_s=120)
        assert "reachable again" in story.stop()
        story = None
    finally:
        if story is not None:
            story.kill()
        for b in (b1, b2):
            if b is not None:
                b.stop(timeout_s=2)
