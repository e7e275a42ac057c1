"""Memory-ordering helpers: the only code that touches ring counters and seqlock words.

Design
------
Every shared counter (ring head/tail, seqlock sequence words, stats counters) is an
8-byte-aligned ``int64`` inside a numpy array that views a POSIX shared-memory
mapping.  Two processes touch each word: exactly one writes it, any number read it.
Grep for ``load_acquire`` / ``store_release`` / ``fence_`` to find every ordering point.

Why the helpers exist at all, even on x86-64
    numba compiles through LLVM.  A plain ``while ctrl[HEAD] == seen: pass`` loop lets
    LLVM hoist the load out of the loop (nothing in the loop body writes memory), so
    the consumer would spin on a register forever.  An *atomic* load (``load atomic
    ... acquire``) must be performed every time it is executed, and LLVM may not move
    later memory operations above it.  Likewise a plain store of the producer's head
    could be moved above the stores that fill the slots; ``store atomic ... release``
    forbids that.

What they cost / emit
    x86-64 is TSO: every load already has acquire semantics and every store release
    semantics in hardware.  ``load atomic acquire`` compiles to a plain ``mov``,
    ``store atomic release`` to a plain ``mov``, ``fence acquire``/``fence release``
    to nothing at all - they only constrain the compiler.  ``fence seq_cst`` emits
    ``mfence`` (never used on a hot path).  On AArch64 the same IR emits ``ldar``,
    ``stlr`` and ``dmb ish``/``dmb ishld``; on POWER ``lwsync``/``sync``.  The code is
    therefore correct on weakly ordered CPUs, and free on x86-64.

Seqlock (one writer, many readers), after H.-J. Boehm, "Can seqlocks get along with
programming language memory models?" (MSPC 2012):

    writer:  s = seq (even)          reader:  s0 = load_acquire(seq)
             store(seq, s + 1)                if s0 odd: retry
             fence_release()                  copy payload (plain loads)
             write payload (plain stores)     fence_acquire()
             store_release(seq, s + 2)        s1 = load(seq); ok iff s1 == s0

LLVM treats a ``fence`` as touching all memory, so plain payload loads/stores cannot
be moved across it; on x86-64 the fences vanish and the mov ordering of TSO does the
rest.  Payload words are 8-byte aligned, so a torn *word* never happens; a torn
*snapshot* (words from two versions) is what the sequence check rejects, and the
snapshot's checksum lets a stress test prove it.

Counters are ``int64``, not ``uint64``: numba promotes ``uint64 op int64`` to float64,
and 2**63 messages is ~2,900 years at 100M/s.

Also here, because they are the same kind of low-level code: ``cpu_relax`` (x86
``pause``), ``sched_yield``, ``sleep_ns`` (nanosleep), ``futex_wait`` / ``futex_wake``
(the doorbell), ``poll_in``, ``monotonic_ns``
(clock_gettime) and ``rdtsc``.  They are
linked by symbol name (not by ctypes address), so kernels using them stay cacheable.
"""
from __future__ import annotations

from obpipe.ring import _jitcache  # noqa: F401  (first: numba's cache directory, before any kernel is decorated)

import platform

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from obpipe.ring.jit import HOT

_MACHINE = platform.machine().lower()
_IS_X86 = _MACHINE in ("x86_64", "amd64", "i386", "i686")

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1

_I64 = ir.IntType(64)


def _is_i64_vector(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


def _word_ptr(context, builder, arrty, arr, idxty, idx):
    """Pointer to ``arr[idx]`` (no wraparound; callers pass valid indices)."""
    ary = context.make_array(arrty)(context, builder, arr)
    i = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [i], wraparound=False)


