"""``snapline sim``: runs, summarises, writes JSON and traces; the replay command replays."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from typer.testing import CliRunner

from snapline.cli.main import app
from snapline.runtime.sim import SimConfig, run_simulation
from snapline.runtime.trace import load_trace

runner = CliRunner()


def test_sim_prints_a_summary_and_writes_json_and_trace(tmp_path: Path) -> None:
    out, trace = tmp_path / "out.json", tmp_path / "trace.json"
    result = runner.invoke(
        app,
        [
            "sim", "--app", "token-ring", "-n", "5", "--protocol", "two-phase",
            "--interval", "3", "--messages", "6", "--crash-at", "2@4",
            "--seed", "3", "--json", str(out), "--trace", str(trace),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for label in ("checkpoints basic / forced", "control messages", "crashes / recoveries"):
        assert label in result.output
    assert "check: consistent recovery" in result.output
    data = json.loads(out.read_text())
    assert data["stats"]["crashes"] == 1 and data["results"][0] == 6
    assert all(c["passed"] for c in data["checks"])
    assert load_trace(trace).protocol == "two-phase"


def test_the_replay_command_reproduces_the_run_exactly(tmp_path: Path) -> None:
    config = SimConfig(
        app="wordcount",
        n=4,
        protocol="fdas",
        seed=9,
        interval_s=2.5,
        app_params={"messages": 10},
        crash_rate=0.02,
        crash_at=((1, 3.0),),
        loss_rate=0.1,
        slow_disks={2: "exp:1"},
        trace=True,
        reference=False,
    )
    expected = run_simulation(config).trace
    assert expected is not None
    args = [*shlex.split(config.command())[1:], "--trace", str(tmp_path / "t.json")]
    assert args[0] == "sim"
    result = runner.invoke(app, [*args, "--no-reference"])
    assert result.exit_code == 0, result.output
    assert load_trace(tmp_path / "t.json").to_json() == json.loads(expected.dumps())


def test_bad_options_are_clear_errors() -> None:
    for argv, needle in (
        (["sim", "--app", "nope"], "unknown app"),
        (["sim", "--crash-at", "x"], "RANK@TIME"),
        (["sim", "--param", "bogus=1"], "no parameter 'bogus'"),
        (["sim", "--protocol", "zzz"], "unknown protocol"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code != 0
        assert needle in str(result.exception) or needle in result.output
