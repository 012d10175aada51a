"""The distributed demo: a bank on real processes, a kill -9, automatic recovery, a diagram.

``distributed_demo(directory)`` runs the bank example on six OS processes under Chandy-Lamport,
kills one rank with SIGKILL in the middle of the run, lets the supervisor detect the failure and
roll the job back to the latest snapshot, then checks that money was conserved and that every
branch ends with exactly the balance of the failure-free run (computed by the simulator with
the same seed), and draws the space-time diagram of the run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from snapline.errors import RuntimeFailure
from snapline.runtime.local import run
from snapline.runtime.local.job import RunResult
from snapline.runtime.local.status import JobStatus
from snapline.runtime.local.verify import check_run

DEMO_RANKS = 6
#: Transfers every ~5 ms per branch: fast enough that a snapshot's markers usually overtake a
#: few transfers, so the recovery has recorded in-transit transfers to re-deliver (with one every
#: 50 ms it almost never had any), and short enough that the run takes a few seconds.
DEMO_PARAMS = {"messages": 400, "step_s": 0.005, "initial_balance": 1000}
DEMO_KILL = (3, 1.0)


def _status_text(status: JobStatus) -> Text:
    up = sum(r.state in ("running", "frozen") for r in status.ranks)
    text = Text()
    text.append(f"{status.state:<11}", style="bold")
    text.append(f"ranks up {up}/{status.n}  recoveries {status.recoveries}  ")
    text.append(f"{status.messages_delivered} transfers delivered")
    return text


def distributed_demo(directory: Path, console: Console | None = None) -> RunResult:
    """Run the demo in ``directory`` (recreated); raise ``RuntimeFailure`` if a check fails."""
    console = console or Console()
    started = time.perf_counter()
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    store = directory / "job"
    rank, at_s = DEMO_KILL
    console.rule("[bold]snapline demo: a distributed bank survives kill -9")
    console.print(
        f"{DEMO_RANKS} processes, one bank branch each, move money to each other "
        f"({DEMO_PARAMS['messages']} transfers per branch). Chandy-Lamport snapshots every "
        f"0.5 s go to {store}. Rank {rank} will be killed with SIGKILL {at_s:g} s after "
        "every rank is up."
    )
    from snapline.runtime.sim import SimConfig, reference_results

    expected = reference_results(
        SimConfig(app="bank", n=DEMO_RANKS, app_params=DEMO_PARAMS, topology="complete")
    )
    with Live(Text("starting processes..."), console=console, transient=True) as live:
        result = run(
            "bank",
            DEMO_RANKS,
            store=store,
            protocol="chandy-lamport",
            interval="0.5s",
            app_options=DEMO_PARAMS,
            kill=[f"{rank}@{at_s}"],
            timeout="120s",
            on_status=lambda status: live.update(_status_text(status)),
        )
    for failure in result.failures:
        console.print(
            f"[red]killed[/] rank {failure['rank']} (pid {failure['pid']}) "
            f"{failure['t']:.2f} s after launch"
        )
    for rec in result.recoveries:
        line = ", ".join(f"{r}->ckpt {i}" for r, i in sorted(rec["restore"].items()))
        console.print(
            f"[green]recovered[/] in {rec['t_done'] - rec['t_detect']:.2f}s: restored {line}; "
            f"{rec['replayed']} recorded in-transit transfers re-delivered"
        )
    balances = [result.results[r] for r in range(DEMO_RANKS)]
    total = sum(int(b) for b in balances)
    want_total = DEMO_RANKS * int(DEMO_PARAMS["initial_balance"])
    console.print(f"final balances: {balances}")
    console.print(f"failure-free:   {expected}")
    problems = check_run(result, app="bank", app_params=DEMO_PARAMS, topology="complete")
    if not result.failures or not result.recoveries:
        problems.append("the kill did not happen (the run ended first)")
    if total != want_total:
        problems.append(f"total {total} != {want_total}")
    diagram = directory / "spacetime.png"
    drawn = _draw(result, diagram, console)
    if problems:
        raise RuntimeFailure("demo check failed: " + "; ".join(problems))
    elapsed = time.perf_counter() - started
    console.print(
        Panel(
            f"money conserved: {total} = {DEMO_RANKS} x {DEMO_PARAMS['initial_balance']}\n"
            "every balance equals the failure-free run's; every transfer delivered exactly "
            "once (checked on the trace)\n"
            f"space-time diagram: {diagram if drawn else 'not drawn (see above)'}\n"
            f"trace: {result.trace_path}\n"
            f"Try: snapline ps {store} ; snapline viz {result.trace_path}\n"
            f"Done in {elapsed:.1f} s.",
            title="summary",
        )
    )
    return result


def _draw(result: RunResult, diagram: Path, console: Console) -> bool:
    """Draw the run's space-time diagram with the viz module; False if it could not."""
    if result.trace_path is None:
        return False
    try:
        from snapline.analysis.spacetime import layout_spacetime
        from snapline.analysis.spacetime_plot import render_spacetime
        from snapline.analysis.trace_view import view_trace
        from snapline.runtime.trace import load_trace

        trace = view_trace(load_trace(result.trace_path))
        render_spacetime(layout_spacetime(trace), diagram)
    except Exception as exc:  # the drawing is a by-product: report it, keep the checks' verdict
        console.print(f"[yellow]could not draw the space-time diagram:[/] {exc!r}")
        return False
    return True
