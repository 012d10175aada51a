"""The local runtime: a job as real OS processes on one machine, surviving ``kill -9``.

Architecture (why it is built this way):

* **One process per rank, one supervisor.** ``snapline run`` is the supervisor; it spawns a
  worker process per rank (``worker``), detects failures (``supervisor``: pidfds for exits,
  heartbeats for hangs) and coordinates recovery (``job``). Workers are its children, so an
  exit is seen the instant it happens, and a worker exits when its supervisor is gone.
* **Unix sockets in a private directory.** Channels are Unix stream sockets in a fresh 0700
  directory (``channels``): reliable and FIFO while both ends live, no network exposure, and
  admission by an HMAC challenge-response on a per-job secret that never touches disk
  (``wire``). Per-channel sequence numbers, acknowledgements and resend-after-reconnect cover
  the death of an end.
* **The same engine and protocols as the simulator.** Each worker runs its rank through the
  shared ``RankEngine`` with the unchanged protocol class; recovery calls the protocol's pure
  ``plan_recovery`` on a ``RecoveryView`` built from the ledgers (``ledger``) and the
  survivors' volatile records.
* **Stable storage is the store plus a ledger.** States go to ``open_store(<store>/rank-N)``;
  checkpoint records, attachments, commit markers, message logs and released output go to an
  fsynced append-only ledger per rank, written in protocol order by one thread (``stable``).

Files in the store directory: ``job.json`` (for ``--resume``), ``status.json`` (``snapline
ps``), ``rank-N/`` (checkpoint states), ``ledger/``, ``logs/*.jsonl`` (structured logs),
``trace/`` and ``trace.json`` (for ``snapline viz``), ``summary.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError
from snapline.runtime.local.config import (
    JobConfig,
    load_job,
    parse_duration_s,
    parse_kill,
)
from snapline.runtime.local.job import LocalJob, RunResult
from snapline.runtime.local.status import JobStatus, read_status
from snapline.runtime.process import Process
from snapline.topology import Topology

__all__ = ["JobConfig", "JobStatus", "LocalJob", "RunResult", "app_spec", "read_status", "run"]


def app_spec(app: str | type[Process]) -> str:
    """The importable spec (``module:Class`` or ``file.py:Class``) of an app class or name."""
    if isinstance(app, str):
        return app
    if not (isinstance(app, type) and issubclass(app, Process)):
        raise ConfigError(f"app must be a Process subclass or a spec string, got {app!r}")
    module = sys.modules.get(app.__module__)
    if app.__module__ == "__main__" or module is None or "<locals>" in app.__qualname__:
        path = getattr(module, "__file__", None)
        if path is None or "<locals>" in app.__qualname__:
            raise ConfigError(
                f"{app.__qualname__} must be defined at the top level of an importable module "
                "or file so that worker processes can import it"
            )
        return f"{Path(path).resolve()}:{app.__qualname__}"
    return f"{app.__module__}:{app.__qualname__}"


def run(
    app: str | type[Process],
    n: int | None = None,
    *,
    store: str | Path,
    protocol: str = "chandy-lamport",
    interval: str | float = "1s",
    topology: str = "complete",
    seed: int = 0,
    resume: bool = False,
    kill: Iterable[str | tuple[int, float]] = (),
    heartbeat_timeout: str | float = "3s",
    heartbeat_interval: str | float = "0.2s",
    max_restarts: int = 10,
    timeout: str | float = "10m",
    trace: bool = True,
    app_options: Mapping[str, Any] | None = None,
    protocol_options: Mapping[str, Any] | None = None,
    on_status: Callable[[JobStatus], None] | None = None,
) -> RunResult:
    """Run ``app`` on ``n`` local processes under ``protocol``, checkpointing into ``store``.

    Failed ranks (exited, killed, or silent for ``heartbeat_timeout``) are recovered
    automatically; ``kill`` injects faults as ``"RANK@SECONDS"``. With ``resume=True`` a job
    whose processes all died continues from the latest recovery line in ``store`` (``app``,
    ``n`` and ``protocol`` default to the stored job's). Raises ``RuntimeFailure`` when the
    restart limit is reached or the job cannot finish.
    """
    store_path = Path(store)
    spec = app_spec(app)
    if resume:
        previous = load_job(store_path.resolve())
        n = previous.n if n is None else n
        if protocol == "chandy-lamport" and previous.protocol != protocol:
            protocol = previous.protocol
    if n is None:
        raise ConfigError("give the number of ranks (-n)")
    topo = Topology.parse(topology, n, seed=seed)
    kills = [parse_kill(k) if isinstance(k, str) else (int(k[0]), float(k[1])) for k in kill]
    config = JobConfig(
        app=spec,
        n=n,
        protocol=protocol,
        topology=topology,
        edges=[list(e) for e in sorted(topo.edges)],
        interval_s=parse_duration_s(interval),
        store=str(store_path.resolve()),
        seed=seed,
        app_options=dict(app_options or {}),
        protocol_options=dict(protocol_options or {}),
        heartbeat_interval_s=parse_duration_s(heartbeat_interval),
        heartbeat_timeout_s=parse_duration_s(heartbeat_timeout),
        max_restarts=max_restarts,
        timeout_s=parse_duration_s(timeout),
        trace=trace,
    )
    return LocalJob(config, resume=resume, kills=kills, on_status=on_status).run()
