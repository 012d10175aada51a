"""Draw a ``SpaceTime`` with matplotlib: PNG or SVG by file extension, or SVG text for HTML.

Uses matplotlib's object API (``Figure`` without pyplot), so drawing touches no global state
and needs no display. Every kind of mark is its own artist with a stable SVG id (``gid``), e.g.
``checkpoints-basic``, which keeps the SVG easy to inspect and to test.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from snapline.analysis.spacetime import MessageMark, PointMark, SpaceTime, SpanMark
from snapline.analysis.units import human_seconds
from snapline.errors import ConfigError
from snapline.runtime.local.jobdir import checkpoint_label

COLORS = {
    "rank": "#555555",
    "message": "#3b6ea8",
    "control": "#9a9a9a",
    "replayed": "#1a9850",
    "basic": "#1f3f7a",
    "forced": "#d62728",
    "discarded": "#b0b0b0",
    "crash": "#d62728",
    "restore": "#1a9850",
    "rolled_back": "#f4a261",
    "down": "#cccccc",
    "waiting": "#9ecae1",
    "recovery_line": "#7b3294",
}
SUPPORTED_SUFFIXES = (".png", ".svg")


def _figure_size(spacetime: SpaceTime) -> tuple[float, float]:
    rows = len(spacetime.ranks)
    # Room for the ranks, the title and its notes, the axis label and a 3-row legend.
    return 11.0, 2.4 + 0.2 * len(spacetime.notes) + 0.42 * max(rows, 2)


def _add_spans(
    ax: Axes,
    spans: tuple[SpanMark, ...],
    y_of: dict[int, float],
    *,
    color: str,
    hatch: str | None,
    gid: str,
    height: float,
) -> None:
    rects = [
        Rectangle((s.t_from, y_of[s.rank] - height / 2), s.t_to - s.t_from, height) for s in spans
    ]
    if not rects:
        return
    collection = PatchCollection(
        rects,
        facecolor=color,
        edgecolor=COLORS["rank"] if hatch else "none",
        hatch=hatch,
        alpha=0.55 if hatch is None else 0.8,
        linewidth=0.0,
        zorder=1,
    )
    collection.set_gid(gid)
    ax.add_collection(collection)


def _arrow(message: MessageMark, y_of: dict[int, float]) -> FancyArrowPatch:
    style: str | tuple[int, tuple[int, int]]
    if message.replayed:
        color, width, style, z = COLORS["replayed"], 1.8, "-", 4
    elif message.control:
        color, width, style, z = COLORS["control"], 0.6, (0, (3, 2)), 2
    else:
        color, width, style, z = COLORS["message"], 0.9, "-", 3
    return FancyArrowPatch(
        (message.t_send, y_of[message.src]),
        (message.t_recv, y_of[message.dst]),
        arrowstyle="-|>",
        mutation_scale=7 if not message.replayed else 9,
        color=color,
        linewidth=width,
        linestyle=style,
        shrinkA=0,
        shrinkB=1,
        zorder=z,
        # Control traffic can outnumber application messages; keep it in the background.
        alpha=0.4 if message.control else 0.85,
    )


def _scatter(
    ax: Axes, marks: list[PointMark], y_of: dict[int, float], *, gid: str, **style: Any
) -> None:
    if not marks:
        return
    collection = ax.scatter([m.t for m in marks], [y_of[m.rank] for m in marks], **style)
    collection.set_gid(gid)


def build_figure(spacetime: SpaceTime) -> Figure:
    """A matplotlib figure of the diagram (not yet saved anywhere)."""
    fig = Figure(figsize=_figure_size(spacetime), layout="constrained")
    ax = fig.add_subplot()
    # Rank 0 at the top, as space-time diagrams are usually read.
    y_of = {rank: float(-row) for row, rank in enumerate(spacetime.ranks)}
    ys = list(y_of.values())

    ax.hlines(
        ys,
        spacetime.t_from,
        spacetime.t_to,
        color=COLORS["rank"],
        linewidth=1.0,
        zorder=0,
        gid="rank-lines",
    )
    _add_spans(
        ax,
        spacetime.rolled_back,
        y_of,
        color=COLORS["rolled_back"],
        hatch=None,
        gid="rolled-back",
        height=0.38,
    )
    _add_spans(
        ax, spacetime.down, y_of, color=COLORS["down"], hatch="////", gid="down", height=0.22
    )
    _add_spans(
        ax,
        spacetime.waiting,
        y_of,
        color=COLORS["waiting"],
        hatch="..",
        gid="waiting",
        height=0.22,
    )
    for number, message in enumerate(spacetime.messages):
        patch = _arrow(message, y_of)
        # One id per arrow, so the HTML page can give each its tooltip.
        patch.set_gid(f"{'replayed' if message.replayed else 'message'}-{number}")
        # Arrows lie inside the axes: the layout engine need not measure each (thousands).
        patch.set_in_layout(False)
        ax.add_patch(patch)

    basic, forced, discarded = _checkpoint_groups(spacetime)
    _scatter(
        ax, basic, y_of, gid="checkpoints-basic", marker="s", s=42, color=COLORS["basic"], zorder=6
    )
    _scatter(
        ax,
        forced,
        y_of,
        gid="checkpoints-forced",
        marker="s",
        s=46,
        facecolors="white",
        edgecolors=COLORS["forced"],
        linewidths=1.6,
        zorder=6,
    )
    _scatter(
        ax,
        discarded,
        y_of,
        gid="checkpoints-discarded",
        marker="s",
        s=36,
        facecolors="none",
        edgecolors=COLORS["discarded"],
        linewidths=1.2,
        zorder=5,
    )
    _scatter(
        ax,
        list(spacetime.crashes),
        y_of,
        gid="crashes",
        marker="X",
        s=130,
        color=COLORS["crash"],
        edgecolors="white",
        linewidths=0.8,
        zorder=8,
    )
    _scatter(
        ax,
        list(spacetime.restores),
        y_of,
        gid="restores",
        marker=">",
        s=60,
        color=COLORS["restore"],
        zorder=7,
    )
    _scatter(
        ax,
        list(spacetime.finishes),
        y_of,
        gid="finishes",
        marker="|",
        s=140,
        color="black",
        linewidths=1.6,
        zorder=5,
    )

    for line in spacetime.recovery_lines:
        if not line.points:
            continue
        ts = [t for _, t, _ in line.points]
        line_ys = [y_of[rank] for rank, _, _ in line.points]
        (drawn,) = ax.plot(
            ts, line_ys, color=COLORS["recovery_line"], linewidth=2.2, zorder=5.4, alpha=0.9
        )
        drawn.set_gid(f"recovery-line-{line.number}")
        restored = [(t, y) for (_, t, r), y in zip(line.points, line_ys, strict=True) if r]
        if restored:
            # A ring around the restored checkpoint, drawn under it so the checkpoint's own
            # marker (basic or forced) stays visible inside.
            ax.scatter(
                [t for t, _ in restored],
                [y for _, y in restored],
                marker="o",
                s=190,
                facecolors="white",
                edgecolors=COLORS["recovery_line"],
                linewidths=2.0,
                zorder=5.5,
            )
        ax.annotate(
            f"R{line.number}",
            (ts[0], line_ys[0]),
            xytext=(-4, 8),
            textcoords="offset points",
            color=COLORS["recovery_line"],
            fontsize=9,
            fontweight="bold",
            ha="right",
        )

    ax.set_yticks(ys, [f"rank {r}" for r in spacetime.ranks])
    span = spacetime.t_to - spacetime.t_from
    ax.set_xlim(spacetime.t_from - 0.01 * span, spacetime.t_to + 0.01 * span)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.set_xlabel("time since the job started (s)")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8, zorder=-1)
    subtitle = "\n".join(spacetime.notes)
    ax.set_title(spacetime.title + (f"\n{subtitle}" if subtitle else ""), fontsize=11, loc="left")
    # Outside the axes, below everything the layout engine places (the axis label included),
    # so the two never overlap whatever the figure's height.
    fig.legend(
        handles=_legend_handles(),
        loc="outside lower center",
        ncol=5,
        frameon=False,
        fontsize=8.5,
    )
    return fig


def _checkpoint_groups(
    spacetime: SpaceTime,
) -> tuple[list[PointMark], list[PointMark], list[PointMark]]:
    """Basic, forced and discarded checkpoints, each drawn as one group, in drawing order."""
    basic = [c for c in spacetime.checkpoints if not c.forced and not c.discarded]
    forced = [c for c in spacetime.checkpoints if c.forced and not c.discarded]
    discarded = [c for c in spacetime.checkpoints if c.discarded]
    return basic, forced, discarded


def _legend_handles() -> list[Line2D | Patch]:
    def marker(label: str, **style: object) -> Line2D:
        return Line2D([], [], linestyle="none", label=label, **style)  # type: ignore[arg-type]

    return [
        Line2D([], [], color=COLORS["message"], label="message"),
        Line2D([], [], color=COLORS["control"], linestyle=(0, (3, 2)), label="control message"),
        Line2D([], [], color=COLORS["replayed"], linewidth=1.8, label="replayed message"),
        marker("basic checkpoint", marker="s", color=COLORS["basic"], markersize=7),
        marker(
            "forced checkpoint",
            marker="s",
            markerfacecolor="white",
            markeredgecolor=COLORS["forced"],
            markeredgewidth=1.6,
            markersize=7,
        ),
        marker(
            "discarded checkpoint",
            marker="s",
            markerfacecolor="none",
            markeredgecolor=COLORS["discarded"],
            markersize=7,
        ),
        marker("crash", marker="X", color=COLORS["crash"], markersize=9),
        marker("restore", marker=">", color=COLORS["restore"], markersize=7),
        marker("finish", marker="|", color="black", markersize=10, markeredgewidth=1.6),
        Line2D([], [], color=COLORS["recovery_line"], linewidth=2.2, label="recovery line"),
        Patch(facecolor=COLORS["rolled_back"], alpha=0.55, label="work rolled back"),
        Patch(
            facecolor=COLORS["down"],
            hatch="////",
            edgecolor=COLORS["rank"],
            label="down (crash to recovery)",
        ),
        Patch(
            facecolor=COLORS["waiting"],
            hatch="..",
            edgecolor=COLORS["rank"],
            label="waiting for recovery",
        ),
    ]


def _save(fig: Figure, target: Path | io.StringIO, *, format: str, dpi: int) -> None:
    # A fixed hash salt and no date make SVG ids and metadata repeatable: the same trace gives
    # the same file, which keeps diagrams diffable.
    metadata = {"Date": None} if format == "svg" else None
    with matplotlib.rc_context({"svg.hashsalt": "snapline"}):
        fig.savefig(target, format=format, dpi=dpi, metadata=metadata)


def render_spacetime(spacetime: SpaceTime, path: Path) -> None:
    """Write the diagram to ``path``; ``.png`` or ``.svg`` picks the format."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ConfigError(
            f"cannot draw to {path.name!r}: use a file name ending in .png or .svg "
            "(or --html for a web page)"
        )
    fig = build_figure(spacetime)
    try:
        _save(fig, path, format=suffix[1:], dpi=110)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def spacetime_svg(spacetime: SpaceTime, *, tooltips: bool = True) -> str:
    """The diagram as SVG text (for embedding in an HTML page), each mark with a tooltip."""
    buffer = io.StringIO()
    _save(build_figure(spacetime), buffer, format="svg", dpi=110)
    text = buffer.getvalue()
    return _with_tooltips(text, tooltip_texts(spacetime)) if tooltips else text


