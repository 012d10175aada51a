"""The ``snapline`` command: one typer app; each group of commands lives in its own module.

Errors derived from ``SnaplineError`` print as one clear line and exit 1; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from snapline.cli import (
    analysis_cmds,
    chaos_cmds,
    demo_cmds,
    journal_cmds,
    run_cmds,
    sim_cmds,
    store_cmds,
)
from snapline.errors import SnaplineError

app = typer.Typer(
    name="snapline",
    help="Checkpoint/restart and rollback recovery for distributed Python programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Checkpoint/restart and rollback recovery for distributed Python programs."""
    _state["debug"] = debug


for _module in (
    demo_cmds,
    store_cmds,
    journal_cmds,
    sim_cmds,
    run_cmds,
    chaos_cmds,
    analysis_cmds,
):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m snapline``."""
    args = sys.argv[1:] if argv is None else argv
    try:
        # Standalone mode: typer reports usage errors itself and exits with their code.
        app(args=args, prog_name="snapline")
    except SnaplineError as exc:
        if "--debug" in args:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)
