"""Space-time layout, metrics and drawing, on a small hand-built trace with known answers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from snapline.analysis.html import spacetime_html, write_spacetime_html
from snapline.analysis.metrics import summarize
from snapline.analysis.spacetime import layout_spacetime, parse_rank_range
from snapline.analysis.spacetime_plot import render_spacetime
from snapline.analysis.trace_view import Trace, view_trace
from snapline.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "{http://www.w3.org/2000/svg}"


class _TraceBuilder:
    """Writes trace events the way a driver would, numbering sends per channel."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.events: list[dict[str, Any]] = []
        self.recoveries: list[dict[str, Any]] = []

    def event(self, t: float, rank: int, kind: str, **fields: Any) -> None:
        self.events.append({"t": t, "rank": rank, "kind": kind, **fields})

    def message(
        self, t_send: float, t_recv: float, src: int, dst: int, seq: int, pb: int = 0
    ) -> None:
        self.event(t_send, src, "send", dst=dst, seq=seq, piggyback_bytes=pb)
        self.event(t_recv, dst, "deliver", src=src, seq=seq)

    def build(self, **extra: Any) -> dict[str, Any]:
        return {
            "format": "snapline-trace",
            "version": 1,
            "n": self.n,
            "protocol": extra.pop("protocol", "uncoordinated"),
            "app": "ring",
            "seed": 11,
            "edges": [[s, d] for s in range(self.n) for d in range(self.n) if s != d],
            "time_unit": "s",
            "events": self.events,
            "recoveries": self.recoveries,
            "stats": extra.pop("stats", {}),
        }


def _scenario(**extra: Any) -> dict[str, Any]:
    """Three ranks; rank 2 crashes; rank 1 rolls back to its initial state (domino of one)."""
    b = _TraceBuilder(3)
    b.message(1.0, 1.4, 0, 1, seq=1)
    b.event(2.0, 0, "checkpoint", index=1, forced=False)
    b.event(2.2, 1, "checkpoint", index=1, forced=False)
    b.event(2.5, 2, "checkpoint", index=1, forced=True)
    b.message(2.6, 3.0, 1, 2, seq=1, pb=8)
    b.event(3.1, 0, "control_send", dst=1, what="request")
    b.event(3.1, 0, "control_send", dst=2, what="request")  # lost: rank 2 crashes first
    b.event(3.3, 1, "control_recv", src=0, what="request")
    b.event(3.2, 1, "checkpoint", index=2, forced=False)
    b.event(3.25, 1, "discard", index=2)
    b.event(3.5, 2, "crash")
    b.recoveries.append(
        {
            "t_detect": 3.8,
            "t_done": 4.4,
            "failed": [2],
            "restore": {"1": 0, "2": 1},
            "replayed": 1,
            "rolled_back_s": {"1": 1.6, "2": 1.0},
        }
    )
    b.event(4.4, 1, "restore", index=0)
    b.event(4.4, 2, "restore", index=1)
    b.event(4.5, 1, "replay", src=0, seq=1)
    b.event(4.5, 1, "deliver", src=0, seq=1)  # drivers report the replayed delivery too
    # Rank 1 redoes its work and re-sends sequence number 1 on 1 -> 2.
    b.message(5.0, 5.4, 1, 2, seq=1, pb=8)
    for rank in range(3):
        b.event(6.0, rank, "finish")
    return b.build(**extra)


@pytest.fixture
def trace() -> Trace:
    return view_trace(_scenario())


def test_metrics_of_the_scenario(trace: Trace) -> None:
    m = summarize(trace)
    assert (m.basic_checkpoints, m.forced_checkpoints, m.discarded_checkpoints) == (3, 1, 1)
    assert (m.app_messages, m.control_messages, m.piggyback_bytes) == (3, 2, 16)
    assert (m.crashes, m.recoveries, m.replayed_messages) == (1, 1, 1)
    assert m.work_lost_s == pytest.approx(2.6)
    assert m.recovery_s == pytest.approx(0.6)
    # Rank 1 went back past its checkpoint 1 (checkpoint 2 was discarded, so it does not count).
    assert m.rollback_checkpoints_max == 1
    assert m.rollback_distance_s_max == pytest.approx(4.4)
    assert m.makespan_s == 6.0
    assert m.blocking_s is None and m.bytes_stored is None


def test_metrics_take_driver_stats_when_present() -> None:
    m = summarize(view_trace(_scenario(stats={"blocking_s": 0.25, "bytes_stored": 4096})))
    assert m.blocking_s == 0.25 and m.bytes_stored == 4096


