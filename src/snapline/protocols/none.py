"""No checkpointing: the baseline every protocol is measured against.

Theory of operation
-------------------
Assumptions: none beyond reliable channels. Guarantee: after any failure the job restarts
from scratch -- every rank rolls back to its initial state (checkpoint 0) -- which is trivially
a consistent cut (all counters are zero), so no message can be an orphan and nothing is in
transit. Piggyback: nothing. Cost: no checkpoints, no control messages, no failure-free
overhead; all work done before a failure is lost.

Every message is transmitted as soon as the application sends it and delivered as soon as it
arrives; application timers fire when due.

Output commit: every output is held until the job ends. Any failure rolls the whole job back
to its start, so no state is recoverable before the end, and a re-execution need not produce
the same outputs in the same order (it may receive in another order): output released earlier
would be repeated or lost. The driver releases what is held when the job has ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, assert_never

from snapline.protocols.base import (
    Action,
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    CheckpointWriteFailed,
    ControlArrived,
    Deliver,
    Event,
    FireAppTimer,
    MessageArrived,
    MessageLogged,
    OutputRequested,
    PeerFailed,
    PlainData,
    Protocol,
    RecoveryCompleted,
    RecoveryPlan,
    RecoveryView,
    SendRequested,
    TimerFired,
    Transmit,
)


class NoCheckpointing(Protocol):
    """Transmit and deliver immediately; recover by restarting every rank from scratch."""

    name: ClassVar[str] = "none"
    needs_fifo: ClassVar[bool] = False
    # ``handle`` below is exactly the pass-through the engine's fast path implements for
    # messages and timers; outputs are held (see the module docstring).
    passes_through: ClassVar[frozenset[str]] = frozenset({"sends", "arrivals", "timers"})

    def handle(self, event: Event) -> list[Action]:
        """Pass messages and timers straight through; hold outputs; take no checkpoints."""
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                return [Transmit(send_id=send_id, dst=dst, payload=payload)]
            case MessageArrived(src=src, seq=seq):
                return [Deliver(src=src, seq=seq)]
            case AppTimerDue(timer_id=timer_id):
                return [FireAppTimer(timer_id=timer_id)]
            case OutputRequested():
                return []  # held until the job ends: nothing is recoverable before
            case CheckpointRequested() | PeerFailed() | RecoveryCompleted():
                return []
            case ControlArrived() | CheckpointPersisted() | CheckpointWriteFailed():
                raise self.error("running", event, "this protocol never sends or checkpoints")
            case TimerFired() | MessageLogged():
                raise self.error("running", event, "this protocol sets no timers and logs nothing")
            case _:
                assert_never(event)

    @classmethod
    def restored(
        cls,
        *,
        record: CheckpointRecord,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
        incarnation: int,
    ) -> NoCheckpointing:
        """A fresh object: the only checkpoint this protocol restores is the initial one."""
        return cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Restart every rank from its initial state (index 0): restart from scratch."""
        return RecoveryPlan(restore=dict.fromkeys(range(view.n), 0))
