"""What a user reads after ``snapline run``: one definition per figure, in the table, the summary
line, ``summary.json``, ``ps``, ``ls JOBDIR`` and the trace -- also when the run fails.

Real processes and a real ``kill -9`` through the command line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

COUNTER = '''
import os
import time

import snapline


class Counter(snapline.Process):
    """A counter travels around a ring, HOPS hops, paced so that a kill lands mid-run."""

    HOPS = 100

    def __init__(self) -> None:
        self.total = 0

    def state(self):
        return {"total": self.total}

    def restore(self, state) -> None:
        self.total = state["total"]

    def on_start(self, ctx) -> None:
        if ctx.rank == 0:
            ctx.send(ctx.outbound[0], 1)
        ctx.finish()  # no work of its own: it still handles messages to the end

    def on_message(self, ctx, src, payload) -> None:
        time.sleep(0.02)
        self.total += payload
        if payload < self.HOPS:
            ctx.send(ctx.outbound[0], payload + 1)


class CrashingCounter(Counter):
    """Rank 1 dies at the same hop in every incarnation: the job hits its restart limit."""

    def on_message(self, ctx, src, payload) -> None:
        if ctx.rank == 1 and payload >= 10:
            os._exit(3)
        super().on_message(ctx, src, payload)
'''


def _snapline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=170,
        env={**__import__("os").environ, "COLUMNS": "120"},
    )


def _table_column(output: str, column: int) -> list[int]:
    """The integer cells of one column of the run table (rows start with a rank number)."""
    rows = [line.split("│") for line in output.splitlines() if re.match(r"^│\s+\d+ │", line)]
    return [int(cells[column + 1]) for cells in rows]


def test_figures_agree_across_table_summary_ps_ls_and_trace(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER)
    run = _snapline(
        "run", "counter.py:Counter", "-n", "3", "--topology", "ring", "--interval", "200ms",
        "--store", "job", "--kill", "1@700ms",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    delivered = _table_column(run.stdout, 2)
    checkpoints = _table_column(run.stdout, 3)
    restarts = _table_column(run.stdout, 4)
    # 100 hops: 100 messages in the ranks' final states, whatever was redone after the rollback.
    assert sum(delivered) == 100 and len(delivered) == 3
    assert restarts == [0, 1, 0]
    line = " ".join(run.stdout.split())
    assert "100 messages delivered" in line
    assert f"{sum(checkpoints)} checkpoints committed" in line
    assert "1 recovery, 1 restart" in line

    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["messages_delivered"] == 100
    assert summary["checkpoints_committed"] == sum(checkpoints) > 0
    assert summary["restarts"] == 1
    per_rank = summary["stats"]
    assert [per_rank[str(r)]["messages_delivered"] for r in range(3)] == delivered
    assert [per_rank[str(r)]["checkpoints_committed"] for r in range(3)] == checkpoints
    assert [per_rank[str(r)]["restarts"] for r in range(3)] == restarts

    ps = _snapline("ps", "job", cwd=tmp_path)
    assert ps.returncode == 0, ps.stderr
    assert "1 recoveries, 1 restarts" in " ".join(ps.stdout.split())
    # Checkpoints are named as people read them, never by the internal id.
    ps_rows = [r.split("│") for r in ps.stdout.splitlines() if re.match(r"^│\s+\d+ │", r)]
    last_ckpt = [cells[7].strip() for cells in ps_rows]
    assert len(last_ckpt) == 3 and all(
        re.fullmatch(r"\d{1,6} \(inc 1\)", cell) for cell in last_ckpt
    ), last_ckpt

    ls = _snapline("ls", "job", cwd=tmp_path)
    assert ls.returncode == 0, ls.stdout + ls.stderr
    assert "not a snapline store" not in ls.stdout + ls.stderr
    assert "recovery line" in ls.stdout
    rows = [r for r in ls.stdout.splitlines() if re.match(r"^│\s+\d+ │", r)]
    assert [int(r.split("│")[2]) for r in rows] == checkpoints
    every = _snapline("ls", "job", "--all", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert every.stdout.count("<- restored by a resume") == 3
    assert every.stdout.count("(inc 1)") >= 3

    trace = json.loads((tmp_path / "job" / "trace.json").read_text())
    last_event = max(e["t"] for e in trace["events"])
    first_finish = min(e["t"] for e in trace["events"] if e["kind"] == "finish")
    assert trace["stats"]["outcome"] == "finished"
    assert trace["stats"]["end_t"] >= last_event > first_finish
    # The initial state dates from when the ranks ran, not from before they were spawned.
    first_event = min(e["t"] for e in trace["events"])
    assert 0 < trace["stats"]["start_t"] <= first_event
    viz = _snapline("viz", "job/trace.json", "--html", "run.html", cwd=tmp_path)
    assert viz.returncode == 0, viz.stderr
    page = (tmp_path / "run.html").read_text()
    makespan = re.search(r"<th>makespan</th><td class='num'>([0-9.]+) s</td>", page)
    assert makespan is not None and float(makespan.group(1)) == pytest.approx(
        trace["stats"]["end_t"], rel=0.01
    )


def test_a_failed_run_leaves_a_trace_to_draw(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER)
    run = _snapline(
        "run", "counter.py:CrashingCounter", "-n", "3", "--topology", "ring",
        "--store", "job", "--max-restarts", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    trace_path = tmp_path / "job" / "trace.json"
    assert trace_path.is_file()
    assert "trace of the failed run" in run.stdout
    trace = json.loads(trace_path.read_text())
    assert trace["stats"]["outcome"].startswith("failed")
    assert sum(1 for e in trace["events"] if e["kind"] == "crash") >= 2
    viz = _snapline("viz", "job/trace.json", "-o", "failed.png", cwd=tmp_path)
    assert viz.returncode == 0, viz.stderr
    assert (tmp_path / "failed.png").read_bytes()[:4] == b"\x89PNG"