def test_layout_pairs_messages_by_latest_send(trace: Trace) -> None:
    st = layout_spacetime(trace)
    pairs = {(m.src, m.dst, m.t_send, m.t_recv, m.replayed, m.control) for m in st.messages}
    assert pairs == {
        (0, 1, 1.0, 1.4, False, False),
        (1, 2, 2.6, 3.0, False, False),
        (0, 1, 3.1, 3.3, False, True),
        (0, 1, 1.0, 4.5, True, False),
        (1, 2, 5.0, 5.4, False, False),
    }
    assert st.notes == ()


def test_layout_checkpoints_spans_and_recovery_line(trace: Trace) -> None:
    st = layout_spacetime(trace)
    assert (st.basic_checkpoints, st.forced_checkpoints) == (3, 1)
    assert [(c.rank, c.index) for c in st.checkpoints if c.discarded] == [(1, 2)]
    assert [(c.rank, c.t) for c in st.crashes] == [(2, 3.5)]
    # A survivor loses its work up to the failure's detection (t_detect) and then waits for the
    # recovery to end (t_done); a failed rank loses its work up to its crash, then is down.
    assert {(s.rank, s.t_from, s.t_to) for s in st.rolled_back} == {(1, 0.0, 3.8), (2, 2.5, 3.5)}
    assert [(s.rank, s.t_from, s.t_to) for s in st.waiting] == [(1, 3.8, 4.4)]
    assert [(s.rank, s.t_from, s.t_to) for s in st.down] == [(2, 3.5, 4.4)]
    (line,) = st.recovery_lines
    assert line.points == ((0, 4.4, False), (1, 0.0, True), (2, 2.5, True))


def test_restored_checkpoint_may_be_taken_after_detection() -> None:
    # Survivors keep checkpointing between detection and recovery; the recovery line can use
    # such a checkpoint, and an older one with the same index must not be picked instead.
    b = _TraceBuilder(2)
    b.event(1.0, 0, "checkpoint", index=1, forced=False)
    b.event(2.0, 1, "crash")
    b.event(3.5, 0, "checkpoint", index=2, forced=False)
    b.recoveries.append(
        {
            "t_detect": 3.0,
            "t_done": 4.0,
            "failed": [1],
            "restore": {"0": 2, "1": 0},
            "replayed": 0,
            "rolled_back_s": {"0": 0.5, "1": 2.0},
        }
    )
    trace = view_trace(b.build())
    (line,) = layout_spacetime(trace).recovery_lines
    assert line.points == ((0, 3.5, True), (1, 0.0, True))
    m = summarize(trace)
    assert m.rollback_checkpoints_max == 0 and m.rollback_distance_s_max == 2.0


def test_control_messages_to_a_down_rank_are_not_paired_later() -> None:
    b = _TraceBuilder(2)
    b.event(1.0, 1, "crash")
    b.event(1.5, 0, "control_send", dst=1, what="lost")  # rank 1 is down: lost
    b.event(2.0, 1, "restore", index=0)
    b.event(3.0, 0, "control_send", dst=1, what="kept")
    b.event(3.2, 1, "control_recv", src=0, what="kept")
    (arrow,) = layout_spacetime(view_trace(b.build())).messages
    assert (arrow.t_send, arrow.t_recv, arrow.control) == (3.0, 3.2, True)


def test_rank_subset_and_window_are_stated(trace: Trace) -> None:
    st = layout_spacetime(trace, ranks=(0, 1))
    assert all(m.src in (0, 1) and m.dst in (0, 1) for m in st.messages)
    assert any("2 of 3 ranks" in note for note in st.notes)
    assert any("hidden ranks" in note for note in st.notes)
    # Sampled ranks always include the crashed one (rank 2), then the lowest others.
    capped = layout_spacetime(trace, max_ranks=2)
    assert capped.ranks == (0, 2) and any("of 3" in note for note in capped.notes)
    assert any("every crashed rank (2)" in note for note in capped.notes)
    windowed = layout_spacetime(trace, t_from=2.1, t_to=4.0)
    assert {c.index for c in windowed.checkpoints} == {1, 2}
    assert all(c.t >= 2.1 for c in windowed.checkpoints)
    assert any("window" in note for note in windowed.notes)
    # Arrows by send time: 1.0 (delivered), 1.0 (replayed later), 2.6, 3.1, 5.0.
    few = layout_spacetime(trace, max_messages=3)
    assert few.t_to == 2.6 and any("first 3 messages" in note for note in few.notes)


def test_control_messages_can_be_hidden(trace: Trace) -> None:
    st = layout_spacetime(trace, show_control=False)
    assert len(st.messages) == 4 and not any(m.control for m in st.messages)
    assert "control messages hidden" in st.notes


def test_layout_rejects_bad_windows_and_ranks(trace: Trace) -> None:
    with pytest.raises(ConfigError, match="empty time window"):
        layout_spacetime(trace, t_from=5.0, t_to=2.0)
    with pytest.raises(ConfigError, match="outside"):
        layout_spacetime(trace, ranks=(0, 7))