def _make_load(ordering: str, doc: str):
    @intrinsic
    def _load(typingctx, arr, idx):
        if not (_is_i64_vector(arr) and isinstance(idx, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _word_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            return builder.load_atomic(ptr, ordering, 8)

        return types.int64(arr, idx), codegen

    _load.__doc__ = doc
    return _load


def _make_store(ordering: str, doc: str):
    @intrinsic
    def _store(typingctx, arr, idx, val):
        if not (_is_i64_vector(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _word_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            v = context.cast(builder, args[2], sig.args[2], types.int64)
            builder.store_atomic(v, ptr, ordering, 8)
            return context.get_dummy_value()

        return types.none(arr, idx, val), codegen

    _store.__doc__ = doc
    return _store


load_acquire = _make_load("acquire", "``arr[idx]`` as an atomic load-acquire (re-read every time; later "
                                     "accesses stay after it).")
load_relaxed = _make_load("monotonic", "``arr[idx]`` as an atomic monotonic load: re-read every time, no ordering.")
store_release = _make_store("release", "``arr[idx] = val`` as an atomic store-release (earlier accesses stay "
                                       "before it).")
store_relaxed = _make_store("monotonic", "``arr[idx] = val`` as an atomic monotonic store (never torn, never "
                                         "elided).")


def _make_fence(ordering: str):
    @intrinsic
    def _fence(typingctx):
        def codegen(context, builder, sig, args):
            builder.fence(ordering)
            return context.get_dummy_value()

        return types.none(), codegen

    return _fence


fence_acquire = _make_fence("acquire")
fence_release = _make_fence("release")
fence_seq_cst = _make_fence("seq_cst")


@intrinsic
def cpu_relax(typingctx):
    """Spin-wait hint: x86 ``pause`` (``llvm.x86.sse2.pause``), AArch64 ``yield`` hint.

    numba's JIT has no inline-asm parser, so these are LLVM target intrinsics.  On
    other CPUs it is only a compiler barrier (an acquire fence).
    """

    def codegen(context, builder, sig, args):
        if _IS_X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _MACHINE in ("aarch64", "arm64"):
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(ir.IntType(32), 1)])
        else:
            builder.fence("acquire")
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def sched_yield(typingctx):
    """libc ``sched_yield()``: give the core away once (used after the spin budget)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        return builder.sext(builder.call(fn, []), _I64)

    return types.int64(), codegen


@intrinsic
def _clock_gettime_ns(typingctx, clock_id):
    if not isinstance(clock_id, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ts = cgutils.alloca_once(builder, ir.ArrayType(_I64, 2))
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(32), _I64.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        cid = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), ir.IntType(32))
        base = builder.bitcast(ts, _I64.as_pointer())
        builder.call(fn, [cid, base])
        sec = builder.load(base)
        nsec = builder.load(builder.gep(base, [ir.Constant(ir.IntType(32), 1)]))
        return builder.add(builder.mul(sec, ir.Constant(_I64, 1_000_000_000)), nsec)

    return types.int64(clock_id), codegen


@intrinsic
def sleep_ns(typingctx, ns):
    """libc ``nanosleep`` for ``ns`` nanoseconds (gives the core away; Linux rounds up
    to its timer slack, ~50 us by default)."""
    if not isinstance(ns, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        ts = cgutils.alloca_once(builder, ir.ArrayType(_I64, 2))
        base = builder.bitcast(ts, _I64.as_pointer())
        billion = ir.Constant(_I64, 1_000_000_000)
        builder.store(builder.sdiv(v, billion), base)
        builder.store(builder.srem(v, billion), builder.gep(base, [ir.Constant(ir.IntType(32), 1)]))
        fnty = ir.FunctionType(ir.IntType(32), [_I64.as_pointer(), _I64.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "nanosleep")
        builder.call(fn, [base, ir.Constant(_I64.as_pointer(), None)])
        return context.get_dummy_value()

    return types.none(ns), codegen


@njit(**HOT, inline="always")
def monotonic_ns():
    """CLOCK_MONOTONIC in ns; equal to Python's ``time.monotonic_ns()`` in any process."""
    return _clock_gettime_ns(CLOCK_MONOTONIC)


@njit(**HOT, inline="always")
def realtime_ns():
    """CLOCK_REALTIME in ns; equal to Python's ``time.time_ns()``."""
    return _clock_gettime_ns(CLOCK_REALTIME)


@intrinsic
def rdtsc(typingctx):
    """The CPU cycle counter (``llvm.readcyclecounter``: a few tens of cycles, cheap
    enough to stamp every request; docs/DESIGN.md "Facts measured")."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, []), "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


# --- seqlock -------------------------------------------------------------------------
# The sequence word is written only by the snapshot's single writer.


@njit(**HOT, inline="always")
def seqlock_write_begin(words, idx):
    """Writer: make the sequence odd; payload stores that follow cannot move above it.

    If the sequence is already odd (a previous writer died mid-write), it is first
    rounded up to even, so odd always means "being written" and a new writer never
    makes readers accept a copy taken mid-write."""
    s = load_relaxed(words, idx)
    s += s & 1
    store_relaxed(words, idx, s + 1)
    fence_release()
    return s + 1


@njit(**HOT, inline="always")
def seqlock_write_end(words, idx, odd_seq):
    """Writer: publish the payload by making the sequence even again (store-release)."""
    store_release(words, idx, odd_seq + 1)


@njit(**HOT, inline="always")
def seqlock_read_begin(words, idx):
    """Reader: the sequence before copying; odd means a write is in progress."""
    return load_acquire(words, idx)


@njit(**HOT, inline="always")
def seqlock_read_ok(words, idx, s0):
    """Reader: True when the copy made since ``seqlock_read_begin`` returned ``s0`` is whole."""
    fence_acquire()
    s1 = load_relaxed(words, idx)
    return (s0 & 1) == 0 and s1 == s0


@intrinsic
def clz64(typingctx, x):
    """Leading zero bits of an int64 (``llvm.ctlz``; 64 for 0)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]),
                                            "llvm.ctlz.i64")
        return builder.call(fn, [v, ir.Constant(ir.IntType(1), 0)])

    return types.int64(x), codegen


