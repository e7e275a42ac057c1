"""What more than one test module uses: paths, the ``obpipe`` command line, a config file
per test, child processes that are always stopped, example Kafka messages, an exchange
child process and headless Chromium.

No test module imports another; what they share lives here (plain helpers) or in a
``conftest.py`` (fixtures).  Every child process a test starts is stopped the same way:
``terminate`` (SIGTERM: every obpipe command shuts down cleanly on it) -> ``join`` (wait
with a timeout, draining its output pipes) -> ``kill`` (SIGKILL) if it is still there.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from obpipe.publisher.schema import EXAMPLE_VALUES, signal_id

# -- paths and names ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
#: The AMZN sample day (LOBSTER level 1): the message file and its order-book file.
LOBSTER_MSG = SHARED_DATA / "lobster" / "AMZN_2012-06-21_34200000_57600000_message_1.csv"
LOBSTER_OB = SHARED_DATA / "lobster" / "AMZN_2012-06-21_34200000_57600000_orderbook_1.csv"
#: What outlives a run (``obpipe run --source exchange``'s journal and store) goes under
#: this session's own state directory, not the user's (removed at the end: tests/conftest.py).
STATE_HOME = tempfile.mkdtemp(prefix="obpipe-test-state-")
os.environ["XDG_STATE_HOME"] = STATE_HOME
#: The environment of an ``obpipe`` child: this checkout first on the path.
ENV = dict(os.environ, PYTHONPATH=str(REPO))
#: Every instance a test creates starts with this (so concurrent sessions don't collide).
PREFIX = f"t{os.getpid()}x"
_counter = itertools.count()


#: The session day of the generated ITCH files: 2019-01-30 (UTC epoch ns of its midnight in New York).
ITCH_DAY_NS = 1548824400 * 10**9


def itch_day(path: Path, n: int, names: list[str], seed: int):
    """A generated order-by-order day (``feed_sim.l3_synth``, from 09:30 New York time on
    2019-01-30): ``n`` messages over the stocks ``names``, written to ``path`` as ITCH 5.0.
    Returns the MD_L3 records it encodes."""
    from obpipe.feed_sim import itch
    from obpipe.feed_sim.l3_synth import L3SynthParams, generate_l3

    md = generate_l3(n, L3SynthParams(n_symbols=len(names), seed=seed, start_ts_ns=ITCH_DAY_NS + 34_200 * 10**9))
    Path(path).write_bytes(itch.encode(md, names, day_ns=ITCH_DAY_NS)[0].tobytes())
    return md


def new_instance() -> str:
    """An instance name unique to this test session (its segments are ``/obpipe.<name>.*``)."""
    return f"{PREFIX}{next(_counter)}"


# -- child processes: always terminate -> join -> kill -----------------------------------

def stop_process(p, grace_s: float = 10.0) -> None:
    """Stop ``p`` (a ``subprocess.Popen`` or a ``multiprocessing.Process``) if it still runs:
    SIGTERM, wait up to ``grace_s`` seconds (draining a Popen's pipes, so a child blocked
    writing its output can exit), then SIGKILL and wait again.  Idempotent."""
    if isinstance(p, subprocess.Popen):
        if p.poll() is not None:
            return
        p.terminate()
        try:
            p.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=grace_s)
        return
    if p.is_alive():
        p.terminate()
        p.join(grace_s)
    if p.is_alive():
        p.kill()
        p.join(grace_s)


@contextlib.contextmanager
def started(p, grace_s: float = 10.0):
    """``p`` (a started Popen or Process) for the block; stopped by ``stop_process`` after
    it, whatever happened inside."""
    try:
        yield p
    finally:
        stop_process(p, grace_s)


# -- the obpipe command line -------------------------------------------------------------

def obpipe(*args, timeout=240, **kw) -> subprocess.CompletedProcess:
    """``obpipe <args>`` run to its end (text output captured)."""
    return subprocess.run([sys.executable, "-m", "obpipe", *args], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=timeout, **kw)


def popen_obpipe(*args, **kw) -> subprocess.Popen:
    """``obpipe <args>`` started (text stdout and stderr piped unless ``kw`` says otherwise)."""
    opts = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    opts.update(kw)
    return subprocess.Popen([sys.executable, "-m", "obpipe", *args], **opts)


def run_config(tmp_path, instance, extra="", md_capacity=4096, kafka=None, events_capacity=1 << 16,
               signals_capacity=1 << 14) -> str:
    """A config file for one test run.  ``kafka``: bootstrap servers to publish to; None:
    no publisher (tests that are not about Kafka do not start a broker).  Redis, tick
    recording and /metrics are off unless ``extra`` has a ``[redis]`` / ``[ticks]`` /
    ``[metrics]`` section (tests not about them start no server, recorder or endpoint)."""
    p = tmp_path / "c.toml"
    k = f'[kafka]\nbootstrap_servers = "{kafka}"\n' if kafka else "[kafka]\nenabled = false\n"
    if "[kafka]" in extra:
        k = ""
    if "[redis]" not in extra:
        k += "[redis]\nenabled = false\n"
    if "[ticks]" not in extra:
        k += "[ticks]\nenabled = false\n"
    if "[metrics]" not in extra:
        k += "[metrics]\nport = 0\n"
    p.write_text(f'[instance]\nname = "{instance}"\n[rings]\nmd_capacity = {md_capacity}\n'
                 f'events_capacity = {events_capacity}\nsignals_capacity = {signals_capacity}\n{k}{extra}')
    return str(p)


def wait_running(cfg, min_msgs=0, timeout_s=120) -> dict:
    """Poll the instance of config ``cfg`` until the book writer runs (and applied
    ``min_msgs``) and rx has bound its port; returns what `obpipe stats --json` would
    print then.  Read in this process (``obpipe.status.Status``, the view `obpipe stats`
    prints): a subprocess per poll costs the starting pipeline a core's worth of imports."""
    from obpipe import config as cfgmod
    from obpipe.ring.errors import RingError
    from obpipe.status import Status

    c = cfgmod.load(cfg)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            st = Status(c.instance.name, list(c.book.symbols))
        except (RingError, OSError, ValueError) as e:
            last = e
        else:
            try:
                d = orjson.loads(orjson.dumps(st.collect()))  # (JSON types, as the command prints them)
            except (RingError, OSError, TimeoutError, ValueError) as e:
                last = e
                d = None
            finally:
                st.close()
            # (and rx has its port: the book writer runs before rx has bound it)
            if d is not None:
                last = d
                if d["book"]["state"] == "running" and d["book"]["msgs"] >= min_msgs and d["rx"]["port"] > 0:
                    return d
        time.sleep(0.3)
    raise AssertionError(f"the book writer never ran (last stats: {last})")


