"""The publisher process: signals ring -> Kafka (confluent-kafka, orjson).

Single reader of the "signals" ring and single writer of its stats row
(``ROW_PUBLISHER``).  Design:

- It pops analysis records in batches, encodes them (publisher.encode) and queues
  them in two bounded queues of its own: signals in a FIFO of ``pending_max`` (when
  full the *oldest* is dropped and counted), summaries in a dict keyed by symbol
  (a newer summary of a symbol replaces the pending one: coalesced, counted).
- It hands queued messages to the producer while fewer than ``producer_queue_max``
  are in flight (librdkafka's own queue is bounded the same way), so backpressure
  from Kafka lands in those two queues, where the drop/coalesce policy is explicit.
- Kafka down: librdkafka reconnects by itself; messages in flight fail after
  ``message_timeout_ms`` (counted in ``failed``); client errors are counted in
  ``kafka_errors``; state changes (down / resumed) are printed once each.  Nothing
  upstream waits: the analysis drops into a full signals ring and counts.
- A restarted publisher reads on from the ring's tail; what its dead predecessor
  still held (pending + in flight) is counted as ``lost``.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from obpipe.ring.runtime import background_priority, child_setup, claim_row, mark_running
from obpipe.ring import schema as sc
from obpipe.ring.kernels import ring_pop
from obpipe.ring.schema import STATE_STOPPED
from obpipe.ring.spsc import Ring
from obpipe.ring.stats import ROW_PUBLISHER

from obpipe.publisher.encode import EncodeError, dumps, encode, records_to_rows
from obpipe.publisher.schema import topic_names


@dataclass(frozen=True)
class PublisherSpec:
    """Everything the child needs, copied from ``[kafka]`` by the wiring
    (``obpipe.supervisor.specs_from_config``); picklable for the spawn context."""

    instance: str
    symbols: tuple[str, ...]
    bootstrap: str  # host:port[,host:port]
    prefix: str = "obpipe"
    client: tuple[tuple[str, str | int | float | bool], ...] = ()  # extra librdkafka settings ([kafka] client)
    pending_max: int = 10_000
    producer_queue_max: int = 10_000
    message_timeout_ms: int = 10_000
    linger_ms: int = 5
    flush_timeout_s: float = 5.0
    tick_size: float = 0.01
    cores: tuple[int, ...] = ()
    background: bool = False  # SCHED_IDLE: only CPU the book writer and rx leave
    parent_pid: int = 0
    quiet: bool = False


def producer_config(spec: PublisherSpec) -> dict:
    """librdkafka settings: bounded queue, quick reconnects, quiet logs (errors are
    counted and reported by the publisher instead)."""
    conf = {
        "bootstrap.servers": spec.bootstrap,
        "linger.ms": spec.linger_ms,
        "queue.buffering.max.messages": spec.producer_queue_max,
        "message.timeout.ms": spec.message_timeout_ms,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        "socket.connection.setup.timeout.ms": 3000,
        "log_level": 0,
        "log.connection.close": False,
    }
    conf.update(dict(spec.client))
    return conf


class Publisher:
    """The publishing loop's state; ``step`` does one round.  ``row`` is the stats row
    (any int64 array of ``STATS_WORDS`` in tests)."""

    def __init__(self, spec: PublisherSpec, ring: Ring, row: np.ndarray, log=None):
        from confluent_kafka import Producer  # imported here: the engine never needs it

        self.spec, self.ring, self.row = spec, ring, row
        self.log = log or (lambda msg: None)
        self.sig_topic, self.sum_topic = topic_names(spec.prefix)
        self.buf = np.zeros(1024, sc.SIGNAL_DTYPE)
        self.bufw = self.buf.view(np.int64).reshape(len(self.buf), -1)
        self.sig_q: deque = deque()
        self.sum_q: dict[str, bytes] = {}
        self.in_flight = self.in_flight_sig = 0
        self.broker_up = -1  # unknown until the first delivery or error
        # a predecessor's pending and in-flight messages were never reported: lost
        row[sc.ST_PUB_LOST] += int(row[sc.ST_PUB_PENDING]) + int(row[sc.ST_PUB_IN_FLIGHT])
        row[sc.ST_PUB_PENDING] = row[sc.ST_PUB_IN_FLIGHT] = 0
        self.producer = Producer({**producer_config(spec), "error_cb": self._on_error})

    # --- callbacks (run inside producer.poll/flush, on this thread) ---------------------

    def _on_delivery(self, err, msg) -> None:
        sig = msg.topic() == self.sig_topic
        self.in_flight -= 1
        self.in_flight_sig -= sig
        if err is None:
            self.row[sc.ST_PUB_DELIVERED] += 1
            self.row[sc.ST_PUB_DELIVERED_SIGNALS] += sig
            if self.broker_up != 1:
                if self.broker_up == 0:
                    self.log(f"kafka: publishing again to {self.spec.bootstrap}")
                self.broker_up = 1
        else:
            self.row[sc.ST_PUB_FAILED] += 1
            self.row[sc.ST_PUB_FAILED_SIGNALS] += sig
            if self.row[sc.ST_PUB_FAILED] == 1:
                self.log(f"kafka: delivery failed ({err.str()}); counting failures")

    def _on_error(self, err) -> None:
        from confluent_kafka import KafkaError

        self.row[sc.ST_PUB_KAFKA_ERRORS] += 1
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE) \
                and self.broker_up != 0:
            self.broker_up = 0
            self.log(f"kafka: {self.spec.bootstrap} unreachable ({err.str()}); the pipeline goes on, "
                     f"publishing resumes when it is back")

    # --- the loop -------------------------------------------------------------------

    def take(self) -> int:
        """Pop a batch of records from the ring into the pending queues."""
        n = int(ring_pop(self.ring.ctrl, self.ring.slots, self.bufw, len(self.buf)))
        if n == 0:
            return 0
        row, spec = self.row, self.spec
        for rec in records_to_rows(self.buf[:n]):
            try:
                is_sig, symbol, msg = encode(rec, spec.symbols, spec.tick_size)
            except EncodeError:
                row[sc.ST_PUB_ENCODE_ERRORS] += 1
                continue
            data = dumps(msg)
            # drop or coalesce only under backpressure: first try to hand pending ones over
            if is_sig:
                row[sc.ST_PUB_SIGNALS_IN] += 1
                if len(self.sig_q) >= spec.pending_max:
                    self.pump()
                if len(self.sig_q) >= spec.pending_max:
                    self.sig_q.popleft()
                    row[sc.ST_PUB_SIGNALS_DROPPED] += 1
                self.sig_q.append((symbol, data))
            else:
                row[sc.ST_PUB_SUMMARIES_IN] += 1
                if symbol in self.sum_q:
                    self.pump()
                if symbol in self.sum_q:
                    row[sc.ST_PUB_COALESCED] += 1
                    del self.sum_q[symbol]  # re-inserted last: oldest-pending symbol goes first
                self.sum_q[symbol] = data
        return n

    def pump(self) -> int:
        """Hand pending messages to the producer while it has room; returns how many."""
        room = self.spec.producer_queue_max - self.in_flight
        sent = 0
        while room > 0 and (self.sig_q or self.sum_q):
            if self.sig_q:
                symbol, data = self.sig_q[0]
                topic = self.sig_topic
            else:
                symbol = next(iter(self.sum_q))
                data, topic = self.sum_q[symbol], self.sum_topic
            try:
                self.producer.produce(topic, data, symbol.encode(), on_delivery=self._on_delivery)
            except BufferError:
                break  # librdkafka's queue is full: keep it pending
            if topic == self.sig_topic:
                self.sig_q.popleft()
                self.in_flight_sig += 1
            else:
                del self.sum_q[symbol]
            self.in_flight += 1
            self.row[sc.ST_PUB_PRODUCED] += 1
            room -= 1
            sent += 1
        return sent

    def _publish_gauges(self) -> None:
        self.row[sc.ST_PUB_PENDING] = len(self.sig_q) + len(self.sum_q)
        self.row[sc.ST_PUB_IN_FLIGHT] = self.in_flight
        self.row[sc.ST_PUB_BROKER_UP] = self.broker_up

    def step(self, idle_poll_s: float = 0.01) -> int:
        """One round: take, pump, serve callbacks.  Returns records taken."""
        n = self.take()
        self.pump()
        self.producer.poll(0 if n else idle_poll_s)
        self._publish_gauges()
        return n

    def close(self, timeout_s: float) -> None:
        """Drain the ring, hand everything over, wait up to ``timeout_s`` for delivery
        reports; count what is left as dropped (pending) or failed (in flight)."""
        deadline = time.monotonic() + timeout_s
        while self.take():
            pass
        while (self.sig_q or self.sum_q or self.in_flight) and time.monotonic() < deadline:
            self.pump()
            self.producer.poll(0.05)
        self.row[sc.ST_PUB_SIGNALS_DROPPED] += len(self.sig_q)
        self.row[sc.ST_PUB_SUMMARIES_DROPPED] += len(self.sum_q)
        self.sig_q.clear()
        self.sum_q.clear()
        if self.in_flight:
            self.producer.purge()  # their delivery reports say "purged": counted as failed
            self.producer.poll(0)
            self.producer.flush(0)
        self._publish_gauges()


def run(spec: PublisherSpec, stop) -> int:
    """Publish until ``stop`` is set and the ring is empty; returns 0."""
    from obpipe.publisher.broker import ensure_topics, reachable

    _, row = claim_row(spec.instance, ROW_PUBLISHER)
    ring = Ring.attach(spec.instance, "signals", sc.SIGNAL_DTYPE)

    def log(msg):
        if not spec.quiet:
            print(f"obpipe publisher: {msg}", file=sys.stderr, flush=True)

    pub = Publisher(spec, ring, row, log)
    if reachable(spec.bootstrap, 1.0):  # best effort: brokers that auto-create topics do not need it
        ensure_topics(spec.bootstrap, list(topic_names(spec.prefix)), timeout_s=3.0, extra_conf=dict(spec.client))
    mark_running(row)
    if spec.background:
        background_priority()
    while True:
        n = pub.step()
        row[sc.ST_HEARTBEAT_NS] = time.monotonic_ns()
        if n == 0 and stop.is_set() and len(ring) == 0:
            break
        if n == 0 and spec.parent_pid and os.getppid() != spec.parent_pid:
            break  # orphaned
    pub.close(spec.flush_timeout_s)
    row[sc.ST_STATE] = STATE_STOPPED
    return 0


def main_entry(spec: PublisherSpec, stop) -> None:
    """Process target (spawn): exit code is run()'s return value."""
    child_setup(spec.parent_pid, spec.cores, "publisher")
    sys.exit(run(spec, stop))
