"""One grammar for every command: -h, --version, -n/--ranks, durations, RANK@TIME, topologies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from snapline import __version__
from snapline.cli.main import app
from snapline.cli.options import duration_s, failure_at
from snapline.errors import ConfigError
from snapline.topology import TOPOLOGY_SPECS

runner = CliRunner()


def _commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group, with the argv that reaches it."""
    root = typer.main.get_command(app)
    stack: list[tuple[list[str], Any]] = [([], root)]
    while stack:
        path, command = stack.pop()
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            stack.append(([*path, name], sub))


COMMANDS = list(_commands())


def test_every_command_is_reached() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "ps", "sim", "compare", "viz", "ls", "diff", "journal inspect"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "root")
def test_short_help_and_no_placeholder_for_flags(path: list[str]) -> None:
    for width in ("80", "120"):
        result = runner.invoke(app, [*path, "-h"], env={"COLUMNS": width})
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output
        assert "<bool>" not in result.output
        assert "<list[" not in result.output


def test_version() -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and result.output.strip() == f"snapline {__version__}"


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if getattr(p, "opts", None)]


def test_number_of_ranks_is_n_or_ranks_everywhere() -> None:
    with_n = 0
    for path, command in COMMANDS:
        for param in _options(command):
            if "-n" in param.opts:
                with_n += 1
                assert "--ranks" in param.opts, path
    assert with_n >= 3  # run, sim, compare


def test_topology_help_lists_every_topology() -> None:
    seen = 0
    for path, command in COMMANDS:
        for param in _options(command):
            if "--topology" in param.opts:
                seen += 1
                for spec in TOPOLOGY_SPECS:
                    assert spec in (param.help or ""), (path, spec)
    assert seen >= 3


def test_failures_are_rank_at_time_under_both_names() -> None:
    for name in ("run", "sim", "compare"):
        command = dict((" ".join(p), c) for p, c in COMMANDS)[name]
        opts = {o for p in _options(command) for o in p.opts}
        assert {"--kill", "--crash-at"} <= opts, name


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("1.5", 1.5), ("50", 50.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text, "--interval") == seconds


def test_bad_duration_and_failure_name_the_option() -> None:
    with pytest.raises(ConfigError, match="--interval 'soon'"):
        duration_s("soon", "--interval")
    assert failure_at("3@250ms") == (3, 0.25)
    with pytest.raises(ConfigError, match=r"--kill 'x': write RANK@TIME"):
        failure_at("x", "--kill")


def test_sim_takes_durations_and_kill_like_run(tmp_path: Any) -> None:
    common = ["sim", "-n", "3", "--messages", "6", "--seed", "2", "--no-reference"]
    plain = runner.invoke(
        app,
        [*common, "--interval", "3", "--crash-at", "1@4", "--json", str(tmp_path / "a.json")],
    )
    spelled = runner.invoke(
        app,
        [*common, "--interval", "3000ms", "--kill", "1@4s", "--detect-delay", "1s",
         "--json", str(tmp_path / "b.json")],
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert spelled.exit_code == 0, spelled.output
    a = (tmp_path / "a.json").read_text()
    b = (tmp_path / "b.json").read_text()
    strip = re.compile(r'"wall_s": [0-9.e-]+|"msgs_per_s": [0-9.e+-]+')
    assert strip.sub("", a) == strip.sub("", b)


def test_compare_table_never_cuts_protocol_names_at_80_columns() -> None:
    result = runner.invoke(
        app,
        ["compare", "-n", "3", "--protocols", "message-logging,chandy-lamport"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in ("none (baseline)", "message-logging", "chandy-lamport"):
        assert result.output.count(name) == 2, name  # in both tables, whole
    assert "…" not in result.output


def test_flags_of_commands_added_later_show_no_placeholder() -> None:
    from snapline.cli.options import SnaplineGroup

    later = typer.Typer(cls=SnaplineGroup, context_settings={"help_option_names": ["-h", "--help"]})
    group = typer.Typer()

    @later.command("x")
    def x(flag: bool = typer.Option(False, "--flag", help="a flag")) -> None:
        """A command written without metavars."""

    @group.command("y")
    def y(other: bool = typer.Option(False, "--other", help="another flag")) -> None:
        """A subcommand of a group added with add_typer."""

    later.add_typer(group, name="grp")
    for argv in (["x", "-h"], ["grp", "-h"], ["grp", "y", "-h"]):
        result = runner.invoke(later, argv, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output and "--" in result.output, argv
