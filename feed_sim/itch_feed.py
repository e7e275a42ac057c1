"""Send an ITCH 5.0 stream in MoldUDP64 packets, paced, with the sender-side faults,
and answer retransmission requests from the window of what was sent.

The stream is a uint8 array of length-prefixed messages (a ``*.NASDAQ_ITCH50`` file's
layout, or ``itch.encode``'s output for generated flow).  ``MoldPacker`` packs it into
packets and keeps the window; ``RequestServer`` answers requests on a UDP port of
127.0.0.1, polled between send chunks (a chunk is at most ~20 ms of paced time, so an
answer waits at most that long).  After the last message the feed lingers: it sends an
end-of-session packet every 100 ms and answers requests until ``linger_s`` pass without
one (or it is stopped), so the receiver can heal the last gaps.  Without a server
(retransmission off) it sends the end-of-session packets for ``linger_s`` and ends.
"""
from __future__ import annotations

import time

import numpy as np

from obpipe.feed_sim import itch
from obpipe.feed_sim.moldudp64 import MoldPacker, RequestServer
from obpipe.feed_sim.wire import ACTION_NAMES, plan

CHUNK_SECONDS = 0.02
MAX_PACKETS = 256  # packets per chunk at full speed


class ItchStream:
    """A stream's messages: the bytes, each message's offset and ITCH timestamp."""

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data, np.uint8)
        self.off, end = itch.frame(self.data)
        if end < len(self.data):
            self.data = self.data[:end]  # (a message cut at the end is not sent)
        o = self.off + 2 + 5  # timestamp: bytes 5..10 of a message, big-endian
        b = self.data[o[:, None] + np.arange(6)].astype(np.int64) if len(o) else np.zeros((0, 6), np.int64)
        self.ts = (b[:, 0] << 40) | (b[:, 1] << 32) | (b[:, 2] << 24) | (b[:, 3] << 16) | (b[:, 4] << 8) | b[:, 5]

    def __len__(self) -> int:
        return len(self.off)

    def byte_end(self, k: int) -> int:
        """Offset after the first ``k`` messages."""
        return len(self.data) if k >= len(self.off) else int(self.off[k])


def warm(packer: MoldPacker, server: RequestServer | None) -> None:
    """Compile (or load) every kernel the send loop uses, before the pacing clock starts:
    a kernel compiled inside the loop delays the first chunks, and the paced sender then
    sends the backlog in one burst that overflows the receiver's socket."""
    packer.warm()
    p = MoldPacker(packer.session, window=64, max_packets=2)
    n, _ = p.pack(np.array([0, 1, 65], np.uint8))
    p.apply_faults(np.zeros(max(n, 1), np.int8))
    if server is not None:
        server.poll()


def send(stream: ItchStream, sender, packer: MoldPacker, server: RequestServer, faults, rate: float,
         speed: float | None, count: int | None, should_stop, on_progress, linger_s: float = 2.0) -> dict:
    """Send the first ``count`` (all: None) messages of ``stream`` through ``sender`` (a
    ``UdpSender``: its paced ``sendmmsg`` loop and capture), answering requests between
    chunks; then linger.  Returns counters."""
    total = len(stream) if count is None else min(count, len(stream))
    end_byte = stream.byte_end(total)
    first_seq = packer.next_seq
    made = 0
    injected = {name: 0 for name in ACTION_NAMES.values()}
    if speed is not None or rate > 0:
        per_chunk = max(1, int((rate or 1e6) * CHUNK_SECONDS))
    else:
        per_chunk = None
    pos = 0
    sent = 0
    ts0 = int(stream.ts[0]) if total else 0
    while pos < end_byte and not should_stop():
        if speed is not None:  # about CHUNK_SECONDS of recorded time per chunk
            k = int(np.searchsorted(stream.ts, stream.ts[sent] + CHUNK_SECONDS * speed * 1e9, side="right"))
            lim = stream.byte_end(max(k, sent + 1))
        elif per_chunk is not None:
            lim = stream.byte_end(sent + per_chunk)
        else:
            lim = end_byte
        n, pos = packer.pack(stream.data, pos, min(lim, end_byte))
        if n == 0:
            break
        actions = plan(n, faults, first_packet_no=made)
        for a, name in ACTION_NAMES.items():
            injected[name] += int((actions[:n] == a).sum())
        made += n
        off, ln = packer.apply_faults(actions)
        pk = np.searchsorted(packer.dg_off[:n], off, side="right") - 1
        msg_idx = packer.pk_seq[pk] - first_seq
        if speed is not None:
            due = ((stream.ts[np.minimum(msg_idx, len(stream) - 1)] - ts0) / speed).astype(np.int64)
        elif rate > 0:
            due = (msg_idx * (1e9 / rate)).astype(np.int64)
        else:
            due = np.zeros(len(off), np.int64)
        sender.send_datagrams(packer.buf, off, ln, due, 0, len(off))
        k = int(packer.pk_cnt[:n].sum())
        sender.msgs += k
        sender.packets_made += n
        sent += k
        if server is not None:
            server.poll()
        on_progress(sent)
    sent_ns = time.monotonic_ns()
    # the end: end-of-session packets and answers until nobody asks for linger_s
    last_req, t_last = -1, time.monotonic()
    next_eos = 0.0
    eos = np.frombuffer(packer.end_of_session(), np.uint8).copy()
    z = np.zeros(1, np.int64)
    eos_len = np.array([len(eos)], np.int64)
    while not should_stop():
        now = time.monotonic()
        if now >= next_eos:
            sender._send_list(eos, z, eos_len, z - (1 << 62), 1)
            next_eos = now + 0.1
        if server is None:
            if now - t_last >= linger_s:
                break
            time.sleep(0.001)
            continue
        server.poll()
        req = server.counters()["requests"]
        if req != last_req:
            last_req, t_last = req, now
        elif now - t_last >= linger_s:
            break
        time.sleep(0.001)
    return {"injected": injected, "messages": sent, "packets": made, "sent_ns": sent_ns,
            "server": server.counters() if server is not None else {},
            "sender": packer.counters()}
