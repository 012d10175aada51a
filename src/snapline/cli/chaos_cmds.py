"""``snapline chaos``: a fault campaign against real jobs, with a table and replay commands."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from snapline.cli.options import DURATION
from snapline.errors import ConfigError

if TYPE_CHECKING:
    from snapline.runtime.local.chaos import RunRecord

console = Console()


def _choose(items: list[str], everything: list[str], what: str) -> tuple[str, ...]:
    names = [p.strip() for item in items for p in item.split(",") if p.strip()]
    if "all" in names:
        return tuple(everything)
    if not names:
        raise ConfigError(f"choose at least one {what}")
    return tuple(dict.fromkeys(names))


CHAOS_HELP = (
    "Run APP as real jobs under faults injected from outside, and check every run.\n\n"
    "Each run starts `snapline run` and, on a schedule drawn from the run's seed, kills ranks "
    "with kill -9 (also replacements during recovery), stops them with SIGSTOP (hangs and "
    "short pauses), kills the whole job and resumes it with --resume, and has strangers "
    "send garbage and crafted frames to its sockets. It then checks the result and the "
    "released outputs against a failure-free run, exactly-once delivery, that no process is "
    "left behind, and that the job reported exactly the failures injected. Prints a table, a "
    "replay command per failed run (--seed N --runs 1 replays run N's schedule) and writes "
    "OUT/chaos-summary.json. Exits 1 if a run failed. The reference for a built-in app is "
    "the simulator; for an app of your own it is a failure-free run of it, so the app must be "
    "deterministic (the same results and outputs whatever the timing)."
)


def register(app: typer.Typer) -> None:
    """Add ``chaos`` to ``app``."""

    @app.command("chaos", help=CHAOS_HELP)
    def chaos_cmd(
        apps: Annotated[
            str,
            typer.Argument(
                metavar="APP",
                help="Built-in app (bank, heat, ...), module:Class, path/file.py:Class; "
                "several as a comma list (bank,heat), or all (every built-in app).",
            ),
        ],
        protocol: Annotated[
            list[str] | None,
            typer.Option(
                "--protocol",
                "-P",
                metavar="LIST",
                help="Protocol(s) to run under: repeatable or comma-separated; all (the "
                "default) runs every protocol.",
            ),
        ] = None,
        n: Annotated[int, typer.Option("-n", "--ranks", help="Ranks per job.")] = 3,
        runs: Annotated[
            int | None,
            typer.Option(
                "--runs",
                help="Number of runs (default: one per protocol and app, or as many as "
                "--time allows).",
            ),
        ] = None,
        time_budget: Annotated[
            str | None,
            typer.Option(
                "--time",
                metavar=DURATION,
                help="Stop starting runs after this long, e.g. 30m, 90s.",
            ),
        ] = None,
        seed: Annotated[
            int, typer.Option("--seed", help="Run i uses seed SEED+i for its fault schedule.")
        ] = 0,
        faults: Annotated[
            str,
            typer.Option(
                "--faults",
                metavar="LIST",
                help="Faults to draw from, comma-separated: kill, recovery-kill, hang, pause, "
                "whole-job, stranger; default and all = every one.",
            ),
        ] = "default",
        max_faults: Annotated[
            int, typer.Option("--max-faults", help="At most this many faults per run.")
        ] = 3,
        param: Annotated[
            list[str] | None,
            typer.Option("--param", "-p", metavar="KEY=VALUE", help="App parameter (repeatable)."),
        ] = None,
        interval: Annotated[
            str,
            typer.Option(
                "--interval", metavar=DURATION, help="Checkpoint interval of the jobs, e.g. 200ms."
            ),
        ] = "200ms",
        heartbeat_timeout: Annotated[
            str,
            typer.Option(
                "--heartbeat-timeout", metavar=DURATION, help="The jobs' hang detection timeout."
            ),
        ] = "3s",
        job_timeout: Annotated[
            str,
            typer.Option(
                "--job-timeout", metavar=DURATION, help="Give up on one job after this long."
            ),
        ] = "2m",
        out: Annotated[
            Path,
            typer.Option(
                "--out",
                metavar="DIR",
                help="Directory for chaos-summary.json and the stores of failed runs.",
            ),
        ] = Path("snapline-chaos"),
        keep: Annotated[
            bool, typer.Option("--keep", help="Keep the store of every run, not only failed.")
        ] = False,
    ) -> None:
        """Run a chaos campaign (the command's help is ``CHAOS_HELP``)."""
        from snapline.apps import APPS
        from snapline.cli.run_cmds import _parse_params
        from snapline.protocols import protocol_names
        from snapline.runtime.local.chaos import CampaignConfig, parse_faults, run_campaign
        from snapline.runtime.local.config import format_duration_s, parse_duration_s

        config = CampaignConfig(
            apps=_choose([apps], sorted(APPS), "app"),
            protocols=_choose(protocol or ["all"], protocol_names(), "protocol"),
            out_dir=out.resolve(),
            n=n,
            runs=runs,
            time_budget_s=None if time_budget is None else parse_duration_s(time_budget),
            seed=seed,
            faults=parse_faults(faults),
            max_faults=max_faults,
            params=_parse_params(param or []),
            interval_s=parse_duration_s(interval),
            heartbeat_timeout_s=parse_duration_s(heartbeat_timeout),
            job_timeout_s=parse_duration_s(job_timeout),
            keep_stores=keep,
        )
        planned = config.planned_runs()
        # A campaign bounded by time alone fills its bar with time, one bounded by runs with runs.
        by_time = planned is None
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TimeRemainingColumn() if by_time else MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        counts = {"pass": 0, "fail": 0, "hb-timeout": 0}
        records: list[RunRecord] = []
        began = time.monotonic()
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("chaos", total=config.time_budget_s if by_time else planned)

            def started(index: int, proto: str, app_name: str) -> None:
                bar.update(
                    task,
                    description=f"run {index} {proto} {app_name}  "
                    f"[green]{counts['pass']} pass[/] [red]{counts['fail']} fail[/]",
                )

            def done(record: RunRecord) -> None:
                records.append(record)
                counts[record.verdict] += 1
                if by_time:
                    bar.update(task, completed=time.monotonic() - began)
                else:
                    bar.advance(task)

            interrupted = False
            # Ctrl-C, or SIGTERM (a CI timeout, a plain `kill`; `main` turns it into Ctrl-C):
            # the run in progress is killed with all its processes, and the table still printed.
            try:
                run_campaign(config, on_start=started, on_done=done)
            except KeyboardInterrupt:
                interrupted = True  # the runs done so far are still worth a table
        console.print(results_table(records))
        failed = [r for r in records if r.verdict != "pass"]
        for record in failed:
            console.print(
                f"[bold]run {record.index}[/] ({record.verdict}): {record.reason}\n"
                f"  replay: {record.replay}\n  store: {record.store}",
                highlight=False,
            )
        total_s = sum(r.elapsed_s for r in records)
        drawn = sum(len(r.schedule) for r in records)
        missed = sum(len(r.faults_missed) for r in records)
        if missed:
            console.print(
                f"[yellow]note:[/] {missed} of {drawn} faults never fired (their job ended "
                "first); a larger job (-p) gives them time to land",
                highlight=False,
            )
        console.print(
            f"{len(records)} run(s) in {format_duration_s(total_s)}: {counts['pass']} passed, "
            f"{counts['fail']} failed, {counts['hb-timeout']} with heartbeat false positives "
            f"only; summary: {config.out_dir / 'chaos-summary.json'}",
            highlight=False,
        )
        if interrupted:
            raise typer.Exit(130)
        if counts["fail"]:
            raise typer.Exit(1)


def results_table(records: Sequence[RunRecord]) -> Table:
    """One row per run: run, protocol, app, faults injected, failures, verdict, reason."""
    table = Table(title="snapline chaos")
    table.add_column("run", justify="right")
    table.add_column("protocol", no_wrap=True)
    table.add_column("app", no_wrap=True)
    table.add_column("seed", justify="right")
    table.add_column("faults injected")
    table.add_column("failures\nreported/\ninjected", justify="center")
    table.add_column("verdict")
    table.add_column("reason", overflow="fold", max_width=70)
    style = {"pass": "green", "fail": "bold red", "hb-timeout": "yellow"}
    for record in records:
        landed = ", ".join(record.faults_landed()) or "none landed"
        if record.faults_missed:
            landed += f" ({len(record.faults_missed)} never fired)"
        table.add_row(
            str(record.index),
            record.protocol,
            record.app,
            str(record.seed),
            landed,
            f"{record.failures_reported}/{record.failures_injected}",
            f"[{style[record.verdict]}]{record.verdict}[/]",
            record.reason,
        )
    return table
