"""Uncoordinated checkpointing: every rank checkpoints on its own schedule.

Theory of operation
-------------------
Assumptions: FIFO channels; crashes only. Each rank takes a basic checkpoint whenever the
driver's schedule says so (ranks are not synchronized) and never a forced one. Application
messages piggyback the sender's checkpoint interval (the index of its newest checkpoint): the
receiver records, per interval, the newest interval of each sender it depends on and stores it
with its next checkpoint (``meta["deps"]``). That is the rollback-dependency graph: checkpoint
``(d, k)`` depends on ``(s, i + 1)`` when a message sent in interval ``i`` of s was received
before it.

Guarantee: after failures, ``plan_recovery`` restores the maximum consistent cut of the stored
checkpoints (rollback propagation over channel counters, ``recovery_line``), and re-sends the
cut's in-transit messages from the senders' logs (``independent``). Nothing bounds how far that
cut lies in the past: checkpoints taken without regard to messages can all sit on Z-cycles
(useless, ``zigzag``), and rollbacks cascade -- the domino effect -- possibly to the start. The
cost is that risk, the sender logs, and the gc reports and line updates (``independent``);
``garbage_report`` names the checkpoints that no recovery line can ever use (below the gc line,
or on a Z-cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from snapline.protocols.base import PlainData, RecoveryView
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.recovery_line import garbage_line, useless_checkpoints


class Uncoordinated(IndependentCheckpointing):
    """Basic checkpoints only; dependency tracking by piggybacked interval index."""

    name = "uncoordinated"

    def __init__(
        self,
        *,
        rank: int,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
    ) -> None:
        super().__init__(rank=rank, n=n, inbound=inbound, outbound=outbound, options=options)
        #: Sender -> newest interval of it this interval's deliveries depend on.
        self.deps: dict[int, int] = {}

    def piggyback(self, dst: int) -> PlainData:
        """The sender's current checkpoint interval."""
        self.stats["piggyback_ints"] += 1
        return self.last_index

    def forced_checkpoint_before(self, src: int, piggyback: PlainData) -> int | None:
        """Never: that is what makes it uncoordinated."""
        return None

    def absorb(self, src: int, piggyback: PlainData) -> None:
        """Note the dependency on the sender's interval."""
        interval = int(piggyback)
        self.deps[src] = max(self.deps.get(src, interval), interval)

    def basic_index(self) -> int:
        """Checkpoints are numbered 1, 2, 3, ... per rank."""
        return self.last_index + 1

    def protocol_meta(self) -> dict[str, PlainData]:
        """The dependencies of the interval the checkpoint closes."""
        return {"deps": {str(s): i for s, i in sorted(self.deps.items())}}

    def after_checkpoint(self, index: int) -> None:
        """A new interval starts with no dependencies."""
        self.deps = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class GarbageReport:
    """Committed checkpoints no recovery line can ever use, by rank."""

    below_line: Mapping[int, int]
    useless: frozenset[tuple[int, int]]

    def collectable(self, rank: int, indices: list[int]) -> list[int]:
        """Which of ``indices`` (rank's committed checkpoints) may be deleted."""
        floor = self.below_line.get(rank, 0)
        return [i for i in indices if 0 < i < floor or (rank, i) in self.useless]


def garbage_report(view: RecoveryView) -> GarbageReport:
    """What can be deleted from stable storage now (pure; for ``snapline gc`` and reports).

    Checkpoints below the maximum consistent cut of the committed checkpoints are never
    needed (every future recovery line is at or after it); checkpoints that no consistent cut
    with the current states contains lie on a Z-cycle and stay useless forever.
    """
    line = garbage_line(view.committed)
    useless = useless_checkpoints(view.committed, view.volatile)
    return GarbageReport(below_line=dict(line.before_index), useless=frozenset(useless))
