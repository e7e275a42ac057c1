"""The story service against a real broker (Tansu on a free loopback port, stopped by
pid): kill -9 while it consumes a seeded replay's signals loses and repeats nothing, the
engine does not notice, and a broker outage leaves the queries answering."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from collections import Counter
from pathlib import Path

import posix_ipc
import pytest
from PIL import Image

from publisher.broker import EmbeddedBroker
from story.store import Store
from ring._shm import list_segments
from tests.conftest import PREFIX, REPO, _counter, consume_all
from tests.publisher.conftest import make_signal, make_summary, produce
from tests.test_cli import _config
from tests.test_pipeline import LOBSTER_MSG

pytestmark = [pytest.mark.multiproc]

#: Kept after the run (git-ignored): the page as headless Chromium rendered it.
ARTIFACTS = REPO / "tests" / "artifacts"
#: 2012-06-21 09:30 UTC in epoch ns: feed time of the hand-made messages (a plausible time).
DAY = 1_340_271_000 * 10**9


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
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=30)
                raise
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


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """A seeded replay (the AMZN LOBSTER day) through the engine into a real broker while
    the story service consumes it; the service is SIGKILLed mid-stream and restarted (with
    its page) and has caught up when this yields."""
    tmp_path = tmp_path_factory.mktemp("story-replay")
    instance = f"{PREFIX}{next(_counter)}"
    broker = EmbeddedBroker.start()
    bs = broker.bootstrap
    db = tmp_path / "story.db"
    story = engine = None
    try:
        story = StoryProc(tmp_path, bs, db, "first", batch_max=5)
        cfg = _config(tmp_path, instance, md_capacity=1 << 17, events_capacity=1 << 17,
                      extra=f'[book]\nsymbols = ["AMZN"]\nladder_width = 8192\n[kafka]\nbootstrap_servers = "{bs}"\n')
        engine = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", cfg, "--replay",
                                   str(LOBSTER_MSG), "--rate", "12000", "--json", "--quiet"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: _count(db, "signals"), lambda n: n > 0, timeout_s=180)  # it is consuming
        assert engine.poll() is None, "the replay ended before the kill"
        story.kill()  # SIGKILL, mid-stream
        story = None
        out, err = engine.communicate(timeout=300)
        assert engine.returncode == 0, err[-3000:]
        d = json.loads(out)
        published = consume_all(bs, "obpipe.signals", d["signals"])
        published_sums = consume_all(bs, "obpipe.summaries", d["summaries"])
        stored_before = _count(db, "signals")  # what the killed service had written
        story = StoryProc(tmp_path, bs, db, "second", batch_max=200, http=True)
        _wait(lambda: (_count(db, "signals"), _count(db, "summaries")),
              lambda c: c == (len(published), len(published_sums)), timeout_s=120)
        time.sleep(1.0)  # (time for a duplicate to show up, were there one)
        yield types.SimpleNamespace(db=db, engine=d, signals=published, summaries=published_sums, story=story,
                                    stored_before=stored_before)
    finally:
        if engine is not None and engine.poll() is None:
            engine.kill()
            engine.wait(30)
        if story is not None:
            story.stop()
        broker.stop(timeout_s=2)
        for seg in list_segments(instance):
            posix_ipc.unlink_shared_memory(seg)


@pytest.mark.timeout(600)
def test_kill_9_mid_replay_then_restart_stores_exactly_the_published_signals(replay):
    d = replay.engine
    # the engine never noticed: everything it detected was published, nothing dropped or failed
    assert d["kafka_errors"] == 0 and d["publish_dropped"] == 0 and d["publisher"]["failed"] == 0
    assert d["published"] == d["signals"] + d["summaries"] > 100
    s = Store.open(str(replay.db))
    try:
        stored = {r[0] for r in s.query("SELECT id FROM signals")}
        assert stored == {m["id"] for m in replay.signals} and len(stored) == len(replay.signals) == d["signals"]
        assert {tuple(r) for r in s.query("SELECT symbol, start_ns FROM summaries")} == {
            (m["symbol"], m["start_ns"]) for m in replay.summaries}
        in_stories = [i for (ids,) in s.query("SELECT signal_ids FROM stories") for i in json.loads(ids)]
        assert sorted(in_stories) == sorted(stored)  # every signal in exactly one story
    finally:
        s.close()
    st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{replay.story.port}/api/stats", timeout=10).read())
    # the restarted service wrote exactly what the killed one had not (a re-read is counted, not stored)
    assert st["signals_new"] == len(stored) - replay.stored_before


def _chromium(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """Debian's headless Chromium with a fresh profile and no background networking."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium package when run as root)")
    profile = tempfile.mkdtemp(prefix="obpipe-chromium-")
    try:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_page_shows_the_chart_and_the_stories_in_headless_chromium(replay):
    url = f"http://127.0.0.1:{replay.story.port}/?symbol=AMZN&since=1d"  # the whole replayed day
    budget = "--virtual-time-budget=8000"  # (page scripts and fetches run to this much virtual time)
    dom = _chromium(budget, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", html).group(1)))
    assert attrs.get("loaded") == "1", (attrs, html[-1500:])
    # the day's summaries come bucketed to the chart's width; the stories, newest 500
    assert 100 < int(attrs["points"]) <= 900 and int(attrs["plotted"]) > 100 and int(attrs["spreads"]) > 100
    n_stories = min(500, _count(replay.db, "stories"))
    assert int(attrs["stories"]) == n_stories > 0 and int(attrs["marked"]) == n_stories  # all on the chart
    texts = re.findall(r'<div class="story sev-\w+" data-id="[^"]+"><div>([^<]+)</div>', html)
    assert len(texts) == n_stories
    openings = ("Liquidity vanished", "Aggressive ", "Spread instability", "Book leaning", "Microprice moved")
    assert all(t.startswith(openings) for t in texts), texts[:5]
    prices = [float(x) for t in texts for x in re.findall(r" at (\d+\.\d+)$", t)]
    assert prices and all(215 < p < 230 for p in prices), prices[:5]  # dollars (half-cent ticks converted)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "story_page.png"
    png.unlink(missing_ok=True)
    shot = _chromium(budget, "--window-size=1400,900", f"--screenshot={png}", url)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1400, 900)
    box = img.crop((0, 50, 830, 600))  # the chart's box (the list is to its right)
    chart = Counter(getattr(box, "get_flattened_data", box.getdata)())  # getdata: Pillow < 12.1

    def count(test) -> int:
        return sum(n for (r, g, b), n in chart.items() if test(r, g, b))
    assert count(lambda r, g, b: b > r + 60 and b > g + 20) > 500  # the mid line, #1f77b4
    assert count(lambda r, g, b: g > r + 40 and g > b + 40) > 500  # the spread line, #2ca02c
    assert count(lambda r, g, b: r > b + 30 and r >= g and r > 150) > 500  # stories' bands, red/orange/yellow