# --- bit casts (for checksums over mixed int/float payloads) --------------------------


@intrinsic
def f64_bits(typingctx, x):
    """The IEEE-754 bits of a float64 as int64 (no conversion)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float64)
        return builder.bitcast(v, _I64)

    return types.int64(x), codegen


@intrinsic
def bits_f64(typingctx, x):
    """The float64 whose IEEE-754 bits are the int64 ``x``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(x), codegen


# --- blocking waits: a futex on a shared word, poll on a descriptor ---------------------

_SYS_FUTEX = 202 if _IS_X86 else 98  # x86-64 / aarch64 (asm-generic)
_FUTEX_WAIT = 0  # not FUTEX_PRIVATE_FLAG: the word is in memory shared between processes
_FUTEX_WAKE = 1


def _syscall(builder):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64], var_arg=True), "syscall")


def _timespec(builder, ns):
    ts = cgutils.alloca_once(builder, ir.ArrayType(_I64, 2))
    base = builder.bitcast(ts, _I64.as_pointer())
    billion = ir.Constant(_I64, 1_000_000_000)
    builder.store(builder.sdiv(ns, billion), base)
    builder.store(builder.srem(ns, billion), builder.gep(base, [ir.Constant(ir.IntType(32), 1)]))
    return base


@intrinsic
def futex_wait(typingctx, arr, idx, expected, timeout_ns):
    """Block while the low 32 bits of ``arr[idx]`` equal ``expected``, at most
    ``timeout_ns``, until a ``futex_wake`` on that word (Linux ``FUTEX_WAIT``, shared
    between processes).  Returns at once if the word differs.  0: woken; -1: timed out,
    interrupted or the word differed (callers re-check their condition either way)."""
    if not (_is_i64_vector(arr) and all(isinstance(t, types.Integer) for t in (idx, expected, timeout_ns))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _word_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        ns = context.cast(builder, args[3], sig.args[3], types.int64)
        ts = _timespec(builder, ns)
        z = ir.Constant(_I64, 0)
        r = builder.call(_syscall(builder), [ir.Constant(_I64, _SYS_FUTEX), builder.ptrtoint(ptr, _I64),
                                             ir.Constant(_I64, _FUTEX_WAIT), val, builder.ptrtoint(ts, _I64), z, z])
        return builder.select(builder.icmp_signed("==", r, z), z, ir.Constant(_I64, -1))

    return types.int64(arr, idx, expected, timeout_ns), codegen


@intrinsic
def futex_wake(typingctx, arr, idx):
    """Wake one process blocked in ``futex_wait`` on ``arr[idx]``; returns how many
    were woken (0 or 1)."""
    if not (_is_i64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _word_ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        z = ir.Constant(_I64, 0)
        return builder.call(_syscall(builder), [ir.Constant(_I64, _SYS_FUTEX), builder.ptrtoint(ptr, _I64),
                                                ir.Constant(_I64, _FUTEX_WAKE), ir.Constant(_I64, 1), z, z, z])

    return types.int64(arr, idx), codegen


@intrinsic
def poll_in(typingctx, fd, timeout_ms):
    """Block until descriptor ``fd`` is readable, at most ``timeout_ms`` ms (libc
    ``poll``, one ``POLLIN`` entry).  Returns 1 if readable, 0 on timeout, -1 on error
    or interruption."""
    if not (isinstance(fd, types.Integer) and isinstance(timeout_ms, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        f = context.cast(builder, args[0], sig.args[0], types.int64)
        ms = context.cast(builder, args[1], sig.args[1], types.int64)
        pfd = cgutils.alloca_once(builder, _I64)  # struct pollfd {int fd; short events; short revents}
        builder.store(builder.or_(builder.and_(f, ir.Constant(_I64, 0xFFFFFFFF)), ir.Constant(_I64, 1 << 32)), pfd)
        fnty = ir.FunctionType(ir.IntType(32), [_I64.as_pointer(), _I64, ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "poll")
        r = builder.call(fn, [pfd, ir.Constant(_I64, 1), builder.trunc(ms, ir.IntType(32))])
        return builder.sext(r, _I64)

    return types.int64(fd, timeout_ms), codegen
