"""Communication-induced checkpointing: forced checkpoints keep every checkpoint useful.

Theory of operation
-------------------
Assumptions: FIFO channels; crashes only. Ranks take basic checkpoints on their own schedule;
application messages piggyback protocol data, and a rank takes a *forced* checkpoint before
delivering a message whose piggyback says that delivering it could put a checkpoint on a
Z-cycle. No control messages are needed for that (the gc reports and line updates of
``independent`` are the only control traffic). Recovery restores the maximum consistent cut
(``recovery_line``) and re-sends its in-transit messages from sender logs, exactly as
``uncoordinated`` does.

``BCS`` (Briatico, Ciuffoletti, Simoncini; index-based): each rank keeps a logical clock ``lc``
= the index of its newest checkpoint, piggybacked on every message. A basic checkpoint takes
index ``lc + 1``; a message with ``m.lc > lc`` forces a checkpoint with index ``m.lc`` before
delivery. A message is then never received in an interval with a smaller index than the one it
was sent in, so for every index ``i`` the checkpoints ``(r, first index >= i)`` form a
consistent cut and no checkpoint is useless. Cost: one int per message; forced checkpoints grow
with the spread of checkpoint rates. Garbage collection uses that cut: a rank summarizes only
its first checkpoint at or above each multiple of a stride (``gc_stride``, default ``isqrt(n)``),
so the gc knowledge holds the cut "first index >= i" for every multiple ``i`` every rank
passed, and the garbage line reaches it. Why not every checkpoint: there can be up to one
forced checkpoint per arriving message, and the collector's work grows with what it learns
(when summaries were flooded to all ranks, this kept bcs on 100 ranks from finishing). A
checkpoint whose write fails leaves that multiple's cut incomplete: the line waits for the next
one (leaving checkpoints out is always safe, see ``independent``).

``FDAS`` (Fixed-Dependency-After-Send, Wang; model-based, rollback-dependency trackable): rank
r's *interval* ``x >= 1`` is what it does after checkpoint ``x - 1`` and up to checkpoint ``x``
(so interval 1 follows the initial state C(r,0)), and 0 means "no interval". Each rank keeps a
transitive dependency vector ``dv`` (``dv[q]`` = the newest interval of rank q it depends on; its
own entry is its current interval) and piggybacks it. Before delivering ``m`` it takes a forced
checkpoint iff it has sent a message in the current interval and ``m.dv[k] > dv[k]`` for some k;
then ``dv = max(dv, m.dv)``. After the first send of an interval its dependencies are fixed,
which gives RDT: every Z-path is doubled by a causal path, so no Z-cycle exists and every
checkpoint belongs to a consistent cut. The vector stored with checkpoint C(r,x) (own entry x)
names the minimal consistent cut containing it: ``{C(q, dv[q])}``. Numbering the first interval
1, not 0, matters: a message sent before a rank's first checkpoint must read as a dependency
(on interval 1, hence on C(q,1)), not as none. Cost: n ints per message.

After a recovery. The in-transit messages of the recovery line reach a restored rank through
its protocol (``RecoveryPlan.rearrive``), each with the piggyback it was first sent with (the
sender log keeps both): the receiver absorbs the dependency and takes the forced checkpoint the
message calls for, exactly as if it had arrived the first time, so both guarantees hold across
recoveries. The simulator checks each protocol's guarantee on every run, crashes included
(``Protocol.checkpoint_pattern``: no checkpoint on a Z-cycle for BCS; RDT for FDAS).

A failed checkpoint write (``CheckpointWriteFailed``) leaves a hole: the guarantees are about the
checkpoints that exist, and recovery still finds the maximum consistent cut of those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from snapline.protocols.base import PlainData
from snapline.protocols.independent import IndependentCheckpointing


class BCS(IndependentCheckpointing):
    """Index-based communication-induced checkpointing (Briatico–Ciuffoletti–Simoncini)."""

    name = "bcs"
    checkpoint_pattern = "no-useless-checkpoint"

    def piggyback(self, dst: int) -> PlainData:
        """The sender's logical clock: the index of its newest checkpoint."""
        self.stats["piggyback_ints"] += 1
        return self.last_index

    def forced_checkpoint_before(self, src: int, piggyback: PlainData) -> int | None:
        """A checkpoint with the sender's index, if it is ahead of ours."""
        index = int(piggyback)
        return index if index > self.last_index else None

    def absorb(self, src: int, piggyback: PlainData) -> None:
        """The clock moved with the forced checkpoint; nothing else to learn."""

    def basic_index(self) -> int:
        """The next index after our own."""
        return self.last_index + 1

    def gc_summarizes(self, index: int, previous: int, *, forced: bool) -> bool:
        """Only a checkpoint that is this rank's first at or above a multiple of the stride.

        For every multiple ``i`` of the stride those checkpoints of all ranks form the
        consistent cut "first index >= i", so the garbage line still reaches it (module
        docstring); the others, one per arriving message at worst, stay out of the reports.
        """
        stride = self.gc_stride
        return index // stride > previous // stride

    @property
    def gc_stride(self) -> int:
        """Index distance between the checkpoints the gc knowledge is built from.

        Option ``gc_stride``; by default the square root of n: the highest index grows by up
        to one per basic checkpoint anywhere, so a stride that grows with n keeps the summaries
        near one per rank per checkpoint interval, and a small one keeps the lag of collection
        and output commit short (1 summarizes every checkpoint).
        """
        stride = self.options.get("gc_stride")
        return max(1, math.isqrt(self.n) if stride is None else int(stride))


