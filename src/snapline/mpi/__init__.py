"""Checkpoint/restart for ordinary mpi4py programs (application level, as SCR or VeloC for C).

::

    from mpi4py import MPI
    from snapline import mpi as smpi

    ckpt = smpi.Checkpointer(MPI.COMM_WORLD, store="./ckpts", every=100)
    state = ckpt.restore() or initial_state()      # None on a first run
    for step in range(state["step"], steps):
        ...                                         # send/recv/allreduce as usual
        if ckpt.should_checkpoint(step):
            ckpt.checkpoint(state, step=step)      # collective, at a point with no message
    ckpt.close()                                    # in flight; returns while the write goes on

``snapline mpirun -n N -- python prog.py`` relaunches the job after a failure; ``restore()``
then resumes from the newest complete checkpoint. mpi4py is imported only when used: install
it with ``pip install 'snapline[mpi]'``.
"""

from __future__ import annotations

from snapline.errors import CheckpointFailed, SafePointViolation
from snapline.mpi._checkpointer import Checkpointer
from snapline.mpi._commit import CommitRecord
from snapline.mpi._debug import CountingComm
from snapline.mpi._policy import CheckpointPolicy, EverySeconds, EverySteps, YoungDaly

__all__ = [
    "CheckpointFailed",
    "CheckpointPolicy",
    "Checkpointer",
    "CommitRecord",
    "CountingComm",
    "EverySeconds",
    "EverySteps",
    "SafePointViolation",
    "YoungDaly",
]
