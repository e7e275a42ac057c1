"""The UDP wire protocol's Python face: packet buffers, encoding, the receiver's
tracker, and seeded fault plans.  Layout and rules: docs/PROTOCOL.md and
``feed_sim.wire_kernels``.

Everything per message runs in the kernels; Python touches each *packet* at most once
(a ``sendto`` or ``recv_into``), as the sockets require.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from obpipe.ring import schema

from obpipe.feed_sim import _send_kernels as SK
from obpipe.feed_sim import wire_kernels as WK

if sys.byteorder != "little":  # the kernels pack packets as little-endian int64 words
    raise ImportError("obpipe.feed_sim.wire needs a little-endian machine")

TRACKER_NAMES = WK.TRACKER_NAMES


class PacketBuffer:
    """``n`` preallocated packets: ``words`` (n, 183) int64 for kernels, ``bytes_`` the
    same memory as (n, 1464) uint8 for sockets, ``nbytes`` each packet's length."""

    def __init__(self, n: int):
        self.words = np.zeros((n, schema.WIRE_PACKET_WORDS), np.int64)
        self.bytes_ = self.words.view(np.uint8)
        self.nbytes = np.zeros(n, np.int64)
        self.n = 0

    def encode(self, md: np.ndarray, session: int, seq0: int, per_packet: int = schema.WIRE_MAX_MSGS) -> int:
        """Encode all of ``md`` (MD_DTYPE, or WIRE_MSG_DTYPE with order ids) from
        sequence ``seq0``; returns packets made."""
        if not 1 <= per_packet <= schema.WIRE_MAX_MSGS:
            raise ValueError(f"per_packet must be 1..{schema.WIRE_MAX_MSGS}, got {per_packet}")
        need = -(-len(md) // per_packet)
        if need > len(self.words):
            raise ValueError(f"{len(md)} messages need {need} packets, buffer holds {len(self.words)}")
        enc = WK.encode_wire if md.dtype == schema.WIRE_MSG_DTYPE else WK.encode_packets
        n = int(enc(md, 0, len(md), session, seq0, per_packet, self.words))
        counts = np.full(n, per_packet, np.int64)
        if n:
            counts[-1] = len(md) - per_packet * (n - 1)
        self.nbytes[:n] = schema.WIRE_HEADER_BYTES + counts * schema.WIRE_MSG_BYTES
        self.n = n
        return n

    def heartbeat(self, session: int, seq: int) -> bytes:
        """A count-0 packet announcing ``seq`` as the next sequence number."""
        w = np.zeros((1, schema.WIRE_PACKET_WORDS), np.int64)
        nb = int(WK.encode_heartbeat(session, seq, w))
        return w.view(np.uint8)[0, :nb].tobytes()

    def packet(self, i: int) -> memoryview:
        return memoryview(self.bytes_[i, : self.nbytes[i]])


def tracker_counters(T: np.ndarray) -> dict[str, int]:
    """The receiver's tracker words ``T`` as named counters, plus their ``malformed`` total."""
    d = {name: int(T[i]) for i, name in TRACKER_NAMES.items()}
    d["malformed"] = sum(d[k] for k in ("malformed_length", "malformed_magic", "malformed_version",
                                        "malformed_check"))
    d["session"] = int(T[WK.T_SESSION])
    return d


def source_key(host: str, port: int = 0) -> tuple[int, int]:
    """An allow-list row (value, mask) for ``rx_packet``: datagrams from ``host`` (IPv4)
    and ``port`` (0: any port), matched on the first 8 bytes of the sender's
    ``sockaddr_in`` (family, port, address)."""
    import socket
    import struct

    raw = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host)
    value = struct.unpack("<q", raw)[0]
    mask = -1 if port else struct.unpack("<q", struct.pack("<HHI", 0xFFFF, 0, 0xFFFFFFFF))[0]
    return value, mask


def allow_list(sources) -> np.ndarray:
    """``WK.rx_packet``'s allow array from ``(host, port)`` pairs (port 0: any)."""
    rows = [source_key(h, p) for h, p in sources]
    return np.array(rows, np.int64).reshape(len(rows), 2)


class Tracker:
    """The receiver's sequence tracker and counters (``T``), missing ranges, settings
    and admission state (``C``: ``WK.receiver_config``) and source allow-list."""

    def __init__(self, C: np.ndarray | None = None, allow: np.ndarray | None = None, session: int = 0):
        self.T = np.zeros(WK.NT, np.int64)
        self.T[WK.T_SESSION] = session
        self.miss = np.zeros((WK.MAX_MISSING, 2), np.int64)
        self.C = WK.receiver_config() if C is None else C
        self.allow = WK.NO_ALLOW if allow is None else allow

    def counters(self) -> dict[str, int]:
        return tracker_counters(self.T)


