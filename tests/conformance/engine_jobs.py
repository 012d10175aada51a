"""Running one job on a given engine from the conformance tests, and hitting it from outside.

``ENGINES`` parametrizes a test by engine: ``local`` always; ``mpi`` with real ``mpiexec`` from
the mpich wheel and ``ray`` with a real local Ray (one for the whole session), each skipped
where its extra is missing except under CI (``CI`` set), where a skip would hide the engine's
tests: there it fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snapline.runtime.local import RunResult, read_status, run

_SUPPORT = Path(__file__).resolve().parents[1] / "integration"


def _support(name: str) -> Any:
    """``tests/integration/<name>.py``, the helpers the integration tests share."""
    spec = importlib.util.spec_from_file_location(f"snapline_tests_{name}", _SUPPORT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_mpi() -> str:
    """The mpiexec the MPI engine will use (skip, or fail under CI, without the extra)."""
    found: str = _support("mpi_support").require_mpi()
    return found


ENGINES = ["local", "mpi", "ray"]


def use_engine(engine: str) -> str:
    """Check that ``engine`` can run here (see the module docstring); return it."""
    if engine == "mpi":
        require_mpi()
    elif engine == "ray":
        ray_address()
    return engine


def ray_address() -> str:
    """The address of the local Ray every ray-engine test shares (started by the first)."""
    ray = _support("ray_support").local_ray()
    address: str = ray.get_runtime_context().gcs_address
    return address


class JobThread(threading.Thread):
    """Runs ``snapline.run`` with the supervisor in this process; the ranks are processes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: RunResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run(**self.kwargs)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def outcome(self, timeout_s: float = 120.0) -> RunResult:
        self.join(timeout_s)
        assert not self.is_alive(), "the job did not finish (nor fail) in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def wait_running(store: Path, timeout_s: float = 60.0) -> dict[int, int]:
    """Wait until every rank runs; rank -> pid as ``snapline ps`` shows it ({} if it ended)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.05)
            continue
        if status.state == "running" and all(
            r.state == "running" and r.pid is not None for r in status.ranks
        ):
            return {r.rank: int(r.pid) for r in status.ranks if r.pid is not None}
        if status.state in ("finished", "failed"):
            return {}
        time.sleep(0.05)
    raise AssertionError(f"job in {store} never ran")


def wait_progress(store: Path, delivered: int, alive: Any, timeout_s: float = 60.0) -> bool:
    """Wait until the job delivered ``delivered`` messages; False if it ended first.

    ``alive()`` says whether the job (a thread or a process) still runs.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.02)
            continue
        if status.messages_delivered >= delivered and status.state == "running":
            return True
        if status.state in ("finished", "failed"):
            return False
        time.sleep(0.02)
    raise AssertionError(f"job in {store} made no progress to {delivered} messages")


def start_cli_job(store: Path, engine: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """``snapline run ... --engine ENGINE --store STORE`` as its own process (session)."""
    cmd = [sys.executable, "-m", "snapline", "run", *argv, "--store", str(store)]
    cmd += ["--engine", engine]
    if engine == "ray":  # join the tests' Ray rather than start one per job
        cmd += ["--ray-address", ray_address()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLINE_")}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def kill9(pid: int) -> None:
    """``kill -9 pid`` (a process already gone is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` (from ``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def skip_unless_linux_proc() -> None:
    """The tests that walk the process tree need ``/proc``."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
