"""``snapline run --levels ... --node-of ...``: a node's local directory is deleted and its
rank killed with kill -9 from outside; the job must end with the failure-free result, the
rank restored from another level.

The CLI runs as its own process (the real entry point); the test reads the job's status
file for the victim's pid, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapline.errors import ConfigError
from snapline.runtime.local import read_status, run
from snapline.runtime.local.config import JobConfig, save_job
from snapline.runtime.local.job import summary_json
from snapline.runtime.local.ledger import ledger_path, read_ledger
from snapline.runtime.sim import SimConfig, reference_results
from snapline.store import open_store

pytestmark = pytest.mark.timeout(150)

PARAMS = {"messages": 60, "step_s": 0.01}


def _wait_delivered(store: Path, job: subprocess.Popen[str], delivered: int) -> dict[int, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()[0]
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.05)
            continue
        running = status.state == "running" and all(r.state == "running" for r in status.ranks)
        if running and status.messages_delivered >= delivered:
            return {r.rank: int(r.pid) for r in status.ranks if r.pid is not None}
        time.sleep(0.02)
    raise AssertionError("the job made no progress")


@pytest.mark.parametrize(
    "engine",
    [
        "local",
        "mpi",
        pytest.param("ray", marks=pytest.mark.slow),
    ],
)
def test_a_lost_node_and_its_killed_rank_recover_from_the_partner_level(
    tmp_path: Path, engine: str
) -> None:
    store = tmp_path / "job"
    scratch = tmp_path / "scratch"
    command = [
        sys.executable, "-m", "snapline", "run", "bank", "-n", "3",
        "--store", str(store), "--interval", "0.2s", "--timeout", "90s",
        "-p", f"messages={PARAMS['messages']}", "-p", f"step_s={PARAMS['step_s']}",
        "--levels", f"local:{scratch},partner,xor:3,remote:{tmp_path / 'shared'}",
        "--flush-every", "1", "--node-of", "a,b,c", "--engine", engine,
    ]  # fmt: skip
    job = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        pids = _wait_delivered(store, job, 40)
        # Wait for a checkpoint of rank 1 that its partner holds, then lose node b.
        deadline = time.monotonic() + 30
        while not any(
            "partner" in levels for levels in read_ledger(ledger_path(store, 1), 1).levels.values()
        ):
            assert time.monotonic() < deadline, "rank 1 never had a partner copy"
            time.sleep(0.05)
        # All at once, as a node is lost (rank 0 may be writing its partner copy there).
        (scratch / "b").rename(tmp_path / "lost-b")
        shutil.rmtree(tmp_path / "lost-b")
        os.kill(pids[1], signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, output
    summary = json.loads((store / "summary.json").read_text())
    failed = [(f["rank"], f["pid"]) for f in summary["failures"]]
    if engine == "mpi":  # one rank's failure ends the mpiexec: every rank is relaunched
        assert sorted(failed) == sorted(pids.items()), failed
    else:
        assert failed == [(1, pids[1])], failed
    expected = reference_results(
        SimConfig(app="bank", n=3, app_params=PARAMS, topology="complete", interval_s=None)
    )
    assert summary["results"] == summary_json({str(r): v for r, v in enumerate(expected)})
    # Rank 1's restore was served by a slower level (its node's directory was gone).
    served = [
        json.loads(line)
        for line in (store / "logs" / "rank-1.jsonl").read_text().splitlines()
        if '"checkpoint_served"' in line
    ]
    assert served and served[0]["level"] in ("partner", "xor"), served
    # The ledger says which levels hold each checkpoint (rank 0's partner copies went to node
    # b: those written while it was gone are not listed there).
    held = list(read_ledger(ledger_path(store, 0), 0).levels.values())
    assert held and all(levels[0] == "local" for levels in held)
    assert any(levels[:3] == ["local", "partner", "xor"] for levels in held)
    # Checkpoints went to the remote level in the background, and are intact there.
    for rank in range(3):
        with open_store(tmp_path / "shared" / f"rank-{rank}", create=False) as remote:
            assert remote.steps() and remote.verify().ok
    # snapline ls says where the recovery line's checkpoints are, and where a rank's store is.
    listed = subprocess.run(
        [sys.executable, "-m", "snapline", "ls", str(store)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "held on" in listed.stdout and "local, partner" in listed.stdout, listed.stdout
    assert str(scratch / "a" / "rank-0") in listed.stdout.replace("\n", ""), listed.stdout


def test_a_job_on_levels_refuses_a_resize_on_resume(tmp_path: Path) -> None:
    store = tmp_path / "job"
    store.mkdir()
    config = JobConfig(
        app="bank",
        n=3,
        store=str(store),
        levels=f"local:{tmp_path / 'scratch'},partner",
        node_of=["a", "b", "c"],
    )
    save_job(store, config)
    with pytest.raises(ConfigError, match="resizing such a job is not supported"):
        run(store=store, resume=True, n=2)
