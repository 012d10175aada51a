"""How much CPU a store's background threads may take from the thread that serves messages.

A rank's event loop and its store's writer threads share the process and the machine's cores.
The loop's work is latency-bound (a Chandy-Lamport marker waits for it to be read and passed
on), the writer's is not: a checkpoint is committed when it is durable, a few milliseconds more
or less. With many ranks per core, the writers of every rank run at once right after a
snapshot's markers go out, and when they run at the loop's priority the markers wait behind
them: 16 ranks on 2 cores took a snapshot's markers about 35 ms to go round, and about 20 ms
with the writer threads at nice 10 (BENCHMARKS.md, "Snapshot latency").

``set_background_nice(n)`` makes threads that the store starts from then on (its save and I/O
pools, the storage levels' protect and flush pools) lower their own scheduling priority by
``n`` (Linux, where niceness is per thread; elsewhere a no-op). The default is 0: a program
that saves with ``Store.save`` and waits for it gets its writes at full priority. The local
runtime's ranks set it (their loop never waits for a save to finish except where a protocol
needs the previous one done, when the loop has nothing else to run anyway).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_background_nice = 0


def set_background_nice(nice: int) -> None:
    """Lower the priority of the store's threads started from now on by ``nice`` (0-19)."""
    global _background_nice
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be in 0..19, got {nice}")
    _background_nice = nice


def background_nice() -> int:
    """The current setting (see ``set_background_nice``)."""
    return _background_nice


def lower_this_thread() -> None:
    """Lower the calling thread's priority by the setting (a pool's ``initializer``).

    Raising a thread's niceness needs no privilege; a failure (a sandbox that forbids it)
    leaves the thread as it was, since priority is a preference, not a guarantee.
    """
    nice = _background_nice
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        # Relative to the main thread's (a job started under ``nice`` keeps its offset); a
        # pool thread started by an already lowered thread is not lowered twice.
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice)
        if target > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, target)
