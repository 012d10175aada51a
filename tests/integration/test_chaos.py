"""``snapline chaos`` against real jobs: a short campaign over every protocol, and a run that
must fail because the app forgets part of its state.

The short campaign is the CI campaign: one run per protocol, each with one kill -9 of a
random rank at a random point of the job's progress, through the command line a user types.
The slow campaign draws every default fault (recovery kills, hangs, pauses, whole-job kill and
resume) over every protocol and example app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from snapline.apps import APPS
from snapline.protocols import protocol_names
from snapline.runtime.local.chaos import (
    DEFAULT_FAULTS,
    CampaignConfig,
    FaultKind,
    draw_schedule,
    run_campaign,
)
from snapline.runtime.local.chaos.inject import process_state
from snapline.runtime.process import Context, Process

pytestmark = pytest.mark.timeout(300)


def chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapline", "chaos", *args],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )


def test_short_kill_campaign_over_every_protocol(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = chaos(
        "bank", "--protocol", "all", "-n", "2", "--faults", "kill", "--max-faults", "1",
        "-p", "messages=100", "--seed", "7", "--out", str(out),
        # kill -9 is seen at once (pidfd); a long heartbeat timeout keeps a loaded machine
        # from adding hang detections nobody injected.
        "--heartbeat-timeout", "10s",
    )  # fmt: skip
    summary = json.loads((out / "chaos-summary.json").read_text())
    runs = summary["runs"]
    assert [r["protocol"] for r in runs] == protocol_names()
    assert [r["seed"] for r in runs] == list(range(7, 7 + len(runs)))
    for run in runs:
        where = f"{run['protocol']}: {run['problems']} replay: {run['replay']}"
        assert run["verdict"] == "pass", where
        assert run["failures_reported"] == run["failures_injected"], where
        # The one kill landed: before every result was in (a failure) or after (not one).
        assert run["failures_injected"] + run["late_kills"] == 1, where
        assert run["store"] is None  # passing runs leave nothing behind
    assert sum(r["failures_injected"] for r in runs) >= 1
    assert done.returncode == 0, done.stdout + done.stderr
    assert "snapline chaos" in done.stdout and f"{len(runs)} passed, 0 failed" in done.stdout
    assert [p.name for p in out.iterdir()] == ["chaos-summary.json"]


class Amnesiac(Process):
    """Rank 0 sends 1..count to rank 1, which outputs and counts what it gets.

    Rank 1's checkpoint forgets its count: a rollback loses deliveries from the result, a
    bug the campaign must report (and its replay command must reproduce).
    """

    def __init__(self, rank: int, n: int, count: int = 150) -> None:
        self.rank, self.count = rank, count
        self.next = 1
        self.seen = 0

    def state(self) -> object:
        return {"next": self.next}

    def restore(self, state: Any) -> None:
        self.next = int(state["next"])

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            ctx.set_timer("tick", 0.01)
        ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        ctx.send(1, self.next)
        self.next += 1
        if self.next <= self.count:
            ctx.set_timer("tick", 0.01)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.seen += 1
        ctx.output(("got", payload))

    def result(self) -> object:
        return self.seen if self.rank == 1 else self.next


def test_a_run_that_loses_state_fails_with_a_replay_command(tmp_path: Path) -> None:
    kinds = (FaultKind.KILL,)
    # A seed whose schedule kills rank 1 early, so its rollback loses many deliveries.
    seed = next(
        s
        for s in range(1000)
        if draw_schedule(s, n=2, kinds=kinds, max_faults=1)[0].rank == 1
        and draw_schedule(s, n=2, kinds=kinds, max_faults=1)[0].at < 0.5
    )
    app = f"{Path(__file__).resolve()}:Amnesiac"
    config = CampaignConfig(
        apps=(app,),
        protocols=("chandy-lamport",),
        out_dir=tmp_path / "out",
        n=2,
        runs=1,
        seed=seed,
        faults=kinds,
        max_faults=1,
    )
    [record] = run_campaign(config)
    assert record.verdict == "fail", record
    assert record.failures_injected == record.failures_reported == 1
    assert len(record.problems) == 1, record.problems
    assert "rank 1 ended with" in record.problems[0]
    assert "the failure-free run gives 150" in record.problems[0]
    assert record.replay.startswith(f"snapline chaos {app} --protocol chandy-lamport --seed {seed}")
    assert "--runs 1" in record.replay
    assert record.store is not None and Path(record.store, "summary.json").exists()


@pytest.mark.slow
def test_long_campaign_every_fault_protocol_and_app(tmp_path: Path) -> None:
    config = CampaignConfig(
        apps=tuple(sorted(APPS)),
        protocols=tuple(protocol_names()),
        out_dir=tmp_path / "out",
        runs=len(APPS) * len(protocol_names()),
        seed=2000,
        faults=DEFAULT_FAULTS,
    )
    records = run_campaign(config)
    failed = [f"{r.reason}\n  replay: {r.replay}" for r in records if r.verdict == "fail"]
    assert failed == [], "\n".join(failed)
    assert len(records) == config.runs


def test_sigterm_stops_a_campaign_without_leaving_processes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapline", "chaos", "bank", "--protocol", "none", "-n", "2",
         "--runs", "5", "--faults", "pause", "-p", "messages=3000", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    try:
        status = out / "run-0000-none-bank" / "store" / "status.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if status.exists() and json.loads(status.read_text())["state"] == "running":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the first run never got going")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "0 run(s)" in output
    log = out / "run-0000-none-bank" / "store" / "logs" / "supervisor.jsonl"
    spawned = [json.loads(x) for x in log.read_text().splitlines() if '"spawned"' in x]
    supervisor = json.loads(status.read_text())["supervisor_pid"]
    pids = [supervisor] + [int(e["pid"]) for e in spawned]
    # Every process of the run has exited (a zombie is dead; init reaps it).
    states = {pid: process_state(pid) for pid in pids}
    assert spawned and set(states.values()) <= {None, "Z"}, states
    assert json.loads((out / "chaos-summary.json").read_text())["runs"] == []
