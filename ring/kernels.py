"""Compiled SPSC ring kernels.  No I/O, no allocation; callable from other kernels.

Arguments: ``ctrl`` is the whole segment as int64 words (control words at the
``schema.RING_W_*`` indices); ``slots`` is the slot area as a 2-D int64 array
``(capacity, words_per_record)``.  Records are copied as whole 8-byte words.

Invariants: ``0 <= head - tail <= capacity``; head only grows (producer), tail only
grows (consumer); slot of counter ``c`` is ``c & (capacity - 1)``.  The producer
publishes with a store-release of head *after* writing the slots; the consumer reads
head with a load-acquire *before* reading slots, and releases tail with a
store-release *after* it is done reading them, so the producer never overwrites a slot
that is still being read.
"""
from __future__ import annotations

from numba import njit

from obpipe.ring import schema
from obpipe.ring.atomics import (
    cpu_relax,
    fence_seq_cst,
    futex_wait,
    futex_wake,
    load_acquire,
    load_relaxed,
    sched_yield,
    seqlock_read_begin,
    seqlock_read_ok,
    seqlock_write_begin,
    seqlock_write_end,
    store_relaxed,
    store_release,
)
from obpipe.ring.jit import HOT

_HEAD = schema.RING_W_HEAD
_TAIL = schema.RING_W_TAIL
_TAIL_CACHE = schema.RING_W_TAIL_CACHE
_HEAD_CACHE = schema.RING_W_HEAD_CACHE
_HWM = schema.RING_W_HWM
_SLEEP = schema.RING_W_SLEEP


@njit(**HOT, inline="always")
def ring_claim(ctrl, capacity, want):
    """Producer: (head, n) where n <= want slots are free from counter ``head`` on.

    Re-reads the consumer tail only when the cached copy says the ring is too full.
    """
    head = load_relaxed(ctrl, _HEAD)
    tail = ctrl[_TAIL_CACHE]
    if capacity - (head - tail) < want:
        tail = load_acquire(ctrl, _TAIL)
        ctrl[_TAIL_CACHE] = tail
    free = capacity - (head - tail)
    return head, min(want, free)


@njit(**HOT, inline="always")
def ring_publish(ctrl, new_head):
    """Producer: make every slot below ``new_head`` visible to the consumer."""
    store_release(ctrl, _HEAD, new_head)


@njit(**HOT, inline="always")
def ring_available(ctrl, want):
    """Consumer: (tail, n) with n records readable from counter ``tail`` on.

    Re-reads the producer head only when the cached copy shows fewer than ``want``.
    """
    tail = load_relaxed(ctrl, _TAIL)
    head = ctrl[_HEAD_CACHE]
    if head - tail < want:
        head = load_acquire(ctrl, _HEAD)
        ctrl[_HEAD_CACHE] = head
        if head - tail > ctrl[_HWM]:
            ctrl[_HWM] = head - tail
    return tail, head - tail


@njit(**HOT, inline="always")
def ring_release(ctrl, new_tail):
    """Consumer: hand every slot below ``new_tail`` back to the producer."""
    store_release(ctrl, _TAIL, new_tail)


@njit(**HOT)
def ring_push(ctrl, slots, src, start, n):
    """Copy up to ``n`` records ``src[start:start+n]`` into the ring.  Never blocks.

    Returns how many were accepted; the caller counts the rest as drops.
    """
    cap = slots.shape[0]
    mask = cap - 1
    w = slots.shape[1]
    if n <= 0:
        return 0
    head, k = ring_claim(ctrl, cap, n)
    for i in range(k):
        s = (head + i) & mask
        for j in range(w):
            slots[s, j] = src[start + i, j]
    if k > 0:
        ring_publish(ctrl, head + k)
    return k


@njit(**HOT)
def ring_pop(ctrl, slots, dst, max_n):
    """Copy up to ``max_n`` records out of the ring into ``dst[0:]``; returns how many."""
    cap = slots.shape[0]
    mask = cap - 1
    w = slots.shape[1]
    want = min(max_n, dst.shape[0])
    if want <= 0:
        return 0
    tail, avail = ring_available(ctrl, want)
    k = min(avail, want)
    for i in range(k):
        s = (tail + i) & mask
        for j in range(w):
            dst[i, j] = slots[s, j]
    if k > 0:
        ring_release(ctrl, tail + k)
    return k


