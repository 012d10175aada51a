"""Process control and failure notification of a job on MPI: one ``mpiexec`` runs every rank.

Theory of operation
-------------------
The local runtime's supervisor starts one worker process per rank; here ``launch`` starts one
``mpiexec -n N python -m snapline.runtime.mpi.rank`` for the whole job, in its own process
group. The ranks learn their rank from MPI and everything else (job configuration, the job
secret, the control socket directory) from ``SNAPLINE_MPI_BOOT`` in the environment, which
``mpiexec`` passes on: stdin reaches only rank 0, and the secret must never touch disk. Each
rank connects its control link to this supervisor exactly as a local worker does; its hello
names its pid, which is when the supervisor first learns it (``mpiexec`` forks the ranks), and
from then on a pidfd shows that rank's exit at once. Heartbeats on the control link show hangs.

Failure notification: MPI ends the whole job when one rank dies, and so does this supervisor,
at once, so that the coordinator never plans with ranks that are about to vanish. A rank's
exit or its silence past the heartbeat timeout (it is killed), a ``kill -9`` from outside, or
``mpiexec`` itself exiting before every rank reported its result: each ends the MPI job
(SIGKILL to its process group and to every rank) and reports *every* rank failed. Recovery is
then the coordinator's ``--resume`` procedure: the recovery line from stable storage, and one
relaunch (``restarts_whole_job``) under the restart limit and back-off.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from snapline.mpi._shm import sweep_orphaned_segments
from snapline.runtime.local.supervisor import RankSlot, Supervisor
from snapline.runtime.local.wire import pack

#: The environment variable that carries the boot data every rank shares.
BOOT_ENV = "SNAPLINE_MPI_BOOT"
_WORLD_TOKEN = 0


class MpiSupervisor(Supervisor):
    """A ``Supervisor`` whose ranks are the processes of one ``mpiexec`` (see the module)."""

    restarts_whole_job = True

    def __init__(self, *, mpiexec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mpiexec = mpiexec
        self._queued: dict[int, dict[str, Any]] = {}
        self._world: subprocess.Popen[bytes] | None = None
        self._world_fd: int | None = None
        self._ending = False
        #: How many MPI jobs were started (the first launch and every relaunch).
        self.launches = 0
        self._first_launch_at = time.time()

    # ------------------------------------------------------------------ starting

    def spawn(self, rank: int, boot: dict[str, Any]) -> None:
        """Queue ``rank`` for the next ``launch`` (MPI starts every rank together)."""
        self.starting(self.slots[rank], None)
        self._queued[rank] = boot

    def launch(self) -> None:
        """Start one ``mpiexec`` for the queued ranks, which must be all of them."""
        if not self._queued:
            return
        if sorted(self._queued) != list(range(self.n)):
            raise AssertionError(
                f"an MPI job starts every rank together, not {sorted(self._queued)}"
            )
        self._end_world_process()
        # MPICH segments the previous launch's killed ranks left in /dev/shm (see mpi._shm).
        sweep_orphaned_segments(self._first_launch_at)
        shared = {k: v for k, v in self._queued[0].items() if k != "rank"}
        self._queued.clear()
        env = {**os.environ, BOOT_ENV: base64.b64encode(pack(shared)).decode("ascii")}
        command = [
            self.mpiexec,
            "-n",
            str(self.n),
            sys.executable,
            "-m",
            "snapline.runtime.mpi.rank",
        ]
        with open(self.store_dir / "logs" / "mpiexec.log", "ab") as out:
            self._world = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        self._ending = False
        self.launches += 1
        try:
            self._world_fd = os.pidfd_open(self._world.pid)
            self.sel.register(self._world_fd, selectors.EVENT_READ, ("other", _WORLD_TOKEN))
        except (AttributeError, OSError):
            self._world_fd = None  # check_children polls it instead
        self.log("mpiexec_started", pid=self._world.pid, n=self.n, launch=self.launches)

    def _expects(self, slot: RankSlot, pid: int) -> bool:
        """A rank of the current MPI job introduces itself: learn and watch its pid."""
        if not slot.alive or self._world is None or self._ending:
            return False
        if slot.pid is None and not _descends_from(pid, self._world.pid):
            # A rank of an MPI job ended before this one was started, whose hello was still
            # on its way: taking its pid would refuse the real rank's hello.
            self.log("hello_from_another_job", rank=slot.rank, pid=pid)
            return False
        if slot.pid is None:
            slot.pid = pid
            self.watch_pid(slot)
            self.log("rank_started", rank=slot.rank, pid=pid)
        return slot.pid == pid

    # ------------------------------------------------------------------ failures

    def kill(self, rank: int, why: str) -> None:
        """SIGKILL ``rank`` (the whole MPI job, if its pid is not known yet)."""
        slot = self.slots[rank]
        if slot.alive and slot.pid is None:
            slot.kill_reason = why
            self.log("kill", rank=rank, pid=None, why=why)
            self._end_world(f"rank {rank} {why}")
            return
        super().kill(rank, why)

    def _reap(self, rank: int, why: str) -> None:
        slot = self.slots[rank]
        if not slot.alive:
            return
        if not slot.stopped:
            self._sigkill(slot)  # a hung rank must not outlive the job (base: proc.kill())
        super()._reap(rank, why)
        if not slot.stopped:
            self._end_world(f"rank {rank} failed ({slot.failure})")

    def _on_other(self, token: int) -> None:
        if token == _WORLD_TOKEN:
            self._world_exited()

    def check_children(self) -> None:
        """Notice hangs, and ``mpiexec``'s exit where pidfds are unavailable."""
        world = self._world
        if world is not None and self._world_fd is None and world.poll() is not None:
            self._world_exited()
        super().check_children()

    def _world_exited(self) -> None:
        world = self._world
        code = world.poll() if world is not None else None
        if world is None or code is None:
            return
        self._close_world_fd()
        running = [s.rank for s in self.slots if s.alive and not s.stopped]
        self.log("mpiexec_exited", code=code, running=running)
        if running:
            self._end_world(f"mpiexec exited with code {code}")

    def _end_world(self, why: str) -> None:
        """End the MPI job (as MPI itself does when a rank dies): every rank has failed."""
        if self._ending:
            return
        self._ending = True
        self.log("mpi_job_ended", why=why)
        self._end_world_process()
        for slot in self.slots:
            if slot.alive and not slot.stopped:
                self._sigkill(slot)
        for slot in self.slots:
            if slot.alive and not slot.stopped:
                super()._reap(slot.rank, f"the MPI job ended: {why}")

    def _end_world_process(self) -> None:
        world = self._world
        if world is None:
            return
        if world.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(world.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                world.wait(timeout=5.0)
        self._close_world_fd()

    def _close_world_fd(self) -> None:
        if self._world_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self._world_fd)
            os.close(self._world_fd)
            self._world_fd = None

    # ------------------------------------------------------------------ the end

    def reap_finished(self, timeout_s: float) -> None:
        """Wait for ``mpiexec`` to end after every rank reported its result."""
        world = self._world
        if world is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                world.wait(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            if slot.alive and slot.stopped:
                while slot.pidfd is not None and time.monotonic() < deadline:
                    if _pidfd_exited(slot.pidfd):
                        break
                    time.sleep(0.01)
                self._reap(slot.rank, "finished")

    def close(self) -> None:
        """End the MPI job if it still runs, then release what the base holds."""
        for slot in self.slots:
            if slot.alive:
                slot.stopped = True
        self._end_world_process()
        super().close()
        sweep_orphaned_segments(self._first_launch_at)


def _descends_from(pid: int, ancestor: int, *, depth: int = 6) -> bool:
    """True when ``ancestor`` is ``pid``'s parent, grandparent... (``mpiexec`` starts its
    ranks through a proxy); True as well where ``/proc`` cannot tell."""
    for _ in range(depth):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return not Path("/proc/self/stat").exists()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def _pidfd_exited(pidfd: int) -> bool:
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)
