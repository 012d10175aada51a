"""How a ``ComparisonResult`` is shown: a rich table, the interval advice, and the chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from snapline.analysis.charts import ChartPanel, ChartRow, render_comparison_chart
from snapline.analysis.compare import BASELINE, ComparisonResult
from snapline.analysis.metrics import TraceMetrics
from snapline.analysis.units import human_bytes, human_seconds

#: The chart's panels, in reading order; keys are ``TraceMetrics`` fields.
PANELS: tuple[ChartPanel, ...] = (
    ChartPanel(
        title="checkpoints taken",
        keys=("basic_checkpoints", "forced_checkpoints"),
        labels=("basic", "forced"),
    ),
    ChartPanel(title="control messages", keys=("control_messages",)),
    ChartPanel(title="piggybacked bytes", keys=("piggyback_bytes",), unit="bytes"),
    ChartPanel(title="blocking time", keys=("blocking_s",), unit="seconds"),
    ChartPanel(title="work lost to rollback", keys=("work_lost_s",), unit="seconds"),
    ChartPanel(title="rollback distance (checkpoints, max)", keys=("rollback_checkpoints_max",)),
    ChartPanel(title="recovery time", keys=("recovery_s",), unit="seconds"),
    ChartPanel(title="bytes stored", keys=("bytes_stored",), unit="bytes"),
    ChartPanel(title="makespan", keys=("makespan_s",), unit="seconds"),
)


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return f"{int(value):,}"
    # Three significant digits, but never scientific notation for values people read as sums.
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


# Every column of the comparison: (header, its cells from a run's metrics). The header's first
# word names the figure; units are in the cells (KiB, s), so headers stay narrow.
_Cell = Callable[[TraceMetrics], str]
_COLUMNS: dict[str, tuple[str, _Cell]] = {
    "crashes": ("crashes", lambda m: str(m.crashes)),
    "ckpts": ("ckpts\nbasic/forced", lambda m: f"{m.basic_checkpoints}/{m.forced_checkpoints}"),
    "control": ("control\nmsgs", lambda m: _num(m.control_messages)),
    "piggyback": ("piggyback", lambda m: human_bytes(m.piggyback_bytes)),
    "blocking": ("blocked", lambda m: _seconds(m.blocking_s)),
    "stored": (
        "stored",
        lambda m: "n/a" if m.bytes_stored is None else human_bytes(m.bytes_stored),
    ),
    "lost": ("work\nlost", lambda m: _seconds(m.work_lost_s)),
    "rollback": (
        "rollback\nckpts/time",
        lambda m: f"{m.rollback_checkpoints_max}/{_seconds(m.rollback_distance_s_max)}",
    ),
    "recovery": ("recovery", lambda m: _seconds(m.recovery_s)),
    "makespan": ("makespan", lambda m: _seconds(m.makespan_s)),
}
#: Below this many columns the comparison is split in two tables that each fit 80 columns:
#: what checkpointing costs without failures, and what failures cost.
WIDE_TABLE_COLUMNS = 132
_SPLIT = (
    ("what checkpointing costs", ("ckpts", "control", "piggyback", "blocking", "stored")),
    ("what the crashes cost", ("crashes", "lost", "rollback", "recovery", "makespan")),
)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else human_seconds(value)


def _title(result: ComparisonResult) -> str:
    config = result.config
    crashes = len(result.crash_schedule)
    return (
        f"{config.app}, n={config.n}, seed {config.seed}, interval "
        f"{_num(config.interval_s)} s, {crashes} crash{'es' if crashes != 1 else ''} scheduled"
    )


def _table(
    result: ComparisonResult, title: str, keys: tuple[str, ...], *, status: bool = True
) -> Table:
    table = Table(title=title, title_justify="left")
    # Names never wrap or get cut: they are what a reader looks for.
    table.add_column("protocol", no_wrap=True)
    if status:
        table.add_column("status", overflow="fold")
    for key in keys:
        table.add_column(_COLUMNS[key][0], justify="right", no_wrap=True)
    for outcome in result.outcomes:
        name = (
            f"{outcome.protocol} (baseline)" if outcome.protocol == BASELINE else outcome.protocol
        )
        m = outcome.metrics
        if m is None:
            reason = outcome.failure or "failed"
            short = reason if len(reason) <= 40 else reason[:39] + "…"
            failed = [f"[bold red]FAILED[/] {short}"] if status else []
            table.add_row(name, *failed, *(["-"] * len(keys)))
            continue
        ok = ["[green]ok[/]"] if status else []
        table.add_row(name, *ok, *(_COLUMNS[key][1](m) for key in keys))
    return table


def comparison_table(result: ComparisonResult) -> Table:
    """One row per protocol, every figure; a failed protocol keeps its row, marked FAILED."""
    return _table(result, _title(result), tuple(_COLUMNS))


def comparison_tables(result: ComparisonResult, width: int) -> list[Table]:
    """``comparison_table`` if ``width`` columns hold it, else the same figures in two tables."""
    if width >= WIDE_TABLE_COLUMNS:
        return [comparison_table(result)]
    title = _title(result)
    # The status (with a failure's reason) goes with the second table, which has room for it.
    return [
        _table(result, f"{title}: {what}", keys, status=i == 1)
        for i, (what, keys) in enumerate(_SPLIT)
    ]


def interval_report(result: ComparisonResult) -> list[str]:
    """Lines on the optimal interval (Young, Daly) and where the run's interval stands."""
    advice = result.advice
    sources = result.advice_sources
    if advice is None:
        return [
            "Optimal checkpoint interval: not computed -- "
            + "; ".join(f"{k}: {v}" for k, v in sources.items() if "give" in v)
        ]
    lines = [
        "Optimal checkpoint interval (Daly's model, exponential failures):",
        f"  checkpoint cost C = {advice.checkpoint_cost_s:.3g} s ({sources['checkpoint_cost_s']})",
        f"  MTBF of the job M = {advice.mtbf_s:.4g} s ({sources['mtbf_s']})",
        f"  restart time    R = {advice.restart_s:.3g} s ({sources['restart_s']})",
        f"  Young  sqrt(2CM)             {advice.young_s:10.4g} s   "
        f"modeled waste {advice.young_waste:6.1%}",
        f"  Daly   higher-order estimate {advice.daly_s:10.4g} s   "
        f"modeled waste {advice.daly_waste:6.1%}",
    ]
    if advice.run_interval_s is not None and advice.run_waste is not None:
        ratio = advice.run_vs_daly
        assert ratio is not None
        if 0.8 <= ratio <= 1.25:
            verdict = "close to the optimum"
        elif ratio < 1:
            verdict = f"{1 / ratio:.3g}x more often than optimal"
        else:
            verdict = f"{ratio:.3g}x less often than optimal"
        lines.append(
            f"  this run's interval          {advice.run_interval_s:10.4g} s   "
            f"modeled waste {advice.run_waste:6.1%}   ({verdict})"
        )
    return lines


