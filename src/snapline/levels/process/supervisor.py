"""The process-level job supervisor: start, checkpoint, detect failures, restore, finish.

Theory of operation
-------------------
A job is N unmodified commands (ranks), all started by one job root (``_jobroot.py``) so that
the whole job is one process tree. Every ``interval_s`` the supervisor takes a global
checkpoint with the backend: freeze every process, read what they wrote, dump the tree,
resume; then it stores the images as one store step (``images.py``), which commits the
global checkpoint atomically. A failure -- a rank ending with a non-zero status or killed
(``kill -9`` from outside), the job root dying, or, with ``hang_timeout_s``, no output from
the job for that long -- makes it kill and reap every process of the job and restore all of
them from the newest committed global checkpoint (or start the job again when there is none),
at most ``max_restarts`` times. ``resume=True`` does the same for a job whose supervisor died.

Output commit: the job's stdout and stderr come to the supervisor through pipes and are held
until a global checkpoint that covers them is committed; only then are they appended to
``<job>/output/rank-R.out`` / ``.err`` (and echoed). A recovery drops the held output: the
restored processes write it again. So no line is lost or duplicated, also for programs whose
output is not deterministic, at the price of output appearing once per interval. Each
checkpoint stores its held output and the length each output file has once it is released,
so a supervisor that died between commit and release repairs the files on ``--resume``.

With a backend that relays output (DMTCP, see ``dmtcp.py``) the bytes come as
position-numbered records through a spool file instead of pipes; the checkpoint's *cut* --
how much of the held output a commit releases -- is then what was read before the
checkpoint began, and the rest waits for the next one (or is dropped beyond the positions
the restored job root reports).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import CheckpointFailed, ConfigError, RuntimeFailure
from snapline.levels.process import procs
from snapline.levels.process.backend import CheckpointLostJob, ProcessBackend
from snapline.levels.process.images import load_global, newest_global, save_global
from snapline.levels.process.relay import Record, SpoolReader
from snapline.runtime.local.status import JobStatus, RankStatus, read_status, write_status
from snapline.store import Store, open_store

JOB_FILE = "process-job.json"
JOB_ROOT = Path(__file__).resolve().with_name("_jobroot.py")
RELAY_ROOT = Path(__file__).resolve().with_name("_relayroot.py")
_READ_BYTES = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessJobSpec:
    """What to run and how: one command per rank and the checkpoint/restart settings."""

    commands: list[list[str]]
    backend: str = "criu"
    interval_s: float = 30.0
    max_restarts: int = 10
    hang_timeout_s: float | None = None
    timeout_s: float | None = None
    #: Global checkpoints kept in the store; older ones are deleted and their chunks freed.
    keep_checkpoints: int = 2

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (``process-job.json``)."""
        return {
            "format": "snapline-process-job",
            "commands": self.commands,
            "backend": self.backend,
            "interval_s": self.interval_s,
            "max_restarts": self.max_restarts,
            "hang_timeout_s": self.hang_timeout_s,
            "timeout_s": self.timeout_s,
            "keep_checkpoints": self.keep_checkpoints,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcessJobSpec:
        """Inverse of ``to_json``."""
        if raw.get("format") != "snapline-process-job":
            raise ConfigError("not a process-level job file")
        return cls(
            commands=[list(c) for c in raw["commands"]],
            backend=raw["backend"],
            interval_s=float(raw["interval_s"]),
            max_restarts=int(raw["max_restarts"]),
            hang_timeout_s=raw.get("hang_timeout_s"),
            timeout_s=raw.get("timeout_s"),
            keep_checkpoints=int(raw.get("keep_checkpoints", 2)),
        )


@dataclass(slots=True, kw_only=True)
class ProcessJobResult:
    """What a finished job did."""

    n: int
    elapsed_s: float
    checkpoints: int
    recoveries: int
    restarts: int
    pauses_s: list[float] = field(default_factory=list)
    output_dir: Path = Path()
    notes: list[str] = field(default_factory=list)


def rank_env(rank: int, n: int) -> dict[str, str]:
    """The environment a rank gets: the supervisor's plus its rank and the job size."""
    env = dict(os.environ)
    env.update(
        SNAPLINE_RANK=str(rank), SNAPLINE_WORLD_SIZE=str(n), RANK=str(rank), WORLD_SIZE=str(n)
    )
    return env


def output_path(job_dir: Path, pipe: str) -> Path:
    """``out3`` -> ``<job>/output/rank-3.out``; ``err3`` -> ``rank-3.err``."""
    return job_dir / "output" / f"rank-{pipe[3:]}.{pipe[:3]}"


class ProcessJob:
    """One run of a process-level job by this supervisor; see the module docstring."""

    def __init__(
        self,
        spec: ProcessJobSpec,
        job_dir: Path,
        backend: ProcessBackend,
        *,
        echo: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.spec = spec
        self.n = len(spec.commands)
        self.job_dir = job_dir
        self.backend = backend
        self.echo = echo
        self.store: Store = open_store(job_dir / "images")
        self.work = job_dir / "work"
        self.readers: dict[str, int] = {}  # pipe name -> read end
        self.held: dict[str, bytearray] = {}  # output not covered by a commit yet
        self.status_buf = bytearray()
        self.spool = SpoolReader(self.work / "relay.spool") if backend.relays_output else None
        self.pos: dict[str, int] = {}  # relayed stream -> where what was read ends
        self.status_log = bytearray()  # relayed: every status line, to replay after a restore
        self.hello = False  # relayed: the job root said where it stands
        self.early: list[Record] = []  # relayed: records that came before the hello
        self.root_vpid = 0
        self.cut: dict[str, int] | None = None  # held bytes the checkpoint being taken covers
        self.root = 0
        self.rank_pids: dict[int, int] = {}
        self.rank_vpids: dict[int, int] = {}
        self.finished: dict[int, int] = {}  # rank -> wait status
        self.root_status: int | None = None
        self.failure = ""
        self.restarts = 0
        self.recoveries = 0
        self.checkpoints = 0
        self.last_step = 0  # the global checkpoint the job last took or came back from
        self.pauses_s: list[float] = []
        self.notes: list[str] = []
        self.last_output = time.monotonic()
        self.status = JobStatus(
            job_id=uuid.uuid4().hex[:12],
            app=" | ".join(" ".join(c) for c in spec.commands),
            protocol=f"coordinated (process level, {backend.name})",
            n=self.n,
            supervisor_pid=os.getpid(),
            state="running",
            started_at=time.time(),
        )

    def _log(self, message: str) -> None:
        """One line in ``<job>/supervisor.log``: what the supervisor did and why."""
        stamp = (
            time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        )
        with open(self.job_dir / "supervisor.log", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")

    # -- pipes and output -----------------------------------------------------------------
    def _new_pipes(self, names: list[str]) -> dict[str, int]:
        """Fresh pipes for ``names``: keep the read ends, return the write ends."""
        writers = {}
        for name in names:
            r, w = os.pipe()
            os.set_blocking(r, False)
            self.readers[name] = r
            self.held.setdefault(name, bytearray())
            writers[name] = w
        return writers

    def _close_readers(self) -> None:
        for fd in self.readers.values():
            os.close(fd)
        self.readers.clear()

    def _pump(self, timeout_s: float) -> None:
        """Read what is ready on the job's pipes, waiting at most ``timeout_s``."""
        if self.spool is not None:
            deadline = time.monotonic() + timeout_s
            while not self._read_spool() and time.monotonic() < deadline:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            return
        if not self.readers:
            time.sleep(timeout_s)
            return
        by_fd = {fd: name for name, fd in self.readers.items()}
        ready, _, _ = select.select(list(by_fd), [], [], timeout_s)
        for fd in ready:
            name = by_fd[fd]
            if self.readers.get(name) == fd:  # a drain meanwhile may have closed it
                self._read(name, fd)

    def _read(self, name: str, fd: int) -> bool:
        """Read one chunk; False when nothing was there (or at end of file)."""
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return False
        if not data:
            os.close(fd)
            del self.readers[name]
            return False
        if name == "status":
            self._on_status(data)
        else:
            self.held[name] += data
            self.last_output = time.monotonic()
        return True

    def _read_spool(self) -> bool:
        """Take the records the job root relayed; False when there were none."""
        assert self.spool is not None
        records = self.spool.read()
        for record in records:
            self._on_record(record)
        return bool(records)

    def _on_record(self, record: Record) -> None:
        if record.hello is not None:
            self._on_hello(record)
            return
        if not self.hello:
            # Written by a job root restored from a checkpoint taken while it was writing
            # this very record: its hello comes next (see _relayroot.py).
            self.early.append(record)
            return
        name, data = record.stream, record.data
        end = self.pos.get(name, 0)
        if record.pos + len(data) <= end:
            return  # already had it
        if record.pos > end:
            raise RuntimeFailure(f"the job's {name} skipped bytes {end}..{record.pos}")
        data = data[end - record.pos :]
        self.pos[name] = end + len(data)
        if name == "status":
            self.status_log += data
            self._on_status(data)
        else:
            self.held.setdefault(name, bytearray()).extend(data)
            self.last_output = time.monotonic()

    def _on_hello(self, record: Record) -> None:
        """The job root (re)started writing: drop what the lost run wrote beyond the
        positions the checkpoint holds, replay the status lines up to there, then take the
        records that came before the hello."""
        assert record.hello is not None
        for name, at in record.hello.items():
            if name == "status":
                del self.status_log[at:]
                self.pos[name] = len(self.status_log)
                continue
            released = _size(output_path(self.job_dir, name))
            held = self.held.setdefault(name, bytearray())
            if at < released:
                raise RuntimeFailure(
                    f"the restored job's {name} is at byte {at}, but {released} bytes of it "
                    "were released: the checkpoint does not cover released output"
                )
            del held[at - released :]
            # Short of ``at`` only when the bytes up to it come in an early record.
            self.pos[name] = released + len(held)
        self.status_buf.clear()
        self.rank_vpids, self.finished, self.failure = {}, {}, ""
        self._on_status(bytes(self.status_log))
        self.root_vpid = record.root_vpid
        self.hello = True
        early, self.early = self.early, []
        for item in early:
            self._on_record(item)

    def _drain(self) -> None:
        """Read everything the (frozen) job has written."""
        if self.spool is not None:
            while self._read_spool():
                pass
            return
        for name, fd in list(self.readers.items()):
            while name in self.readers and self._read(name, fd):
                pass

    def _drain_frozen(self) -> None:
        """``_drain`` for a checkpoint, which must not contain a failure: a rank that died
        before the freeze (its exit not reported yet) would die again after every restore."""
        self._drain()
        if self.cut is None:  # the first drain of a checkpoint: what it surely covers
            self.cut = {name: len(data) for name, data in self.held.items()}
        dead = self._unreported_ends()
        if self.failure or dead or procs.state_of(self.root) in (None, "Z", "X"):
            raise CheckpointFailed(
                f"the job failed during the checkpoint ({self.failure or f'ranks {dead} died'})"
            )

    def _unreported_ends(self) -> list[int]:
        """Ranks whose process ended (or is a zombie) with no exit reported by the job root."""
        return [
            r
            for r, pid in self.rank_pids.items()
            if r not in self.finished and procs.state_of(pid) in (None, "Z", "X")
        ]

    def _await_exit_reports(self, timeout_s: float = 5.0) -> None:
        """After a failed checkpoint: the job root reports ranks that ended during it (a
        normal end, or a kill) once the job runs again. Under DMTCP a process killed during
        a checkpoint can leave the others suspended for ever; then no report comes, and
        that is a failure."""
        deadline = time.monotonic() + timeout_s
        while not self.failure and self.root_status is None:
            dead = self._unreported_ends()
            if not dead:
                return
            if time.monotonic() > deadline:
                self.failure = (
                    f"ranks {dead} ended during a checkpoint and the job root did not report "
                    f"it within {timeout_s:g}s (the job is stuck)"
                )
                return
            self._pump(0.05)
            self._reap()

    def _on_status(self, data: bytes) -> None:
        self.status_buf += data
        while b"\n" in self.status_buf:
            line, _, rest = bytes(self.status_buf).partition(b"\n")
            self.status_buf = bytearray(rest)
            kind, rank_text, value = line.decode().split(" ", 2)
            rank = int(rank_text)
            if kind == "start":
                self.rank_pids[rank] = self.rank_vpids[rank] = int(value)
            elif kind == "exit":
                status = int(value)
                self.finished[rank] = status
                if status != 0 and not self.failure:
                    if self.spool is None:
                        self._drain()  # its last words, for the message
                    said = bytes(self.held.get(f"err{rank}", b"")).decode(errors="replace")
                    tail = said.strip().splitlines()[-1:] or [""]
                    self.failure = f"rank {rank} ended: {procs.wait_status_text(status)}" + (
                        f" ({tail[0][:300]})" if tail[0] else ""
                    )
            elif kind == "error":
                raise ConfigError(f"rank {rank} could not start: {value}")

    def _release(self, cut: dict[str, int] | None = None) -> None:
        """Append the held output (its first ``cut`` bytes) to the output files: it is
        covered by a commit now."""
        for name, data in self.held.items():
            size = len(data) if cut is None else cut.get(name, 0)
            if not size:
                continue
            path = output_path(self.job_dir, name)
            with open(path, "ab") as fh:
                fh.write(data[:size])
                fh.flush()
                os.fsync(fh.fileno())
            if self.echo is not None:
                self.echo(name, bytes(data[:size]))
            del data[:size]

    # -- the job's processes --------------------------------------------------------------
    def _sessions(self) -> list[int]:
        return [self.root, *self.rank_pids.values()]

    def _map_pids(self) -> None:
        """The real pids of the root and the ranks (the backend may virtualise them)."""
        if self.spool is None:
            return
        live = {r: v for r, v in self.rank_vpids.items() if r not in self.finished}
        real = self.backend.real_pids({-1: self.root_vpid, **live})
        self.root = real.pop(-1)
        self.rank_pids = {**self.rank_vpids, **real}  # an ended rank keeps its virtual pid

    def _wait_for_ranks(self, what: str) -> None:
        deadline = time.monotonic() + 30
        while len(self.rank_pids) < self.n or (self.spool is not None and not self.hello):
            self._pump(0.05)
            self._reap()
            if self.failure or self.root_status is not None or time.monotonic() > deadline:
                raise RuntimeFailure(f"the job did not {what}: {self.failure or 'no ranks'}")
        self._map_pids()

    def _start_relayed(self) -> None:
        assert self.spool is not None
        self.spool.reset()
        self.pos, self.status_log, self.hello, self.early = {}, bytearray(), False, []
        self.status_buf.clear()
        job = {
            "spool": str(self.spool.path),
            "ranks": [{"argv": cmd, "env": rank_env(r, self.n)}
                      for r, cmd in enumerate(self.spec.commands)],
        }  # fmt: skip
        self.rank_pids, self.rank_vpids, self.finished, self.root_status = {}, {}, {}, None
        self.root = self.backend.launch(
            [sys.executable, "-I", str(RELAY_ROOT), json.dumps(job)], []
        )
        self._wait_for_ranks("start")

    def _start_fresh(self) -> None:
        if self.spool is not None:
            self._start_relayed()
            return
        names = ["status"] + [f"{s}{r}" for r in range(self.n) for s in ("out", "err")]
        writers = self._new_pipes(names)
        job = {
            "status": writers["status"],
            "ranks": [
                {"argv": cmd, "env": rank_env(r, self.n), "out": writers[f"out{r}"],
                 "err": writers[f"err{r}"]}
                for r, cmd in enumerate(self.spec.commands)
            ],
        }  # fmt: skip
        argv = [sys.executable, "-I", str(JOB_ROOT), json.dumps(job)]
        try:
            self.root = self.backend.launch(argv, list(writers.values()))
        finally:
            for w in writers.values():
                os.close(w)
        self.rank_pids, self.finished, self.root_status = {}, {}, None
        self._wait_for_ranks("start")  # the pids are needed to freeze the job

    def _reap(self) -> None:
        for pid, status in procs.reap().items():
            if pid == self.root:
                self.root_status = status
                if status != 0 and not self.failure:
                    self.failure = f"the job root ended: {procs.wait_status_text(status)}"

    def _kill_all(self) -> None:
        self.backend.kill(self._sessions())
        self._close_readers()
        self.status_buf.clear()

    # -- checkpoint and restore -----------------------------------------------------------
    def _checkpoint(self) -> None:
        step = (self.store.steps() or [0])[-1] + 1
        need = procs.resident_bytes(procs.members(self._sessions()))
        image_dir = scratch_dir(self.job_dir, need) / f"dump-{step}"
        shutil.rmtree(image_dir, ignore_errors=True)
        self.cut = None
        try:
            pause_s = self.backend.checkpoint(
                self.root, self._sessions(), image_dir, self._drain_frozen
            )
            cut: dict[str, int] = self.cut or {}
        except CheckpointFailed as exc:
            self._log(f"checkpoint {step} failed: {exc}")
            self.notes.append(f"checkpoint {step} failed, the job goes on: {exc}")
            self.status.note = self.notes[-1]
            shutil.rmtree(image_dir, ignore_errors=True)
            if isinstance(exc, CheckpointLostJob) and not self.failure:
                self.failure = str(exc)
            self._await_exit_reports()
            return
        pipes = {name: f"pipe:[{os.fstat(fd).st_ino}]" for name, fd in self.readers.items()}
        released = {
            name: _size(output_path(self.job_dir, name)) + cut.get(name, 0) for name in self.held
        }
        meta = {
            "level": "process",
            "backend": self.backend.name,
            "root": self.root,
            "ranks": {str(r): p for r, p in self.rank_pids.items()},
            "finished": {str(r): s for r, s in self.finished.items()},
            "pipes": pipes,
            "released": released,
            "cut": cut,
            "pause_s": pause_s,
        }
        output = {name: bytes(data) for name, data in self.held.items()}
        if self.spool is not None:
            output["status"] = bytes(self.status_log)
        save_global(self.store, step, image_dir, output, meta)
        self._release(cut)
        shutil.rmtree(image_dir, ignore_errors=True)
        old = self.store.steps()[: -self.spec.keep_checkpoints]
        for gone in old:
            self.store.delete(gone)
        if old:
            self.store.gc()
        self.checkpoints += 1
        self.last_step = step
        self._log(f"checkpoint {step} committed (pause {pause_s:.3f}s)")
        self.pauses_s.append(pause_s)
        self.status.checkpoints_committed = self.checkpoints
        self._write_status()

    def _restore_newest(self) -> None:
        """Start the job from the newest committed global checkpoint (or from scratch)."""
        for data in self.held.values():
            data.clear()
        step = newest_global(self.store)
        if step is None:
            for name in ["status"] + [f"{s}{r}" for r in range(self.n) for s in ("out", "err")]:
                if name != "status":
                    output_path(self.job_dir, name).write_bytes(b"")
            self._start_fresh()
            self._log(f"started from scratch (root {self.root}, ranks {self.rank_pids})")
            return
        need = self.store.info(step).total_bytes
        image_dir = scratch_dir(self.job_dir, need) / f"restore-{step}"
        shutil.rmtree(image_dir, ignore_errors=True)
        meta, output = load_global(self.store, step, image_dir)
        cuts = meta.get("cut") or {}
        for name, length in meta["released"].items():
            held = output.get(name, b"")
            cut = int(cuts.get(name, len(held)))
            _repair(output_path(self.job_dir, name), int(length), held[:cut])
            self.held.setdefault(name, bytearray()).extend(held[cut:])
        if self.spool is not None:
            self._restore_relayed(image_dir, step, output.get("status", b""))
            return
        old_names = {pipe: name for name, pipe in meta["pipes"].items()}
        writers = self._new_pipes(list(meta["pipes"]))
        try:
            self.root = self.backend.restore(
                image_dir, {pipe: writers[name] for pipe, name in old_names.items()}
            )
        finally:
            for w in writers.values():
                os.close(w)
        self.rank_pids = {int(r): int(p) for r, p in meta["ranks"].items()}
        self.finished = {int(r): int(s) for r, s in meta["finished"].items()}
        self.root_status = None
        self.backend.resume(self._sessions())
        self.last_step = step
        self._log(f"restored checkpoint {step} (root {self.root}, ranks {self.rank_pids})")
        shutil.rmtree(image_dir, ignore_errors=True)

    def _restore_relayed(self, image_dir: Path, step: int, status_log: bytes) -> None:
        assert self.spool is not None
        self.spool.reset()
        self.pos, self.status_log, self.hello, self.early = {}, bytearray(status_log), False, []
        self.status_buf.clear()
        self.root_status = None
        self.root = self.backend.restore(image_dir, {})
        self.rank_pids = {}
        self._wait_for_ranks("come back")
        self.last_step = step
        self._log(f"restored checkpoint {step} (root {self.root}, ranks {self.rank_pids})")
        shutil.rmtree(image_dir, ignore_errors=True)

    def _recover(self, why: str) -> None:
        self.restarts += 1
        self.recoveries += 1
        self.notes.append(f"recovery {self.recoveries}: {why}")
        self._log(f"failure: {why}; recovery {self.recoveries}")
        self.status.state = "recovering"
        self.status.recoveries = self.recoveries
        self.status.note = self.notes[-1]
        self._write_status()
        self._kill_all()
        if self.restarts > self.spec.max_restarts:
            raise RuntimeFailure(
                f"restart limit reached ({self.spec.max_restarts}); last failure: {why}"
            )
        self.failure = ""
        self._restore_newest()
        self.status.state = "running"
        self.last_output = time.monotonic()
        self._write_status()

    # -- the main loop --------------------------------------------------------------------
    def _write_status(self) -> None:
        self.status.ranks = [
            RankStatus(
                rank=r,
                pid=self.rank_pids.get(r),
                state="finished" if self.finished.get(r) == 0 else "running",
                incarnation=self.recoveries,
                restarts=self.restarts,
                last_checkpoint=self.last_step,
            )
            for r in range(self.n)
        ]
        self.status.incarnation = self.recoveries
        self.status.job_root_pid = self.root
        write_status(self.job_dir, self.status)

    def run(self, *, resume: bool) -> ProcessJobResult:
        """Run the job to its end (see the module docstring)."""
        start = time.monotonic()
        (self.job_dir / "output").mkdir(parents=True, exist_ok=True)
        self.work.mkdir(exist_ok=True)
        shutil.rmtree(shm_dir(self.job_dir), ignore_errors=True)
        self.backend.bind(scratch_dir(self.job_dir, 0), self.job_dir)
        try:
            if resume:
                self.backend.kill(leftover_sessions(self.job_dir))
                self.status.recoveries = self.recoveries = 1
                self._restore_newest()
            else:
                for r in range(self.n):
                    for s in ("out", "err"):
                        output_path(self.job_dir, f"{s}{r}").write_bytes(b"")
                self._start_fresh()
            self._write_status()
            next_checkpoint = time.monotonic() + self.spec.interval_s
            next_status = time.monotonic() + 0.5
            while True:
                now = time.monotonic()
                self._pump(max(0.0, min(next_checkpoint, next_status) - now, 0.001))
                self._reap()
                now = time.monotonic()
                if self.spec.timeout_s is not None and now - start > self.spec.timeout_s:
                    raise RuntimeFailure(f"the job did not finish within {self.spec.timeout_s}s")
                hang = self.spec.hang_timeout_s
                if not self.failure and hang is not None and now - self.last_output > hang:
                    self.failure = f"no output from the job for {hang:g}s (hang)"
                if self.failure:
                    self._recover(self.failure)
                    next_checkpoint = time.monotonic() + self.spec.interval_s
                    continue
                if self.root_status == 0:
                    self._drain_to_end()
                    break
                if now >= next_checkpoint:
                    self._checkpoint()
                    # The checkpoint's own time is no silence of the job's (hang detection).
                    self.last_output += time.monotonic() - now
                    next_checkpoint = time.monotonic() + self.spec.interval_s
                if now >= next_status:
                    self._write_status()
                    next_status = now + 0.5
        except BaseException:
            self.status.state = "failed"
            self._write_status()
            self._kill_all()
            raise
        finally:
            self.store.close()
            shutil.rmtree(shm_dir(self.job_dir), ignore_errors=True)
        self._release()
        self.status.state = "finished"
        self._write_status()
        return ProcessJobResult(
            n=self.n,
            elapsed_s=time.monotonic() - start,
            checkpoints=self.checkpoints,
            recoveries=self.recoveries,
            restarts=self.restarts,
            pauses_s=self.pauses_s,
            output_dir=self.job_dir / "output",
            notes=self.notes,
        )

    def _drain_to_end(self) -> None:
        """The job ended: read its pipes to their end (a leftover holder gets 5 s)."""
        deadline = time.monotonic() + 5
        while self.readers and time.monotonic() < deadline:
            self._pump(0.05)


#: Images go to memory (``/dev/shm``) when twice their size is free there: the dump (the
#: pause) and the restore then do not wait for the disk; the store holds the durable copy.
SHM = Path("/dev/shm")


def shm_dir(job_dir: Path) -> Path:
    """The job's directory in ``/dev/shm``: named after the job directory, so that a
    ``--resume`` finds (and clears) what a supervisor that died left there."""
    key = hashlib.sha256(str(job_dir.resolve()).encode()).hexdigest()[:16]
    return SHM / f"snapline-images-{key}"


def scratch_dir(job_dir: Path, need_bytes: int) -> Path:
    """Where to write images of about ``need_bytes``: the job's ``shm_dir`` when
    ``/dev/shm`` has room for twice that, else the job's ``work`` directory."""
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return job_dir / "work"
    if stat.f_bavail * stat.f_frsize < 2 * need_bytes + (64 << 20):
        return job_dir / "work"
    path = shm_dir(job_dir)
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _repair(path: Path, length: int, held: bytes) -> None:
    """Make ``path`` exactly ``length`` bytes: cut what a rolled-back run released, or add
    the end of ``held`` that a supervisor dying between commit and release did not write."""
    size = _size(path)
    if size > length:
        with open(path, "r+b") as fh:
            fh.truncate(length)
    elif size < length:
        missing = length - size
        if missing > len(held):
            raise RuntimeFailure(f"{path} lacks {missing} bytes that no checkpoint holds")
        with open(path, "ab") as fh:
            fh.write(held[len(held) - missing :])


def load_spec(job_dir: Path) -> ProcessJobSpec:
    """The spec of the process-level job in ``job_dir``."""
    try:
        raw = json.loads((job_dir / JOB_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{job_dir} holds no process-level job ({JOB_FILE})") from None
    return ProcessJobSpec.from_json(raw)


def leftover_sessions(job_dir: Path) -> list[int]:
    """Sessions of a previous supervisor's job that may still run (from its status file)."""
    try:
        status = read_status(job_dir)
    except ConfigError:
        return []
    out = [status.job_root_pid] if status.job_root_pid else []
    return out + [r.pid for r in status.ranks if r.pid]