def tooltip_texts(spacetime: SpaceTime) -> dict[str, list[str]]:
    """SVG group id -> the tooltip of each mark in it, in drawing order."""

    def at(t: float) -> str:
        return f"{t:.3f} s"

    def span(kind: str, s: SpanMark) -> str:
        length = human_seconds(s.t_to - s.t_from)
        return f"rank {s.rank}: {kind} for {length}, {at(s.t_from)} to {at(s.t_to)}"

    basic, forced, discarded = _checkpoint_groups(spacetime)
    tips: dict[str, list[str]] = {
        "checkpoints-basic": [
            f"rank {c.rank}: basic checkpoint {checkpoint_label(c.index or 0)} at {at(c.t)}"
            for c in basic
        ],
        "checkpoints-forced": [
            f"rank {c.rank}: forced checkpoint {checkpoint_label(c.index or 0)} at {at(c.t)}"
            for c in forced
        ],
        "checkpoints-discarded": [
            f"rank {c.rank}: discarded checkpoint {checkpoint_label(c.index or 0)} at {at(c.t)}"
            for c in discarded
        ],
        "crashes": [f"rank {c.rank} crashed at {at(c.t)}" for c in spacetime.crashes],
        "restores": [
            f"rank {c.rank} restored checkpoint {checkpoint_label(c.index or 0)} at {at(c.t)}"
            for c in spacetime.restores
        ],
        "finishes": [f"rank {c.rank} called ctx.finish() at {at(c.t)}" for c in spacetime.finishes],
        "rolled-back": [span("work rolled back", s) for s in spacetime.rolled_back],
        "down": [span("down", s) for s in spacetime.down],
        "waiting": [span("waiting for recovery", s) for s in spacetime.waiting],
    }
    for number, m in enumerate(spacetime.messages):
        kind = "replayed message" if m.replayed else "control message" if m.control else "message"
        tips[f"{'replayed' if m.replayed else 'message'}-{number}"] = [
            f"{kind} {m.src} -> {m.dst}: sent {at(m.t_send)}, delivered {at(m.t_recv)} "
            f"({human_seconds(m.t_recv - m.t_send)})"
        ]
    return tips


_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"


def _with_tooltips(svg_text: str, tips: dict[str, list[str]]) -> str:
    """Add an SVG ``<title>`` (a browser tooltip) to each mark of the groups in ``tips``."""
    ET.register_namespace("", _SVG_NS)
    ET.register_namespace("xlink", _XLINK_NS)
    root = ET.fromstring(svg_text)
    for group in root.iter(f"{{{_SVG_NS}}}g"):
        texts = tips.get(group.get("id", ""))
        if not texts:
            continue
        # A group of points holds one <use> per point; a group of spans one <path> per span;
        # a message's group is the message itself.
        marks = [e for e in group.iter() if e.tag == f"{{{_SVG_NS}}}use"]
        if not marks:
            marks = [e for e in group if e.tag == f"{{{_SVG_NS}}}path"]
        if len(marks) != len(texts):
            # A message's group is the one mark (its arrow is two paths: line and head).
            marks, texts = [group], ["; ".join(texts)]
        for mark, text in zip(marks, texts, strict=True):
            title = ET.Element(f"{{{_SVG_NS}}}title")
            title.text = text
            mark.insert(0, title)
    return ET.tostring(root, encoding="unicode")
