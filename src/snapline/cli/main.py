"""The ``snapline`` command: one typer app; each group of commands lives in its own module.

Errors derived from ``SnaplineError`` print as a clear message and exit 1; ``--debug`` (before or
after the subcommand) shows the traceback instead.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import typer
from rich.console import Console

from snapline import __version__
from snapline.cli import (
    analysis_cmds,
    chaos_cmds,
    demo_cmds,
    journal_cmds,
    mpi_cmds,
    process_cmds,
    run_cmds,
    sim_cmds,
    store_cmds,
    vm_cmds,
)
from snapline.cli.options import SnaplineGroup
from snapline.errors import SnaplineError

app = typer.Typer(
    name="snapline",
    cls=SnaplineGroup,
    help="Checkpoint/restart and rollback recovery for distributed Python programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # -h as well as --help, in every command (click passes it down to subcommands).
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        print(f"snapline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", metavar="", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        metavar="",
        is_eager=True,
        callback=_print_version,
        help="Show the version and exit.",
    ),
) -> None:
    """Checkpoint/restart and rollback recovery for distributed Python programs."""
    _state["debug"] = debug


for _module in (
    demo_cmds,
    store_cmds,
    journal_cmds,
    sim_cmds,
    run_cmds,
    process_cmds,
    mpi_cmds,
    chaos_cmds,
    analysis_cmds,
    vm_cmds,
):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m snapline``."""
    args = sys.argv[1:] if argv is None else argv
    # --debug is global, but users write it where they notice the need: after the subcommand
    # too (``snapline run ... --debug``). Take it out wherever it stands (before ``--``).
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:
        args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
    # SIGTERM (a plain `kill`, a CI or `timeout` limit) stops a command as Ctrl-C does, so its
    # clean-up runs: a supervisor kills the ranks, job roots or QEMUs it started (QEMU runs in a
    # session of its own and would otherwise outlive `snapline vm run`). Only SIGKILL skips it;
    # `--resume` cleans up after that.
    previous = _stop_on_sigterm()
    try:
        # Standalone mode: typer reports usage errors itself and exits with their code.
        app(args=args, prog_name="snapline")
    except SnaplineError as exc:
        if debug:
            raise
        # soft_wrap: a traceback in the message must keep its lines as Python wrote them.
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """Make SIGTERM raise ``KeyboardInterrupt``; the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set there (the CLI called from a test thread)
    return signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
