"""The process level for real: unmodified programs under ``snapline run --level process``
(CRIU and DMTCP), ranks killed with ``kill -9`` from outside, every process restored from the
newest global checkpoint; the output must equal a failure-free run's, no line lost or
duplicated."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from process_support import (
    PROGRAMS,
    finish,
    kill9,
    outputs,
    rank_pid,
    reference,
    require_backend,
    snapline,
    start,
    status,
    stop,
    wait_for_checkpoints,
)

NUMPY = [sys.executable, str(PROGRAMS / "numpy_steps.py")]
RING = [sys.executable, str(PROGRAMS / "ring.py")]


#: The job tests run once per backend; the DMTCP ones that only repeat what the CRIU ones
#: show about the supervisor are slow-marked.
BACKENDS = ["criu", "dmtcp"]
CRIU_FAST = ["criu", pytest.param("dmtcp", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True)
def _backend(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    require_backend(callspec.params.get("backend", "criu") if callspec else "criu")


def _run(job: Path, *args: str, backend: str = "criu") -> list[str]:
    return snapline(
        "run", "--level", "process", "--backend", backend, "--store", str(job),
        "--interval", "0.4s", *args,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_program_killed_mid_run_is_restored_with_identical_output(
    tmp_path: Path, backend: str
) -> None:
    command = [*NUMPY, "70", "8"]
    expected = reference([command], tmp_path)
    job = tmp_path / "job"
    proc = start(_run(job, "--", *command, backend=backend), cwd=tmp_path)
    try:
        st = wait_for_checkpoints(job, 2, proc)
        kill9(rank_pid(st, 0))
        code, out, err = finish(proc, job=job)
    finally:
        stop(proc, job)
    assert code == 0, err
    assert outputs(job, 1) == expected
    assert out == expected[0]  # what the user saw: released once, in order
    assert "1 recoveries" in err and "killed by SIGKILL" in err
    # The global checkpoints are an ordinary store: the store commands read them.
    verified = subprocess.run(
        snapline("verify", str(job)), capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0 and "2 checkpoint(s)" in verified.stdout, verified.stdout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "kind"), [(2, "tcp"), (3, "unix")])
def test_ring_job_killed_mid_run_is_restored_with_identical_output(
    tmp_path: Path, n: int, kind: str, backend: str
) -> None:
    # Unix socket paths must stay short (108 bytes): not under pytest's deep tmp_path.
    dirs = [tempfile.mkdtemp(prefix="snapline-ring-") for _ in range(2)]
    commands = [[*RING, kind, "7300" if kind == "tcp" else d, "150"] for d in dirs]
    expected = reference([commands[0]] * n, tmp_path)
    job = tmp_path / "job"
    proc = start(_run(job, "-n", str(n), "--", *commands[1], backend=backend), cwd=tmp_path)
    try:
        st = wait_for_checkpoints(job, 2, proc)
        kill9(rank_pid(st, n - 1))
        code, _, err = finish(proc, job=job)
    finally:
        stop(proc, job)
        for d in dirs:
            shutil.rmtree(d)
    assert code == 0, err
    assert outputs(job, n) == expected
    # One recovery for the kill. Under DMTCP also one for each checkpoint that caught a ring
    # connection not accepted yet (DMTCP cannot drain it; see the how-to's limits).
    failures = [
        line.split("failure: ", 1)[1]
        for line in (job / "supervisor.log").read_text().splitlines()
        if "failure: " in line
    ]
    kills = [f for f in failures if backend == "criu" or "checkpoint is stuck" not in f]
    assert len(kills) == 1 and "killed by SIGKILL" in kills[0], failures


@pytest.mark.parametrize(
    ("backend", "seed"),
    [
        ("criu", 1),
        *(pytest.param("criu", s, marks=pytest.mark.slow) for s in range(2, 8)),
        *(pytest.param("dmtcp", s, marks=pytest.mark.slow) for s in range(1, 4)),
    ],
)
def test_repeated_kills_of_ranks_and_job_root_at_random_moments(
    tmp_path: Path, backend: str, seed: int
) -> None:
    # Kills land anywhere: before the first checkpoint, while the job is frozen for one,
    # during criu dump, right after a restore. A checkpoint must never hold a failure.
    rnd = random.Random(seed)
    dirs = [tempfile.mkdtemp(prefix="snapline-ring-") for _ in range(2)]
    commands = [[*RING, "unix", d, "200"] for d in dirs]
    expected = reference([commands[0]] * 3, tmp_path)
    job = tmp_path / "job"
    proc = start(_run(job, "-n", "3", "--", *commands[1], backend=backend), cwd=tmp_path)
    kills = 0
    try:
        while proc.poll() is None and kills < 3:
            time.sleep(rnd.uniform(0.5, 1.5))
            st = status(job)
            if st.get("state") != "running":
                continue
            victims = [rank_pid(st, r) for r in range(3)] + [int(st["job_root_pid"])]  # type: ignore[call-overload]
            with contextlib.suppress(ProcessLookupError):
                kill9(rnd.choice(victims))
                kills += 1
        code, _, err = finish(proc, job=job)
    finally:
        stop(proc, job)
        for d in dirs:
            shutil.rmtree(d)
    assert code == 0, err + (job / "supervisor.log").read_text()
    assert kills == 3
    assert outputs(job, 3) == expected


@pytest.mark.parametrize("backend", CRIU_FAST)
def test_resume_after_the_whole_job_died(tmp_path: Path, backend: str) -> None:
    command = [*RING, "tcp", "7400", "150"]
    expected = reference([command] * 2, tmp_path)
    job = tmp_path / "job"
    proc = start(_run(job, "-n", "2", "--", *command, backend=backend), cwd=tmp_path)
    try:
        st = wait_for_checkpoints(job, 2, proc)
        stop(proc)  # the supervisor first, then every process of the job
        # (Under DMTCP the job dies with its coordinator, in the supervisor's process group:
        # its processes may be gone already.)
        for pid in [int(st["job_root_pid"]), rank_pid(st, 0), rank_pid(st, 1)]:  # type: ignore[call-overload]
            with contextlib.suppress(ProcessLookupError):
                kill9(pid)
    finally:
        stop(proc, job)
    resumed = start(snapline("run", "--resume", "--store", str(job)), cwd=tmp_path)
    try:
        code, _, err = finish(resumed, job=job)
    finally:
        stop(resumed, job)
    assert code == 0, err
    assert outputs(job, 2) == expected
    assert status(job)["state"] == "finished"


@pytest.mark.parametrize("backend", CRIU_FAST)
def test_restart_limit_ends_a_job_that_keeps_failing(tmp_path: Path, backend: str) -> None:
    job = tmp_path / "job"
    argv = [
        sys.executable,
        "-c",
        "import sys; print('about to fail', file=sys.stderr); sys.exit(3)",
    ]
    done = subprocess.run(
        _run(job, "--max-restarts", "2", "--", *argv, backend=backend),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "restart limit reached (2)" in done.stderr
    assert "exit code 3 (about to fail)" in done.stderr


@pytest.mark.parametrize("backend", CRIU_FAST)
def test_a_hung_job_is_restored_and_given_up_on_at_the_limit(tmp_path: Path, backend: str) -> None:
    job = tmp_path / "job"
    argv = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(600)"]
    done = subprocess.run(
        _run(job, "--heartbeat-timeout", "1s", "--max-restarts", "1", "--", *argv, backend=backend),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no output from the job for 1s (hang)" in done.stderr


def test_checkpoint_and_restore_one_process_tree(tmp_path: Path) -> None:
    # The program appends to a file it reopens each step: no file stays open across a dump.
    log = tmp_path / "counter.log"
    code = (
        "import sys, time\n"
        "for i in range(10**6):\n"
        "    with open(sys.argv[1], 'a') as f: f.write(f'{i}\\n')\n"
        "    time.sleep(0.02)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    store = tmp_path / "images"
    try:
        while not log.exists() or log.read_text().count("\n") < 5:
            assert proc.poll() is None
            time.sleep(0.01)
        dumped = subprocess.run(
            snapline("checkpoint", str(proc.pid), "--store", str(store), "--kill"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dumped.returncode == 0, dumped.stderr
        proc.wait(timeout=10)
        at_dump = log.read_text().splitlines()
        restored = subprocess.run(
            snapline("restore", str(store)), capture_output=True, text=True, timeout=60
        )
        assert restored.returncode == 0, restored.stderr
        assert f"pid {proc.pid}" in restored.stdout
        while log.read_text().count("\n") < len(at_dump) + 5:
            time.sleep(0.01)
    finally:
        subprocess.run(["kill", "-9", str(proc.pid)], check=False)
    lines = [int(x) for x in log.read_text().splitlines()]
    assert lines == list(range(len(lines)))  # continued after the last value: none lost or doubled


def test_doctor_tells_what_works(tmp_path: Path) -> None:
    done = subprocess.run(snapline("doctor"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "criu" in text and "BLCR is dead" in text
    # DMTCP: where it was found and that a real test checkpoint worked (or why not).
    line = text[text.index("backend dmtcp") : text.index("level process")]
    assert "a test checkpoint works" in line or ("no backend dmtcp" in text), line


def test_one_tree_checkpoint_with_dmtcp_says_why_not(tmp_path: Path) -> None:
    done = subprocess.run(
        snapline("checkpoint", str(os.getpid()), "--store", str(tmp_path), "--backend", "dmtcp"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "dmtcp_launch" in done.stderr and "--backend dmtcp" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dmtcp"])
def test_a_dmtcp_checkpoint_stuck_on_an_unaccepted_connection_fails_the_job(
    tmp_path: Path, backend: str
) -> None:
    # A connection still in a listen backlog has no process at its other end: DMTCP waits
    # for ever to drain it. The supervisor reads DMTCP's warning and restores instead.
    sock = tempfile.mkdtemp(prefix="snapline-backlog-")
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1] + '/s'); s.listen(1)\n"
        "c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1] + '/s'); c.send(b'x')\n"
        "time.sleep(60)\n"
    )
    job = tmp_path / "job"
    try:
        done = subprocess.run(
            _run(
                job, "--max-restarts", "0", "--", sys.executable, "-c", code, sock, backend=backend
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(sock)
    assert done.returncode == 1
    assert "DMTCP's checkpoint is stuck: Still draining socket" in done.stderr, done.stderr
