"""The run table and the summary line under it: the line adds up the table's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from snapline.cli.run_cmds import summary_line, summary_table
from snapline.runtime.local import RunResult


def _result(*, restarts: list[int], whole_job: bool) -> RunResult:
    stats: dict[int, dict[str, Any]] = {
        rank: {
            "messages_delivered": 30 + rank,
            "checkpoints_committed": 4,
            "restarts": restarts[rank],
            # What this incarnation delivered since its restore: not what the table shows.
            "deliveries_since_restore": 7,
        }
        for rank in range(3)
    }
    return RunResult(
        results={r: {"total": r} for r in range(3)},
        outputs={},
        stats=stats,
        recoveries=[{"t_detect": 1.0, "t_done": 1.5, "whole_job": whole_job, "restore": {}}],
        restarts=sum(restarts),
        elapsed_s=2.0,
        store=Path("job"),
        trace_path=None,
        protocol="chandy-lamport",
        n=3,
        messages_delivered=93,
        checkpoints_committed=12,
    )


def _render(result: RunResult, width: int = 120) -> str:
    console = Console(width=width, record=True)
    console.print(summary_table(result))
    console.print(summary_line(result))
    return console.export_text()


def test_line_adds_up_the_columns() -> None:
    text = _render(_result(restarts=[0, 1, 0], whole_job=False))
    assert "93 messages delivered, 12 checkpoints committed, 1 recovery, 1 restart" in text
    assert " 7 " not in text  # the per-incarnation count is not shown as "delivered"


def test_a_resume_is_not_counted_as_restarts() -> None:
    text = " ".join(_render(_result(restarts=[0, 0, 0], whole_job=True)).split())
    assert "1 recovery (one of them the resume), 0 restarts" in text


def test_a_long_result_wraps_instead_of_being_cut() -> None:
    result = _result(restarts=[0, 0, 0], whole_job=False)
    result.results[1] = {"words": "x" * 150}
    text = _render(result, width=80)
    assert "..." not in text and "…" not in text
    assert text.count("x") >= 150