def _chart_values(metrics: TraceMetrics | None) -> dict[str, float | None]:
    if metrics is None:
        return {}
    raw = metrics.as_dict()
    return {
        key: None if raw[key] is None else float(raw[key]) for panel in PANELS for key in panel.keys
    }


def chart_title(result: ComparisonResult) -> str:
    """The chart's title: the job, and the crashes that actually hit it (not just scheduled)."""
    config = result.config
    crashes = len(result.crash_schedule)
    head = (
        f"Protocol comparison: {config.app}, n={config.n}, seed {config.seed}, checkpoint "
        f"interval {_num(config.interval_s)} s"
    )
    seen = result.crashes_seen()
    if not crashes or (seen and not any(seen.values())):
        return f"{head}: NO CRASH in any run (nothing to recover from)"
    plural = "es" if crashes != 1 else ""
    if result.crashes_everywhere():
        return f"{head}, the same {crashes} crash{plural} in every run"
    return f"{head}, {crashes} crash{plural} scheduled; not every run had them all (see table)"


def render_comparison(result: ComparisonResult, path: Path) -> None:
    """Write the small-multiples chart of ``result`` to ``path`` (.png or .svg)."""
    rows = [
        ChartRow(
            protocol=o.protocol,
            values=_chart_values(o.metrics),
            failed=o.failure,
            baseline=o.protocol == BASELINE,
        )
        for o in result.outcomes
    ]
    title = chart_title(result)
    render_comparison_chart(rows, PANELS, path, title=title)
