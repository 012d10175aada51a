"""A system-level job's directory, read from outside: its spec, checkpoints and supervisor.

Layout of ``DIR`` (``snapline vm run SPEC --store DIR``)::

    vm-job.json                 the spec the job was started with (the workload's text in it)
    status.json                 what ``snapline ps`` shows (each VM's QEMU pid, state, ...)
    rank-<r>/                   rank r's store: step k = its part of checkpoint k
    checkpoints/<k:08d>.json    checkpoint k's record, written once every rank's step k is
                                committed: a checkpoint is complete exactly when this exists
    output/rank-<r>.log         rank r's released guest output (output commit)

The supervisor's sockets, QEMU's serial logs and migration files live in a private temporary
directory that ``status.json`` names (``socket_dir``); ``send_control`` talks to the supervisor
through it (``snapline vm checkpoint``, ``snapline vm restore``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError, RuntimeFailure
from snapline.levels.system.spec import VmSpec

JOB_FILE = "vm-job.json"
RECORDS = "checkpoints"
OUTPUT = "output"
CONTROL_SOCKET = "control.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRecord:
    """One complete coordinated checkpoint of every guest (``checkpoints/<step>.json``)."""

    step: int
    created_unix_s: float
    pause_s: float  # first stop .. last cont
    stop_skew_s: float  # first stop returned .. last stop returned
    save_s: float  # writing the streams into the stores, after the guests continued
    stream_bytes: list[int]  # per rank: size of the migration stream
    written_bytes: list[int]  # per rank: bytes the store wrote (new segments)
    in_flight_frames: list[int]  # per destination rank
    frames_consumed: bool  # every delivered frame read by its guest before the stop
    frames_dropped: int = 0  # by the switch since the job (re)started: guest gone, backlog full

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)


def read_records(job_dir: Path) -> list[CheckpointRecord]:
    """The job's complete checkpoints, oldest first."""
    out = []
    for path in sorted((job_dir / RECORDS).glob("*.json")):
        with contextlib.suppress(ValueError, TypeError):
            out.append(CheckpointRecord(**json.loads(path.read_text(encoding="utf-8"))))
    return out


def load_job_spec(job_dir: Path) -> VmSpec:
    """The spec a job directory was started with."""
    path = job_dir / JOB_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{job_dir} is not the store of a `snapline vm run` job") from None
    return VmSpec.from_json(raw["spec"])


def kill_leftovers(job_dir: Path) -> None:
    """Kill the QEMUs a dead supervisor of this job left running (``--resume``).

    A QEMU runs in its own session, so it outlives a supervisor killed with ``kill -9``. Only
    processes whose command line names the old run directory are killed: a pid the system has
    given to another program since is left alone.
    """
    from snapline.runtime.local.status import read_status

    try:
        old = read_status(job_dir)
    except ConfigError:
        return
    if old.state == "finished":
        raise ConfigError(
            f"the job in {job_dir} has finished (its output is released); nothing to resume"
        )
    if _is_supervisor(old.supervisor_pid) and old.state not in ("failed", "stopped"):
        raise ConfigError(
            f"{job_dir} is still supervised by pid {old.supervisor_pid}; stop it first"
        )
    if not old.socket_dir:
        return
    for rank in old.ranks:
        if rank.pid is None:
            continue
        try:
            cmdline = Path(f"/proc/{rank.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if old.socket_dir.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rank.pid, signal.SIGKILL)
    shutil.rmtree(old.socket_dir, ignore_errors=True)


def _is_supervisor(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        return b"snapline" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def send_control(
    job_dir: Path, request: dict[str, Any], timeout_s: float = 300.0
) -> dict[str, Any]:
    """Send one request to the running supervisor of ``job_dir``; its reply."""
    from snapline.runtime.local.status import pid_alive, read_status

    status = read_status(job_dir)
    if not pid_alive(status.supervisor_pid) or status.state in ("finished", "failed", "stopped"):
        raise RuntimeFailure(
            f"no supervisor is running for {job_dir}; restart it with snapline vm run --resume"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(Path(status.socket_dir) / CONTROL_SOCKET))
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    if not reply.get("ok"):
        raise RuntimeFailure(f"the supervisor refused: {reply.get('error')}")
    return reply