def poll(fn, cond, timeout_s=60.0, every=0.2):
    """Call ``fn`` until ``cond(result)``; returns the last result (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = fn()
        if cond(r):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last: {r}")
        time.sleep(every)


def running_pipeline(cfg, *args, grace_s: float = 10.0):
    """``obpipe run --config cfg --json --quiet <args>`` as a child for a ``with`` block;
    stopped (terminate -> join -> kill) when the block ends."""
    return started(popen_obpipe("run", "--config", cfg, "--json", "--quiet", *args), grace_s)


def finish(p, timeout=90) -> tuple[dict, str]:
    """Wait for a ``running_pipeline`` to end; its ``--json`` result and its stderr (it
    must exit 0)."""
    stdout, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


# -- Kafka: example messages, produce, consume --------------------------------------------

#: Example ``values`` per signal kind (valid under schema v1).
VALUES = EXAMPLE_VALUES
SIDES = {"spread_widening": None, "imbalance": "bid", "microprice_shift": "ask", "sweep": "bid",
         "liquidity_withdrawal": "ask"}


def make_signal(kind: str = "sweep", symbol: str = "AMZN", seq: int = 1187342, **over) -> dict:
    """A valid v1 signal of ``kind`` (09:30:01.234 feed time); ``over`` replaces fields."""
    msg = {"type": "signal", "v": 1, "id": signal_id(symbol, seq, kind, SIDES[kind]), "symbol": symbol, "kind": kind,
           "side": SIDES[kind], "seq": seq, "ts_exch_ns": 34_201_234_000_000, "ts_detect_ns": 1_767_000_601_234_567_890,
           "tick_size": 0.01, "bbo": {"bid_tick": 22381, "ask_tick": 22387, "bid_qty": 300, "ask_qty": 100},
           "values": dict(VALUES[kind])}
    msg.update(over)
    return msg


def make_summary(symbol: str = "AMZN", **over) -> dict:
    """A valid v1 summary (interval ending 09:30:01.300 feed time); ``over`` replaces fields."""
    msg = {"type": "summary", "v": 1, "symbol": symbol, "seq": 1187400, "start_ns": 34_200_300_000_000,
           "end_ns": 34_201_300_000_000, "ts_emit_ns": 1_767_000_601_301_000_000, "tick_size": 0.01,
           "bbo": {"bid_tick": 22381, "ask_tick": 22383, "bid_qty": 300, "ask_qty": 200}, "mid_tick": 22382.0,
           "spread_ticks": {"min": 2.0, "mean": 2.4, "max": 3.0}, "imbalance": {"tob": 0.2, "depth": -0.05},
           "volume": {"buy": 500, "sell": 300}, "trades": 12, "messages": 420, "msgs_per_s": 420.0, "events": 96}
    msg.update(over)
    return msg


def produce(bootstrap: str, topic: str, records) -> None:
    """Produce ``(key, value)`` pairs (value: dict → JSON, bytes as is) and wait for delivery."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "log_level": 0, "linger.ms": 0})
    for key, value in records:
        p.produce(topic, key=key.encode(), value=value if isinstance(value, bytes) else orjson.dumps(value))
    assert p.flush(10) == 0, "messages not delivered within 10 s"


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0, idle_s: float = 2.0) -> list[dict]:
    """Every message of ``topic`` (all partitions, from the beginning) as dicts: reads
    until ``expect`` arrived and then ``idle_s`` passed without more (to see extras),
    or ``timeout_s``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "obpipe-tests", "enable.auto.commit": False,
                  "log_level": 0, "fetch.wait.max.ms": 100})
    out = []
    try:
        deadline = time.monotonic() + timeout_s
        parts = []
        while not parts and time.monotonic() < deadline:
            md = c.list_topics(topic, timeout=5).topics.get(topic)
            parts = sorted(md.partitions) if md is not None and not md.error else []
            if not parts:
                time.sleep(0.2)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        last = time.monotonic()
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.2)
            got = [m for m in msgs if m.error() is None]
            out.extend(orjson.loads(m.value()) for m in got)
            if got:
                last = time.monotonic()
            elif len(out) >= expect and time.monotonic() - last >= idle_s:
                break
    finally:
        c.close()
    return out


# -- the story service: poison records, headless Chromium ---------------------------------

#: Each kind of record that passed the story service's old ``check`` but carried what the
#: store or the narration could not take (``poison_record``).
POISON_KINDS = ("non-numeric value", "NaN", "Infinity", "integer >= 2^63", "bbo tick >= 2^64", "bbo a list",
                "bbo with an object", "bbo with an extra key", "integer as a float", "symbol markup",
                "id not by the rule")
#: 2012-06-21 09:30:00 UTC in epoch ns: the feed time of the poison records.
_POISON_TS_NS = 1_340_271_000 * 10**9


def poison_record(kind: str) -> bytes:
    """One record of ``kind`` (one of ``POISON_KINDS``): a sweep signal, seq 7, made bad."""
    m = make_signal("sweep", "AMZN", seq=7, ts_exch_ns=_POISON_TS_NS)
    if kind == "non-numeric value":
        m["values"]["levels"] = "4"
    elif kind == "NaN":
        m["values"]["elapsed_ns"] = float("nan")
    elif kind == "Infinity":
        m["tick_size"] = float("inf")
    elif kind == "integer >= 2^63":
        m["seq"] = 2**63
    elif kind == "bbo tick >= 2^64":
        m["bbo"]["bid_tick"] = 2**64
    elif kind == "bbo a list":
        m["bbo"] = [22381, 22387, 300, 100]
    elif kind == "bbo with an object":
        m["bbo"]["ask_tick"] = {"tick": 22387}
    elif kind == "bbo with an extra key":
        m["bbo"]["mid"] = 1
    elif kind == "integer as a float":
        m["ts_exch_ns"] = float(m["ts_exch_ns"])
    elif kind == "symbol markup":
        m["symbol"] = "<img src=x onerror=alert(1)>"
        m["id"] = f"{m['symbol']}-7-sweep"
    elif kind == "id not by the rule":
        m["id"] = "AMZN-8-sweep"
    return json.dumps(m).encode()


def chromium(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """Debian's headless Chromium with a fresh profile and no background networking
    (the test skips when there is none)."""
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


# -- the market-data receiver as a child process ------------------------------------------

@contextlib.contextmanager
def running_rx(spec, row) -> Iterator:
    """An rx process (spawned) for ``spec`` (an ``obpipe.engine.rx.RxSpec``), once its stats
    ``row`` says running; stopped afterwards by its stop event (killed if it does not
    stop) and it must have exited 0."""
    import multiprocessing as mp

    from obpipe.engine import rx
    from obpipe.ring import schema as sc

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    p = ctx.Process(target=rx.main_entry, args=(spec, stop))
    try:
        p.start()
        deadline = time.monotonic() + 120
        while row[sc.ST_STATE] != sc.STATE_RUNNING:
            assert p.is_alive() and time.monotonic() < deadline, "rx never started"
            time.sleep(0.05)
        yield p
    finally:
        stop.set()
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(10)
    assert p.exitcode == 0


# -- the order-entry exchange as a child process ------------------------------------------

class ExchangeProc:
    """``obpipe exchange`` as a child process on a free port (``tests/exchange/conftest.py``'s
    ``exchanges`` fixture starts them and stops every one after the test)."""

    def __init__(self, tmp_path: Path, extra: str = "", journal: Path | None = None, tag: str = "x",
                 anonymous: bool = True, accounts: dict | None = None):
        """``accounts``: account number -> its limits (dict) in the accounts file."""
        self.cfg = tmp_path / f"{tag}.toml"
        j = f'journal = "{journal}"\n' if journal else ""
        self.keys = exchange_accounts(tmp_path, accounts or {})
        extra += f'accounts_file = "{tmp_path / "accounts.json"}"\n' + ("allow_anonymous = true\n" if anonymous else "")
        self.cfg.write_text(f'[book]\nsymbols = ["A", "B"]\n[exchange]\nport = 0\n{j}{extra}')
        self.dump = tmp_path / f"{tag}.book.json"
        self.err = open(tmp_path / f"{tag}.err", "w+")
        self.p = subprocess.Popen([sys.executable, "-m", "obpipe", "exchange", "--config", str(self.cfg), "--json",
                                   "--dump-book", str(self.dump)], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True)
        try:
            self.port = self._wait_port()
        except BaseException:  # never listened: nobody else will stop it
            stop_process(self.p)
            self.err.close()
            raise

    def _wait_port(self, timeout_s: float = 180) -> int:
        from obpipe.exchange.server import banner_port

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.err.seek(0)
            port = banner_port(self.err.read())
            if port is not None:
                return port
            if self.p.poll() is not None:
                self.err.seek(0)
                raise AssertionError(f"exchange exited {self.p.returncode}: {self.err.read()}")
            time.sleep(0.1)
        raise AssertionError("exchange never listened")

    def stop(self) -> dict:
        self.p.send_signal(signal.SIGINT)
        out, _ = self.p.communicate(timeout=60)
        assert self.p.returncode == 0, self.stderr()
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=30)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def book(self) -> dict:
        return json.loads(self.dump.read_text())


def exchange_accounts(tmp_path: Path, accounts: dict) -> dict[int, bytes]:
    """The accounts file of ``tmp_path`` holds ``accounts`` (account -> limits); their keys."""
    from obpipe.exchange import accounts as accmod

    path = str(tmp_path / "accounts.json")
    have = accmod.load(path) if os.path.exists(path) else {}
    for a, limits in accounts.items():
        if a not in have:
            have[a] = accmod.add(path, f"acct{a}", f"secret-{a}".encode(), a, **limits)
    if not os.path.exists(path):
        accmod.add(path, "nobody", b"never-used-secret", 999)
    return {a: acc.key for a, acc in have.items()}


class ExchangeSession:
    """One raw order-entry connection to an ``ExchangeProc`` logged in as ``account`` (with
    its key)."""

    def __init__(self, x: ExchangeProc, account: int):
        from obpipe.exchange.client import handshake

        self.s = socket.create_connection(("127.0.0.1", x.port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.hello = handshake(self.s, (account, x.keys[account]))
        assert self.hello["account"] == account

    def read(self, n: int):
        """The next ``n`` reports (an ``ORDER_OUT_DTYPE`` array)."""
        import numpy as np

        from obpipe.ring import schema

        while len(self.buf) < 32 * n:
            data = self.s.recv(1 << 16)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out = np.frombuffer(self.buf[:32 * n], schema.ORDER_OUT_DTYPE).copy()
        self.buf = self.buf[32 * n:]
        return out

    def responses(self, want: int) -> int:
        """Read reports until ``want`` ACK/REJECT responses arrived."""
        from obpipe.ring import schema

        got = 0
        while got < want:
            r = self.read(1)[0]
            got += int(r["type"] in (schema.R_ACK, schema.R_REJECT))
        return got


# -- PostgreSQL --------------------------------------------------------------------------

def pg_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin directory (``make postgres`` installs it)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


class PgServer:
    """A throwaway PostgreSQL server (Debian's, run as the ``postgres`` user: the server
    refuses root) on a free 127.0.0.1 port in a new temporary directory, fsync off.
    ``start``/``stop`` (by pid; SIGINT: fast shutdown) may repeat (an outage, same port
    and data); ``close`` stops it and removes the directory.  Skips the calling test
    without the server binaries, that user or psycopg, and says why."""

    def __init__(self):
        import pwd

        self.psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
        self.bin = pg_bin()
        if self.bin is None:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql (make postgres installs them)")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no 'postgres' user to run the server as (the server refuses root)")
        from obpipe.publisher.broker import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="obpipe-pg-"))  # (pytest's tmp_path is root-only)
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.kw = dict(user=pw.pw_uid, group=pw.pw_gid, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.dir)
        self.p = None
        r = subprocess.run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"],
                           timeout=120, **self.kw)
        if r.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise AssertionError(r.stderr.decode())
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.p = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                                   "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                  **self.kw)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.psycopg.connect(self.url, connect_timeout=2).close()
                return
            except self.psycopg.OperationalError:
                assert self.p.poll() is None, self.p.stderr.read().decode()
                assert time.monotonic() < deadline, "postgres did not accept connections"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.p is None:
            return
        self.p.send_signal(signal.SIGINT)  # fast shutdown
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=10)
        assert self.p.poll() is not None
        self.p.stderr.close()
        self.p = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A started ``PgServer``'s URL; the server is stopped by pid and removed after."""
    srv = PgServer()
    try:
        srv.start()
        yield srv.url
    finally:
        srv.close()
