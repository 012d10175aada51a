"""The MPI engine: a snapline job (``Process`` classes, unchanged protocols) on MPI ranks.

``snapline run APP -n N --engine mpi`` runs one MPI rank per snapline rank under one
``mpiexec``. This package holds only what differs from the local runtime -- transport
(``transport``: MPI point-to-point), process control and failure notification
(``supervisor``: one ``mpiexec``, a death ends the job) and the rank's entry point (``rank``);
the engine glue (``RankEngine``), the worker loop, stable storage (ledgers, checkpoints,
released output) and the recovery coordinator (recovery line from stable storage, restart
limit, back-off, ``--resume``) are the ones the local runtime runs.

Because MPI ends the whole job when one rank dies, every recovery here is a relaunch of the
whole job from the recovery line computed from stable storage, as ``--resume`` is.
"""

from __future__ import annotations

from typing import Any

from snapline.runtime.local.supervisor import Supervisor


def supervisor_factory(mpiexec: str | None = None) -> Any:
    """A ``LocalJob`` supervisor factory that runs the job's ranks under ``mpiexec``.

    ``mpiexec`` defaults to the one next to this Python (the mpich wheel's), else PATH's;
    mpi4py must be importable (``pip install 'snapline[mpi]'``).
    """
    import importlib.util

    from snapline.errors import ConfigError
    from snapline.mpi._comm import INSTALL_HINT
    from snapline.mpi._launch import find_mpiexec
    from snapline.runtime.mpi.supervisor import MpiSupervisor

    # Fail now, saying how to install it, not in every rank; without importing mpi4py.MPI,
    # which would initialise MPI in this (non-MPI) process.
    if importlib.util.find_spec("mpi4py") is None:
        raise ConfigError(f"--engine mpi: {INSTALL_HINT}")
    path = find_mpiexec(mpiexec)

    def make(**kwargs: Any) -> Supervisor:
        return MpiSupervisor(mpiexec=path, **kwargs)

    return make