class FDAS(IndependentCheckpointing):
    """Fixed-Dependency-After-Send: RDT with transitive dependency vectors (Wang)."""

    name = "fdas"
    checkpoint_pattern = "rdt"

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
        #: Interval numbers start at 1 (after C(r,0)); 0 = no dependency on that rank.
        self.dv = [0] * n
        self.dv[rank] = 1
        self.sent_in_interval = False
        #: The dependency vector of the message being admitted, if it brings a dependency
        #: ``dv`` lacks (else None: merging it would change nothing).
        self._incoming: list[int] | None = None

    def piggyback(self, dst: int) -> PlainData:
        """The transitive dependency vector."""
        self.stats["piggyback_ints"] += self.n
        return list(self.dv)

    def after_send(self, dst: int) -> None:
        """From now on this interval's dependencies are fixed."""
        self.sent_in_interval = True

    def forced_checkpoint_before(self, src: int, piggyback: PlainData) -> int | None:
        """A checkpoint if we sent in this interval and ``m`` brings a new dependency."""
        # Parsed and compared once per message: ``absorb`` follows at once and reads the
        # result. Most messages bring no new dependency; they skip the merge.
        theirs = self._vector(src, piggyback)
        newer = any(t > o for t, o in zip(theirs, self.dv, strict=True))
        self._incoming = theirs if newer else None
        if newer and self.sent_in_interval:
            return self.last_index + 1
        return None

    def absorb(self, src: int, piggyback: PlainData) -> None:
        """Merge the sender's dependencies (``max(dv, m.dv)``; no-op when none is newer)."""
        theirs = self._incoming
        if theirs is not None:
            self.dv = [max(t, o) for t, o in zip(theirs, self.dv, strict=True)]

    def _vector(self, src: int, piggyback: PlainData) -> list[int]:
        if not isinstance(piggyback, list | tuple) or len(piggyback) != self.n:
            raise self.error(
                self.phase,
                ("arrival", src, piggyback),
                f"piggyback is not a dependency vector of {self.n}",
            )
        return [int(v) for v in piggyback]

    def basic_index(self) -> int:
        """Checkpoints are numbered 1, 2, 3, ... per rank."""
        return self.last_index + 1

    def after_checkpoint(self, index: int) -> None:
        """A new interval (the one after checkpoint ``index``): nothing sent in it yet."""
        self.dv[self.rank] = index + 1
        self.sent_in_interval = False

    def protocol_meta(self) -> dict[str, PlainData]:
        """The dependency vector of the checkpoint (own entry = its index, the interval it ends)."""
        dv = list(self.dv)
        dv[self.rank] = self.last_index
        return {"dv": dv}

    def restore_meta(self, meta: Mapping[str, PlainData]) -> None:
        """Put back the dependency vector."""
        stored = meta.get("dv")
        if isinstance(stored, list | tuple) and len(stored) == self.n:
            self.dv = [int(v) for v in stored]
        self.dv[self.rank] = self.last_index + 1
        self.sent_in_interval = False
