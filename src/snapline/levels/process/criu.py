"""The CRIU backend: SIGSTOP the job, ``criu dump --leave-running`` its tree, SIGCONT.

The job runs in the supervisor's private network namespace (``procs``), so CRIU's nftables
network lock and the restored TCP connections are private to it. Every rank descends from one
job root, so one ``criu dump`` of that tree holds every process and every socket between them
(CRIU cannot dump one end of a Unix stream connection without the other). Processes are
stopped with SIGSTOP before the dump (CRIU keeps them stopped in the images) and continue on
SIGCONT; a restored tree therefore comes back stopped, and ``resume`` starts it.

Pitfalls this module avoids (see docs/howto/process-level.md): a regular file the job has
open must not grow after a dump (CRIU checks its size on restore), so the job's output goes
to pipes, which are replaced on restore with ``--inherit-fd``; pids must be free on restore,
so the supervisor kills and reaps the old tree first.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from snapline.errors import CheckpointFailed, RuntimeFailure
from snapline.levels.process import procs

_TCP = ("--tcp-established", "--network-lock", "nftables")


class CriuBackend:
    """``ProcessBackend`` on a ``criu`` binary (see ``install.find_criu``)."""

    name = "criu"
    relays_output = False

    def __init__(self, criu: str) -> None:
        self.criu = criu

    def bind(self, scratch: Path, job_dir: Path) -> None:
        """Nothing to keep: the supervisor names each image directory."""

    def real_pids(self, vpids: Mapping[int, int]) -> dict[int, int]:
        """CRIU restores processes with their own pids."""
        return dict(vpids)

    def kill(self, sessions: Sequence[int]) -> None:
        """SIGKILL every member of ``sessions`` and reap them."""
        procs.kill_sessions(sessions)

    def launch(self, argv: Sequence[str], pass_fds: Sequence[int]) -> int:
        """Start ``argv`` as a session leader (CRIU dumps whole sessions without --shell-job)."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                return os.posix_spawnp(
                    argv[0],
                    list(argv),
                    dict(os.environ),
                    file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
                    setsid=True,
                )
            finally:
                os.close(devnull)
        finally:
            for fd in pass_fds:
                os.set_inheritable(fd, False)

    def checkpoint(
        self, root: int, sessions: Sequence[int], image_dir: Path, drain: Callable[[], None]
    ) -> float:
        """See ``ProcessBackend.checkpoint``; ``CheckpointFailed`` says what CRIU reported."""
        start = time.monotonic()
        procs.freeze(sessions)
        try:
            drain()
            image_dir.mkdir(parents=True, exist_ok=True)
            self._criu(
                "dump", "-t", str(root), "-D", str(image_dir), "-o", "dump.log",
                "--leave-running", *_TCP,
                log=image_dir / "dump.log", error=CheckpointFailed,
            )  # fmt: skip
            drain()  # a process killed during the dump must not be in the images
        finally:
            procs.thaw(sessions)
        return time.monotonic() - start

    def restore(self, image_dir: Path, pipes: Mapping[str, int]) -> int:
        """See ``ProcessBackend.restore``; ``RuntimeFailure`` says what CRIU reported."""
        inherit: list[str] = []
        for name, fd in pipes.items():
            inherit += ["--inherit-fd", f"fd[{fd}]:{name}"]
        pidfile = image_dir / "restored.pid"
        self._criu(
            "restore", "-D", str(image_dir), "-o", "restore.log", "-d",
            "--pidfile", str(pidfile), *_TCP, *inherit,
            log=image_dir / "restore.log", error=RuntimeFailure, pass_fds=tuple(pipes.values()),
        )  # fmt: skip
        return int(pidfile.read_text().strip())

    def resume(self, sessions: Sequence[int]) -> None:
        """SIGCONT every process of the restored tree."""
        procs.thaw(sessions)

    def _criu(
        self,
        *args: str,
        log: Path,
        error: type[Exception],
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        done = subprocess.run(
            [self.criu, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=pass_fds,
            timeout=600,
        )
        if done.returncode != 0:
            raise error(f"criu {args[0]} failed ({done.returncode}): {criu_log_errors(log)}")


def criu_log_errors(log: Path) -> str:
    """The ``Error`` lines of a CRIU log (the harmless RLIMIT_NOFILE one left out)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    found = [ln for ln in lines if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    return "; ".join(found[-5:]) or f"see {log}"