# --- fault injection ----------------------------------------------------------------

# Packet fault actions (applied by ``_send_kernels.plan_datagrams``).
SEND, DROP, DUPLICATE, REORDER = SK.SEND, SK.DROP, SK.DUPLICATE, SK.REORDER  # dup: sent twice; reorder: after the next
TRUNCATE, CORRUPT = SK.TRUNCATE, SK.CORRUPT  # last 7 bytes cut; a message byte flipped (caught by the check)
BAD_MAGIC, BAD_VERSION = SK.BAD_MAGIC, SK.BAD_VERSION
ACTION_NAMES = {DROP: "drop", DUPLICATE: "duplicate", REORDER: "reorder", TRUNCATE: "truncate",
                CORRUPT: "corrupt", BAD_MAGIC: "bad_magic", BAD_VERSION: "bad_version"}


@dataclass(frozen=True)
class Faults:
    """Sender-side faults, each exact and seeded: ``*_every`` k hits packets k, 2k, ...
    (1-based), ``*_prob`` p hits each packet with probability p.  A packet gets at most
    one fault; the first packet is never faulted (it starts the session cleanly)."""

    drop_every: int = 0
    drop_prob: float = 0.0
    duplicate_every: int = 0
    reorder_every: int = 0
    truncate_every: int = 0
    corrupt_every: int = 0
    bad_magic_every: int = 0
    bad_version_every: int = 0
    seed: int = 1

    def any(self) -> bool:
        return any(v for k, v in self.__dict__.items() if k != "seed")


def plan(n_packets: int, f: Faults, first_packet_no: int = 0) -> np.ndarray:
    """The action (SEND, DROP, ...) for each of ``n_packets`` packets numbered from
    ``first_packet_no`` in the whole feed, decided up front (numpy, no per-packet
    Python), so a test knows exactly what was injected.  Probabilistic drops depend
    only on (seed, packet number): the same feed sent in other batch sizes gets the
    same faults."""
    act = np.zeros(n_packets, np.int8)
    idx = np.arange(first_packet_no + 1, first_packet_no + n_packets + 1)
    for every, action in ((f.drop_every, DROP), (f.duplicate_every, DUPLICATE), (f.reorder_every, REORDER),
                          (f.truncate_every, TRUNCATE), (f.corrupt_every, CORRUPT),
                          (f.bad_magic_every, BAD_MAGIC), (f.bad_version_every, BAD_VERSION)):
        if every:
            hit = (idx % every == 0) & (act == SEND)
            act[hit] = action
    if f.drop_prob:
        u = _uniform(idx, f.seed)
        hit = (u < f.drop_prob) & (act == SEND)
        act[hit] = DROP
    if n_packets:
        if first_packet_no == 0:
            act[0] = SEND
        # a reorder swaps with the next packet; the last packet has none to swap with
        if act[-1] == REORDER:
            act[-1] = SEND
        # the packet after a reorder is sent as is (it overtakes the reordered one)
        r = np.flatnonzero(act[:-1] == REORDER)
        act[r + 1] = SEND
    return act


def _uniform(idx: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) per packet number: splitmix64 of (seed, number), vectorized."""
    with np.errstate(over="ignore"):
        z = (idx.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def datagrams(buf: PacketBuffer, actions: np.ndarray):
    """The datagrams to send, in order, after applying ``actions`` (byte faults are
    applied to ``buf``'s packets in place), as memoryviews into ``buf``."""
    off = np.zeros(2 * buf.n + 1, np.int64)
    ln = np.zeros(2 * buf.n + 1, np.int64)
    nd = SK.plan_datagrams(buf.words, buf.nbytes, actions, buf.n, off, ln)
    flat = memoryview(buf.bytes_.reshape(-1))
    return [flat[off[i]:off[i] + ln[i]] for i in range(nd)]


def expected_counts(buf: PacketBuffer, actions: np.ndarray) -> dict[str, int]:
    """What a receiver must count for ``actions`` (plus a closing heartbeat)."""
    counts = (buf.nbytes[: buf.n] - schema.WIRE_HEADER_BYTES) // schema.WIRE_MSG_BYTES
    a = actions[: buf.n]
    return {
        "gap_messages": int(counts[a == DROP].sum() + counts[a >= TRUNCATE].sum()),
        "duplicates": int((a == DUPLICATE).sum()),
        "out_of_order": int((a == REORDER).sum()),
        "malformed": int((a >= TRUNCATE).sum()),
        "late_messages": int(counts[a == REORDER].sum()),  # arrive after their successor: not applied
        "delivered": int(counts[(a == SEND) | (a == DUPLICATE)].sum()),
    }
