"""1-D heat equation (Jacobi) on MPI ranks, checkpointed with snapline.mpi.

Each rank owns ``cells / ranks`` cells of a rod plus one ghost cell at each end. Every step the
ranks swap edge values with their neighbours (Sendrecv), update their cells, and agree on the
global residual (allreduce). The grid is checkpointed every ``--every`` steps, at the end of a
step: every halo message of the step has been received, so no message is in flight.

    snapline mpirun -n 2 -- python examples/heat_mpi.py --steps 2000 --store ./heat-ckpts

Run it again after a crash (``snapline mpirun`` does that by itself): it resumes from the newest
complete checkpoint and ends with the same grid, bit for bit, as a run without failures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from snapline import mpi as smpi


def initial_grid(cells: int, rank: int, ranks: int) -> np.ndarray:
    """This rank's cells of the starting rod: cold, with a hot band in the middle third."""
    whole = np.zeros(cells)
    whole[cells // 3 : 2 * cells // 3] = 100.0
    return np.array_split(whole, ranks)[rank].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="./heat-ckpts", help="checkpoint directory")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=200, help="checkpoint every N steps")
    parser.add_argument("--out", help="save the final grid (rank 0 gathers it) to this .npy")
    parser.add_argument("--debug", action="store_true", help="check the safe-point rule")
    parser.add_argument(
        "--progress", help="directory where each rank notes its pid and step after checkpoints"
    )
    parser.add_argument(
        "--hold-at",
        type=int,
        help="(tests) on the first launch, stop after the checkpoint at this step and wait to "
        "be killed",
    )
    args = parser.parse_args()

    world = MPI.COMM_WORLD
    rank, ranks = world.Get_rank(), world.Get_size()
    with smpi.Checkpointer(world, store=args.store, every=args.every, debug=args.debug) as ckpt:
        comm = ckpt.comm  # counts messages in debug mode; the world communicator otherwise
        state = ckpt.restore() or {"step": 0, "u": initial_grid(args.cells, rank, ranks)}
        if state["step"] and rank == 0:
            print(f"heat: resumed at step {state['step']}", flush=True)
        u = np.empty(len(state["u"]) + 2)
        u[1:-1] = state["u"]
        u[0] = u[-1] = 0.0  # the rod's ends are held at 0; neighbours overwrite inner ghosts
        left = rank - 1 if rank > 0 else MPI.PROC_NULL
        right = rank + 1 if rank < ranks - 1 else MPI.PROC_NULL
        alpha = 0.25
        residual = np.zeros(1)
        for step in range(state["step"], args.steps):
            comm.Sendrecv(u[1:2], dest=left, recvbuf=u[-1:], source=right)
            comm.Sendrecv(u[-2:-1], dest=right, recvbuf=u[0:1], source=left)
            change = alpha * (u[:-2] - 2.0 * u[1:-1] + u[2:])
            u[1:-1] += change
            world.Allreduce(np.array([np.dot(change, change)]), residual, op=MPI.SUM)
            done = step + 1
            if ckpt.should_checkpoint(done):
                ckpt.checkpoint({"step": done, "u": u[1:-1]}, step=done)
                note_progress(args.progress, rank, done)
                if done == args.hold_at and os.environ.get("SNAPLINE_MPI_ATTEMPT", "0") == "0":
                    while True:  # a test kills this rank now (kill -9)
                        time.sleep(0.05)
        grid = world.gather(u[1:-1].copy(), root=0)
    if rank == 0:
        print(f"heat: {args.steps} steps on {ranks} ranks, residual {np.sqrt(residual[0]):.3e}")
        if args.out:
            assert grid is not None
            np.save(args.out, np.concatenate(grid))


def note_progress(directory: str | None, rank: int, step: int) -> None:
    """Write ``pid step`` to ``directory/rank-R`` atomically (tests wait for it)."""
    if directory is None:
        return
    final = Path(directory) / f"rank-{rank}"
    temp = final.with_suffix(".tmp")
    temp.write_text(f"{os.getpid()} {step}\n")
    temp.replace(final)


if __name__ == "__main__":
    main()
