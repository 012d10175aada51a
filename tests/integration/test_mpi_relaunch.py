"""``snapline mpirun`` relaunches a job whose rank was killed with kill -9 from outside; the
relaunched job resumes from its newest complete checkpoint and ends with the failure-free grid,
bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mpi_support import EXAMPLES, python, require_mpi, run, start, stop

from snapline.mpi._shm import PREFIX, SHM_DIR, mapped_segments

HEAT = str(EXAMPLES / "heat_mpi.py")
ARGS = ["--steps", "600", "--cells", "20000", "--every", "50"]


def _snapline() -> list[str]:
    return [python(), "-m", "snapline"]


def _wait_for_step(marker: Path, step: int, job: subprocess.Popen[str]) -> int:
    """The pid in ``marker`` once it reports ``step`` (the program then holds until killed)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise AssertionError(f"the job ended before step {step}: {job.communicate()[0]}")
        if marker.exists():
            pid, seen = map(int, marker.read_text().split())
            if seen == step:
                return pid
        time.sleep(0.05)  # polls a marker the program writes; the program holds there
    raise AssertionError(f"no progress marker for step {step} in {marker}")


def test_a_rank_killed_mid_run_is_relaunched_and_the_final_grid_is_the_failure_free_one(
    tmp_path: Path,
) -> None:
    mpiexec = require_mpi()
    clean_out = tmp_path / "clean.npy"
    code, output = run(
        [mpiexec, "-n", "2", python(), HEAT, *ARGS, "--store", "clean", "--out", str(clean_out)],
        cwd=tmp_path,
    )
    assert code == 0, output

    progress = tmp_path / "progress"
    progress.mkdir()
    out = tmp_path / "killed.npy"
    began = time.time()
    job = start(
        [
            *_snapline(),
            "mpirun",
            "-n",
            "2",
            "--backoff",
            "0",
            "--max-restarts",
            "2",
            "--",
            python(),
            HEAT,
            *ARGS,
            "--store",
            "killed",
            "--out",
            str(out),
            "--progress",
            str(progress),
            "--hold-at",
            "300",
        ],
        cwd=tmp_path,
    )
    try:
        victim = _wait_for_step(progress / "rank-1", 300, job)
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
    finally:
        stop(job)
    assert job.returncode == 0, output
    assert "relaunch 1 of 2" in output, output
    assert "finished after 1 relaunch(es)" in output, output
    # It resumed rather than starting over: from 250, since the checkpoint at 300 (where the
    # rank was killed) was being written and is committed only at the next checkpoint call.
    assert "heat: resumed at step 250" in output, output
    assert (progress / "rank-1").read_text().split()[1] == "600"
    final, clean = np.load(out), np.load(clean_out)
    assert final.tobytes() == clean.tobytes()
    # The killed launch's MPICH segment was swept from /dev/shm, not leaked into memory.
    in_use = mapped_segments()
    left = [
        p.name
        for p in SHM_DIR.glob(PREFIX + "*")
        if p.stat().st_mtime >= began and str(p) not in in_use
    ]
    assert left == [], left


def test_mpirun_gives_up_after_the_restart_limit_with_a_clear_message(tmp_path: Path) -> None:
    mpiexec = require_mpi()
    code, output = run(
        [
            *_snapline(),
            "mpirun",
            "-n",
            "2",
            "--backoff",
            "0",
            "--max-restarts",
            "1",
            "--mpiexec",
            mpiexec,
            "--",
            python(),
            "-c",
            "raise SystemExit(4)",
        ],
        cwd=tmp_path,
    )
    assert code == 1, output
    assert "relaunch 1 of 1" in output
    assert "error: the job exited with code 4 and has failed 2 time(s)" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("argv", [["-n", "2", "--backoff", "soon", "--", "true"], ["-n", "2"]])
def test_mpirun_bad_input_is_one_line_without_a_traceback(argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*_snapline(), "mpirun", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
