"""The ``none`` protocol: pass-through, no checkpoints, restart everyone from scratch."""

from __future__ import annotations

import pytest

from snapline.errors import ProtocolError
from snapline.protocols import protocol_class
from snapline.protocols.base import (
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRequested,
    ControlArrived,
    Deliver,
    FireAppTimer,
    MessageArrived,
    OutputRequested,
    PeerFailed,
    RecoveryView,
    SendRequested,
    TimerFired,
    Transmit,
    initial_record,
)
from snapline.protocols.none import NoCheckpointing
from snapline.runtime.sim import SimConfig, run_simulation


def proto() -> NoCheckpointing:
    return NoCheckpointing(rank=1, n=3, inbound=frozenset({0}), outbound=frozenset({2}))


def test_registered_under_its_name() -> None:
    assert protocol_class("none") is NoCheckpointing


def test_messages_and_timers_pass_straight_through_and_output_is_held() -> None:
    p = proto()
    assert p.handle(SendRequested(send_id=4, dst=2, payload="x")) == [
        Transmit(send_id=4, dst=2, payload="x")
    ]
    assert p.handle(MessageArrived(src=0, seq=3, payload="y", piggyback=None)) == [
        Deliver(src=0, seq=3)
    ]
    assert p.handle(AppTimerDue(timer_id=7, name="t")) == [FireAppTimer(timer_id=7)]
    # Output is held until the job ends: any failure restarts the whole job.
    assert p.handle(OutputRequested(output_id=2)) == []
    assert p.handle(CheckpointRequested()) == []
    assert p.handle(PeerFailed(rank=0)) == []
    assert p.stats["checkpoints_basic"] == 0


@pytest.mark.parametrize(
    "event",
    [
        ControlArrived(src=0, control="m"),
        CheckpointPersisted(index=1),
        TimerFired(name="x"),
    ],
)
def test_events_it_never_causes_are_protocol_errors(event: object) -> None:
    with pytest.raises(ProtocolError, match="none rank 1"):
        proto().handle(event)  # type: ignore[arg-type]


def test_plan_restarts_every_rank_from_scratch() -> None:
    view = RecoveryView(
        n=3,
        failed=frozenset({2}),
        committed={r: [initial_record(r)] for r in range(3)},
        volatile={r: initial_record(r) for r in (0, 1)},
    )
    plan = NoCheckpointing.plan_recovery(view)
    assert dict(plan.restore) == {0: 0, 1: 0, 2: 0}
    assert not plan.replay


def test_restored_is_a_fresh_object() -> None:
    p = NoCheckpointing.restored(
        record=initial_record(1),
        n=3,
        inbound=frozenset({0}),
        outbound=frozenset({2}),
        incarnation=3,
    )
    assert p.rank == 1 and p.handle(CheckpointRequested()) == []


def test_a_crash_costs_all_work_but_the_result_is_exact() -> None:
    clean = run_simulation(SimConfig(app="bank", n=4, seed=3, reference=False))
    crashed = run_simulation(SimConfig(app="bank", n=4, seed=3, crash_at=((2, 8.0),)))
    assert crashed.results == clean.results
    (recovery,) = crashed.recoveries
    assert recovery["restore"] == {"0": 0, "1": 0, "2": 0, "3": 0}
    assert crashed.stats["sim_time_s"] > clean.stats["sim_time_s"] + 8.0
    assert crashed.stats["checkpoints_basic"] == 0