@pytest.mark.parametrize(
    ("spec", "expected"), [("0-1", (0, 1)), ("2", (2,)), ("0, 2", (0, 2)), ("0-2,1", (0, 1, 2))]
)
def test_parse_rank_range(spec: str, expected: tuple[int, ...]) -> None:
    assert parse_rank_range(spec, 3) == expected


@pytest.mark.parametrize("spec", ["a-b", "2-1", "0-3", "-1", ""])
def test_parse_rank_range_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_rank_range(spec, 3)


def _drawn_shapes(element: ET.Element) -> int:
    # matplotlib draws a marker either as <use> of a shape in <defs> or, for few points, as
    # its own <path>; count both, never the <defs> templates.
    if element.tag == f"{SVG_NS}defs":
        return 0
    own = 1 if element.tag in (f"{SVG_NS}use", f"{SVG_NS}path") else 0
    return own + sum(_drawn_shapes(child) for child in element)


def _count_uses(root: ET.Element, gid: str) -> int:
    groups = [g for g in root.iter(f"{SVG_NS}g") if g.get("id") == gid]
    assert len(groups) == 1, f"expected one group {gid!r}, found {len(groups)}"
    return _drawn_shapes(groups[0])


def test_svg_is_xml_with_one_marker_per_mark(trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "run.svg"
    render_spacetime(layout_spacetime(trace), path)
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    assert _count_uses(root, "checkpoints-basic") == 2
    assert _count_uses(root, "checkpoints-forced") == 1
    assert _count_uses(root, "checkpoints-discarded") == 1
    assert _count_uses(root, "crashes") == 1
    assert _count_uses(root, "finishes") == 3
    ids = [g.get("id") for g in root.iter(f"{SVG_NS}g")]
    assert sum(1 for i in ids if i and i.startswith("replayed-")) == 1
    assert "recovery-line-1" in ids and "rolled-back" in ids and "down" in ids
    # Same trace, same file: no timestamps in the output.
    again = tmp_path / "again.svg"
    render_spacetime(layout_spacetime(trace), again)
    assert again.read_bytes() == path.read_bytes()


def test_png_has_png_signature(trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    render_spacetime(layout_spacetime(trace), path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000


def test_unknown_extension_is_a_config_error(trace: Trace, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.png or \.svg"):
        render_spacetime(layout_spacetime(trace), tmp_path / "run.jpg")


def test_html_is_self_contained(trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "run.html"
    write_spacetime_html(layout_spacetime(trace), summarize(trace), path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1 and "<?xml" not in page
    for external in ("<script", "<link", "src=", 'href="http', "url(http", "@import"):
        assert external not in page, external
    assert "work lost to rollback" in page and "forced checkpoint" in page
    # The embedded SVG is well-formed XML.
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    assert ET.fromstring(svg).tag == f"{SVG_NS}svg"


def test_html_escapes_trace_text() -> None:
    hostile = view_trace(_scenario(protocol="<script>alert(1)</script>"))
    page = spacetime_html(layout_spacetime(hostile), summarize(hostile))
    assert "<script>" not in page and "&lt;script&gt;" in page


def _late_start_trace() -> Trace:
    """A local run: 2 s of start-up before the first event; rank 1 crashes, rank 0 survives."""
    b = _TraceBuilder(2)
    b.message(2.0, 2.1, 0, 1, seq=1)
    b.event(2.5, 0, "checkpoint", index=1, forced=False)
    b.event(2.5, 1, "checkpoint", index=1, forced=True)
    b.message(2.6, 2.7, 0, 1, seq=2)
    b.event(3.0, 1, "crash")
    b.recoveries.append(
        {"t_detect": 3.2, "t_done": 4.0, "failed": [1], "restore": {"0": 1, "1": 1}}
    )
    b.event(4.0, 0, "restore", index=1)
    b.event(4.0, 1, "restore", index=1)
    b.message(4.2, 4.3, 0, 1, seq=2)
    return view_trace(b.build(stats={"end_t": 5.0}))


def test_start_up_gap_is_trimmed_and_stated() -> None:
    st = layout_spacetime(_late_start_trace())
    assert 1.9 <= st.t_from < 2.0
    assert any("processes starting" in note for note in st.notes)
    # An explicit window is the user's: nothing is trimmed.
    assert layout_spacetime(_late_start_trace(), t_from=0.0, t_to=5.0).t_from == 0.0


def test_rolled_back_work_and_waiting_are_separate_spans() -> None:
    st = layout_spacetime(_late_start_trace())
    assert [(s.rank, s.t_from, s.t_to) for s in st.rolled_back] == [(0, 2.5, 3.2), (1, 2.5, 3.0)]
    assert [(s.rank, s.t_from, s.t_to) for s in st.waiting] == [(0, 3.2, 4.0)]
    assert [(s.rank, s.t_from, s.t_to) for s in st.down] == [(1, 3.0, 4.0)]


def test_a_survivor_that_crashed_earlier_is_not_down_again() -> None:
    b = _TraceBuilder(2)
    b.event(1.0, 1, "crash")
    b.recoveries.append({"t_detect": 1.2, "t_done": 2.0, "failed": [1], "restore": {"1": 0}})
    b.event(3.0, 0, "crash")
    b.recoveries.append(
        {"t_detect": 3.2, "t_done": 4.0, "failed": [0], "restore": {"0": 0, "1": 0}}
    )
    st = layout_spacetime(view_trace(b.build()))
    assert [(s.rank, s.t_from, s.t_to) for s in st.down] == [(1, 1.0, 2.0), (0, 3.0, 4.0)]
    assert (1, 2.0, 4.0) not in {(s.rank, s.t_from, s.t_to) for s in st.down}


def test_sampled_ranks_always_include_crashed_ones() -> None:
    b = _TraceBuilder(40)
    b.message(0.5, 0.6, 0, 1, seq=1)
    b.event(1.0, 33, "crash")
    b.recoveries.append({"t_detect": 1.2, "t_done": 2.0, "failed": [33], "restore": {"33": 0}})
    st = layout_spacetime(view_trace(b.build()), max_ranks=16)
    assert len(st.ranks) == 16 and 33 in st.ranks and st.ranks[:15] == tuple(range(15))
    assert any("every crashed rank (33) and ranks 0-14" in note for note in st.notes)


def test_legend_sits_below_the_axis_label(trace: Trace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from snapline.analysis.spacetime_plot import build_figure

    for ranks in ((0,), (0, 1, 2)):
        fig = build_figure(layout_spacetime(trace, ranks=ranks))
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        (legend,) = fig.legends
        label = fig.axes[0].xaxis.label.get_window_extent(renderer)
        box = legend.get_window_extent(renderer)
        assert box.y1 <= label.y0, (ranks, box, label)  # pixels grow upwards


def test_makespan_is_the_end_of_the_run_not_the_first_finish() -> None:
    # Every rank calls ctx.finish() in on_start and goes on handling messages until 5 s.
    b = _TraceBuilder(2)
    for rank in range(2):
        b.event(0.1, rank, "finish")
    b.message(1.0, 4.5, 0, 1, seq=1)
    assert summarize(view_trace(b.build())).makespan_s == 4.5
    # A driver that reports when the job ended (termination detected) is believed.
    assert summarize(view_trace(b.build(stats={"end_t": 5.0}))).makespan_s == 5.0


def test_html_zooms_scrolls_and_has_a_tooltip_per_mark(trace: Trace) -> None:
    st = layout_spacetime(trace)
    page = spacetime_html(st, summarize(trace))
    assert "<script" not in page
    assert "id='zoom-2'" in page and "id='zoom-4'" in page and "class='scroll'" in page
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)
    tips = [t.text or "" for t in root.iter(f"{SVG_NS}title")]
    assert "rank 2 crashed at 3.500 s" in tips
    assert "rank 1: discarded checkpoint 2 at 3.200 s" in tips
    assert sum(t.startswith("rank 0: basic checkpoint") for t in tips) == 1
    assert any(t.startswith("replayed message 0 -> 1") for t in tips)
    assert any(t.startswith("rank 1: waiting for recovery for 600 ms") for t in tips)
    # One tooltip per drawn checkpoint marker, on the marker itself.
    group = next(g for g in root.iter(f"{SVG_NS}g") if g.get("id") == "checkpoints-forced")
    uses = [e for e in group.iter() if e.tag == f"{SVG_NS}use"]
    assert len(uses) == 1 and uses[0].find(f"{SVG_NS}title") is not None


def test_rolling_back_to_the_initial_state_loses_work_since_the_job_ran() -> None:
    # A local job: its clock starts before the processes are spawned (start_t = 2 s).
    b = _TraceBuilder(2)
    b.message(2.1, 2.2, 0, 1, seq=1)
    b.event(2.5, 1, "crash")
    b.recoveries.append(
        {"t_detect": 2.6, "t_done": 3.0, "failed": [1], "restore": {"0": 0, "1": 0}}
    )
    trace = view_trace(b.build(stats={"start_t": 2.0, "end_t": 3.5}))
    st = layout_spacetime(trace)
    assert [(s.rank, s.t_from, s.t_to) for s in st.rolled_back] == [(0, 2.0, 2.6), (1, 2.0, 2.5)]
    (line,) = st.recovery_lines
    assert line.points == ((0, 2.0, True), (1, 2.0, True))
    assert st.t_from > 1.9 and any("processes starting" in note for note in st.notes)
    assert summarize(trace).rollback_distance_s_max == pytest.approx(1.0)  # 2.0 -> 3.0
