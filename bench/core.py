"""Core benchmarks: ring, book, snapshots, and two peers on the same stream.

Writes ``bench/results/core.json``.  Every figure is a median over repeated runs
(``--repeats``); comparisons with the peers are measured in the same run on the same
stream.  Not a test: it asserts nothing about speed, it measures.

    .venv/bin/python bench/core.py [--repeats 5] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from numba import njit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from obpipe.engine import _book_kernels as BK  # noqa: E402
from obpipe.ring.placement import usable_cores, writer_and_reader_cores  # noqa: E402
from obpipe.engine._stress import run_writer_with_readers  # noqa: E402
from obpipe.engine.book import Book  # noqa: E402
from obpipe.engine.lobster import load_messages  # noqa: E402
from obpipe.feed_sim.synth import SynthParams, generate  # noqa: E402
from obpipe.ring import schema  # noqa: E402
from obpipe.ring.kernels import snap_read  # noqa: E402
from obpipe.ring.stress import run_ring_stress, run_snapshot_stress  # noqa: E402
from obpipe.ring.snapshot import SnapshotRegion  # noqa: E402

LOBSTER = REPO.parent / "shared" / "data" / "lobster" / "AMZN_2012-06-21_34200000_57600000_message_1.csv"
INSTANCE = f"bench{os.getpid()}"


def med(xs):
    return float(statistics.median(xs))


def bench_ring(repeats: int, total: int) -> dict:
    cons, prod = writer_and_reader_cores()
    runs = [run_ring_stress(f"{INSTANCE}r{i}", total, capacity=1 << 16, batch=1024, producer_cores=prod,
                            consumer_cores=cons) for i in range(repeats)]
    assert all(r["bad"] == 0 and r["received"] == total for r in runs)
    return {"ring_msgs_per_s": med([r["msgs_per_s"] for r in runs]),
            "ring_record_bytes": schema.MD_DTYPE.itemsize, "ring_batch": 1024, "ring_msgs_per_run": total}


def _apply_rate(msgs, widths, batch, repeats, events_consumed: bool, snapshots: bool, instance: str) -> float:
    """Median msgs/s of the book writer's work on ``msgs`` in ``batch``-message batches."""
    rates = []
    for rep in range(repeats + 1):  # the first run compiles / warms caches and is dropped
        ev = np.zeros(1 << 12 if events_consumed else 2, schema.EVENT_DTYPE)
        evc = np.zeros(schema.RING_DATA_OFFSET // 8, np.int64)
        snaps = SnapshotRegion.create(f"{instance}{rep}", "snap", len(widths), 10) if snapshots else None
        try:
            book = Book(widths, 10, events=(evc, ev), snapshots=snaps)
            t = time.perf_counter()
            for j in range(0, len(msgs), batch):
                k = min(batch, len(msgs) - j)
                BK.apply_batch(msgs, j, k, -1, book.lad, book.S, book.C, book.ev, book.ev_ctrl, book.dirty)
                if events_consumed:
                    evc[schema.RING_W_TAIL] = evc[schema.RING_W_HEAD]  # a consumer that keeps up
                book.publish(0)
            dt = time.perf_counter() - t
        finally:
            if snaps is not None:
                snaps.unlink()
        if rep:
            rates.append(len(msgs) / dt)
    return med(rates)


def bench_book(repeats: int, n_msgs: int) -> dict:
    msgs = generate(n_msgs, SynthParams(n_symbols=4, seed=11))
    w = [4096] * 4
    out = {
        # the writer's full work: apply, every event written (consumer keeps up), snapshots per batch
        "book_msgs_per_s": _apply_rate(msgs, w, 1024, repeats, True, True, f"{INSTANCE}b"),
        "book_msgs_per_s_batch64": _apply_rate(msgs, w, 64, repeats, True, True, f"{INSTANCE}c"),
        # apply only: no event consumer (events counted as dropped), no snapshots
        "book_apply_only_msgs_per_s": _apply_rate(msgs, w, 1024, repeats, False, False, f"{INSTANCE}d"),
        "book_stream_msgs": n_msgs,
        "book_stream_mix": {schema.KIND_NAMES[k]: int(c) for k, c in enumerate(np.bincount(msgs["kind"])) if c},
    }
    if LOBSTER.exists():
        amzn = load_messages(LOBSTER)
        passes = 20  # one day is only 57,515 messages (~1.5 ms): time 20 replays, each on a fresh book
        rates = []
        for rep in range(repeats + 1):
            books = [Book([4096], 10) for _ in range(passes)]
            t = time.perf_counter()
            for book in books:
                for j in range(0, len(amzn), 1024):
                    book.apply(amzn, j, min(1024, len(amzn) - j))
            dt = time.perf_counter() - t
            if rep:
                rates.append(passes * len(amzn) / dt)
        out["book_lobster_msgs_per_s"] = med(rates)
        out["book_lobster_msgs"] = len(amzn)
    return out


def bench_snapshots(repeats: int) -> dict:
    region = SnapshotRegion.create(f"{INSTANCE}s", "snap", 1, 10)
    try:
        dst = np.zeros(region.payload_words, np.int64)
        base = region.base(0)
        snap_read(region.words, base, dst, region.payload_words, 10)
        rates = []
        n = 2_000_000
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n // 100_000):
                _loop_reads_k(region.words, base, dst, region.payload_words, 100_000)
            rates.append(n / (time.perf_counter() - t))
    finally:
        region.unlink()
    w, r = writer_and_reader_cores()
    contended = [run_snapshot_stress(f"{INSTANCE}t{i}", 1.0, 1, writer_cores=w, reader_cores=r)
                 for i in range(repeats)]
    assert all(c["readers"][0][2] == 0 for c in contended)
    return {
        "snapshot_reads_per_s": med(rates),
        "snapshot_reads_per_s_while_writer_publishes": med([c["readers"][0][0] for c in contended]),
        "snapshot_writes_per_s_pattern_writer": med([c["writes_per_s"] for c in contended]),
        "snapshot_payload_bytes": region.payload_words * 8,
    }


@njit(nogil=True, cache=True)
def _loop_reads_k(words, base, dst, nw, n):
    t = 0
    for _ in range(n):
        t += snap_read(words, base, dst, nw, 1 << 20)
    return t


def bench_writer_with_readers(repeats: int, interval_ns: int) -> dict:
    w, r = writer_and_reader_cores()
    alone, with2, control = [], [], []
    for i in range(repeats):  # alternate, so drift in machine load hits all alike
        alone.append(run_writer_with_readers(f"{INSTANCE}w{i}", 0, 1.0, interval_ns, writer_cores=w,
                                             reader_cores=r)["msgs_per_s"])
        res = run_writer_with_readers(f"{INSTANCE}v{i}", 2, 1.0, interval_ns, writer_cores=w, reader_cores=r)
        assert all(x[2] == 0 for x in res["readers"])
        with2.append(res["msgs_per_s"])
        control.append(run_writer_with_readers(f"{INSTANCE}c{i}", 2, 1.0, interval_ns, writer_cores=w,
                                               reader_cores=r, private=True)["msgs_per_s"])
    a, b, c = med(alone), med(with2), med(control)
    # control readers run the same code on a private copy: CPU load on the other core without sharing
    return {"writer_msgs_per_s_no_readers": a, "writer_msgs_per_s_2_readers": b,
            "writer_msgs_per_s_2_control_readers": c, "writer_rate_ratio_2_readers": b / a,
            "writer_rate_ratio_2_readers_vs_control": b / c, "reader_sample_interval_ns": interval_ns}


def bench_peers(repeats: int, n_msgs: int) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    import _peers

    msgs = generate(n_msgs, SynthParams(n_symbols=1, seed=13))
    kind, side = msgs["kind"].astype(np.int64), msgs["side"].astype(np.int64)
    px, qty = msgs["px_tick"].astype(np.int64), msgs["qty"].astype(np.int64)
    book = Book([4096], 10)
    book.apply(msgs)
    bb, _, ba, _ = book.bbo(0)
    ours = _apply_rate(msgs, [4096], 1024, repeats, True, True, f"{INSTANCE}p")
    ours_apply = _apply_rate(msgs, [4096], 1024, repeats, False, False, f"{INSTANCE}q")
    ob = _peers.peer_order_book_msgs_per_s(kind, side, px, qty, repeats=repeats, expect_best_bid_tick=bb,
                                           expect_best_ask_tick=ba)
    ob_top = _peers.peer_order_book_msgs_per_s(kind, side, px, qty, repeats=repeats, expect_best_bid_tick=bb,
                                               expect_best_ask_tick=ba, read_top_each_msg=True)
    hbt = _peers.peer_hftbacktest_msgs_per_s(kind, side, px, qty, repeats=repeats, expect_best_bid_tick=bb,
                                             expect_best_ask_tick=ba)
    return {"peer_stream_msgs": n_msgs,
            # the book writer's whole job (events written, snapshots) / apply only, same stream
            "book_msgs_per_s_peer_stream": ours, "book_apply_only_msgs_per_s_peer_stream": ours_apply,
            "peer_order_book_msgs_per_s": ob, "peer_order_book_top_each_msg_msgs_per_s": ob_top,
            "peer_hftbacktest_msgs_per_s": hbt,
            "book_vs_order_book": ours / ob, "book_apply_only_vs_order_book": ours_apply / ob,
            "book_vs_order_book_top_each_msg": ours / ob_top,
            "book_vs_hftbacktest": ours / hbt, "book_apply_only_vs_hftbacktest": ours_apply / hbt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller streams (smoke run)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "core.json"))
    a = ap.parse_args(argv)
    q = a.quick
    res = {"machine": {"cores": os.cpu_count(), "usable_cores": usable_cores(), "python": platform.python_version(),
                       "numpy": np.__version__, "numba": __import__("numba").__version__,
                       "cpu": platform.processor() or platform.machine()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeats": a.repeats}
    for name, fn in [("ring", lambda: bench_ring(a.repeats, 2_000_000 if q else 20_000_000)),
                     ("book", lambda: bench_book(a.repeats, 1_000_000 if q else 10_000_000)),
                     ("snapshots", lambda: bench_snapshots(a.repeats)),
                     ("writer_with_readers", lambda: bench_writer_with_readers(a.repeats, 10_000)),
                     ("peers", lambda: bench_peers(a.repeats, 200_000 if q else 1_000_000))]:
        t = time.perf_counter()
        part = fn()
        print(f"{name}: {time.perf_counter() - t:.1f}s {part}", file=sys.stderr, flush=True)
        res.update(part)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    sys.path.insert(0, str(REPO / "bench"))
    import table  # the README's table, from the file just written

    return table.main(a.out)


if __name__ == "__main__":
    sys.exit(main())
