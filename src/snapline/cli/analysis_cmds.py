"""``snapline compare`` and ``snapline viz``: compare protocols on one workload; draw a run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from snapline.analysis.compare import (
    DEFAULT_APP,
    DEFAULT_CRASH_RATE,
    DEFAULT_INTERVAL_S,
    DEFAULT_RANKS,
)
from snapline.cli.options import (
    DURATION,
    DURATION_FORMAT,
    FAILURE,
    FLAG,
    TOPOLOGY_HELP,
    duration_s,
    failures_at,
    optional_duration_s,
)
from snapline.errors import ConfigError


def _out() -> Console:
    """The console for this call: output to a file or pipe gets the wide comparison table (one
    line per protocol) unless COLUMNS says otherwise; a terminal gets what fits it."""
    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


HTML_MAX_RANKS = 256
HTML_MAX_MESSAGES = 4000


def viz(
    trace: Annotated[
        Path,
        typer.Argument(
            metavar="TRACE",
            help="Trace file: <store>/trace.json of `snapline run`, or `snapline sim --trace`.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Diagram file, .png or .svg (default: TRACE as .svg).",
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Also write a self-contained HTML page: every rank (up to 256), scrollable, "
            "with zoom and tooltips.",
        ),
    ] = None,
    ranks: Annotated[
        str | None,
        typer.Option(
            "--show",
            "--ranks",
            metavar="RANKS",
            help="Which ranks to draw, e.g. 0-7 or 0-3,8 (default: up to 16, crashed ones first).",
        ),
    ] = None,
    t_from: Annotated[
        str | None,
        typer.Option("--from", metavar=DURATION, help="Start of the time window, e.g. 2s."),
    ] = None,
    t_to: Annotated[
        str | None, typer.Option("--to", metavar=DURATION, help="End of the time window.")
    ] = None,
    hide_control: Annotated[
        bool,
        typer.Option("--hide-control", metavar=FLAG, help="Do not draw protocol control messages."),
    ] = False,
) -> None:
    """Draw the space-time diagram of a run: ranks, messages, checkpoints, recovery lines."""
    from snapline.analysis.html import write_spacetime_html
    from snapline.analysis.metrics import summarize
    from snapline.analysis.spacetime import layout_spacetime, parse_rank_range
    from snapline.analysis.spacetime_plot import render_spacetime
    from snapline.analysis.trace_view import view_trace
    from snapline.runtime.trace import load_trace

    console = _out()
    window_from = optional_duration_s(t_from, "--from")
    window_to = optional_duration_s(t_to, "--to")
    parsed = view_trace(load_trace(trace))
    chosen = None if ranks is None else parse_rank_range(ranks, parsed.n)
    diagram = layout_spacetime(
        parsed, ranks=chosen, t_from=window_from, t_to=window_to, show_control=not hide_control
    )
    target = out if out is not None else (trace.with_suffix(".svg") if html is None else None)
    for note in diagram.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if target is not None:
        render_spacetime(diagram, target)
        console.print(f"wrote {target}", highlight=False)
    if html is not None:
        # The page scrolls and zooms: it shows every rank (up to HTML_MAX_RANKS) and more
        # messages than a picture can, unless the user chose ranks or a window.
        page = diagram
        if chosen is None or t_to is None:
            page = layout_spacetime(
                parsed,
                ranks=chosen,
                t_from=window_from,
                t_to=window_to,
                show_control=not hide_control,
                max_ranks=HTML_MAX_RANKS,
                max_messages=HTML_MAX_MESSAGES,
            )
        write_spacetime_html(page, summarize(parsed), html)
        console.print(f"wrote {html}", highlight=False)


def _parse_params(params: list[str]) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --param {item!r}: use KEY=VALUE, e.g. --param messages=50")
        number: object = value
        for kind in (int, float):
            try:
                number = kind(value)
                break
            except ValueError:
                continue
        parsed[key] = number
    return parsed


def compare(
    app: Annotated[
        str, typer.Option("--app", help="Workload: bank, token-ring, wordcount, heat.")
    ] = DEFAULT_APP,
    n: Annotated[int, typer.Option("-n", "--ranks", help="Number of ranks.")] = DEFAULT_RANKS,
    interval: Annotated[
        str,
        typer.Option(
            "--interval",
            metavar=DURATION,
            help=f"Basic checkpoint interval in simulated time ({DURATION_FORMAT}).",
        ),
    ] = f"{DEFAULT_INTERVAL_S:g}s",
    crash_rate: Annotated[
        float,
        typer.Option(
            "--crash-rate",
            help="Crashes per rank per simulated second (Poisson); 0 for none.",
        ),
    ] = DEFAULT_CRASH_RATE,
    max_crashes: Annotated[int, typer.Option("--max-crashes", help="Cap on crashes.")] = 10,
    crash_at: Annotated[
        list[str] | None,
        typer.Option(
            "--crash-at",
            "--kill",
            metavar=FAILURE,
            help="Crash RANK at simulated TIME, e.g. 0@40s (repeatable; replaces --crash-rate; "
            "--kill is the same).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the job and the faults.")] = 7,
    protocols: Annotated[
        str,
        typer.Option(
            "--protocols", metavar="LIST", help="'all' or a comma list, e.g. two-phase,bcs."
        ),
    ] = "all",
    topology: Annotated[
        str | None,
        typer.Option(
            "--topology", metavar="TOPOLOGY", help=f"{TOPOLOGY_HELP} (default: the app's)."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", metavar="KEY=VALUE", help="App parameter (repeatable)."),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option("--chart", metavar="FILE", help="Write the comparison chart (.png or .svg)."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write the full comparison as JSON."),
    ] = None,
    checkpoint_cost: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-cost",
            "--checkpoint-cost-s",
            metavar=DURATION,
            help="C for Young/Daly (default: the mean checkpoint write time).",
        ),
    ] = None,
    mtbf: Annotated[
        str | None,
        typer.Option(
            "--mtbf",
            "--mtbf-s",
            metavar=DURATION,
            help="Job MTBF for Young/Daly (default: 1/(n * crash rate)).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option("--strict", metavar=FLAG, help="Exit with status 1 if any protocol failed."),
    ] = False,
) -> None:
    """Run one workload and crash schedule under every protocol and compare their costs."""
    import json

    from rich.progress import Progress

    from snapline.analysis.compare import ComparisonConfig
    from snapline.analysis.compare import compare as run_comparison
    from snapline.analysis.compare_report import (
        comparison_tables,
        interval_report,
        render_comparison,
    )

    console = _out()
    if n < 1:
        raise ConfigError(f"-n must be >= 1, got {n}")
    interval_s = duration_s(interval, "--interval")
    if not interval_s > 0:
        raise ConfigError(f"--interval must be longer than 0, got {interval!r}")
    checkpoint_cost_s = optional_duration_s(checkpoint_cost, "--checkpoint-cost")
    mtbf_s = optional_duration_s(mtbf, "--mtbf")
    if not crash_rate >= 0:
        raise ConfigError(f"--crash-rate must be >= 0, got {crash_rate}")
    chosen = () if protocols == "all" else tuple(p.strip() for p in protocols.split(",") if p)
    sim_options: dict[str, object] = {}
    if topology is not None:
        sim_options["topology"] = topology
    if param:
        sim_options["app_params"] = _parse_params(param)
    if crash_at:
        sim_options["crash_at"] = failures_at(crash_at)
    config = ComparisonConfig(
        app=app,
        n=n,
        interval_s=interval_s,
        crash_rate=crash_rate,
        max_crashes=max_crashes,
        seed=seed,
        protocols=chosen,
        checkpoint_cost_s=checkpoint_cost_s,
        mtbf_s=mtbf_s,
        sim_options=sim_options,
    )
    names = config.chosen_protocols()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("comparing", total=len(names))

        def step(what: str) -> None:
            progress.update(task, description=f"running {what}")
            if what in names:
                progress.advance(task)

        result = run_comparison(config, progress=step)
    for table in comparison_tables(result, console.width):
        console.print(table)
    if result.crash_schedule:
        crashes = ", ".join(f"{rank}@{t:g}" for rank, t in result.crash_schedule)
        console.print(f"crash schedule (same for every protocol): {crashes}", highlight=False)
    for warning in result.warnings():
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    unreported = [
        name
        for name, value in (
            ("blocking time", [o.metrics.blocking_s for o in result.outcomes if o.metrics]),
            ("bytes stored", [o.metrics.bytes_stored for o in result.outcomes if o.metrics]),
        )
        if value and all(v is None for v in value)
    ]
    if unreported:
        console.print(
            f"[yellow]note:[/] the driver does not report {' or '.join(unreported)} (n/a)",
            highlight=False,
        )
    for line in interval_report(result):
        console.print(line, highlight=False)
    failed = [o for o in result.outcomes if not o.ok]
    for outcome in failed:
        console.print(f"[bold red]{outcome.protocol} failed:[/] {outcome.failure}", highlight=False)
    if chart is not None:
        render_comparison(result, chart)
        console.print(f"wrote {chart}", highlight=False)
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {json_out}: {exc.strerror or exc}") from exc
        console.print(f"wrote {json_out}", highlight=False)
    if strict and failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("compare")(compare)
    app.command("viz")(viz)
