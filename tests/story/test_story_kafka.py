"""The story service against a real broker (Tansu on a free loopback port, stopped by
pid): kill -9 while it consumes a seeded replay's signals loses and repeats nothing, the
engine does not notice, and a broker outage leaves the queries answering."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import types
import urllib.request
from collections import Counter
from pathlib import Path

import posix_ipc
import pytest
from PIL import Image

from obpipe.publisher.broker import EmbeddedBroker
from obpipe.story.store import Store
from obpipe.ring.shm import list_segments
from tests.helpers import (LOBSTER_MSG, POISON_KINDS, REPO, SIDES, chromium, consume_all, make_signal, make_summary,
                           new_instance, poison_record, produce, run_config, stop_process)

pytestmark = [pytest.mark.multiproc]

#: Kept after the run (git-ignored): the page as headless Chromium rendered it.
ARTIFACTS = REPO / "tests" / "artifacts"
#: 2012-06-21 09:30 UTC in epoch ns: feed time of the hand-made messages (a plausible time).
DAY = 1_340_271_000 * 10**9


class StoryProc:
    """``obpipe-story run`` as a child process; as a context manager, stopped (terminate ->
    join -> kill) when the block ends unless ``stop`` or ``kill`` ended it already."""

    def __init__(self, tmp_path: Path, bootstrap: str, db: Path, tag: str, http: bool = False, batch_max: int = 1000):
        cfg = tmp_path / f"story-{tag}.toml"
        cfg.write_text(f'[kafka]\nbootstrap_servers = "{bootstrap}"\ngroup_id = "g-{tmp_path.name}"\n'
                       f"batch_max = {batch_max}\n[http]\nenabled = {'true' if http else 'false'}\nport = 0\n"
                       "[retention]\nkeep_hours = 0.0\n")
        self.err_path = tmp_path / f"story-{tag}.err"
        self.err = open(self.err_path, "w")
        self.p = subprocess.Popen([sys.executable, "-m", "obpipe.story", "run", "--config", str(cfg), "--db", str(db)],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.err)
        self.port = None
        try:
            self._wait_started(http)
        except BaseException:  # never started: nobody else will stop it
            self.__exit__()
            raise

    def _wait_started(self, http: bool) -> None:
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

    def __enter__(self) -> StoryProc:
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.p)
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
    instance = new_instance()
    broker = EmbeddedBroker.start()
    bs = broker.bootstrap
    db = tmp_path / "story.db"
    story = engine = None
    try:
        story = StoryProc(tmp_path, bs, db, "first", batch_max=5)
        cfg = run_config(tmp_path, instance, md_capacity=1 << 17, events_capacity=1 << 17,
                         extra=f'[book]\nsymbols = ["AMZN"]\nladder_width = 8192\n'
                               f'[kafka]\nbootstrap_servers = "{bs}"\n')
        engine = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", cfg, "--replay",
                                   str(LOBSTER_MSG), "--rate", "12000", "--json", "--quiet"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def consuming():
            kept = Store.open(str(db)).rejects(1)  # the engine's times must be UTC epoch ns (issue 13, item 2)
            assert not kept[1] or kept[1][0]["reason"] != "implausible time", (
                f"the engine published feed times that are not UTC epoch ns: {kept[1][0]['detail']}")
            return _count(db, "signals")
        _wait(consuming, lambda n: n > 0, timeout_s=180)  # it is consuming
        story.kill()  # SIGKILL, mid-stream of what it consumes (the replay itself may have ended: it is in Kafka)
        story = None
        out, err = engine.communicate(timeout=300)
        assert engine.returncode == 0, err[-3000:]
        d = json.loads(out)
        published = consume_all(bs, "obpipe.signals", d["signals"])
        published_sums = consume_all(bs, "obpipe.summaries", d["summaries"])
        stored_before = _count(db, "signals")  # what the killed service had written
        assert 0 < stored_before < len(published), (stored_before, len(published))  # (killed mid-stream)
        story = StoryProc(tmp_path, bs, db, "second", batch_max=200, http=True)
        _wait(lambda: (_count(db, "signals"), _count(db, "summaries")),
              lambda c: c == (len(published), len(published_sums)), timeout_s=120)
        time.sleep(1.0)  # (time for a duplicate to show up, were there one)
        yield types.SimpleNamespace(db=db, engine=d, signals=published, summaries=published_sums, story=story,
                                    stored_before=stored_before)
    finally:
        if engine is not None:
            stop_process(engine, grace_s=30)
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


@pytest.mark.timeout(600)
def test_the_page_shows_the_chart_and_the_stories_in_headless_chromium(replay):
    url = f"http://127.0.0.1:{replay.story.port}/?symbol=AMZN&since=1d"  # the whole replayed day
    budget = "--virtual-time-budget=8000"  # (page scripts and fetches run to this much virtual time)
    dom = chromium(budget, "--dump-dom", url)
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
    shot = chromium(budget, "--window-size=1400,900", f"--screenshot={png}", url)
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
    try:
        produce(b1.bootstrap, "obpipe.signals", [("AMZN", make_signal("sweep", seq=i, ts_exch_ns=DAY + i)) for i in range(1, 6)])
        produce(b1.bootstrap, "obpipe.summaries", [("AMZN", make_summary(start_ns=DAY, end_ns=DAY + 10**8))])
        with StoryProc(tmp_path, b1.bootstrap, db, "one", http=True) as story:
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
    finally:
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
    bs = kafka_broker.bootstrap
    poison = [poison_record(k) for k in POISON_KINDS] + [b"\xff\xfe not UTF-8", b"", b"[" * 5000 + b"]" * 5000,
                                                   json.dumps(make_signal("sweep", seq=3)).encode()]  # 1970 ts
    valid = [make_signal("sweep", seq=1000 + i, ts_exch_ns=DAY + i * 10**9) for i in range(len(poison) + 1)]
    records = [("AMZN", valid[0])] + [r for i, p in enumerate(poison) for r in (("AMZN", p), ("AMZN", valid[i + 1]))]
    produce(bs, "obpipe.signals", records)
    db = tmp_path / "story.db"
    with StoryProc(tmp_path, bs, db, "poison", batch_max=7) as story:  # poison spread over several batches
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
        assert c["records"] == len(records) and c["rejected"] == len(poison) and c["signals_new"] == len(valid)
        assert c["implausible_time"] == 1 and c["malformed"] == len(poison) - 1


def _fuzz_messages(rng, n: int) -> list[tuple[str, bytes, str]]:
    """``n`` seeded (topic, value, expected) records: ``expected`` is "stored" (valid),
    "rejected" (made invalid on purpose) or "either" (random bytes flipped in a valid one)."""
    import random

    from obpipe.publisher.schema import SIGNAL_KINDS, signal_id

    syms = ("AMZN", "AAPL", "MSFT", "BRK.B")
    sig_t, sum_t = "obpipe.signals", "obpipe.summaries"
    valid: list[tuple[str, bytes]] = []

    def signal(i):
        kind = SIGNAL_KINDS[i % 5]
        sym = syms[i // 5 % 4]
        # blocks of 100 records 5 s apart: bursts of a few signals per (symbol, kind)
        return make_signal(kind, sym, seq=i, id=signal_id(sym, i, kind, SIDES[kind]),
                           ts_exch_ns=DAY + i // 100 * 5 * 10**9 + i % 100 * 10**7 + rng.randrange(10**6))

    def summary(i):
        return make_summary(syms[i % 4], seq=i, start_ns=DAY + i * 10**8, end_ns=DAY + (i + 1) * 10**8)

    bad_values = [float("nan"), float("inf"), -float("inf"), 2**64 + 1, -(2**64) - 1, [], {"x": [1]}, 10**30]
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.30 or not valid:
            m = signal(i) if rng.random() < 0.8 else summary(i)
            raw = json.dumps(m).encode()
            topic = sig_t if m["type"] == "signal" else sum_t
            valid.append((topic, raw))
            out.append((topic, raw, "stored"))
        elif r < 0.35:  # a re-delivery of an earlier valid one (counted as seen before)
            topic, raw = rng.choice(valid)
            out.append((topic, raw, "stored"))
        elif r < 0.75:  # a field of a valid message made bad on purpose
            m = signal(i) if rng.random() < 0.7 else summary(i)
            topic = sig_t if m["type"] == "signal" else sum_t
            how = rng.randrange(9)
            if how == 0:  # a value no field takes, in a field or a nested one
                obj = m[rng.choice(("bbo", "values"))] if (m["type"] == "signal" and rng.random() < 0.6) else m
                key = rng.choice([k for k in obj if k not in ("v", "type")])
                if key == "symbol":
                    obj[key] = rng.choice(("", "A" * 17, "AM ZN", "AMZN\n", "é", "<b>", 5))
                else:
                    obj[key] = rng.choice(bad_values + ([] if isinstance(obj[key], str) else ["12"]))
            elif how == 1:
                del m[rng.choice([k for k in m if k != "type"])]
            elif how == 2:
                m[rng.choice(("extra", "ts", "Symbol"))] = 1
            elif how == 3:
                m[rng.choice(("ts_exch_ns", "start_ns") if m["type"] == "signal" else ("start_ns", "ts_emit_ns"))
                  if m["type"] == "summary" else "ts_exch_ns"] = rng.choice((34_201_234_000_000, 2**62, 1))
            elif how == 4:
                topic = sum_t if topic == sig_t else sig_t  # the wrong topic
            elif how == 5:
                m["v"] = rng.choice((2, 0, "1", 1.0, True, None))
            elif how == 6:
                m["bbo"] = rng.choice(([1, 2, 3, 4], None, {"bid_tick": 1}, "bbo", {**m["bbo"], "x": 0}))
            if how <= 6:
                raw = json.dumps(m).encode()
            elif how == 7:
                raw = json.dumps(m).encode()[: rng.randrange(1, 60)]  # truncated
            else:
                raw = rng.choice((rng.randbytes(rng.randrange(0, 300)), b"[" * 3000, b"null", b"1", b'"s"', b"{}"))
            out.append((topic, raw, "rejected"))
        else:  # 1-3 random bytes of a valid one changed: either outcome, but counted
            topic, raw = rng.choice(valid)
            b = bytearray(raw)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append((topic, bytes(b), "either"))
    return out


@pytest.mark.fuzz
@pytest.mark.timeout(1800)  # (scale 1: 14-40 s on the shared VM; `make fuzz` sends 1M records)
def test_fuzzed_story_topics_never_stop_the_service_and_every_record_is_stored_or_rejected(tmp_path, kafka_broker,
                                                                                          fuzz_scale):
    import random

    from confluent_kafka import Producer

    from obpipe.story import api

    n = 100_000 * fuzz_scale
    rng = random.Random(20261202)
    msgs = _fuzz_messages(rng, n)
    bs = kafka_broker.bootstrap
    where: dict[tuple[str, int, int], str] = {}

    def delivered(err, msg):
        assert err is None, err
        where[(msg.topic(), msg.partition(), msg.offset())] = expect.pop((msg.topic(), msg.key()))

    expect: dict[tuple[str, bytes], str] = {}
    p = Producer({"bootstrap.servers": bs, "linger.ms": 20, "log_level": 0, "queue.buffering.max.messages": 200_000,
                  "message.max.bytes": 2_000_000})
    for i, (topic, raw, exp) in enumerate(msgs):
        key = str(i).encode()
        expect[(topic, key)] = exp
        p.produce(topic, key=key, value=raw, on_delivery=delivered)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0 and len(where) == n
    db = tmp_path / "story.db"
    with StoryProc(tmp_path, bs, db, "fuzz", batch_max=5000) as story:  # (fewer fsyncs: commits are synchronous=FULL)
        group = f"g-{tmp_path.name}"
        _wait(lambda: _committed(bs, group, "obpipe.signals") + _committed(bs, group, "obpipe.summaries"),
              lambda k: k == n, timeout_s=120 * fuzz_scale)
        assert story.p.poll() is None  # it never exited
        s = Store.open(str(db))
        try:
            # queries still answer, and every stored signal is in exactly one story
            assert api.stories_query(s, "AMZN", since="1d") and api.signals_query(s, "BRK.B", since="1d")
            in_stories = sorted(i for (ids,) in s.query("SELECT signal_ids FROM stories") for i in json.loads(ids))
            assert in_stories == sorted(r[0] for r in s.query("SELECT id FROM signals"))
            rejected_at = {(t, p_, o) for t, p_, o in s.query("SELECT topic, kafka_partition, kafka_offset FROM rejects")}
            n_sig, n_sum = _count(db, "signals"), _count(db, "summaries")
            # stored signals follow the schema by the reference validator (python jsonschema,
            # ~0.5 ms a message: every 25th)
            from obpipe.publisher.schema import signal_id, validate
            for (vals, sym, kind, side, seq, ts, det, tsz, bt, at, bq, aq) in s.query(
                    "SELECT vals, symbol, kind, side, seq, ts_exch_ns, ts_detect_ns, tick_size, bid_tick, ask_tick, "
                    "bid_qty, ask_qty FROM signals ORDER BY id")[::25]:
                validate({"type": "signal", "v": 1, "id": signal_id(sym, seq, kind, side), "symbol": sym, "kind": kind,
                          "side": side, "seq": seq, "ts_exch_ns": ts, "ts_detect_ns": det, "tick_size": tsz,
                          "bbo": {"bid_tick": bt, "ask_tick": at, "bid_qty": bq, "ask_qty": aq},
                          "values": json.loads(vals)})
        finally:
            s.close()
        c = _final_counters(story.stop())
    kinds = Counter(where.values())
    assert kinds["stored"] > n // 4 and kinds["rejected"] > n // 3 and kinds["either"] > n // 10  # (the mix)
    assert {k for k, e in where.items() if e == "rejected"} <= rejected_at  # each bad one kept...
    assert not {k for k, e in where.items() if e == "stored"} & rejected_at  # ...and no good one
    # exact accounting: every record once, stored (new or seen before) or rejected; counters = tables
    assert c["records"] == n == (c["signals_new"] + c["signals_seen_before"] + c["summaries_new"]
                                 + c["summaries_seen_before"] + c["rejected"])
    assert c["rejected"] == len(rejected_at) == c["malformed"] + c["unknown_version"] + c["implausible_time"]
    assert (c["signals_new"], c["summaries_new"]) == (n_sig, n_sum)
