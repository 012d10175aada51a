"""``snapline ps``: where each rank runs, when an engine places ranks on several hosts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from typer.testing import CliRunner

from snapline.cli.main import app
from snapline.runtime.local.status import JobStatus, RankStatus, is_this_host, write_status

runner = CliRunner()


def _status(nodes: list[str | None]) -> JobStatus:
    return JobStatus(
        job_id="j",
        app="bank",
        protocol="chandy-lamport",
        n=len(nodes),
        supervisor_pid=os.getpid(),
        state="running",
        started_at=0.0,
        ranks=[
            RankStatus(rank=r, pid=os.getpid(), state="running", node=node)
            for r, node in enumerate(nodes)
        ],
    )


def _rows(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in row.split("│")[1:-1]]
        for row in out.splitlines()
        if re.match(r"^│\s+\d+ │", row)
    ]


def test_ps_shows_each_ranks_node_and_cannot_tell_a_pid_on_another_host(tmp_path: Path) -> None:
    # 127.0.0.2 is this machine (all of 127/8 is); 192.0.2.77 (TEST-NET-1) is no one's.
    write_status(tmp_path, _status(["127.0.0.2", "192.0.2.77"]))
    done = runner.invoke(app, ["ps", str(tmp_path)], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert "node" in done.output
    here, there = _rows(done.output)
    assert here[:2] == ["0", "127.0.0.2"] and here[4] == "yes", here
    assert there[:2] == ["1", "192.0.2.77"] and there[4] == "?", there


def test_ps_of_a_one_host_job_has_no_node_column(tmp_path: Path) -> None:
    write_status(tmp_path, _status([None, None]))
    done = runner.invoke(app, ["ps", str(tmp_path)], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert "node" not in done.output
    assert [row[3] for row in _rows(done.output)] == ["yes", "yes"]


def test_this_host_is_told_by_binding() -> None:
    assert is_this_host("127.0.0.1") and is_this_host("127.0.0.3")
    assert not is_this_host("192.0.2.77")
