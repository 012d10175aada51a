"""The Process API: what users subclass, and the Context every driver hands them.

A ``Process`` is one rank of a job. Its handlers run one at a time (never concurrently) and
talk to the world only through the ``Context``: ``send``, ``set_timer``, ``output``, a seeded
``random`` and ``finish``. The same class runs unchanged in the simulator and on real processes.

Determinism contract (what makes rollback recovery exact):

* everything the process needs to continue lives in what ``state()`` returns -- plain data and
  numpy arrays (see ``snapline.state``); ``restore(state)`` puts it back;
* randomness comes from ``ctx.random`` (the driver checkpoints and restores its state);
* timers are set through ``ctx.set_timer`` (the driver checkpoints pending timers);
* no wall-clock reads, no I/O except through ``ctx.output`` (released by output commit).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any, Protocol, TypeAlias

State: TypeAlias = Any
"""Nested dicts/lists/tuples of numpy arrays, numbers, str, bytes, bool and None."""


class Context(Protocol):
    """What a process may do; provided by the driver running it."""

    @property
    def rank(self) -> int:
        """This process's rank, ``0..n-1``."""
        ...

    @property
    def n(self) -> int:
        """Number of ranks in the job."""
        ...

    @property
    def outbound(self) -> tuple[int, ...]:
        """Ranks this process has a channel to, ascending."""
        ...

    @property
    def inbound(self) -> tuple[int, ...]:
        """Ranks that have a channel to this process, ascending."""
        ...

    @property
    def random(self) -> random.Random:
        """A seeded generator; its state is saved and restored with the process."""
        ...

    def send(self, dst: int, payload: object) -> None:
        """Send ``payload`` (plain data or numpy arrays) on the channel to ``dst``."""
        ...

    def set_timer(self, name: str, delay_s: float) -> None:
        """Call ``on_timer(name)`` after ``delay_s`` seconds; re-setting a name replaces it."""
        ...

    def output(self, item: object) -> None:
        """Release ``item`` to the outside world once the state producing it is recoverable."""
        ...

    def finish(self) -> None:
        """This process has no more work of its own; it still receives messages."""
        ...


class Process(ABC):
    """Subclass this to write one rank of a distributed job."""

    @abstractmethod
    def state(self) -> State:
        """Return everything needed to continue from here (application-level checkpoint)."""

    @abstractmethod
    def restore(self, state: State) -> None:
        """Put back a state previously returned by ``state()``."""

    def on_start(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Called once when the job starts (not after a restore)."""

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:  # noqa: B027
        """Called for each application message, in channel order per sender."""

    def on_timer(self, ctx: Context, name: str) -> None:  # noqa: B027
        """Called when a timer set with ``ctx.set_timer`` expires."""

    def result(self) -> object:
        """The process's final result, compared across runs by the checkers (plain data)."""
        return self.state()
