"""Ctrl-C for long-running commands: a stop flag, and a bound on how long stopping takes.

Design: Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main
thread happens to be, including half-way through a C extension's constructor or an
import (a Kafka Consumer half made, then a segfault at exit, or an ``ImportError``
raised from inside ``list_topics``: docs/DECISIONS.md "Ctrl-C in the commands is a
flag, not an exception"). Here SIGINT and SIGTERM only set a
flag that the command's loop reads between two bounded waits, so the loop ends at its
next turn and cleans up normally. Two guarantees on top:

* the first signal arms a watchdog: if the command has not exited ``grace_s`` later
  (a client library's close() waiting on a broker, say), the process flushes its
  output and exits with ``code`` at once;
* a second signal exits at once, the way a user's second Ctrl-C is meant.

A signal that arrives while the interpreter is still starting, before the command
made its ``Interrupt``, is Python's: ``KeyboardInterrupt`` there, or death by SIGINT
before Python installed its own handler. Nothing has been opened yet by then.

Pipeline children do not use this: they ignore SIGINT and stop on the supervisor's
shared stop flag (``ring/runtime.py``).
"""
from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupt:
    """A stop flag set by SIGINT/SIGTERM, with a bounded shutdown.

    Create it in the main thread, first thing in a command's ``main``; test it (it is
    truthy once a signal came) in the command's loop, whose every wait must be bounded
    (a poll timeout, a short sleep).

    Args:
        grace_s: seconds between the first signal and a forced exit, if the command has
            not ended by itself by then; 0: exit at the first signal (a command with
            nothing to finish, such as ``obpipe tail``, whose output is line-flushed).
        code: the exit status of a forced exit (and what the command should return
            when it stops on the flag: Ctrl-C is a normal way to end these commands).
    """

    def __init__(self, grace_s: float = 1.5, code: int = 0):
        self.grace_s = grace_s
        self.code = code
        self.signum = 0  # the first signal received; 0 = none yet
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._on_signal)

    def __bool__(self) -> bool:
        return self.signum != 0

    def _on_signal(self, signum, frame) -> None:
        if self.signum or self.grace_s <= 0:
            _exit_now(self.code)
        self.signum = signum
        t = threading.Timer(self.grace_s, _exit_now, (self.code,))
        t.daemon = True
        t.start()

    def restore(self) -> None:
        """Put back the handlers that were there before (tests that call ``main`` in-process)."""
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old.clear()


def _exit_now(code: int) -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
