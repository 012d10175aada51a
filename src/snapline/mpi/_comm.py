"""The few MPI calls the checkpointer makes, behind a typed wrapper (mpi4py has no stubs).

mpi4py is imported only when needed, with an error that says how to install it. The wrapper
works on any object with mpi4py's lower-case, pickle-based collectives (``allgather``,
``bcast``), which is all the checkpointer's own agreement needs.
"""

from __future__ import annotations

from typing import Any, TypeVar

from snapline.errors import ConfigError

T = TypeVar("T")

INSTALL_HINT = (
    "snapline.mpi needs mpi4py: pip install 'snapline[mpi]' (mpi4py with the mpich wheel), or "
    "pip install mpi4py against your system MPI"
)


def mpi4py_MPI() -> Any:
    """The ``mpi4py.MPI`` module, or ``ConfigError`` saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})") from None
    return MPI


class Collective:
    """A communicator's rank, size and the two collectives the checkpointer agrees with."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())

    def allgather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        return list(self.comm.allgather(value))

    def bcast(self, value: T, root: int = 0) -> T:
        """Rank ``root``'s ``value`` on every rank."""
        result: T = self.comm.bcast(value, root=root)
        return result
