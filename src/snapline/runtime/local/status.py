"""The job's status file: who is running where, readable from outside the job.

The supervisor rewrites ``<store>/status.json`` (write to a temporary name, fsync, rename) every
few hundred milliseconds and on every change, so ``snapline ps DIR`` -- and anyone who wants
to ``kill -9`` a rank from outside -- sees each rank's pid, state and incarnation. A reader
never sees a half-written file. The file also names the socket directory (mode 0700) so tests
can prove that a process without the job's secret is turned away.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError

STATUS_NAME = "status.json"


@dataclass(slots=True, kw_only=True)
class RankStatus:
    """One rank as the supervisor sees it."""

    rank: int
    pid: int | None
    state: str  # starting | running | frozen | failed | restarting | finished
    incarnation: int = 0
    restarts: int = 0
    last_checkpoint: int = 0
    #: The host it runs on, where the engine tells (a Ray node's address); None: this one.
    node: str | None = None


@dataclass(slots=True, kw_only=True)
class JobStatus:
    """The whole job: written by the supervisor, read by ``snapline ps``."""

    job_id: str
    app: str
    protocol: str
    n: int
    supervisor_pid: int
    state: str  # running | recovering | finished | failed
    started_at: float
    updated_at: float = 0.0
    incarnation: int = 0
    recoveries: int = 0
    checkpoints_committed: int = 0
    recovery_line: dict[str, int] = field(default_factory=dict)
    messages_per_s: float = 0.0
    messages_delivered: int = 0
    socket_dir: str = ""
    ranks: list[RankStatus] = field(default_factory=list)
    note: str = ""
    #: Process-level jobs: the pid (and session) of the process all ranks descend from.
    job_root_pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)


def write_status(store_dir: Path, status: JobStatus) -> None:
    """Atomically replace the status file."""
    status.updated_at = time.time()
    path = store_dir / STATUS_NAME
    tmp = store_dir / f".{STATUS_NAME}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(status.to_json(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_status(store_dir: str | os.PathLike[str]) -> JobStatus:
    """Read the status file of the job whose store is ``store_dir``."""
    path = Path(store_dir) / STATUS_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{store_dir} has no {STATUS_NAME}: it is not the store of a job started with "
            "`snapline run`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    ranks = [RankStatus(**r) for r in raw.pop("ranks", [])]
    return JobStatus(**raw, ranks=ranks)


def is_this_host(address: str) -> bool:
    """True if ``address`` (a node's IP) belongs to this machine (it can be bound here)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists (it may belong to someone else)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
