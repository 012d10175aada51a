"""MPI program for tests/integration/test_mpi_levels.py: a Checkpointer on storage levels.

Run as ``snapline mpirun -n 2 --levels ... -- python levels_cases.py CASE STORE``: the levels
come from the environment ``snapline mpirun`` sets. Each rank appends what the test reads to
``said-by-rank-R.txt`` next to STORE.
"""

from __future__ import annotations

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
    return {"step": step, "rank": rank, "grid": np.full(50_000, rank * 1000.0 + step)}


def write(store: str) -> None:
    """Checkpoint steps 1..6 (every step) and close."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    with smpi.Checkpointer(world, store=store, every=1) as ckpt:
        if ckpt.restore() is not None:
            raise AssertionError("the store was expected to be empty")
        for step in range(1, 7):
            ckpt.checkpoint(state_at(rank, step), step=step)
    say(rank, "wrote 1..6")


def restore(store: str) -> None:
    """Restore and say which step, whether it is intact, and which level served it."""
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    with smpi.Checkpointer(world, store=store, every=1) as ckpt:
        state = ckpt.restore()
        step = state["step"]
        intact = np.array_equal(state["grid"], state_at(rank, step)["grid"])
        served = getattr(ckpt.store, "served", {}).get(step)
        say(rank, f"restored step {step} intact={intact} from {served}")


if __name__ == "__main__":
    {"write": write, "restore": restore}[sys.argv[1]](sys.argv[2])
