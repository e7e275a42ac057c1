"""``obpipe tail``: print obpipe's Kafka signals and summaries as they arrive.

Design: a confluent-kafka Consumer with ``assign()`` to every partition of each topic
(no consumer group: joining one takes seconds and tail commits nothing). Topics that
do not exist yet are looked up again every second (one "waiting for topic" line on
stderr); a topic that appears after tail started is read from its beginning, since all
of it is new. A record that is not JSON, has an unknown ``v`` or cannot be formatted is
reported as ``skipped: <reason>`` on stderr and counted, never fatal. librdkafka's own
logging is off; an unreachable broker is reported once. ``format_line`` is the pure
formatter of one decoded message.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from obpipe.publisher.schema import SCHEMA_VERSION, SIGNAL_KINDS, topic_names
from obpipe.ring.interrupt import Interrupt

#: Bootstrap used when neither --kafka nor $OBPIPE_KAFKA is given.
DEFAULT_KAFKA = "127.0.0.1:9092"
_DAY_NS = 86_400 * 10**9


def _tod(ns: int) -> str:
    """Time of day (UTC) of a nanosecond timestamp, as HH:MM:SS.mmm. Works for both
    epoch and since-midnight feed clocks."""
    ms = int(ns) % _DAY_NS // 1_000_000
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _dur(ns: int) -> str:
    """A duration in nanoseconds, in readable units."""
    if ns < 1_000_000:
        return f"{ns / 1e3:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def _opt(x, fmt: str) -> str:
    """``x`` formatted, or ``-`` for null."""
    return "-" if x is None else format(x, fmt)


def _signal_values(kind: str, v: dict) -> str:
    if kind == "spread_widening":
        return f"spread={v['spread_ticks']} ticks baseline={v['baseline_ticks']:.1f} ratio={v['ratio']:.1f}x"
    if kind == "imbalance":
        return (f"tob={v['tob_imbalance']:+.2f} depth={v['depth_imbalance']:+.2f} "
                f"bid_depth={v['bid_depth']} ask_depth={v['ask_depth']}")
    if kind == "microprice_shift":
        return (f"shift={v['shift_ticks']:+.1f} ticks {v['from_tick']:.1f}->{v['to_tick']:.1f} "
                f"in {_dur(v['elapsed_ns'])}")
    if kind == "sweep":
        return (f"levels={v['levels']} volume={v['volume']} trades={v['trades']} "
                f"{v['first_tick']}->{v['last_tick']} in {_dur(v['elapsed_ns'])}")
    if kind == "liquidity_withdrawal":
        return (f"depth {v['depth_before']}->{v['depth_after']} (-{v['drop_fraction']:.0%}) "
                f"in {_dur(v['elapsed_ns'])} touch {_opt(v['touch_tick'], 'd')}")
    raise ValueError(f"unknown signal kind {kind!r}")


def format_line(msg: dict) -> str:
    """One readable line for a decoded v1 signal or summary.

    Signal: ``09:30:01.234 AMZN  sweep                ask  levels=4 volume=1200 ...``
    (exchange time of day, UTC). Summary: ``09:30:01.300 AMZN  summary  bid 22381 x 300
    ask 22383 x 200  spread 2.0/2.4/3.0 imb +0.20 vol b/s 500/300 msgs 420/s`` (end of
    the interval; spread min/mean/max in ticks; top-of-book imbalance).

    Raises:
        KeyError, TypeError, ValueError: the message lacks a field or has a bad one.
    """
    kind = msg["type"]
    if kind == "signal":
        return (f"{_tod(msg['ts_exch_ns'])} {msg['symbol']:<5} {msg['kind']:<20} {msg['side'] or '-':<3}  "
                f"{_signal_values(msg['kind'], msg['values'])}")
    if kind == "summary":
        b, sp = msg["bbo"], msg["spread_ticks"]
        return (f"{_tod(msg['end_ns'])} {msg['symbol']:<5} summary  "
                f"bid {_opt(b['bid_tick'], 'd')} x {b['bid_qty']}  ask {_opt(b['ask_tick'], 'd')} x {b['ask_qty']}  "
                f"spread {_opt(sp['min'], '.1f')}/{_opt(sp['mean'], '.1f')}/{_opt(sp['max'], '.1f')} "
                f"imb {_opt(msg['imbalance']['tob'], '+.2f')} "
                f"vol b/s {msg['volume']['buy']}/{msg['volume']['sell']} msgs {msg['msgs_per_s']:.0f}/s")
    raise ValueError(f"unknown message type {kind!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obpipe tail", description="print obpipe's Kafka signals and summaries")
    p.add_argument("--kafka", metavar="HOST:PORT", default=os.environ.get("OBPIPE_KAFKA", DEFAULT_KAFKA),
                   help=f"bootstrap servers (default $OBPIPE_KAFKA, else {DEFAULT_KAFKA})")
    p.add_argument("--prefix", default="obpipe", help="topic prefix (default obpipe)")
    p.add_argument("--what", choices=("signals", "summaries", "all"), default="signals",
                   help="which topics to read (default signals)")
    p.add_argument("--json", action="store_true", help="print each message's raw JSON, one per line")
    p.add_argument("--from-beginning", action="store_true",
                   help="read the topics from their start, not just new messages")
    p.add_argument("--kind", action="append", metavar="KIND", help="only signals of this kind (repeatable)")
    p.add_argument("--count", type=int, metavar="N", help="exit after printing N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds in all")
    return p


class _Tail:
    """The consumer loop's state: assigned topics, counts, one-time notices."""

    def __init__(self, a):
        self.a = a
        self.printed = 0
        self.skipped = 0
        self._said: set[str] = set()
        self._missing: set[str] = set()  # topics the broker said did not exist
        signals, summaries = topic_names(a.prefix)
        self.pending = {"signals": [signals], "summaries": [summaries], "all": [signals, summaries]}[a.what]

    def say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            print(f"obpipe tail: {text}", file=sys.stderr, flush=True)

    def on_error(self, err) -> None:
        """librdkafka error_cb: report an unreachable broker once, other errors once each."""
        from confluent_kafka import KafkaError

        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            self.say_once("down", f"cannot reach the Kafka broker at {self.a.kafka} (is `obpipe kafka` running?)")
        else:
            self.say_once(err.name(), f"kafka: {err.str()}")

    def assign_new(self, consumer) -> None:
        """Assign every partition of each pending topic that now exists."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        for topic in list(self.pending):
            try:
                md = consumer.list_topics(topic, timeout=1.0).topics.get(topic)
            except KafkaException:
                self.on_error(_transport_error())
                return
            if md is None or md.error is not None or not md.partitions:
                self._missing.add(topic)
                self.say_once(f"wait:{topic}", f"waiting for topic {topic} ...")
                continue
            # A topic that appeared after we started holds only new messages: read it all.
            offset = OFFSET_BEGINNING if self.a.from_beginning or topic in self._missing else OFFSET_END
            consumer.incremental_assign([TopicPartition(topic, p, offset) for p in sorted(md.partitions)])
            self.pending.remove(topic)

    def handle(self, value: bytes | None) -> None:
        """Print one record's value, or report it as skipped."""
        import orjson

        try:
            msg = orjson.loads(value or b"")
        except orjson.JSONDecodeError as e:
            return self.skip(f"not JSON ({e})")
        if not isinstance(msg, dict):
            return self.skip(f"not a JSON object: {type(msg).__name__}")
        if msg.get("v") != SCHEMA_VERSION or isinstance(msg.get("v"), bool):
            return self.skip(f"unknown schema version v={msg.get('v')!r}")
        if self.a.kind and msg.get("type") == "signal" and msg.get("kind") not in self.a.kind:
            return None
        if self.a.json:
            line = value.decode("utf-8", "replace")
        else:
            try:
                line = format_line(msg)
            except (KeyError, TypeError, ValueError) as e:
                return self.skip(f"bad {msg.get('type', 'message')}: {type(e).__name__} {e}")
        print(line, flush=True)
        self.printed += 1
        return None

    def skip(self, reason: str) -> None:
        self.skipped += 1
        print(f"skipped: {reason}", file=sys.stderr, flush=True)

    def done(self, deadline: float | None) -> bool:
        return (self.a.count is not None and self.printed >= self.a.count) or (
            deadline is not None and time.monotonic() >= deadline)


