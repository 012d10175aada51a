"""The protocol comparison chart: small multiples, one bar panel per metric.

Each panel shares the protocol axis (one horizontal bar per protocol, in the order given), so a
reader can follow one protocol across panels. A protocol whose run failed keeps its row with a
red "failed" label; a metric the driver did not report shows "n/a" -- neither is drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from snapline.analysis.units import Unit, human
from snapline.errors import ConfigError

SUPPORTED_SUFFIXES = (".png", ".svg")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChartRow:
    """One protocol's values (``None`` = not reported); ``failed`` is the reason if it failed."""

    protocol: str
    values: Mapping[str, float | None]
    failed: str | None = None
    baseline: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChartPanel:
    """One panel: the metric keys it stacks (usually one), their labels, the panel title.

    ``unit`` picks how ticks and bar labels read (``KiB``, ``ms``, ``18.6k``), so the title
    need not carry it and no axis shows a ``1e6`` offset.
    """

    title: str
    keys: tuple[str, ...]
    labels: tuple[str, ...] = ()
    unit: Unit = "count"


_STACK_COLORS = ("#1f3f7a", "#d62728", "#7b3294")
_BAR_COLOR = "#3b6ea8"
_BASELINE_COLOR = "#a0a0a0"


def _panel(ax: Axes, panel: ChartPanel, rows: Sequence[ChartRow]) -> None:
    ys = list(range(len(rows)))
    lefts = [0.0] * len(rows)
    top = 0.0
    for row in rows:
        if row.failed is None:
            total = sum(v for k in panel.keys if (v := row.values.get(k)) is not None)
            top = max(top, total)
    for stack, key in enumerate(panel.keys):
        widths = []
        for row in rows:
            value = None if row.failed else row.values.get(key)
            widths.append(0.0 if value is None else float(value))
        label = panel.labels[stack] if stack < len(panel.labels) else None
        color = _STACK_COLORS[stack % len(_STACK_COLORS)] if len(panel.keys) > 1 else _BAR_COLOR
        # The baseline (no checkpointing) is grey so it reads as a reference, not a contender.
        colors = [_BASELINE_COLOR if r.baseline and len(panel.keys) == 1 else color for r in rows]
        ax.barh(ys, widths, left=lefts, height=0.62, color=colors, label=label, zorder=2)
        lefts = [a + b for a, b in zip(lefts, widths, strict=True)]
    span = top if top > 0 else 1.0
    for y, row, total in zip(ys, rows, lefts, strict=True):
        if row.failed is not None:
            ax.text(
                0.02 * span,
                y,
                "failed",
                va="center",
                color="#d62728",
                fontsize=8,
                fontweight="bold",
            )
        elif all(row.values.get(k) is None for k in panel.keys):
            ax.text(0.02 * span, y, "n/a", va="center", color="#888888", fontsize=8)
        else:
            ax.text(
                total + 0.02 * span,
                y,
                human(total, panel.unit),
                va="center",
                fontsize=7.5,
                color="#333333",
            )
    ax.set_xlim(0, span * 1.28)
    # Human units on the ticks (KiB, ms, 20k), never a "1e6" offset; few ticks so they fit.
    locator = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], integer=panel.unit == "count")
    if panel.unit == "bytes":
        # Ticks on round numbers of the unit shown (256 KiB, not 262144 B = "256 KiB" by luck).
        scale = 1024.0 ** max(0, math.floor(math.log(span * 1.28, 1024))) if span >= 1 else 1.0
        ticks = [t * scale for t in locator.tick_values(0, span * 1.28 / scale)]
        ax.set_xticks([t for t in ticks if 0 <= t <= span * 1.28])
    else:
        ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: human(v, panel.unit)))
    ax.set_title(panel.title, fontsize=9.5, loc="left")
    ax.tick_params(axis="x", labelsize=7.5)
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(panel.keys) > 1:
        # Beside the title, above the bars, so it never hides one.
        ax.legend(
            fontsize=7.5,
            frameon=False,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncol=len(panel.keys),
            borderaxespad=0.1,
        )


def build_comparison_figure(
    rows: Sequence[ChartRow], panels: Sequence[ChartPanel], *, title: str
) -> Figure:
    """A figure with one bar panel per entry of ``panels``."""
    if not rows:
        raise ConfigError("nothing to chart: no protocol results")
    cols = 3 if len(panels) > 4 else max(1, len(panels))
    grid_rows = math.ceil(len(panels) / cols)
    height = 0.9 + grid_rows * (0.75 + 0.24 * len(rows))
    fig = Figure(figsize=(12.0, height), layout="constrained")
    axes = fig.subplots(grid_rows, cols, sharey=True, squeeze=False)
    labels = [
        f"{r.protocol} ✗" if r.failed else f"{r.protocol} (baseline)" if r.baseline else r.protocol
        for r in rows
    ]
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        _panel(ax, panels[i], rows)
        ax.set_yticks(range(len(rows)), labels, fontsize=8.5)
        if i == 0:
            # Axes share y, so one inversion puts the first protocol on top in every panel.
            ax.invert_yaxis()
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    return fig


def render_comparison_chart(
    rows: Sequence[ChartRow], panels: Sequence[ChartPanel], path: Path, *, title: str
) -> None:
    """Write the chart to ``path`` (``.png`` or ``.svg``)."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ConfigError(f"cannot draw a chart to {path.name!r}: use a .png or .svg file name")
    fig = build_comparison_figure(rows, panels, title=title)
    # Repeatable SVG output (fixed id salt, no date), as for the space-time diagram.
    metadata = {"Date": None} if suffix == ".svg" else None
    try:
        with matplotlib.rc_context({"svg.hashsalt": "snapline"}):
            fig.savefig(path, format=suffix[1:], dpi=100, metadata=metadata)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
