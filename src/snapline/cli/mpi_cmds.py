"""``snapline mpirun``: run an mpi4py program under mpiexec, relaunching it after failures."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from snapline.cli.options import DURATION, DURATION_FORMAT, FLUSH_EVERY, duration_s, node_of_option

err = Console(stderr=True, highlight=False)

MPIRUN_HELP = (
    "Run PROGRAM on N ranks with mpiexec; relaunch it when it fails.\n\n"
    "Write the program after --, e.g. snapline mpirun -n 4 -- python prog.py --steps 900. "
    "A failure is any non-zero exit of mpiexec (a rank that raised, exited or was killed). "
    "The relaunched program resumes by itself: its snapline.mpi Checkpointer's restore() "
    "loads the newest complete checkpoint. The wait before a relaunch doubles each time "
    "(from --backoff, up to 5 minutes). Each launch sees its number (0, 1, ...) in "
    "SNAPLINE_MPI_ATTEMPT. Exits 1 once --max-restarts relaunches have failed too."
)


def register(app: typer.Typer) -> None:
    """Add ``mpirun`` to ``app``."""

    # The program and its arguments are whatever follows --: taken as click's extra args, so
    # that options of the program (--steps ...) are never read as mpirun's own.
    @app.command(
        "mpirun",
        help=MPIRUN_HELP,
        options_metavar="[OPTIONS] -- PROGRAM [ARGS]...",
        context_settings={
            "allow_interspersed_args": False,
            "allow_extra_args": True,
            "ignore_unknown_options": True,
        },
    )
    def mpirun_cmd(
        ctx: typer.Context,
        n: Annotated[int, typer.Option("-n", "--ranks", help="Number of ranks.")],
        max_restarts: Annotated[
            int, typer.Option("--max-restarts", help="Relaunches allowed before giving up.")
        ] = 3,
        backoff: Annotated[
            str,
            typer.Option(
                "--backoff",
                metavar=DURATION,
                help=f"Wait before the first relaunch, doubled after each ({DURATION_FORMAT}).",
            ),
        ] = "1s",
        mpiexec: Annotated[
            str | None,
            typer.Option(
                "--mpiexec",
                metavar="PATH",
                help="The mpiexec to use (default: next to this Python, else on PATH).",
            ),
        ] = None,
        levels: Annotated[
            str | None,
            typer.Option(
                "--levels",
                metavar="LEVELS",
                help="Multi-level checkpoints for the program's Checkpointer, fastest first: "
                "local:DIR[,partner][,xor:K][,remote:URL] (passed as SNAPLINE_LEVELS).",
            ),
        ] = None,
        flush_every: Annotated[int | None, FLUSH_EVERY] = None,
        node_of: Annotated[str | None, node_of_option("its host")] = None,
    ) -> None:
        """Run a program under mpiexec (the command's help is ``MPIRUN_HELP``)."""
        from snapline.mpi._checkpointer import levels_env
        from snapline.mpi._launch import find_mpiexec, relaunch_loop

        relaunch_loop(
            list(ctx.args),
            ranks=n,
            max_restarts=max_restarts,
            backoff_s=duration_s(backoff, "--backoff"),
            mpiexec=find_mpiexec(mpiexec),
            say=lambda line: err.print(line, soft_wrap=True),
            extra_env=levels_env(levels, flush_every, node_of, ranks=n),
        )
