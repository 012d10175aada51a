"""The process level: checkpoint and restart unmodified programs from outside (CRIU, DMTCP).

``run_process_job`` runs N commands as one job under a supervisor (``supervisor.py``) that
takes coordinated global checkpoints with a backend (``criu.py``, ``dmtcp.py``) into a
snapline store and restores every process after a failure. ``checkpoint_tree`` and
``restore_tree`` do one checkpoint and one restore of a single process tree (CRIU).
``install.py`` finds and installs the tools; ``doctor.py`` says what works on this machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from snapline.errors import ConfigError
from snapline.levels.process import procs
from snapline.levels.process.backend import ProcessBackend
from snapline.levels.process.supervisor import (
    JOB_FILE,
    ProcessJob,
    ProcessJobResult,
    ProcessJobSpec,
    load_spec,
)

BACKENDS = ("criu", "dmtcp")


def make_backend(name: str) -> ProcessBackend:
    """The backend called ``name``, with its tool found (``ConfigError`` saying how to fix)."""
    from snapline.levels.process.install import find_criu, find_dmtcp

    if name == "criu":
        from snapline.levels.process.criu import CriuBackend

        check = find_criu()
        if not check.ok or check.path is None:
            raise ConfigError(f"CRIU does not work here: {check.problem}. Fix: {check.fix}")
        return CriuBackend(check.path)
    if name == "dmtcp":
        from snapline.levels.process.dmtcp import DmtcpBackend

        found = find_dmtcp()
        if not found.ok or found.path is None:
            raise ConfigError(f"DMTCP does not work here: {found.problem}. Fix: {found.fix}")
        return DmtcpBackend(found.path)
    raise ConfigError(f"unknown process-level backend {name!r}; choose one of {BACKENDS}")


def run_process_job(
    spec: ProcessJobSpec | None,
    job_dir: Path,
    *,
    resume: bool = False,
    echo: Callable[[str, bytes], None] | None = None,
) -> ProcessJobResult:
    """Run (or, with ``resume``, continue) a process-level job whose directory is ``job_dir``.

    Moves the calling process into a private network namespace and makes it a child
    subreaper (``procs``): call it from a process of its own (the ``snapline`` command does),
    before it starts threads.
    """
    if resume:
        spec = load_spec(job_dir)
    elif spec is None:
        raise ConfigError("give the commands to run (or resume a job)")
    elif (job_dir / JOB_FILE).exists():
        raise ConfigError(
            f"{job_dir} already holds a job; continue it with --resume or pick another --store"
        )
    if not spec.commands:
        raise ConfigError("a process-level job needs at least one command")
    backend = make_backend(spec.backend)
    procs.enter_private_network()
    procs.become_subreaper()
    job_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (job_dir / JOB_FILE).write_text(json.dumps(spec.to_json(), indent=1), encoding="utf-8")
    return ProcessJob(spec, job_dir, backend, echo=echo).run(resume=resume)


__all__ = [
    "BACKENDS",
    "ProcessJobResult",
    "ProcessJobSpec",
    "make_backend",
    "run_process_job",
]