@pytest.mark.timeout(300)
def test_broker_down_queries_still_answer_and_it_reconnects_by_itself(tmp_path):
    db = tmp_path / "story.db"
    b1 = EmbeddedBroker.start()
    port = int(b1.bootstrap.rsplit(":", 1)[1])
    b2 = None
    story = None
    try:
        produce(b1.bootstrap, "obpipe.signals", [("AMZN", make_signal("sweep", seq=i, ts_exch_ns=DAY + i)) for i in range(1, 6)])
        produce(b1.bootstrap, "obpipe.summaries", [("AMZN", make_summary(start_ns=DAY, end_ns=DAY + 10**8))])
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
        produce(b2.bootstrap, "obpipe.signals", [("AMZN", make_signal("sweep", seq=i, ts_exch_ns=DAY + i))
                                                 for i in range(100, 103)])
        _wait(lambda: _count(db, "signals"), lambda n: n == 8, timeout_s=120)
        assert "reachable again" in story.stop()
        story = None
    finally:
        if story is not None:
            story.kill()
        for b in (b1, b2):
            if b is not None:
                b.stop(timeout_s=2)


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The committed offsets of ``group`` summed over ``topic``'s partitions (= records
    consumed and committed past, offsets starting at 0)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 0})
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        return sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    finally:
        c.close()


def _final_counters(err_text: str) -> dict[str, int]:
    """The counters of the service's last line ("obpipe-story stopped: records N, ...")."""
    line = err_text.rsplit("obpipe-story stopped: ", 1)[1].splitlines()[0]
    return {k: int(v) for k, v in (kv.rsplit(" ", 1) for kv in line.split(", "))}


@pytest.mark.timeout(300)
def test_poison_records_over_the_broker_are_rejected_kept_and_committed_past(tmp_path, kafka_broker):
    from tests.story.test_narratives_store import POISON_KINDS, _poison

    bs = kafka_broker.bootstrap
    poison = [_poison(k) for k in POISON_KINDS] + [b"\xff\xfe not UTF-8", b"", b"[" * 5000 + b"]" * 5000,
                                                   json.dumps(make_signal("sweep", seq=3)).encode()]  # 1970 ts
    valid = [make_signal("sweep", seq=1000 + i, ts_exch_ns=DAY + i * 10**9) for i in range(len(poison) + 1)]
    records = [("AMZN", valid[0])] + [r for i, p in enumerate(poison) for r in (("AMZN", p), ("AMZN", valid[i + 1]))]
    produce(bs, "obpipe.signals", records)
    db = tmp_path / "story.db"
    story = StoryProc(tmp_path, bs, db, "poison", batch_max=7)  # poison spread over several batches
    try:
        _wait(lambda: _count(db, "rejects") + _count(db, "signals"), lambda n: n == len(records), timeout_s=120)
        group = f"g-{tmp_path.name}"
        _wait(lambda: _committed(bs, group, "obpipe.signals"), lambda n: n == len(records), timeout_s=30)
        assert story.p.poll() is None  # still running: no crash loop
        s = Store.open(str(db))
        try:
            assert {r[0] for r in s.query("SELECT id FROM signals")} == {m["id"] for m in valid}
            kept = s.query("SELECT reason, raw FROM rejects")
            assert sorted(bytes(r[1]) for r in kept) == sorted(poison)
            reasons = Counter(r[0] for r in kept)
            assert reasons == {"schema": 8, "not JSON": 2 + 3, "bad id": 1, "implausible time": 1}, reasons  # (NaN, Infinity)
            in_stories = [i for (ids,) in s.query("SELECT signal_ids FROM stories") for i in json.loads(ids)]
            assert sorted(in_stories) == sorted(m["id"] for m in valid)
        finally:
            s.close()
        c = _final_counters(story.stop())
        story = None
        assert c["records"] == len(records) and c["rejected"] == len(poison) and c["signals_new"] == len(valid)
        assert c["implausible_time"] == 1 and c["malformed"] == len(poison) - 1
    finally:
        if story is not None:
            story.kill()
