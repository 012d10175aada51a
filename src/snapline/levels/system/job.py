"""``snapline vm run``: supervise a job whose ranks are QEMU guests; coordinated checkpoints.

Theory of operation
-------------------
The job is the coordinated family at the grain of whole machines. A **checkpoint** (``step``
1, 2, ...) is: the switch holds frames and waits until the guests have read the ones already
delivered; every guest is stopped over QMP (one ``gather``: they stop within a millisecond);
the switch reads the frames sent before the stops (the channel state); the host reads the
guests' output up to the stop; every stopped guest migrates its RAM, devices and CPU state
into a file; every guest continues; the switch delivers what it held. The **pause** reported
is from the first ``stop`` to the last ``cont``. Then, while the guests run on, each rank's
migration stream is cut into content-defined segments (``stream.py``) and saved, with the
frames bound for that rank and the output it produced before the cut, as step ``k`` of the
rank's store (``rank-<r>/``); the store keeps each segment once, so a second checkpoint of a
mostly idle guest writes a fraction of its RAM. When every rank's step ``k`` is committed the
job's record ``checkpoints/<k>.json`` is written (atomically): a checkpoint is complete exactly
when its record exists.

**Output commit.** The guest's output (its second serial port) is read by the host as it
comes, but held back. Only when checkpoint ``k`` is complete is the output produced before its
cut released, appended to ``output/rank-<r>.log``. After a rollback to ``k`` the guests produce
the output after ``k``'s cut again, and none of it was released before: nothing is released
twice and nothing is lost. The rank's checkpoint holds the output it covers and the length of
the released file before it, so a supervisor killed between the record and the release
completes the release on ``--resume``.

**Failures.** A QEMU that exits with a non-zero status (``kill -9`` from outside) or whose QMP
does not answer ``query-status`` within ``hang_timeout_s`` has failed. Every QEMU is then
killed and reaped, the switch forgets what it held, and every rank is restarted from the newest
complete checkpoint with ``-incoming``; once all have loaded their state, the frames recorded in
flight are put back on the switch and every guest continues. TCP connections between guests
survive because both ends and the frames between them come from the same cut. Without a
checkpoint the job starts again from boot. A guest that powers off (QEMU exits 0) has finished;
the job ends when all have.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snapline._durable import fsync_dir, write_atomic
from snapline.errors import ConfigError, RecoveryError, StoreError
from snapline.levels.system import stream
from snapline.levels.system.image import GuestImage, build_image
from snapline.levels.system.jobdir import (
    CONTROL_SOCKET,
    JOB_FILE,
    OUTPUT,
    RECORDS,
    CheckpointRecord,
    kill_leftovers,
    load_job_spec,
    read_records,
)
from snapline.levels.system.machine import GuestConfig, Machine, Monitors, find_qemu
from snapline.levels.system.network import Switch, ip_of
from snapline.levels.system.spec import VmSpec
from snapline.runtime.local.status import JobStatus, RankStatus, write_status
from snapline.store import Store, open_store

# Errors no restore can cure: stop the job instead of recovering.
_FATAL = (ConfigError, StoreError, KeyboardInterrupt)

STATUS_EVERY_S = 0.5


@dataclass(slots=True, kw_only=True)
class VmJobResult:
    """What ``VmJob.run`` returns."""

    finished: bool
    recoveries: int
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    restore_s: list[float] = field(default_factory=list)


class VmJob:
    """The supervisor of one system-level job (see the module docstring)."""

    def __init__(
        self,
        spec: VmSpec,
        job_dir: Path,
        *,
        interval_s: float | None = 30.0,
        resume: bool = False,
        hang_timeout_s: float = 10.0,
        boot_timeout_s: float = 120.0,
        max_recoveries: int = 10,
        on_output: Callable[[int, bytes], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        find_qemu()
        self.spec = spec
        self.dir = job_dir
        self.interval_s = interval_s
        self.hang_timeout_s = hang_timeout_s
        self.boot_timeout_s = boot_timeout_s
        self.max_recoveries = max_recoveries
        self.on_output = on_output or (lambda rank, data: None)
        self.on_event = on_event or (lambda line: None)
        self._prepare_dir(resume)
        self.image: GuestImage = build_image(spec.workload, rootfs=spec.rootfs)
        self.run_dir = Path(tempfile.mkdtemp(prefix="snapline-vm-"))
        self.switch = Switch(self.run_dir, spec.guests) if spec.network == "switch" else None
        self.monitors = Monitors(timeout_s=hang_timeout_s)
        self.stores: list[Store] = [open_store(self.dir / f"rank-{r}") for r in range(spec.guests)]
        self.machines: list[Machine] = []
        self.incarnation = 0
        self.pending = [bytearray() for _ in range(spec.guests)]
        self.recoveries = 0
        self._status_written = 0.0
        self.result = VmJobResult(finished=False, recoveries=0)
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.bind(str(self.run_dir / CONTROL_SOCKET))
        self._control.listen(4)
        self._control.setblocking(False)
        self.status = JobStatus(
            job_id=self._job_id(),
            app=f"vm: {spec.guests} x {spec.memory_mib} MiB",
            protocol="coordinated (system level, QMP)",
            n=spec.guests,
            supervisor_pid=os.getpid(),
            state="starting",
            started_at=time.time(),
            socket_dir=str(self.run_dir),
            ranks=[RankStatus(rank=r, pid=None, state="starting") for r in range(spec.guests)],
        )

    # -- set-up -----------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool) -> None:
        job_file = self.dir / JOB_FILE
        if job_file.exists():
            if not resume:
                raise ConfigError(
                    f"{self.dir} already holds a VM job; pass --resume to continue it, "
                    "or use a new directory"
                )
            if load_job_spec(self.dir) != self.spec:
                raise ConfigError(f"{self.dir} holds a job with another spec; use a new directory")
            kill_leftovers(self.dir)
            return
        if self.dir.exists() and any(self.dir.iterdir()):
            raise ConfigError(f"{self.dir} is not empty and holds no VM job")
        (self.dir / RECORDS).mkdir(parents=True, exist_ok=True)
        (self.dir / OUTPUT).mkdir(exist_ok=True)
        data = {
            "format": "snapline-vm-job",
            "job_id": secrets.token_hex(4),
            "spec": self.spec.to_json(),
        }
        write_atomic(job_file, json.dumps(data, indent=1).encode())

    def _job_id(self) -> str:
        return str(json.loads((self.dir / JOB_FILE).read_text(encoding="utf-8"))["job_id"])

    def _guest_config(self, rank: int) -> GuestConfig:
        return GuestConfig(
            rank=rank,
            n=self.spec.guests,
            memory_mib=self.spec.memory_mib,
            image=self.image,
            ip=ip_of(rank),
            netdev=self.switch.netdev_args(rank) if self.switch else [],
        )

    # -- the main loop ----------------------------------------------------------------------
    def run(self, *, step: int | None = None) -> VmJobResult:
        """Boot (or resume from ``step``, default the newest complete checkpoint), supervise
        until every guest has powered off; the result."""
        try:
            self.start(step=step)
            self._loop()
        finally:
            self.close()
        return self.result

    def start(self, *, step: int | None = None) -> None:
        """Boot every guest, or restore them all from ``step`` (default: the newest complete
        checkpoint, if any). ``run`` calls it; benchmarks drive ``checkpoint`` themselves."""
        steps = [r.step for r in read_records(self.dir)]
        if step is not None and step not in steps:
            raise ConfigError(f"no complete checkpoint {step} in {self.dir}; there are {steps}")
        newest = step if step is not None else (steps[-1] if steps else None)
        if newest is None:
            self._boot()
        else:
            self._restore(newest)

    def newest_step(self) -> int | None:
        """The newest complete checkpoint, or None."""
        records = read_records(self.dir)
        return records[-1].step if records else None

    def _loop(self) -> None:
        last_checkpoint = time.monotonic()
        last_ping = 0.0
        self._set_state("running")
        while True:
            self._collect_output()
            failed = self._failed_rank()
            if failed is None and time.monotonic() - last_ping > 1.0:
                failed = self._unresponsive_rank()
                last_ping = time.monotonic()
            if failed is not None:
                rank, why = failed
                self._recover(f"rank {rank} {why}")
                last_checkpoint = time.monotonic()
                continue
            codes = [m.exited() for m in self.machines]
            if all(code == 0 for code in codes):
                self._finish()
                return
            running = all(code is None for code in codes)
            due = (
                self.interval_s is not None
                and time.monotonic() - last_checkpoint >= self.interval_s
            )
            if running and due:
                self._checkpoint_or_recover()
                last_checkpoint = time.monotonic()
            self._serve_control(running)
            if time.monotonic() - self._status_written > STATUS_EVERY_S:
                self._write_status()
            time.sleep(0.1)

    def _failed_rank(self) -> tuple[int, str] | None:
        for m in self.machines:
            code = m.exited()
            if code is not None and code != 0:
                how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
                return m.rank, f"QEMU (pid {m.pid}) {how}"
        return None

    def _unresponsive_rank(self) -> tuple[int, str] | None:
        for m in self.machines:
            if m.exited() is not None:
                continue
            try:
                self.monitors.run(Monitors.execute(m, "query-status"), self.hang_timeout_s)
            except Exception as exc:
                if m.exited() is not None and m.exited() == 0:
                    continue  # powered off between the two checks
                return m.rank, f"QEMU (pid {m.pid}) did not answer QMP ({type(exc).__name__})"
        return None

    # -- starting guests --------------------------------------------------------------------
    def _start(self, incoming: dict[int, Path] | None) -> None:
        self.incarnation += 1
        self.machines = [
            Machine(
                self._guest_config(r),
                self.run_dir,
                self.incarnation,
                incoming=None if incoming is None else incoming[r],
            )
            for r in range(self.spec.guests)
        ]
        for m in self.machines:
            self.status.ranks[m.rank] = RankStatus(
                rank=m.rank,
                pid=m.pid,
                state="starting",
                incarnation=self.incarnation,
                restarts=self.recoveries,
                last_checkpoint=self.newest_step() or 0,
            )
        self.status.incarnation = self.incarnation
        self._write_status()
        self.monitors.all(
            [self.monitors.connect(m, self.boot_timeout_s) for m in self.machines],
            self.boot_timeout_s,
        )

    def _boot(self) -> None:
        self.on_event(f"booting {self.spec.guests} guest(s) of {self.spec.memory_mib} MiB")
        self.pending = [bytearray() for _ in range(self.spec.guests)]
        self._start(None)
        self._set_state("running")

    # -- checkpoint -------------------------------------------------------------------------
    def checkpoint(self) -> CheckpointRecord:
        """Take a coordinated checkpoint of every guest now; its record once complete."""
        step = (self.newest_step() or 0) + 1
        for s in self.stores:
            # A step a crashed save left in some ranks' stores (no job record) is rewritten.
            if step in s.steps():
                s.delete(step)
        consumed = True
        if self.switch is not None:
            self.switch.hold()
            consumed = self.switch.wait_consumed(0.5)
        t_stop = time.monotonic()
        self.monitors.all([Monitors.execute(m, "stop") for m in self.machines])
        t_stopped = time.monotonic()
        frames = self.switch.cut() if self.switch is not None else {}
        covered = []
        for m in self.machines:
            self.pending[m.rank] += m.read_output()
            covered.append(bytes(self.pending[m.rank]))
            self.pending[m.rank].clear()
        self.monitors.all(
            [Monitors.migrate_to_file(m) for m in self.machines],
            timeout_s=max(60.0, self.hang_timeout_s),
        )
        self.monitors.all([Monitors.execute(m, "cont") for m in self.machines])
        t_cont = time.monotonic()
        if self.switch is not None:
            self.switch.release()
        pause_s = t_cont - t_stop
        released_before = [self._released_len(r) for r in range(self.spec.guests)]
        written, sizes = [], []
        for m in self.machines:
            data = m.migration_path.read_bytes()
            m.migration_path.unlink()
            state = {
                "stream": stream.split(data),
                "frames": [np.frombuffer(f, dtype=np.uint8) for f in frames.get(m.rank, [])],
                "output": np.frombuffer(covered[m.rank], dtype=np.uint8),
                "output_base": released_before[m.rank],
            }
            meta = {"level": "system", "incarnation": self.incarnation, "disk": self._disk_name()}
            info = self.stores[m.rank].save(state, step=step, meta=meta)
            written.append(info.written_bytes)
            sizes.append(len(data))
        record = CheckpointRecord(
            step=step,
            created_unix_s=time.time(),
            pause_s=round(pause_s, 4),
            stop_skew_s=round(t_stopped - t_stop, 4),
            save_s=round(time.monotonic() - t_cont, 3),
            stream_bytes=sizes,
            written_bytes=written,
            in_flight_frames=[len(frames.get(r, [])) for r in range(self.spec.guests)],
            frames_consumed=consumed,
            frames_dropped=self.switch.dropped if self.switch is not None else 0,
        )
        write_atomic(
            self.dir / RECORDS / f"{step:08d}.json", json.dumps(record.to_json(), indent=1).encode()
        )
        for r in range(self.spec.guests):
            self._release(r, covered[r])
        self.result.checkpoints.append(record)
        self.status.checkpoints_committed += 1
        for rs in self.status.ranks:
            rs.last_checkpoint = step
        self.on_event(
            f"checkpoint {step}: pause {pause_s * 1000:.0f} ms, "
            f"{sum(sizes) / 2**20:.1f} MiB of state, {sum(written) / 2**20:.1f} MiB written, "
            f"{sum(record.in_flight_frames)} frame(s) in flight"
        )
        return record

    # -- output commit ----------------------------------------------------------------------
    def _output_path(self, rank: int) -> Path:
        return self.dir / OUTPUT / f"rank-{rank}.log"

    def _released_len(self, rank: int) -> int:
        try:
            return self._output_path(rank).stat().st_size
        except FileNotFoundError:
            return 0

    def _release(self, rank: int, data: bytes) -> None:
        if not data:
            return
        with open(self._output_path(rank), "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.on_output(rank, data)

    def _release_at(self, rank: int, base: int, data: bytes) -> None:
        """Make the released output hold ``data`` at ``base`` (completing a cut-off release)."""
        path = self._output_path(rank)
        size = self._released_len(rank)
        if size >= base + len(data):
            return  # released already (or a rollback to an older checkpoint: keep what is out)
        with open(path, "ab" if path.exists() else "wb") as fh:
            fh.truncate(base)
        self._release(rank, data)

    def _collect_output(self) -> None:
        for m in self.machines:
            self.pending[m.rank] += m.read_output()

    # -- recovery ---------------------------------------------------------------------------
    def _kill_all(self) -> None:
        for m in self.machines:
            m.kill()  # first: a dead QEMU's QMP disconnects at once, a hung one may not
            with contextlib.suppress(Exception):
                self.monitors.run(Monitors.disconnect(m), 5.0)
        self.machines = []
        if self.switch is not None:
            self.switch.discard()

    def _recover(self, reason: str, step: int | None = None) -> None:
        """Restore every guest (boot them if there is no checkpoint); a failure while doing so
        (another kill -9, a QEMU that does not come up) starts the recovery over."""
        while True:
            self.recoveries += 1
            self.status.recoveries = self.recoveries
            self.result.recoveries = self.recoveries
            if self.recoveries > self.max_recoveries:
                self._set_state("failed")
                raise RecoveryError(f"{reason}; gave up after {self.max_recoveries} recoveries")
            self.on_event(f"failure: {reason}; restoring every guest")
            self._set_state("recovering")
            self._kill_all()
            target = step if step is not None else self.newest_step()
            try:
                if target is None:
                    self._boot()
                else:
                    self._restore(target)
            except _FATAL:
                raise
            except Exception as exc:
                reason = f"the recovery failed ({type(exc).__name__}: {exc})"
                continue
            self._set_state("running")
            return

    def _checkpoint_or_recover(self) -> dict[str, Any]:
        """``checkpoint``; a guest failing during it is recovered from like any failure."""
        try:
            return {"ok": True, "record": self.checkpoint().to_json()}
        except _FATAL:
            raise
        except Exception as exc:
            failed = self._failed_rank()
            why = failed[1] if failed else f"{type(exc).__name__}: {exc}"
            self._recover(f"checkpoint failed: {why}")
            return {"ok": False, "error": f"checkpoint failed: {why}; every guest was restored"}

    def _disk_name(self) -> str | None:
        return self.image.disk.name if self.image.disk is not None else None

    def _restore(self, step: int) -> float:
        t0 = time.monotonic()
        self._set_state("recovering")
        incoming: dict[int, Path] = {}
        frames: dict[int, list[bytes]] = {}
        for r, s in enumerate(self.stores):
            disk = s.manifest(step).meta.get("disk")
            if disk is not None and disk != self._disk_name():
                # The guest's page cache holds blocks of the disk it had: another disk under
                # it would be corrupt in ways no check in the guest would notice.
                raise ConfigError(
                    f"checkpoint {step} was taken with the guest disk {disk}, but this host "
                    f"builds {self._disk_name()} (its Python or packages changed): restore it "
                    "where that disk is in the cache (SNAPLINE_VM_CACHE)"
                )
            state = s.load(step=step)
            path = self.run_dir / f"incoming-{r}.bin"
            with open(path, "wb") as fh:
                for seg in state["stream"]:
                    fh.write(np.ascontiguousarray(seg).data)
            incoming[r] = path
            frames[r] = [bytes(f) for f in state["frames"]]
            self._release_at(r, int(state["output_base"]), bytes(state["output"]))
            self.pending[r] = bytearray()
        self._start(incoming)
        self.monitors.all(
            [Monitors.wait_incoming(m) for m in self.machines], timeout_s=self.boot_timeout_s
        )
        if self.switch is not None:
            self.switch.hold()
            self.switch.inject(frames)
        self.monitors.all([Monitors.execute(m, "cont") for m in self.machines])
        if self.switch is not None:
            self.switch.release()
        for path in incoming.values():
            path.unlink()
        restore_s = time.monotonic() - t0
        self.result.restore_s.append(restore_s)
        self.on_event(
            f"restored checkpoint {step} in {restore_s:.2f} s "
            f"({sum(len(f) for f in frames.values())} frame(s) put back in flight)"
        )
        return restore_s

    def restore(self, step: int | None = None) -> None:
        """Roll every guest back to ``step`` (default: the newest complete checkpoint)."""
        steps = [r.step for r in read_records(self.dir)]
        target = step if step is not None else (steps[-1] if steps else None)
        if target is None or target not in steps:
            raise ConfigError(f"no complete checkpoint {target}; complete ones: {steps}")
        self.recoveries -= 1  # asked for, not a failure
        self._recover(f"restore of checkpoint {target} requested", target)

    def _finish(self) -> None:
        for m in self.machines:
            self.pending[m.rank] += m.read_output()
            self._release(m.rank, bytes(self.pending[m.rank]))
            self.pending[m.rank].clear()
        self.result.finished = True
        self._set_state("finished")
        self.on_event("every guest has powered off: job finished")

    # -- control and status -----------------------------------------------------------------
    def _serve_control(self, running: bool) -> None:
        try:
            conn, _ = self._control.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(5.0)
            try:
                request = json.loads(conn.makefile("rb").readline())
                reply = self._handle(request, running)
            except (OSError, ValueError, KeyError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except ConfigError as exc:
                reply = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _handle(self, request: dict[str, Any], running: bool) -> dict[str, Any]:
        match request.get("command"):
            case "checkpoint":
                if not running:
                    return {"ok": False, "error": "not every guest is running"}
                return self._checkpoint_or_recover()
            case "restore":
                self.restore(request.get("step"))
                return {"ok": True, "step": self.status.ranks[0].last_checkpoint}
            case other:
                return {"ok": False, "error": f"unknown command {other!r}"}

    def _set_state(self, state: str) -> None:
        self.status.state = state
        for rs in self.status.ranks:
            rs.state = {"recovering": "restarting", "starting": "starting"}.get(state, state)
        self._write_status()

    def _write_status(self) -> None:
        steps = [r.step for r in read_records(self.dir)]
        self.status.recovery_line = (
            {str(r): steps[-1] for r in range(self.spec.guests)} if steps else {}
        )
        write_status(self.dir, self.status)
        self._status_written = time.monotonic()

    def close(self) -> None:
        """Kill every guest, stop the switch, remove the run directory."""
        with contextlib.suppress(Exception):
            self._kill_all()
        if self.status.state not in ("finished", "failed"):
            self.status.state = "stopped"
            with contextlib.suppress(OSError):
                write_status(self.dir, self.status)
        if self.switch is not None:
            self.switch.close()
        self.monitors.close()
        self._control.close()
        for s in self.stores:
            s.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        fsync_dir(self.dir)
