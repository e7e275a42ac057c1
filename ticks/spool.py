"""The recorder's spool: append-only files of the rows it took and the store has not got.

The recorder appends every batch it takes from its ring to a spool file at once (a copy
and a write: cheap, so it keeps up with the book at any rate), and moves rows from the
spool into the tick store when the CPU allows (``ticks/recorder.py`` decides when).  The
spool is what makes recording lossless beside a busy pipeline, and durable: a killed
recorder's rows are in the page cache, so its successor (or the next run, or
``obpipe ticks``) stores them.

One spool per store (``<store>.spool/``), one file per row kind: ``<kind>.spool`` holds
the raw records (numpy dtype per kind), ``<kind>.done`` two int64: rows stored so far, and
the end of the chunk being stored (the intent, written before the insert).  A chunk is
inserted with a deduplication token naming the spool's id and the chunk's bounds, so a
chunk whose insert landed just before a kill is not stored twice when it is retried
(ClickHouse drops a block whose token it has seen: ``non_replicated_deduplication_window``).
When every row is stored the files are removed, and the next spool gets a new id.
"""
from __future__ import annotations

import json
import os
import secrets

import numpy as np

from obpipe.ring import schema

EVENTS = "events"


def depth_dtype(n_levels: int) -> np.dtype:
    """A depth row in the spool: time, symbol index and ``n_levels`` levels a side."""
    return np.dtype([("ts_ns", "<i8"), ("symbol", "<i8"), ("bid_px", "<i8", (n_levels,)),
                     ("bid_qty", "<i8", (n_levels,)), ("ask_px", "<i8", (n_levels,)), ("ask_qty", "<i8", (n_levels,))])


def spool_dir(where: str) -> str:
    """The spool of the store at directory ``where``."""
    return os.path.abspath(where).rstrip("/") + ".spool"


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Spool:
    """The spool at ``path``.  Kinds: ``"events"`` (``schema.EVENT_DTYPE``) and
    ``"depth<N>"`` (``depth_dtype(N)``).  Rows name symbols by index into ``symbols``,
    which the spool keeps: a new spool takes the ones given, an existing one keeps its
    own (``exists`` says whether there was one)."""

    def __init__(self, path: str, symbols: tuple[str, ...] = ()):
        self.path = path
        self.exists = os.path.exists(os.path.join(path, "id"))
        if self.exists:
            with open(os.path.join(path, "id")) as f:
                self.id = f.read().strip()
            with open(os.path.join(path, "symbols")) as f:
                self.symbols = tuple(json.load(f))
        else:
            os.makedirs(path, exist_ok=True)
            self.id, self.symbols = secrets.token_hex(8), tuple(symbols)
            _write(os.path.join(path, "symbols"), json.dumps(list(self.symbols)))
            _write(os.path.join(path, "id"), self.id)  # (last: a spool without it is not one)
        self._fds: dict[str, int] = {}

    @staticmethod
    def dtype(kind: str) -> np.dtype:
        if kind == EVENTS:
            return schema.EVENT_DTYPE
        if kind.startswith("depth") and kind[5:].isdigit():
            return depth_dtype(int(kind[5:]))
        raise ValueError(f"unknown spool kind {kind!r}")

    def kinds(self) -> list[str]:
        """Kinds with a spool file, events first."""
        ks = sorted(f[:-6] for f in os.listdir(self.path) if f.endswith(".spool"))
        return sorted(ks, key=lambda k: k != EVENTS)

    def _file(self, kind: str, ext: str) -> str:
        return os.path.join(self.path, f"{kind}.{ext}")

    def append(self, kind: str, rows: np.ndarray) -> None:
        """Append ``rows`` (the kind's dtype) at the end of its file."""
        fd = self._fds.get(kind)
        if fd is None:
            fd = self._fds[kind] = os.open(self._file(kind, "spool"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        mv = memoryview(np.ascontiguousarray(rows)).cast("B")
        while len(mv):
            mv = mv[os.write(fd, mv):]

    def rows(self, kind: str) -> int:
        """Rows in the kind's file (whole records; a cut-off last one is not counted)."""
        try:
            return os.path.getsize(self._file(kind, "spool")) // self.dtype(kind).itemsize
        except FileNotFoundError:
            return 0

    def _marks(self, kind: str) -> tuple[int, int]:
        try:
            with open(self._file(kind, "done"), "rb") as f:
                a = np.frombuffer(f.read(16), np.int64)
            return (int(a[0]), int(a[1])) if len(a) == 2 else (0, 0)
        except FileNotFoundError:
            return 0, 0

    def _set_marks(self, kind: str, done: int, intent: int) -> None:
        tmp = self._file(kind, "done.tmp")
        with open(tmp, "wb") as f:
            f.write(np.array([done, intent], np.int64).tobytes())
        os.replace(tmp, self._file(kind, "done"))

    def pending(self, kind: str | None = None) -> int:
        """Rows in the spool not stored yet (one kind, or all)."""
        return sum(self.rows(k) - self._marks(k)[0] for k in ([kind] if kind else self.kinds()))

    def next_chunk(self, kind: str, max_rows: int) -> tuple[np.ndarray, str]:
        """The next rows to store (at most ``max_rows``; an interrupted chunk again, whole)
        and the token to insert them with.  Empty when nothing is pending."""
        done, intent = self._marks(kind)
        end = intent if intent > done else min(self.rows(kind), done + max_rows)
        dt = self.dtype(kind)
        if end <= done:
            return np.empty(0, dt), ""
        if end != intent:
            self._set_marks(kind, done, end)  # (before the insert: a retry takes the same chunk)
        rows = np.fromfile(self._file(kind, "spool"), dt, count=end - done, offset=done * dt.itemsize)
        return rows, f"{self.id}:{kind}:{done}-{end}"

    def chunk_stored(self, kind: str, n: int) -> None:
        """The chunk ``next_chunk`` gave (``n`` rows) is in the store."""
        done, _ = self._marks(kind)
        self._set_marks(kind, done + n, done + n)

    def clear_if_stored(self) -> bool:
        """Remove the files when every row is stored (the next spool gets a new id)."""
        if self.pending():
            return False
        self.close()
        for f in os.listdir(self.path):
            os.unlink(os.path.join(self.path, f))
        os.rmdir(self.path)
        return True

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def store_chunk(self, store, max_rows: int) -> int:
        """Move the next chunk of one kind (events first) into ``store`` (a TickStore);
        returns rows moved (0: nothing pending).  Raises what the store raises (the
        chunk stays pending and is retried whole)."""
        for kind in self.kinds():
            rows, token = self.next_chunk(kind, max_rows)
            if not len(rows):
                continue
            if kind == EVENTS:
                store.insert_events(rows, self.symbols, token)
            else:
                store.insert_depth(rows["ts_ns"], rows["symbol"], rows["bid_px"], rows["bid_qty"], rows["ask_px"],
                                   rows["ask_qty"], self.symbols, token)
            self.chunk_stored(kind, len(rows))
            return len(rows)
        return 0


def store_leftovers(where: str, store, chunk_rows: int = 65_536) -> int:
    """Store what a spool beside the store at ``where`` still holds (a recorder killed,
    or stopped before it had stored everything) and remove the spool; returns rows
    stored.  The readers (``obpipe ticks``, ``sql``, ``export``) and a run's first
    recorder call it."""
    path = spool_dir(where)
    if not os.path.exists(os.path.join(path, "id")):
        return 0
    sp = Spool(path)
    n = 0
    while k := sp.store_chunk(store, chunk_rows):
        n += k
    sp.clear_if_stored()
    return n
