"""MPI programs for tests/integration/test_mpi_restart.py: one case per argv[1].

Run as ``mpiexec -n 2 python ckpt_cases.py CASE STORE``. Each rank appends the lines the test
reads to ``said-by-rank-R.txt`` next to STORE (one file per rank: the ranks' stdout interleave).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from snapline import mpi as smpi


def say(rank: int, text: str) -> None:
    with open(Path(sys.argv[2]).parent / f"said-by-rank-{rank}.txt", "a") as out:
        out.write(text + "\n")


def state_at(rank: int, step: int) -> dict[str, Any]:
    return {"step": step, "rank": rank, "grid": np.full(1000, rank * 1000.0 + step)}


def first_run_then_restore(store: str) -> None:
    """Checkpoint steps 10 and 20 and close; a second Checkpointer restores step 20."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    with smpi.Checkpointer(world, store=store, every=10) as ckpt:
        say(rank, f"first restore {ckpt.restore()!r}")
        for step in range(1, 21):
            if ckpt.should_checkpoint(step):
                ckpt.checkpoint(state_at(rank, step), step=step)
    with smpi.Checkpointer(world, store=store, every=10) as ckpt:
        state = ckpt.restore()
        expected = state_at(rank, 20)
        same = state["step"] == 20 and np.array_equal(state["grid"], expected["grid"])
        say(rank, f"restored step {state['step']} of rank {state['rank']} intact={same}")


def crash_before_commit(store: str) -> None:
    """Parts of step 20 become durable everywhere, then every rank dies before its commit."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    ckpt = smpi.Checkpointer(world, store=store, every=10)
    if ckpt.restore() is not None:
        raise AssertionError("the store was expected to be empty")
    ckpt.checkpoint(state_at(rank, 10), step=10)
    ckpt.checkpoint(state_at(rank, 20), step=20)  # commits 10; 20 is being written
    ckpt.store.wait()  # this rank's part of 20 is durable
    say(rank, "parts of step 20 durable, dying before the commit")
    world.Barrier()  # every rank's part is durable (and every rank has said so): die
    os._exit(3)


def restore_only(store: str) -> None:
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    with smpi.Checkpointer(world, store=store, every=10) as ckpt:
        state = ckpt.restore()
        say(rank, f"restored step {None if state is None else state['step']}")
        say(rank, f"parts left {ckpt.store.steps()}")


def write_error(store: str) -> None:
    """Rank 1's disk fills up during the background write of step 20."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    ckpt = smpi.Checkpointer(world, store=store, every=10)
    ckpt.restore()
    ckpt.checkpoint(state_at(rank, 10), step=10)
    if rank == 1:
        ckpt.store.wait()

        def full(key: str, pieces: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device (injected)", key)

        def full_many(items: object, **_: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device (injected)", "packs")

        ckpt.store.backend.write = full  # type: ignore[method-assign]
        ckpt.store.backend.write_many = full_many  # type: ignore[method-assign]
    ckpt.checkpoint(state_at(rank, 20), step=20)  # captured; the write fails in the background
    try:
        ckpt.checkpoint(state_at(rank, 30), step=30)
    except smpi.CheckpointFailed as exc:
        say(rank, f"caught CheckpointFailed: {exc}")
        ckpt.abandon()
        return
    say(rank, "no error raised")


def unmatched_message(store: str) -> None:
    """Rank 0 sends to rank 1, which checkpoints before receiving it."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    ckpt = smpi.Checkpointer(world, store=store, every=10, debug=True)
    ckpt.restore()
    comm = ckpt.comm
    for _ in range(2):  # matched traffic counts too, and balances out
        if rank == 0:
            comm.send("hello", dest=1, tag=1)
        else:
            comm.recv(source=0, tag=1)
    ckpt.checkpoint(state_at(rank, 10), step=10)
    say(rank, "checkpoint 10 passed the safe-point check")
    if rank == 0:
        comm.send("in flight", dest=1, tag=2)
    try:
        ckpt.checkpoint(state_at(rank, 20), step=20)
    except smpi.SafePointViolation as exc:
        say(rank, f"caught SafePointViolation: {exc}")
    else:
        say(rank, "no error raised")
    if rank == 1:
        comm.recv(source=0, tag=2)  # drain it, so MPI finalizes cleanly
    ckpt.abandon()


CASES = {
    "first-run-then-restore": first_run_then_restore,
    "crash-before-commit": crash_before_commit,
    "restore-only": restore_only,
    "write-error": write_error,
    "unmatched-message": unmatched_message,
}

if __name__ == "__main__":
    CASES[sys.argv[1]](sys.argv[2])
