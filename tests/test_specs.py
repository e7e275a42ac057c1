"""One way from the config to the process specs: ``obpipe.supervisor.specs_from_config``
builds every child's frozen, typed, picklable spec, copying each config section's
values; no child sees the ``Config``."""
from __future__ import annotations

import collections.abc
import dataclasses
import pickle
import types
import typing

import numpy as np
import pytest

from obpipe import config
from obpipe.analysis.process import AnalysisSpec, params
from obpipe.engine import lobster
from obpipe.engine.book_writer import BookWriterSpec
from obpipe.engine.rx import RxSpec
from obpipe.exchange.config import ExchangeConfig, TradersConfig
from obpipe.exchange.server import ExchangeFeedSpec
from obpipe.feed_sim.feed import FeedSpec
from obpipe.feed_sim.wire import Faults
from obpipe.publisher.process import PublisherSpec
from obpipe.ring.spsc import Backoff
from obpipe.supervisor import Placement, RunOptions, Specs, specs_from_config

CORES = Placement(book=(1,), rx=(0,), feed=(0, 2), analysis=(3,), publisher=(4,))


def _cfg(**sections):
    table = {"instance": {"name": "specs"},
             "book": {"symbols": ["AAA", "BBB", "CCC"], "ladder_width": 512, "ladder_width_by_symbol": {"BBB": 1024},
                      "snapshot_levels": 7, "event_depth_ticks": 5, "max_batch": 256, "uncross": True},
             "backoff": {"spin_iters": 11, "yield_iters": 3, "sleep_us": 70},
             "rx": {"max_seq_jump": 1000, "resync_packets": 9, "accept_new_session": True},
             "analysis": {"max_batch": 128, "idle_sleep_us": 900, "tick_size": 0.005, "spread": {"ratio": 4.5}},
             "kafka": {"topic_prefix": "pfx", "client": {"security.protocol": "PLAINTEXT", "retries": 2},
                       "pending_max": 11, "producer_queue_max": 12, "message_timeout_ms": 1300, "linger_ms": 2,
                       "flush_timeout_s": 1.5},
             "pinning": {"background_idle": False},
             "exchange": {"band_ticks": 1024, "max_msgs_per_s": 500},
             "traders": {"clients": 3, "rate": 700, "window": 4, "seed": 9},
             "run": {"rate": 1234, "duration_s": 2.5, "seed": 42, "start_ns": 1_700_000_000 * 10**9}}
    for k, v in sections.items():
        table.setdefault(k, {}).update(v)
    return config.from_dict(table)


def _specs(cfg=None, opts=None, **kw) -> Specs:
    kw = {"session": 77, "allow": (("127.0.0.1", 5000),), "src_port": 5000, "bootstrap": "kafka:9092", **kw}
    return specs_from_config(cfg or _cfg(), opts or RunOptions(), CORES, **kw)


def test_each_spec_copies_its_config_section():
    cfg = _cfg()
    s = _specs(cfg)
    pid = s.book.parent_pid
    assert pid > 0 and {s.rx.parent_pid, s.analysis.parent_pid, s.publisher.parent_pid, s.feed.parent_pid} == {pid}
    assert s.book == BookWriterSpec(instance="specs", widths=(512, 1024, 512), n_levels=7, depth_ticks=5,
                                    max_batch=256, backoff=Backoff(11, 3, 70, doorbell=True), uncross=True, cores=(1,),
                                    parent_pid=pid)
    assert s.rx == RxSpec("specs", port=0, backoff=Backoff(11, 3, 70, doorbell=True), cores=(0,), parent_pid=pid, session=77,
                          allow=(("127.0.0.1", 5000),), max_seq_jump=1000, resync_packets=9,
                          accept_new_session=True, symbols=("AAA", "BBB", "CCC"), tick_divisor=50)
    assert s.analysis == AnalysisSpec(instance="specs", n_symbols=3, params=params(cfg.analysis), max_batch=128,
                                      backoff=Backoff(0, 0, 900), cores=(3,), background=False, parent_pid=pid,
                                      relay_ticks=True)
    from obpipe.config import state_dir
    from obpipe.ticks.recorder import RecorderSpec

    assert s.ticks == RecorderSpec(instance="specs", symbols=("AAA", "BBB", "CCC"),
                                   where=str(state_dir("specs") / "ticks"),
                                   retention_days=(("quotes", 90), ("trades", 365), ("depth", 90)), cores=(4,),
                                   background=False, parent_pid=pid)
    assert s.publisher == PublisherSpec(instance="specs", symbols=("AAA", "BBB", "CCC"), bootstrap="kafka:9092",
                                        prefix="pfx", client=(("retries", 2), ("security.protocol", "PLAINTEXT")),
                                        pending_max=11, producer_queue_max=12, message_timeout_ms=1300,
                                        linger_ms=2, flush_timeout_s=1.5, tick_size=0.005, cores=(4,),
                                        background=False, parent_pid=pid)
    f = s.feed
    assert isinstance(f, FeedSpec)
    assert (f.port, f.replay, f.rate, f.speed, f.count, f.duration_s, f.seed, f.start_ns, f.n_symbols, f.symbol,
            f.session, f.src_port, f.instance, f.cores) == (
        0, None, 1234, None, None, 2.5, 42, 1_700_000_000 * 10**9, 3, 0, 77, 5000, "specs", (0, 2))
    assert f.lobster_md is None and f.lobster_loader is lobster.load_lobster


