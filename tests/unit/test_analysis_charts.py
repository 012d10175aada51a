"""The comparison chart: one panel per metric, failed and unreported values never drawn as 0."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapline.analysis.charts import (
    ChartPanel,
    ChartRow,
    build_comparison_figure,
    render_comparison_chart,
)
from snapline.errors import ConfigError

PANELS = (
    ChartPanel(title="checkpoints taken", keys=("basic", "forced"), labels=("basic", "forced")),
    ChartPanel(title="control messages", keys=("control",)),
    ChartPanel(title="blocking time (s)", keys=("blocking_s",)),
    ChartPanel(title="work lost (s)", keys=("lost_s",)),
)
ROWS = (
    ChartRow(
        protocol="none",
        values={"basic": 0, "forced": 0, "control": 0, "blocking_s": 0.0, "lost_s": 90.0},
        baseline=True,
    ),
    ChartRow(
        protocol="two-phase",
        values={"basic": 12, "forced": 0, "control": 48, "blocking_s": None, "lost_s": 9.5},
    ),
    ChartRow(protocol="bcs", values={}, failed="ImportError: no module named bcs"),
)


def _texts(fig_axes_texts: list[str], needle: str) -> int:
    return sum(1 for t in fig_axes_texts if t == needle)


def test_one_panel_per_metric_with_failed_and_missing_labelled() -> None:
    fig = build_comparison_figure(ROWS, PANELS, title="bank")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in visible] == [p.title for p in PANELS]
    texts = [t.get_text() for ax in visible for t in ax.texts]
    # The failed protocol is labelled in every panel; the unreported value only where missing.
    assert _texts(texts, "failed") == len(PANELS)
    assert _texts(texts, "n/a") == 1
    labels = [t.get_text() for t in visible[0].get_yticklabels()]
    assert labels == ["none (baseline)", "two-phase", "bcs ✗"]


def test_stacked_panel_sums_its_keys() -> None:
    fig = build_comparison_figure(ROWS, PANELS, title="bank")
    first = fig.axes[0]
    texts = [t.get_text() for t in first.texts]
    assert "12" in texts  # 12 basic + 0 forced


def test_png_and_svg_files(tmp_path: Path) -> None:
    png = tmp_path / "cmp.png"
    render_comparison_chart(ROWS, PANELS, png, title="bank")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "cmp.svg"
    render_comparison_chart(ROWS, PANELS, svg, title="bank")
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="no protocol results"):
        build_comparison_figure([], PANELS, title="x")
    with pytest.raises(ConfigError, match=r"\.png or \.svg"):
        render_comparison_chart(ROWS, PANELS, Path("chart.pdf"), title="x")


def test_ticks_and_labels_use_human_units() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    panels = (
        ChartPanel(title="bytes stored", keys=("stored",), unit="bytes"),
        ChartPanel(title="blocking time", keys=("blocked",), unit="seconds"),
        ChartPanel(title="control messages", keys=("control",)),
    )
    rows = (
        ChartRow(protocol="a", values={"stored": 3_500_000, "blocked": 0.0123, "control": 2e6}),
        ChartRow(protocol="b", values={"stored": 180_000, "blocked": 0.004, "control": 50_000}),
    )
    fig = build_comparison_figure(rows, panels, title="units")
    FigureCanvasAgg(fig).draw()
    stored, blocked, control = (ax for ax in fig.axes if ax.get_visible())
    ticks = [t.get_text() for t in stored.get_xticklabels() if t.get_text()]
    assert ticks[0] == "0 B" and all(t.endswith(" MiB") for t in ticks[1:]), ticks
    assert "3.34 MiB" in [t.get_text() for t in stored.texts]
    ms = [t.get_text() for t in blocked.get_xticklabels() if t.get_text()]
    assert all(t.endswith((" ms", "0 s")) for t in ms), ms
    assert "12.3 ms" in [t.get_text() for t in blocked.texts]
    counts = [t.get_text() for t in control.get_xticklabels() if t.get_text()]
    assert any(t.endswith("M") for t in counts), counts
    for ax in (stored, blocked, control):
        # No scientific offset text ("1e6") anywhere.
        assert ax.xaxis.get_offset_text().get_text() == ""
