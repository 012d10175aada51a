"""One rank of a job on MPI: ``mpiexec -n N python -m snapline.runtime.mpi.rank``.

The local runtime's worker loop and ``EnginePort`` (``runtime.local.worker``) with channels
over MPI (``transport``): the boot data every rank shares comes from the environment
(``supervisor.BOOT_ENV``), the rank from ``COMM_WORLD``. A rank that ends without the
supervisor's ``exit`` (the supervisor is gone, or the rank failed) aborts the MPI job, so that
no rank waits forever in ``MPI_Finalize`` for one that will never come.
"""

from __future__ import annotations

import base64
import os
from typing import Any


def main() -> None:
    """Entry point under ``mpiexec``."""
    from snapline.mpi._comm import mpi4py_MPI
    from snapline.runtime.local.wire import unpack
    from snapline.runtime.local.worker import Worker, run_worker
    from snapline.runtime.mpi.supervisor import BOOT_ENV
    from snapline.runtime.mpi.transport import MpiTransport

    mpi = mpi4py_MPI()
    comm = mpi.COMM_WORLD
    boot: dict[str, Any] = unpack(base64.b64decode(os.environ.pop(BOOT_ENV)))
    boot["rank"] = int(comm.Get_rank())
    worker = Worker(boot, transport=lambda **kw: MpiTransport(comm=comm, mpi=mpi, **kw))
    try:
        run_worker(worker)
    except BaseException:
        comm.Abort(3)
        raise
    if not worker.exit_requested:
        comm.Abort(1)


if __name__ == "__main__":
    main()