def test_command_line_options_override_the_config_in_the_specs():
    faults = Faults(drop_every=5)
    s = _specs(opts=RunOptions(rate=99, duration_s=0.5, seed=3, count=10, faults=faults, capture="x.obcap"))
    assert (s.feed.rate, s.feed.duration_s, s.feed.seed, s.feed.count, s.feed.faults, s.feed.capture) == (
        99, 0.5, 3, 10, faults, "x.obcap")
    # a replay goes as fast as possible unless --rate or --speed paces it
    assert _specs(opts=RunOptions(replay="f.csv")).feed.rate == 0
    assert _specs(opts=RunOptions(replay="f.csv", rate=500)).feed.rate == 500
    paced = _specs(opts=RunOptions(replay="f.csv", speed=2.0)).feed
    assert (paced.rate, paced.speed) == (0, 2.0)
    md = np.zeros(4, dtype=[("x", "i8")])
    lob = _specs(opts=RunOptions(replay="f.csv"), lobster_md=md, symbol=2).feed
    assert lob.lobster_md is md and lob.symbol == 2


def test_the_exchange_as_feed_gets_its_own_typed_spec():
    cfg = _cfg()
    s = _specs(cfg, RunOptions(source="exchange", count=50))
    assert s.feed == ExchangeFeedSpec(exchange=cfg.exchange, traders=cfg.traders, n_symbols=3, src_port=5000,
                                      count=50, duration_s=2.5, instance="specs", cores=(0, 2),
                                      parent_pid=s.book.parent_pid,
                                      store_args=("--instance", "specs", "--symbols", "AAA,BBB,CCC"))
    # its store writer writes the accounts' live state to the run's Redis, with the config's prefix and TTL
    r = _specs(_cfg(redis={"key_prefix": "kp", "ttl_s": 7.5}), RunOptions(source="exchange"), redis_url="unix:///r.sock")
    assert r.feed.store_args[4:] == ("--redis", "unix:///r.sock", "--redis-prefix", "kp", "--redis-ttl", "7.5")
    assert s.feed.exchange.band_ticks == 1024 and s.feed.traders.rate == 700
    # --rate is the traders' orders per second
    assert _specs(cfg, RunOptions(source="exchange", rate=5)).feed.traders == TradersConfig(3, 5, 4, 9)


def test_parts_switched_off_have_no_spec():
    off = _specs(_cfg(ticks={"enabled": False}))
    assert off.ticks is None and not off.analysis.relay_ticks
    assert _specs(_cfg(analysis={"enabled": False})).ticks is None  # (no analysis to relay the events)
    assert _specs(opts=RunOptions(no_feed=True)).feed is None
    assert _specs(opts=RunOptions(no_kafka=True)).publisher is None
    assert _specs(_cfg(kafka={"enabled": False})).publisher is None
    assert _specs(_cfg(analysis={"enabled": False})).analysis is None
    s = _specs()
    assert None not in (s.feed, s.publisher, s.analysis)


