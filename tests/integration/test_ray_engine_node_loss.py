"""The Ray engine survives the loss of a whole Ray node (its raylet and workers killed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray_support import require_ray

PROGRAM = Path(__file__).resolve().parent / "ray_programs" / "node_loss.py"


@pytest.mark.timeout(300)
def test_a_node_lost_mid_run_is_recovered_with_the_correct_result(tmp_path: Path) -> None:
    require_ray()
    # Its own process: a cluster of three raylets cannot share this session's Ray.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLINE_")}
    done = subprocess.run(
        [sys.executable, str(PROGRAM), str(tmp_path / "job")],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1])
    assert "error" not in report, report
    # The lost node ran one rank: it failed once and was restarted on another node.
    assert len(report["failures"]) == 1, report
    assert report["recoveries"] == 1, report
    assert report["problems"] == [], report
    assert sum(report["results"].values()) == 3 * 1000, report  # bank: money conserved
