"""Running process-level jobs from tests: find CRIU, start ``snapline run --level process``,
wait for checkpoints, kill ranks from outside, compare output with a failure-free run.

The tests need root and a working CRIU (``./dev test`` installs CRIU 4.2.1 into snapline's
cache with ``snapline doctor --install criu``) or DMTCP (found by ``find_dmtcp``:
``$SNAPLINE_DMTCP``, ``dmtcp_launch`` on PATH, or a build tarball in ``shared/tools``). Where
one is missing its tests are skipped with the reason, except under CI (``CI`` set), where a
skip would hide them: there they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "process_programs"


def require_backend(name: str = "criu") -> str:
    """The tool of backend ``name`` (criu: the binary; dmtcp: the install directory); skip
    (or, under CI, fail) with the reason when it does not work here."""
    from snapline.levels.process.install import find_criu, find_dmtcp

    check = find_criu() if name == "criu" else find_dmtcp()
    if check.ok and check.path is not None:
        return check.path
    tool = {"criu": "CRIU", "dmtcp": "DMTCP"}[name]
    message = f"the {name} backend needs a working {tool}: {check.problem}; fix: {check.fix}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_criu() -> str:
    """The criu to use (see ``require_backend``)."""
    return require_backend("criu")


def snapline(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapline", *args]


def start(argv: Sequence[str], *, cwd: Path) -> subprocess.Popen[str]:
    """Start a supervisor in its own session (``stop`` ends it and whatever it left)."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def status(job: Path) -> dict[str, object]:
    try:
        return dict(json.loads((job / "status.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def wait_for_checkpoints(
    job: Path, count: int, proc: subprocess.Popen[str], timeout_s: float = 60
) -> dict[str, object]:
    """Wait until ``count`` global checkpoints are committed; the status at that moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = status(job)
        if int(st.get("checkpoints_committed", 0)) >= count:  # type: ignore[call-overload]
            return st
        if proc.poll() is not None:
            raise AssertionError(f"the job ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no {count} checkpoints within {timeout_s}s: {status(job)}")


def rank_pid(st: dict[str, object], rank: int) -> int:
    ranks = st["ranks"]
    assert isinstance(ranks, list)
    return int(ranks[rank]["pid"])


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def finish(
    proc: subprocess.Popen[str], timeout_s: float = 90, job: Path | None = None
) -> tuple[int, str, str]:
    """Wait for the supervisor; (exit code, stdout, stderr). Killed (with ``job``'s
    processes) on timeout."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc, job)
        raise
    return proc.returncode, out, err


def stop(proc: subprocess.Popen[str], job: Path | None = None) -> None:
    """Kill the supervisor's process group; when it was still running, also the processes
    of its job (``job``'s status), which live in sessions of their own (a DMTCP job stuck
    at a checkpoint barrier would otherwise stay for ever)."""
    running = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    if running and job is not None:
        st = status(job)
        ranks = st.get("ranks") or []
        assert isinstance(ranks, list)
        for pid in [st.get("job_root_pid"), *(r.get("pid") for r in ranks)]:
            if isinstance(pid, int) and pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def reference(commands: Sequence[Sequence[str]], cwd: Path, timeout_s: float = 60) -> list[str]:
    """The failure-free run, without snapline: every command started directly (RANK and
    WORLD_SIZE set) in a private network namespace like the job's (so fixed ports are free);
    the stdout of each."""
    n = len(commands)
    script = ["ip link set lo up"]
    for rank, argv in enumerate(commands):
        script.append(
            f"RANK={rank} WORLD_SIZE={n} {shlex.join(argv)} > ref-{rank}.out </dev/null &"
        )
    script.append("for j in $(jobs -p); do wait $j || exit 1; done")
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", "\n".join(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr
    return [(cwd / f"ref-{rank}.out").read_text() for rank in range(n)]


def outputs(job: Path, n: int) -> list[str]:
    return [(job / "output" / f"rank-{r}.out").read_text() for r in range(n)]