def _transport_error():
    from confluent_kafka import KafkaError

    return KafkaError(KafkaError._TRANSPORT)


def main(argv: list[str] | None = None, stop: Interrupt | None = None) -> int:
    """``obpipe tail``; returns 0 (Ctrl-C, --count reached, --timeout elapsed). Usage
    errors exit 2 (SystemExit from argparse). Ctrl-C ends it within 2 s wherever it is
    (``ring.interrupt``; ``stop``: one the caller installed earlier)."""
    own = stop is None
    stop = Interrupt(grace_s=0) if own else stop
    try:
        return _main(argv, stop)
    finally:
        if own:
            stop.restore()


def _main(argv: list[str] | None, stop: Interrupt) -> int:
    p = _parser()
    a = p.parse_args(argv)
    bad = sorted(set(a.kind or ()) - set(SIGNAL_KINDS))
    if bad:
        p.error(f"unknown --kind {', '.join(bad)}; valid kinds: {', '.join(SIGNAL_KINDS)}")
    if a.kind and a.what == "summaries":
        p.error("--kind filters signals; it needs --what signals or all")
    if a.count is not None and a.count < 1:
        p.error("--count must be >= 1")
    if a.timeout is not None and not a.timeout > 0:
        p.error("--timeout must be > 0")

    from confluent_kafka import Consumer

    deadline = None if a.timeout is None else time.monotonic() + a.timeout
    t = _Tail(a)
    consumer = Consumer({"bootstrap.servers": a.kafka, "group.id": "obpipe-tail", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 100, "log_level": 0, "error_cb": t.on_error})
    try:
        next_lookup = 0.0
        while not stop and not t.done(deadline):
            if t.pending and time.monotonic() >= next_lookup:
                t.assign_new(consumer)
                next_lookup = time.monotonic() + 1.0
            m = consumer.poll(0.1)
            if m is None:
                continue
            if m.error():
                t.on_error(m.error())
                continue
            t.handle(m.value())
    except BrokenPipeError:  # `obpipe tail | head`: stop quietly, and keep Python's exit flush quiet too
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    finally:
        consumer.close()
        if t.skipped:
            print(f"obpipe tail: skipped {t.skipped} message(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