@njit(**HOT)
def ring_wait(ctrl, spin_iters, yield_iters, doze_ns=0):
    """Consumer backoff: spin (``pause``), then ``sched_yield``, then (``doze_ns`` > 0)
    block on the doorbell until the producer rings or ``doze_ns`` passes.

    Returns the number of readable records, 0 if still empty after the budget (the
    caller then checks its stop flag, and sleeps if it did not doze).
    """
    for _ in range(spin_iters):
        tail, n = ring_available(ctrl, 1)
        if n > 0:
            return n
        cpu_relax()
    for _ in range(yield_iters):
        tail, n = ring_available(ctrl, 1)
        if n > 0:
            return n
        sched_yield()
    if doze_ns > 0:
        return ring_doze(ctrl, doze_ns)
    tail, n = ring_available(ctrl, 1)
    return n


@njit(**HOT)
def ring_doze(ctrl, timeout_ns):
    """Consumer: block until the producer publishes and rings (``ring_wake``), at most
    ``timeout_ns``; returns the readable records (0: timed out, or woken early by a
    ring meant for records already taken: the caller looks again).

    The doorbell word is raised *before* the ring is looked at once more, with a full
    fence between, and the producer's ``ring_wake`` fences between publishing and
    reading the word: so either this look sees the new records or the producer sees
    the raised word and wakes us.  No wake-up is lost, and the futex returns at once if
    the producer lowered the word first."""
    store_relaxed(ctrl, _SLEEP, 1)
    fence_seq_cst()
    tail, n = ring_available(ctrl, 1)
    if n == 0:
        futex_wait(ctrl, _SLEEP, 1, timeout_ns)
        tail, n = ring_available(ctrl, 1)
    store_relaxed(ctrl, _SLEEP, 0)
    return n


@njit(**HOT, inline="always")
def ring_wake(ctrl):
    """Producer, after ``ring_publish``: wake the consumer if it dozes on the doorbell.
    Costs one fence and one load of a word written only when the consumer goes to
    sleep; the syscall only when it does.  True when it rang (the consumer was asleep)."""
    fence_seq_cst()
    if load_relaxed(ctrl, _SLEEP) != 0:
        store_relaxed(ctrl, _SLEEP, 0)
        futex_wake(ctrl, _SLEEP)
        return True
    return False


@njit(**HOT)
def ring_counters(ctrl):
    """(head, tail) as seen now, for monitoring (tail read first, so head >= tail)."""
    tail = load_acquire(ctrl, _TAIL)
    head = load_acquire(ctrl, _HEAD)
    return head, tail


@njit(**HOT)
def ring_reset(ctrl):
    """Zero the counters (creator only, before any other process attaches)."""
    store_relaxed(ctrl, _HEAD, 0)
    store_relaxed(ctrl, _TAIL, 0)
    ctrl[_TAIL_CACHE] = 0
    ctrl[_HEAD_CACHE] = 0
    ctrl[_HWM] = 0


# --- seqlock snapshot slots ------------------------------------------------------------
# A slot starts at int64 word ``base``: word ``base`` is the sequence (alone on its cache
# line), the payload starts at ``base + 8``.  Writer: the snapshot's single writer.


@njit(**HOT, inline="always")
def payload_check(p, n_words):
    """XOR of payload words 0..n_words-2 (the last word holds it)."""
    x = 0
    for j in range(n_words - 1):
        x ^= p[j]
    return x


@njit(**HOT)
def snap_write(words, base, payload, n_words):
    """Publish ``payload[0:n_words]`` (check word already set) into the slot at ``base``."""
    s = seqlock_write_begin(words, base)
    for j in range(n_words):
        words[base + 8 + j] = payload[j]
    seqlock_write_end(words, base, s)


@njit(**HOT)
def snap_read_changed(words, base, dst, n_words, last_seq, max_tries):
    """Like ``snap_read``, but copies only if the slot changed since the reader's copy
    at sequence ``last_seq``: a poll of an unchanged slot touches one cache line.

    Returns (seq, retries): ``seq`` of the copy in ``dst`` (== last_seq: unchanged,
    nothing copied; -1: gave up after ``max_tries``)."""
    tries = 0
    while tries < max_tries:
        s0 = seqlock_read_begin(words, base)
        if s0 == last_seq:
            return last_seq, tries
        if s0 & 1:
            tries += 1
            cpu_relax()
            continue
        for j in range(n_words):
            dst[j] = words[base + 8 + j]
        if seqlock_read_ok(words, base, s0):
            return s0, tries
        tries += 1
    return -1, tries


@njit(**HOT)
def snap_read(words, base, dst, n_words, max_tries):
    """Copy a consistent payload into ``dst``; returns the retries it took, -1 if it
    gave up after ``max_tries`` attempts (writer stuck mid-write, e.g. killed)."""
    seq, tries = snap_read_changed(words, base, dst, n_words, -2, max_tries)  # -2: never a sequence
    return tries if seq >= 0 else -1
