"""`snapline compare` and `snapline viz` through the real command line, on a tiny simulated job."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _snapline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=110,
    )


def test_compare_runs_every_chosen_protocol_on_the_same_crashes(tmp_path: Path) -> None:
    out = _snapline(
        "compare",
        "--app", "bank", "-n", "3", "--interval", "4", "--seed", "5",
        "--protocols", "two-phase,uncoordinated",
        "--crash-at", "1@6", "--mtbf-s", "100", "--checkpoint-cost-s", "0.5",
        "--chart", "chart.svg", "--json", "report.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "none (baseline)" in out.stdout
    assert "crash schedule (same for every protocol): 1@6" in out.stdout
    assert "Young" in out.stdout and "Daly" in out.stdout and "this run's interval" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {row["protocol"]: row for row in report["protocols"]}
    assert list(rows) == ["none", "two-phase", "uncoordinated"]
    assert report["crash_schedule"] == [[1, 6.0]]
    for name, row in rows.items():
        # A failed row is allowed (protocols are young) but must carry its reason.
        if not row["ok"]:
            assert row["failure"], name
            assert name in out.stdout and "failed" in out.stdout
            continue
        assert row["metrics"]["crashes"] == 1, name
        assert row["metrics"]["recoveries"] == 1, name
    assert rows["none"]["ok"]
    assert rows["none"]["metrics"]["basic_checkpoints"] == 0
    assert report["interval"]["young_s"] == pytest.approx(10.0)  # sqrt(2 * 0.5 * 100)
    assert ET.parse(tmp_path / "chart.svg").getroot().tag.endswith("svg")


def test_compare_rejects_unknown_protocol(tmp_path: Path) -> None:
    out = _snapline("compare", "-n", "2", "--protocols", "no-such-protocol", cwd=tmp_path)
    assert out.returncode == 1
    assert "unknown protocol 'no-such-protocol'" in out.stderr
    assert "Traceback" not in out.stderr


def test_viz_draws_a_simulated_run(tmp_path: Path) -> None:
    sim = _snapline(
        "sim", "--app", "bank", "-n", "3", "--protocol", "two-phase", "--seed", "5",
        "--interval", "4", "--crash-at", "1@6", "--trace", "run.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    trace = json.loads((tmp_path / "run.json").read_text())
    checkpoints = sum(1 for e in trace["events"] if e["kind"] == "checkpoint")
    assert checkpoints > 0 and trace["recoveries"]

    out = _snapline("viz", "run.json", "-o", "run.png", "--html", "run.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "run.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<script" not in page
    assert "recovery line" in page

    svg = _snapline("viz", "run.json", "--ranks", "0-1", "--from", "2", "--to", "9", cwd=tmp_path)
    assert svg.returncode == 0, svg.stderr
    assert "showing 2 of 3 ranks" in svg.stdout
    ET.parse(tmp_path / "run.svg")


def test_viz_bad_trace_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    out = _snapline("viz", "bad.json", cwd=tmp_path)
    assert out.returncode == 1
    assert "not a snapline trace" in out.stderr and "Traceback" not in out.stderr
