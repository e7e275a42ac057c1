"""Print the README's benchmark table from bench/results/core.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [
    ("ring_msgs_per_s", "SPSC ring, 2 processes, 40-byte records, batches of 1,024", "msgs/s", ">= 50M"),
    ("book_apply_only_msgs_per_s", "book apply kernel, 10M synthetic msgs, 4 symbols", "msgs/s", ">= 30M"),
    ("book_msgs_per_s", "book writer's whole job (apply + every event + snapshots)", "msgs/s", ""),
    ("book_msgs_per_s_batch64", "  same, batches of 64 (a snapshot per symbol per 64 msgs)", "msgs/s", ""),
    ("book_lobster_msgs_per_s", "book apply, AMZN LOBSTER day (57,515 msgs, x20)", "msgs/s", ""),
    ("snapshot_reads_per_s", "snapshot reads (seqlock copy + check), uncontended", "reads/s", ""),
    ("writer_msgs_per_s_no_readers", "book writer alone (apply + snapshots)", "msgs/s", ""),
    ("writer_msgs_per_s_2_readers", "  same, 2 reader processes sampling every 10 us", "msgs/s", ""),
    ("writer_rate_ratio_2_readers", "  ratio", "", ">= 0.90"),
    ("writer_msgs_per_s_2_control_readers", "  same, 2 control readers (same load, private memory)", "msgs/s", ""),
    ("writer_rate_ratio_2_readers_vs_control", "  ratio sharing / control readers", "", ">= 0.90"),
    ("book_apply_only_msgs_per_s_peer_stream", "obpipe apply kernel, 1M msgs, 1 symbol", "msgs/s", ""),
    ("book_msgs_per_s_peer_stream", "obpipe whole job (events + snapshots), same stream", "msgs/s", ""),
    ("peer_order_book_msgs_per_s", "order-book (C ext.), Python loop, same stream", "msgs/s", ""),
    ("peer_order_book_top_each_msg_msgs_per_s", "order-book, top of book read after every update", "msgs/s", ""),
    ("peer_hftbacktest_msgs_per_s", "hftbacktest depth (Rust), one numba call", "msgs/s", ""),
    ("book_apply_only_vs_order_book", "obpipe apply / order-book", "x", ">= 10x"),
    ("book_vs_order_book", "obpipe whole job / order-book", "x", ""),
    ("book_vs_order_book_top_each_msg", "obpipe whole job / order-book with top of book", "x", ""),
    ("book_apply_only_vs_hftbacktest", "obpipe apply / hftbacktest", "x", ""),
    ("book_vs_hftbacktest", "obpipe whole job / hftbacktest", "x", ""),
]


def fmt(v: float, unit: str) -> str:
    if unit == "x":
        return f"{v:.1f}x"
    if unit == "":
        return f"{v:.2f}"
    return f"{v / 1e6:,.1f}M"


def main(path: str = "bench/results/core.json") -> int:
    r = json.loads(Path(path).read_text())
    print(f"| figure (`{Path(path).name}` key) | measured | target |")
    print("|---|---:|---:|")
    for key, what, unit, target in ROWS:
        if key in r:
            print(f"| {what} (`{key}`) | {fmt(r[key], unit)} | {target} |")
    print(f"\nMeasured {r['when']}, median of {r['repeats']} runs, numba {r['machine']['numba']}, "
          f"{r['machine']['cores']} cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
