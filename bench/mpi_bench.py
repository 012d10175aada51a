"""Overhead of snapline.mpi's Checkpointer on a heat stencil: one checkpoint per second vs none.

Runs the 1-D Jacobi stencil of examples/heat_mpi.py (Sendrecv halos, an allreduced residual
every step) under ``mpiexec -n RANKS`` for ``--steps`` steps, alternately without checkpoints
and with ``Checkpointer(interval_s=1.0)`` (asynchronous, one write in flight per rank, commit
records, ``keep_last=2``), ``--repeats`` times each. Rank 0 times the loop between two barriers;
the overhead is the median time with checkpoints over the median without, minus one.

Prints a table and writes bench/results/mpi_bench.json.
Usage: python bench/mpi_bench.py [--ranks 2] [--cells-per-rank 2000000] [--steps 400]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "mpi_bench.json"


def worker(mode: str, cells: int, steps: int, store: str, out: str) -> None:
    """One timed run on every rank (under mpiexec); rank 0 writes its figures to ``out``."""
    import numpy as np
    from mpi4py import MPI

    from snapline import mpi as smpi

    world = MPI.COMM_WORLD
    rank, ranks = world.Get_rank(), world.Get_size()
    u = np.zeros(cells + 2)
    u[1 + cells // 3 : 1 + 2 * cells // 3] = 100.0
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < ranks - 1 else MPI.PROC_NULL
    ckpt = smpi.Checkpointer(world, store=store, interval_s=1.0) if mode == "checkpoint" else None
    residual = np.zeros(1)
    checkpoints = 0
    blocked = 0.0  # seconds rank 0 spent inside the Checkpointer's calls
    world.Barrier()
    started = time.perf_counter()
    for step in range(steps):
        world.Sendrecv(u[1:2], dest=left, recvbuf=u[-1:], source=right)
        world.Sendrecv(u[-2:-1], dest=right, recvbuf=u[0:1], source=left)
        change = 0.25 * (u[:-2] - 2.0 * u[1:-1] + u[2:])
        u[1:-1] += change
        world.Allreduce(np.array([np.dot(change, change)]), residual, op=MPI.SUM)
        if ckpt is not None:
            entered = time.perf_counter()
            if ckpt.should_checkpoint(step + 1):
                ckpt.checkpoint({"step": step + 1, "u": u[1:-1]}, step=step + 1)
                checkpoints += 1
            blocked += time.perf_counter() - entered
    if ckpt is not None:
        entered = time.perf_counter()
        ckpt.close()  # the last write belongs to the run's cost
        blocked += time.perf_counter() - entered
    world.Barrier()
    elapsed = time.perf_counter() - started
    if rank == 0:
        cost = None if ckpt is None else ckpt.cost_s
        Path(out).write_text(
            json.dumps(
                {
                    "elapsed_s": elapsed,
                    "checkpoints": checkpoints,
                    "blocked_s": blocked,
                    "last_cost_s": cost,
                }
            )
        )


def run_once(
    mpiexec: str, mode: str, ranks: int, cells: int, steps: int, scratch: Path
) -> dict[str, Any]:
    store = scratch / f"store-{mode}-{time.monotonic_ns()}"
    out = scratch / "result.json"
    command = [
        mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", mode,
        "--cells-per-rank", str(cells), "--steps", str(steps), "--store", str(store),
        "--out", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=900)
    result: dict[str, Any] = json.loads(out.read_text())
    shutil.rmtree(store, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--cells-per-rank", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.cells_per_rank, args.steps, args.store, args.out)
        return

    from rich.console import Console
    from rich.table import Table

    from snapline.mpi._launch import find_mpiexec

    mpiexec = find_mpiexec()
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "checkpoint": []}
    with tempfile.TemporaryDirectory(prefix="snapline-mpi-bench-") as tmp:
        for _ in range(args.repeats):
            for mode in runs:  # alternate, so drifting machine load hits both alike
                runs[mode].append(
                    run_once(mpiexec, mode, args.ranks, args.cells_per_rank, args.steps, Path(tmp))
                )
    median = {mode: statistics.median(r["elapsed_s"] for r in rs) for mode, rs in runs.items()}
    overhead = median["checkpoint"] / median["none"] - 1.0
    state_mib = args.cells_per_rank * 8 / 2**20
    table = Table(title=f"snapline.mpi overhead: {args.ranks} ranks, {state_mib:.1f} MiB per rank")
    for column in ("mode", "median loop time", "runs", "checkpoints per run", "in ckpt calls"):
        table.add_column(column)
    for mode, rs in runs.items():
        table.add_row(
            mode,
            f"{median[mode]:.2f} s",
            ", ".join(f"{r['elapsed_s']:.2f}" for r in rs),
            ", ".join(str(r["checkpoints"]) for r in rs),
            ", ".join(f"{r.get('blocked_s', 0.0):.2f}" for r in rs),
        )
    Console().print(table)
    print(f"overhead of one checkpoint per second: {overhead * 100:.1f}% (target <= 5%)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "ranks": args.ranks,
                "cells_per_rank": args.cells_per_rank,
                "state_mib_per_rank": state_mib,
                "steps": args.steps,
                "repeats": args.repeats,
                "runs": runs,
                "median_s": median,
                "overhead": overhead,
                "python": platform.python_version(),
                "machine": platform.platform(),
            },
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
