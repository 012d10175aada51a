"""The DMTCP backend: a coordinator per job, ``dmtcp_command --bcheckpoint``, ``dmtcp_restart``.

DMTCP checkpoints from inside the processes: ``dmtcp_launch`` preloads its library into the
job root, every process the job starts inherits it, and a coordinator (one per job, in the
job's private network namespace, so its port is always free) tells them all to write their
images at once. Before writing, DMTCP drains every socket between the job's processes (TCP
on loopback, Unix) and every pipe made inside the job, and refills them after the images
are written or restored: the coordinated cut holds the messages in flight. Processes see
virtual pids, which stay the same across restarts; ``real_pids`` asks the coordinator for
the real ones (what ``kill -9`` from outside, and the supervisor's liveness checks, use).

Output. DMTCP does not restore pipes the job inherited from outside (it notes "pre-existing
socket will not be restored" and the fd is dead after a restart), so the supervisor's pipes
cannot be swapped in on restore as with CRIU. Instead the job root (``_relayroot.py``) makes
the ranks' pipes itself and appends what it reads to a spool file as position-numbered
records (``relay.py``). The supervisor reads the spool, holds the bytes, and de-duplicates
by position. The checkpoint's cut is not known to the supervisor when it commits (the job
runs until DMTCP suspends it), so at commit it releases only what it had read *before*
asking for the checkpoint, which the checkpoint certainly covers, and holds the rest. After
a restore the job root writes a ``hello`` with its checkpointed positions: the held bytes
beyond them (written by the lost run) are dropped, and output continues from there. So no
byte is lost or released twice, also for programs whose output is not deterministic.

Killing: the coordinator, ``dmtcp_restart`` and every process of the job descend from the
supervisor (a child subreaper), so ``kill`` ends them all, sessions or not. The coordinator
stays in the supervisor's process group, and DMTCP's processes end when their coordinator
dies: killing the supervisor's group ends the job too (``--resume`` then finds nothing to
kill).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from snapline.errors import CheckpointFailed, RuntimeFailure
from snapline.levels.process import procs
from snapline.levels.process.backend import CheckpointLostJob

#: The coordinator's port inside the job's own network namespace (DMTCP's default).
PORT = 7779
#: How a file inside a ``ckpt_*_files`` directory is named among the flat image files.
_SUBDIR = "@@"
#: The image file that names the directory DMTCP wrote the images to.
_WHERE = "ckpt-dir.txt"
_CLIENT = re.compile(r"\[(\d+):(\d+)\]")


class DmtcpBackend:
    """``ProcessBackend`` on a DMTCP install (``path`` holds ``bin/dmtcp_launch``)."""

    name = "dmtcp"
    relays_output = True

    def __init__(self, path: str) -> None:
        self.bin = Path(path) / "bin"
        self.ckpt_dir = Path("/nonexistent")
        self.log = Path(os.devnull)
        self.env = dict(os.environ, DMTCP_COORD_HOST="127.0.0.1", DMTCP_COORD_PORT=str(PORT))

    def bind(self, scratch: Path, job_dir: Path) -> None:
        """Write DMTCP's images under ``scratch`` (they are moved into each image dir) and
        its messages to ``job_dir/dmtcp.log``."""
        self.ckpt_dir = scratch / "dmtcp-ckpt"
        self.log = job_dir / "dmtcp.log"

    def _tool(self, name: str) -> str:
        return str(self.bin / name)

    def _command(
        self, *args: str, error: type[Exception], timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                [self._tool("dmtcp_command"), *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise error(f"dmtcp_command {' '.join(args)} took over {timeout_s:.0f}s") from None
        if done.returncode != 0:
            raise error(
                f"dmtcp_command {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        return done

    def _coordinator(self) -> None:
        """Start this job's coordinator; it exits with the job's last process."""
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.ckpt_dir.mkdir(parents=True)
        done = subprocess.run(
            [self._tool("dmtcp_coordinator"), "--daemon", "--exit-on-last",
             "-p", str(PORT), "--ckptdir", str(self.ckpt_dir)],
            env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeFailure(f"dmtcp_coordinator did not start: {done.stderr.strip()}")

    def _spawn(self, argv: list[str], *, setsid: bool) -> int:
        """Start ``argv``; what DMTCP itself says goes to ``log`` (the job's output does not
        pass through its stdout or stderr)."""
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            return os.posix_spawn(
                argv[0],
                argv,
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=setsid,
            )
        finally:
            os.close(devnull)
            os.close(log)

    def launch(self, argv: Sequence[str], pass_fds: Sequence[int]) -> int:
        """Start ``argv`` under ``dmtcp_launch`` with a fresh coordinator."""
        if pass_fds:
            raise RuntimeFailure("the dmtcp backend cannot pass descriptors into the job")
        self._coordinator()
        return self._spawn(
            [self._tool("dmtcp_launch"), "--no-gzip", "--ckptdir", str(self.ckpt_dir), *argv],
            setsid=True,
        )

    def checkpoint(
        self, root: int, sessions: Sequence[int], image_dir: Path, drain: Callable[[], None]
    ) -> float:
        """``dmtcp_command --bcheckpoint``; the images are moved into ``image_dir``."""
        start = time.monotonic()
        drain()
        try:
            self._wait_for_checkpoint(drain)
            pause_s = time.monotonic() - start
            drain()  # a process that died meanwhile fails the checkpoint
        except BaseException:
            self._discard()
            raise
        self._collect(image_dir)
        if not any(p.suffix == ".dmtcp" for p in image_dir.iterdir()):
            raise CheckpointFailed(f"DMTCP wrote no images into {self.ckpt_dir}")
        return pause_s

    def _stuck_draining(self, since: int) -> str:
        """DMTCP's warning that it cannot finish draining a socket, if its log has one."""
        try:
            with open(self.log, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if "Still draining socket" in line:
                return line.split(":", 3)[-1].strip()
        return ""

    def _discard(self) -> None:
        """Remove what a failed checkpoint left (processes may still be writing it)."""
        for item in list(self.ckpt_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink()

    def _wait_for_checkpoint(self, drain: Callable[[], None]) -> None:
        """Run ``dmtcp_command --bcheckpoint``, calling ``drain`` meanwhile: a process of the
        job that dies during a checkpoint can leave DMTCP waiting for it for ever, and
        ``drain`` raises ``CheckpointFailed`` when one did. DMTCP also waits for ever to
        drain a socket whose other end it cannot find (a connection still in a listen
        backlog, not accepted yet): ``CheckpointLostJob`` as soon as it says so in its log,
        or when the checkpoint takes longer than writing the job's memory at 25 MiB/s
        plus 20 s."""
        resident = procs.resident_bytes(procs.descendants(os.getpid()))
        timeout_s = 20 + resident / (25 << 20)
        log_at = self.log.stat().st_size if self.log.exists() else 0
        argv = [self._tool("dmtcp_command"), "--bcheckpoint"]
        proc = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        start = time.monotonic()
        next_look = start + 1
        try:
            while proc.poll() is None:
                drain()
                now = time.monotonic()
                if now > start + timeout_s:
                    raise CheckpointLostJob(f"DMTCP's checkpoint took over {timeout_s:.0f}s")
                if now > next_look:
                    next_look = now + 1
                    stuck = self._stuck_draining(log_at)
                    if stuck:
                        raise CheckpointLostJob(f"DMTCP's checkpoint is stuck: {stuck}")
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            said, _ = proc.communicate()
        if proc.returncode != 0:
            raise CheckpointFailed(f"dmtcp_command --bcheckpoint failed: {said.strip()[-500:]}")

    def _collect(self, image_dir: Path) -> None:
        """Move what DMTCP wrote into ``image_dir``, flat (``_files`` dirs flattened), with
        the directory it wrote to (``_files`` go back there on restore: the images name
        the copies they need by absolute path)."""
        image_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / _WHERE).write_text(str(self.ckpt_dir), encoding="utf-8")
        for item in list(self.ckpt_dir.iterdir()):
            if item.is_dir():
                for inner in item.iterdir():
                    shutil.move(inner, image_dir / f"{item.name}{_SUBDIR}{inner.name}")
                item.rmdir()
            elif item.suffix == ".dmtcp":
                shutil.move(item, image_dir / item.name)
            else:  # restart scripts: dmtcp_restart is run directly
                item.unlink(missing_ok=True)

    def restore(self, image_dir: Path, pipes: Mapping[str, int]) -> int:
        """Start ``dmtcp_restart`` on every image of ``image_dir``; its pid (the job root's
        process). The restored processes run at once (``resume`` has nothing to do)."""
        images = sorted(str(p) for p in image_dir.glob("*.dmtcp"))
        if not images:
            raise RuntimeFailure(f"{image_dir} holds no DMTCP images")
        where = image_dir / _WHERE
        written_to = Path(where.read_text(encoding="utf-8")) if where.exists() else self.ckpt_dir
        self._coordinator()
        for item in list(image_dir.iterdir()):
            if _SUBDIR in item.name:
                folder, _, name = item.name.partition(_SUBDIR)
                (written_to / folder).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item, written_to / folder / name)
        # Not a session leader: the restored job root makes its own session again.
        return self._spawn(
            [self._tool("dmtcp_restart"), "--ckptdir", str(self.ckpt_dir), *images],
            setsid=False,
        )

    def resume(self, sessions: Sequence[int]) -> None:
        """Nothing: DMTCP's restored processes continue as soon as they are restored."""

    def real_pids(self, vpids: Mapping[int, int], *, timeout_s: float = 30) -> dict[int, int]:
        """Map the values of ``vpids`` (virtual pids) to real pids, keys kept."""
        deadline = time.monotonic() + timeout_s
        while True:
            listing = self._command("--list", error=RuntimeFailure).stdout
            table = {int(v): int(r) for v, r in _CLIENT.findall(listing)}
            if all(v in table for v in vpids.values()):
                return {k: table[v] for k, v in vpids.items()}
            if time.monotonic() > deadline:
                missing = sorted(set(vpids.values()) - set(table))
                raise RuntimeFailure(f"DMTCP's coordinator does not know processes {missing}")
            time.sleep(0.02)

    def kill(self, sessions: Sequence[int]) -> None:
        """SIGKILL the coordinator and every process of the job; reap them."""
        procs.kill_descendants(sessions)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.ckpt_dir)
