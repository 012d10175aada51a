"""Debug mode: check the safe-point rule by counting point-to-point messages per channel.

A ``Checkpointer`` saves each rank's state and nothing of the network, so a checkpoint is a
consistent cut with no lost message only if no message is in flight when every rank enters
``checkpoint()``. With ``debug=True`` the program talks through ``ckpt.comm``, a
``CountingComm`` that counts, per peer, the messages this rank sent and received. At each
checkpoint the ranks gather their counts and compare every channel ``src -> dst``: a channel
where ``dst`` received fewer messages than ``src`` sent has a message in flight, and every rank
raises the same ``SafePointViolation`` naming it.

Counted: ``send``, ``ssend``, ``isend``, ``Send``, ``Ssend``, ``Isend`` (when posted),
``recv``, ``Recv``, ``sendrecv``, ``Sendrecv`` (when they return). Nonblocking receives
(``irecv``, ``Irecv``) cannot be counted without wrapping their requests and are refused in
debug mode. Collectives are passed through uncounted: they complete on every rank together.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from snapline.errors import ConfigError, SafePointViolation
from snapline.mpi._comm import Collective, mpi4py_MPI


class CountingComm:
    """A communicator that counts point-to-point messages per peer (see the module docstring).

    Every attribute not listed there is the wrapped communicator's own.
    """

    def __init__(self, comm: Any) -> None:
        mpi = mpi4py_MPI()
        self._comm = comm
        self._any_source: int = mpi.ANY_SOURCE
        self._any_tag: int = mpi.ANY_TAG
        self._proc_null: int = mpi.PROC_NULL
        self._status_type: Any = mpi.Status
        self.sent: Counter[int] = Counter()
        self.received: Counter[int] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)

    def reset(self) -> None:
        """Forget the counts (after a restore, whose cut has nothing in flight)."""
        self.sent.clear()
        self.received.clear()

    def _count_send(self, dest: int) -> None:
        if dest != self._proc_null:
            self.sent[int(dest)] += 1

    def _count_receive(self, status: Any) -> None:
        source = int(status.Get_source())
        if source != self._proc_null and source >= 0:
            self.received[source] += 1

    def _status(self, status: Any) -> Any:
        # The source of a wildcard receive is known only from its status: always ask for one.
        return self._status_type() if status is None else status

    # -- sends ----------------------------------------------------------------------------
    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """``Comm.send``, counted."""
        self._comm.send(obj, dest, tag)
        self._count_send(dest)

    def ssend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """``Comm.ssend``, counted."""
        self._comm.ssend(obj, dest, tag)
        self._count_send(dest)

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Any:
        """``Comm.isend``, counted when posted."""
        request = self._comm.isend(obj, dest, tag)
        self._count_send(dest)
        return request

    def Send(self, buf: Any, dest: int, tag: int = 0) -> None:
        """``Comm.Send``, counted."""
        self._comm.Send(buf, dest, tag)
        self._count_send(dest)

    def Ssend(self, buf: Any, dest: int, tag: int = 0) -> None:
        """``Comm.Ssend``, counted."""
        self._comm.Ssend(buf, dest, tag)
        self._count_send(dest)

    def Isend(self, buf: Any, dest: int, tag: int = 0) -> Any:
        """``Comm.Isend``, counted when posted."""
        request = self._comm.Isend(buf, dest, tag)
        self._count_send(dest)
        return request

    # -- receives -------------------------------------------------------------------------
    def recv(
        self,
        buf: Any = None,
        source: int | None = None,
        tag: int | None = None,
        status: Any = None,
    ) -> Any:
        """``Comm.recv``, counted."""
        status = self._status(status)
        source = self._any_source if source is None else source
        tag = self._any_tag if tag is None else tag
        obj = self._comm.recv(buf, source, tag, status)
        self._count_receive(status)
        return obj

    def Recv(
        self, buf: Any, source: int | None = None, tag: int | None = None, status: Any = None
    ) -> None:
        """``Comm.Recv``, counted."""
        status = self._status(status)
        source = self._any_source if source is None else source
        tag = self._any_tag if tag is None else tag
        self._comm.Recv(buf, source, tag, status)
        self._count_receive(status)

    def sendrecv(
        self,
        sendobj: Any,
        dest: int,
        sendtag: int = 0,
        recvbuf: Any = None,
        source: int | None = None,
        recvtag: int | None = None,
        status: Any = None,
    ) -> Any:
        """``Comm.sendrecv``, counted both ways."""
        status = self._status(status)
        source = self._any_source if source is None else source
        recvtag = self._any_tag if recvtag is None else recvtag
        obj = self._comm.sendrecv(sendobj, dest, sendtag, recvbuf, source, recvtag, status)
        self._count_send(dest)
        self._count_receive(status)
        return obj

    def Sendrecv(
        self,
        sendbuf: Any,
        dest: int,
        sendtag: int = 0,
        recvbuf: Any = None,
        source: int | None = None,
        recvtag: int | None = None,
        status: Any = None,
    ) -> None:
        """``Comm.Sendrecv``, counted both ways."""
        status = self._status(status)
        source = self._any_source if source is None else source
        recvtag = self._any_tag if recvtag is None else recvtag
        self._comm.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)
        self._count_send(dest)
        self._count_receive(status)

    def irecv(self, *args: Any, **kwargs: Any) -> Any:
        """Refused in debug mode (see the module docstring)."""
        raise ConfigError(_NONBLOCKING)

    def Irecv(self, *args: Any, **kwargs: Any) -> Any:
        """Refused in debug mode (see the module docstring)."""
        raise ConfigError(_NONBLOCKING)


_NONBLOCKING = (
    "debug mode counts messages when a receive returns, so it cannot count irecv/Irecv: use "
    "blocking receives (recv, Recv, Sendrecv) while debugging, or turn debug off"
)


def unmatched_channels(
    sent: list[dict[int, int]], received: list[dict[int, int]]
) -> list[tuple[int, int, int, int]]:
    """``(src, dst, sent, received)`` of every channel whose two ends disagree.

    ``sent[r][d]`` is what rank ``r`` sent to ``d``; ``received[r][s]`` what ``r`` got from ``s``.
    """
    out = []
    for src, row in enumerate(sent):
        for dst in sorted(set(row) | {s for s, r in enumerate(received) if src in r}):
            n_sent = row.get(dst, 0)
            n_received = received[dst].get(src, 0) if 0 <= dst < len(received) else 0
            if n_sent != n_received:
                out.append((src, dst, n_sent, n_received))
    return out


def describe(channel: tuple[int, int, int, int], step: int) -> str:
    """One channel of ``unmatched_channels`` in words."""
    src, dst, n_sent, n_received = channel
    if n_sent > n_received:
        missing = n_sent - n_received
        noun = "message" if missing == 1 else "messages"
        return (
            f"rank {src} sent {missing} {noun} to rank {dst} that rank {dst} has not received "
            f"at checkpoint step {step}"
        )
    extra = n_received - n_sent
    return (
        f"rank {dst} received {extra} more message(s) from rank {src} than rank {src} sent "
        f"through ckpt.comm at checkpoint step {step} (does rank {src} send through another "
        "communicator?)"
    )


def check_safe_point(collective: Collective, counting: CountingComm, step: int) -> None:
    """Collective: raise ``SafePointViolation`` on every rank if any channel has a message
    in flight (or counts that disagree)."""
    counts = collective.allgather((dict(counting.sent), dict(counting.received)))
    channels = unmatched_channels([s for s, _ in counts], [r for _, r in counts])
    if channels:
        raise SafePointViolation(
            "; ".join(describe(c, step) for c in channels)
            + ". A checkpoint must be taken where no message is in flight: receive every "
            "message sent before the checkpoint first (move the checkpoint call after the "
            "exchange that completes it)"
        )
