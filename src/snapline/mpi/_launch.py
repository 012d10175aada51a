"""``snapline mpirun``: run an MPI job and relaunch it after a failure (as SCR's ``scr_run``).

The relaunched job resumes by itself: its ``Checkpointer.restore()`` finds the newest complete
checkpoint. This loop only notices failures (a non-zero exit of ``mpiexec``, which is what a
rank that crashed or was killed makes it return), waits a back-off that doubles after each
failure, and gives up after ``max_restarts`` relaunches. Each launch sees its number in
``SNAPLINE_MPI_ATTEMPT`` (0 for the first).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from snapline.errors import ConfigError, RuntimeFailure
from snapline.mpi._shm import sweep_orphaned_segments

ATTEMPT_ENV = "SNAPLINE_MPI_ATTEMPT"
MAX_BACKOFF_S = 300.0


def find_mpiexec(explicit: str | None = None) -> str:
    """``explicit``, else the ``mpiexec`` next to this Python (the mpich wheel's), else PATH's."""
    if explicit is not None:
        found = shutil.which(explicit)
        if found is None:
            raise ConfigError(f"--mpiexec {explicit!r}: no such executable")
        return found
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise ConfigError(
            "no mpiexec found next to this Python or on PATH: pip install 'snapline[mpi]' "
            "(the mpich wheel brings one), or name your MPI's with --mpiexec PATH"
        )
    return found


def backoff_for(attempt: int, backoff_s: float) -> float:
    """Seconds to wait before relaunch number ``attempt`` (1, 2, ...): doubling, capped."""
    return min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S) if backoff_s > 0 else 0.0


def describe_exit(code: int) -> str:
    """An exit status of ``mpiexec`` in words."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def relaunch_loop(
    program: Sequence[str],
    *,
    ranks: int,
    max_restarts: int,
    backoff_s: float,
    mpiexec: str,
    say: Callable[[str], None],
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run ``mpiexec -n ranks program`` until it succeeds; return the number of relaunches.

    ``RuntimeFailure`` once it has failed ``max_restarts + 1`` times. ``extra_env`` goes to
    every launch's environment (e.g. the ``SNAPLINE_LEVELS`` a ``Checkpointer`` reads).
    """
    if not program:
        raise ConfigError(
            "give the program to run after --, e.g. snapline mpirun -n 4 -- python prog.py"
        )
    if ranks < 1:
        raise ConfigError(f"-n/--ranks must be >= 1, got {ranks}")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {max_restarts}")
    command = [mpiexec, "-n", str(ranks), *program]
    attempt = 0
    started = time.time()
    while True:
        env = {**os.environ, **(extra_env or {}), ATTEMPT_ENV: str(attempt)}
        try:
            code = _run(command, env)
        finally:
            sweep_orphaned_segments(started)  # what killed ranks left in /dev/shm (see _shm)
        if code == 0:
            if attempt:
                say(f"snapline mpirun: the job finished after {attempt} relaunch(es)")
            return attempt
        if attempt >= max_restarts:
            raise RuntimeFailure(
                f"the job {describe_exit(code)} and has failed {attempt + 1} time(s); "
                f"giving up after --max-restarts {max_restarts}. Its newest complete checkpoint "
                "is kept: fix the cause and run the same command to resume from it"
            )
        attempt += 1
        wait_s = backoff_for(attempt, backoff_s)
        say(
            f"snapline mpirun: the job {describe_exit(code)}; relaunch {attempt} of "
            f"{max_restarts} in {wait_s:g}s (it resumes from its newest complete checkpoint)"
        )
        time.sleep(wait_s)


def _run(command: list[str], env: dict[str, str]) -> int:
    # Popen rather than run(): on Ctrl-C the job must be stopped, not left running.
    try:
        process = subprocess.Popen(command, env=env)
    except OSError as exc:
        raise ConfigError(f"could not start {command[0]}: {exc.strerror or exc}") from None
    try:
        return process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