def test_at_port_gives_rx_and_the_feed_the_bound_port_only():
    for opts in (RunOptions(), RunOptions(source="exchange")):
        s = _specs(opts=opts)
        p = s.at_port(40123)
        assert p.rx.port == p.feed.port == 40123
        assert p.rx == dataclasses.replace(s.rx, port=40123) and p.feed == dataclasses.replace(s.feed, port=40123)
        assert (p.book, p.analysis, p.publisher) == (s.book, s.analysis, s.publisher)
    assert _specs(opts=RunOptions(no_feed=True)).at_port(7).feed is None


def _untyped(hint, seen) -> list:
    """The ``object``/``Any`` annotations inside ``hint`` (recursing into dataclasses)."""
    if hint is object or hint is typing.Any:
        return [hint]
    if dataclasses.is_dataclass(hint):
        if hint in seen:
            return []
        seen.add(hint)
        return [x for h in typing.get_type_hints(hint).values() for x in _untyped(h, seen)]
    if isinstance(hint, list):  # a Callable's parameter list
        return [x for h in hint for x in _untyped(h, seen)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple, collections.abc.Callable, dict, list):
        return [x for h in typing.get_args(hint) if h is not Ellipsis for x in _untyped(h, seen)]
    return []


SPEC_TYPES = (BookWriterSpec, RxSpec, AnalysisSpec, PublisherSpec, FeedSpec, ExchangeFeedSpec)


@pytest.mark.parametrize("cls", SPEC_TYPES, ids=lambda c: c.__name__)
def test_every_spec_is_a_frozen_dataclass_with_typed_fields(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert _untyped(cls, set()) == []


def test_untyped_detects_object_fields():  # (the check above can fail)
    @dataclasses.dataclass(frozen=True)
    class Loose:
        a: int
        b: tuple[str, object]

    assert _untyped(Loose, set()) == [object]


def test_every_spec_of_a_run_pickles_for_the_spawn_context():
    for opts in (RunOptions(), RunOptions(source="exchange")):
        s = _specs(opts=opts).at_port(5001)
        for spec in (s.book, s.rx, s.analysis, s.publisher, s.feed):
            assert pickle.loads(pickle.dumps(spec)) == spec
    lob = _specs(opts=RunOptions(replay="f.csv"), lobster_md=np.arange(6, dtype=np.int64)).feed
    back = pickle.loads(pickle.dumps(lob))
    assert np.array_equal(back.lobster_md, lob.lobster_md) and back.lobster_loader is lobster.load_lobster


def test_the_exchange_sections_are_the_exchange_packages_and_load_strictly():
    assert config.ExchangeConfig is ExchangeConfig and config.TradersConfig is TradersConfig
    cfg = config.from_dict({"exchange": {"port": 0, "fsync": "none"}, "traders": {"clients": 2}})
    assert isinstance(cfg.exchange, ExchangeConfig) and (cfg.exchange.port, cfg.exchange.fsync) == (0, "none")
    assert cfg.traders == TradersConfig(clients=2)
    with pytest.raises(config.ConfigError, match="exchange.bogus: unknown key"):
        config.from_dict({"exchange": {"bogus": 1}})
    with pytest.raises(config.ConfigError, match="exchange.fsync"):
        config.from_dict({"exchange": {"fsync": "sometimes"}})


def test_tick_recording_is_turned_off_and_said_where_it_cannot_run(monkeypatch, capsys):
    import importlib.util

    from obpipe.supervisor import _ticks_possible

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "chdb" else real(m, *a))
    assert not _ticks_possible(_cfg(), RunOptions()).ticks.enabled
    err = capsys.readouterr().err
    assert "tick recording off" in err and "chdb not installed" in err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert _ticks_possible(_cfg(), RunOptions()).ticks.enabled
    assert not _ticks_possible(_cfg(analysis={"enabled": False}), RunOptions()).ticks.enabled
    assert "[analysis] enabled = false" in capsys.readouterr().err


def test_no_redis_and_no_ticks_switch_their_sections_off():
    import argparse

    from obpipe.cli import _with_overrides

    cfg = _cfg()
    assert cfg.redis.enabled and cfg.ticks.enabled
    off = _with_overrides(cfg, argparse.Namespace(no_redis=True, no_ticks=True))
    assert not off.redis.enabled and not off.ticks.enabled
    assert _with_overrides(cfg, argparse.Namespace(no_redis=False, no_ticks=True)).redis.enabled
