"""A self-contained HTML page for one run: inline SVG diagram, legend and summary figures.

The page loads nothing from anywhere (no scripts, fonts, style sheets or images by URL), so it
can be mailed, archived or opened offline. Every piece of text from the trace is escaped.

A diagram of many ranks stays readable: it sits in a scrollable frame, a zoom (plain CSS radio
buttons, no script) widens it 2x or 4x, and every mark has a tooltip (an SVG ``<title>``) with
its rank, time and checkpoint.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from snapline.analysis.metrics import TraceMetrics
from snapline.analysis.spacetime import SpaceTime
from snapline.analysis.spacetime_plot import COLORS, spacetime_svg
from snapline.errors import ConfigError

_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.DOTALL)

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5rem;
       color: #222; max-width: 1200px; }
h1 { font-size: 1.3rem; margin-bottom: 0.2rem; }
p.note { color: #8a5a00; margin: 0.2rem 0; }
figure { margin: 0; }
figure svg { height: auto; display: block; }
.scroll { overflow: auto; max-height: 85vh; border: 1px solid #ddd; margin: 0.4rem 0 1rem; }
.zoom label { margin-right: 0.8rem; cursor: pointer; }
#zoom-1:checked ~ .scroll svg { width: 100%; }
#zoom-2:checked ~ .scroll svg { width: 200%; }
#zoom-4:checked ~ .scroll svg { width: 400%; }
table { border-collapse: collapse; margin-top: 0.5rem; }
td, th { padding: 0.2rem 0.8rem; text-align: left; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
ul.legend { list-style: none; padding: 0; columns: 2; max-width: 760px; }
ul.legend li { margin: 0.15rem 0; }
.swatch { display: inline-block; width: 0.9rem; height: 0.9rem; margin-right: 0.4rem;
          vertical-align: middle; border: 1px solid #999; }
"""

_LEGEND: tuple[tuple[str, str, str], ...] = (
    ("message", "message", "application message, from send to delivery"),
    ("control", "control message", "protocol control message (dashed)"),
    ("replayed", "replayed message", "re-delivered to a restored rank during recovery"),
    ("basic", "basic checkpoint", "filled square: taken on the rank's own schedule"),
    ("forced", "forced checkpoint", "hollow red square: forced by the protocol"),
    ("discarded", "discarded checkpoint", "grey outline: aborted, never usable"),
    ("crash", "crash", "X: the rank failed here"),
    ("restore", "restore", "triangle: the rank resumed from a checkpoint"),
    ("recovery_line", "recovery line", "the cut restored by recovery R<i> (ringed points)"),
    ("rolled_back", "work rolled back", "shaded: work lost to the rollback"),
    ("down", "down", "hatched: from crash until recovery completed"),
    ("waiting", "waiting for recovery", "dotted: a survivor, from detection to recovery's end"),
)


def _inline_svg(svg_text: str) -> str:
    # An XML prolog or DOCTYPE is not allowed in the middle of an HTML body.
    return _PROLOG.sub("", svg_text, count=1)


def _stat_rows(metrics: TraceMetrics) -> list[tuple[str, str]]:
    def seconds(value: float) -> str:
        return f"{value:.3g} s"

    rows = [
        (
            "checkpoints (basic / forced)",
            f"{metrics.basic_checkpoints} / {metrics.forced_checkpoints}",
        ),
        ("discarded checkpoints", str(metrics.discarded_checkpoints)),
        ("application messages", str(metrics.app_messages)),
        ("control messages", str(metrics.control_messages)),
        ("piggybacked bytes", str(metrics.piggyback_bytes)),
        ("crashes / recoveries", f"{metrics.crashes} / {metrics.recoveries}"),
        ("work lost to rollback", seconds(metrics.work_lost_s)),
        (
            "rollback distance (max)",
            f"{metrics.rollback_checkpoints_max} checkpoints, "
            f"{seconds(metrics.rollback_distance_s_max)}",
        ),
        ("recovery time", seconds(metrics.recovery_s)),
        ("replayed messages", str(metrics.replayed_messages)),
        ("makespan", seconds(metrics.makespan_s)),
    ]
    if metrics.blocking_s is not None:
        rows.append(("blocking time", seconds(metrics.blocking_s)))
    if metrics.bytes_stored is not None:
        rows.append(("bytes stored", str(metrics.bytes_stored)))
    return rows


def spacetime_html(spacetime: SpaceTime, metrics: TraceMetrics) -> str:
    """The whole page as text."""
    esc = html.escape
    notes = "".join(f'<p class="note">{esc(note)}</p>' for note in spacetime.notes)
    rows = "".join(
        f"<tr><th>{esc(name)}</th><td class='num'>{esc(value)}</td></tr>"
        for name, value in _stat_rows(metrics)
    )
    legend = "".join(
        f"<li><span class='swatch' style='background:{COLORS[key]}'></span>"
        f"<b>{esc(label)}</b> — {esc(text)}</li>"
        for key, label, text in _LEGEND
    )
    svg = _inline_svg(spacetime_svg(spacetime))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>snapline run: {esc(spacetime.title)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{esc(spacetime.title)}</h1>{notes}"
        "<input type='radio' name='zoom' id='zoom-1' checked hidden>"
        "<input type='radio' name='zoom' id='zoom-2' hidden>"
        "<input type='radio' name='zoom' id='zoom-4' hidden>"
        "<div class='zoom'>zoom: <label for='zoom-1'>fit</label><label for='zoom-2'>2x</label>"
        "<label for='zoom-4'>4x</label> (scroll to move; hover a mark for details)</div>"
        f"<div class='scroll'><figure>{svg}</figure></div>"
        f"<h2>Legend</h2><ul class='legend'>{legend}</ul>"
        f"<h2>Summary of the whole run</h2><table>{rows}</table>"
        "</body></html>\n"
    )


def write_spacetime_html(spacetime: SpaceTime, metrics: TraceMetrics, path: Path) -> None:
    """Write the page to ``path``."""
    try:
        path.write_text(spacetime_html(spacetime, metrics), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
