"""The grammar every ``snapline`` command shares: option names, value formats, parsers.

One spelling per idea, whichever command it appears in:

* ``-n/--ranks N`` is the number of ranks;
* a duration is ``1s``, ``500ms``, ``2m`` or a plain number of seconds (``1.5``) -- in real
  time for ``run``, in simulated time for ``sim`` and ``compare``;
* a failure is ``RANK@TIME``. ``run`` sends a real ``kill -9`` (``--kill``); ``sim`` and
  ``compare`` simulate a crash (``--crash-at``). Both commands accept both spellings, so
  ``--kill 1@2s`` and ``--crash-at 1@2s`` mean the same thing everywhere;
* ``--topology`` takes one of ``TOPOLOGY_SPECS``.

Flags take no value, so they show no type placeholder in ``--help`` (``metavar=""``).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from snapline.errors import ConfigError
from snapline.runtime.local.config import parse_duration_s
from snapline.topology import TOPOLOGY_SPECS

#: Help text of ``--topology`` in every command: the complete list.
TOPOLOGY_HELP = "Channels between ranks: " + ", ".join(TOPOLOGY_SPECS)
#: Help text of a duration option's format, appended to its description.
DURATION_FORMAT = "e.g. 1s, 500ms, 2m; a plain number is seconds"

#: Storage levels (``snapline run`` and ``snapline mpirun``): see ``snapline.store.multilevel``.
FLUSH_EVERY = typer.Option(
    "--flush-every",
    metavar="K",
    help="With a remote level: flush every K-th checkpoint to it (default 1).",
)


def node_of_option(default: str) -> Any:
    """``--node-of``: each rank's node; ``default`` says what it is without the option."""
    return typer.Option(
        "--node-of",
        metavar="NODES",
        help=f"Each rank's node, rank 0 first, e.g. 0,0,1,1 (default: {default}).",
    )


#: ``--help`` placeholders.
DURATION = "DURATION"
FAILURE = "RANK@TIME"
#: A flag takes no value: show no ``<bool>`` after it in ``--help``.
FLAG = ""


def duration_s(text: str, option: str) -> float:
    """``"1s"``, ``"500ms"``, ``"2m"`` or ``"1.5"`` -> seconds; errors name ``option``."""
    try:
        return parse_duration_s(text)
    except ConfigError:
        raise ConfigError(f"{option} {text!r}: write a duration, {DURATION_FORMAT}") from None


def optional_duration_s(text: str | None, option: str) -> float | None:
    """``duration_s`` for an option that may be left out."""
    return None if text is None else duration_s(text, option)


def failure_at(spec: str, option: str = "--crash-at") -> tuple[int, float]:
    """``"RANK@TIME"`` (e.g. ``"2@1.5s"``, ``"3@12"``) -> (rank, seconds)."""
    rank_text, sep, when = spec.partition("@")
    if not sep or not rank_text.strip().isdigit():
        raise ConfigError(
            f"{option} {spec!r}: write RANK@TIME, e.g. {option} 2@1.5s (a plain time is seconds)"
        )
    return int(rank_text), duration_s(when, option)


def failures_at(
    specs: list[str] | None, option: str = "--crash-at"
) -> tuple[tuple[int, float], ...]:
    """Every ``RANK@TIME`` of a repeatable option."""
    return tuple(failure_at(spec, option) for spec in specs or ())


def _without_placeholder(option: Any) -> None:
    if option is not None:
        option.metavar = FLAG


def _quiet_flags(command: Any, ctx: Any) -> None:
    """No ``<bool>`` after any flag of ``command`` (and of its subcommands), help included."""
    for param in getattr(command, "params", ()):
        if getattr(param, "is_flag", False) and param.metavar is None:
            _without_placeholder(param)
    _without_placeholder(command.get_help_option(ctx))
    for sub in getattr(command, "commands", {}).values():
        _quiet_flags(sub, ctx)


class SnaplineGroup(TyperGroup):
    """A command group whose flags show no ``<bool>`` placeholder in ``-h/--help``.

    typer draws a flag as ``--resume <bool>``, though a flag takes no value. Click asks the
    group for each command (to run it or list it in help), so the placeholders are removed
    here, for every command and subcommand -- also those added later -- rather than in each
    option's definition. The help option is made by click on demand; it is found here too.
    """

    # Parameters typed Any: click's types live in ``click`` or, in newer typer, in a private
    # module of typer's; this class must work with both.
    def get_help_option(self, ctx: Any) -> Any:
        """The group's help option, without a type placeholder."""
        option = super().get_help_option(ctx)
        _without_placeholder(option)
        return option

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command ``cmd_name``, its flags without a type placeholder."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _quiet_flags(command, ctx)
        return command
