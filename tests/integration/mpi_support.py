"""Running real MPI jobs from tests: find mpiexec, run with a deadline, never leave one behind.

The MPI tests need the ``mpi`` extra. Where it is missing they are skipped with the reason, except
under CI (``CI`` set), where a skip would hide them: there they fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "mpi_programs"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def require_mpi() -> str:
    """The mpiexec to use; skip (or, under CI, fail) when mpi4py or mpiexec is missing."""
    from snapline.errors import ConfigError
    from snapline.mpi._launch import find_mpiexec

    try:
        import mpi4py  # noqa: F401

        return find_mpiexec()
    except (ImportError, ConfigError) as exc:
        message = f"needs the mpi extra (pip install -e '.[test,mpi]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAPLINE_")}


def start(argv: Sequence[str], *, cwd: Path) -> subprocess.Popen[str]:
    """Start a job in its own process group, so that ``stop`` can end all of it."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[str]) -> None:
    """Kill what is left of a job (mpiexec, its proxies and ranks)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run(argv: Sequence[str], *, cwd: Path, timeout_s: float = 120) -> tuple[int, str]:
    """Run a job to its end; (exit code, output). The job is killed on timeout."""
    process = start(argv, cwd=cwd)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(process)
        raise
    finally:
        stop(process)
    return process.returncode, output


def python() -> str:
    return sys.executable
