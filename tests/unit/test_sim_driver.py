"""The simulator driver: determinism, faults, recovery, and checkers that catch broken protocols.

The broken protocols here are deliberately wrong in one way each; every checker must catch
the one it is responsible for, with the seed and a replay command in the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from snapline.errors import ConfigError, SimulationError
from snapline.protocols.base import (
    Action,
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    Commit,
    Deliver,
    Event,
    FireAppTimer,
    MessageArrived,
    OutputRequested,
    PlainData,
    Protocol,
    RecoveryPlan,
    RecoveryView,
    Redelivery,
    ReleaseOutput,
    SendRequested,
    TakeCheckpoint,
    Transmit,
)
from snapline.runtime.process import Context, Process, State
from snapline.runtime.sim import SimConfig, run_simulation


class Independent(Protocol):
    """Independent checkpoints, committed when persisted. Subclasses plan recovery (badly)."""

    name: ClassVar[str] = "independent-test"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.next_index = 1

    def handle(self, event: Event) -> list[Action]:
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                return [Transmit(send_id=send_id, dst=dst, payload=payload)]
            case MessageArrived(src=src, seq=seq):
                return [Deliver(src=src, seq=seq)]
            case AppTimerDue(timer_id=timer_id):
                return [FireAppTimer(timer_id=timer_id)]
            case OutputRequested(output_id=output_id):
                return [ReleaseOutput(output_id=output_id)]
            case CheckpointRequested():
                self.next_index += 1
                return [TakeCheckpoint(index=self.next_index - 1)]
            case CheckpointPersisted(index=index):
                return [Commit(index=index)]
            case _:
                return []

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
    ) -> Independent:
        proto = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        proto.next_index = record.index + 1
        return proto

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        # Everyone back to the start: correct, if wasteful.
        return RecoveryPlan(restore=dict.fromkeys(range(view.n), 0))


class FailedOnlyLatest(Independent):
    """Wrong: restores only failed ranks to their latest checkpoint (orphans, lost messages)."""

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        return RecoveryPlan(restore={r: view.committed[r][-1].index for r in view.failed})


class ForgetsFailed(Independent):
    """Wrong: restores nobody."""

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        return RecoveryPlan(restore={})


class RestoresUncommitted(Independent):
    """Wrong: names a checkpoint index that does not exist."""

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        return RecoveryPlan(restore=dict.fromkeys(range(view.n), 999))


class InventsMessages(Independent):
    """Wrong: replays a message nobody sent."""

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        return RecoveryPlan(
            restore=dict.fromkeys(range(view.n), 0),
            replay={0: [Redelivery(src=1, seq=1, payload=12345)]},
        )


class DeliversTwice(Independent):
    """Wrong: delivers every message twice."""

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, MessageArrived):
            return [Deliver(src=event.src, seq=event.seq), Deliver(src=event.src, seq=event.seq)]
        return super().handle(event)


class LosesAMessage(Independent):
    """Wrong: rank 0 never delivers messages from rank 1 after the second."""

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, MessageArrived) and (self.rank, event.src) == (0, 1) and event.seq > 2:
            return []
        return super().handle(event)


BASE = SimConfig(app="bank", n=4, seed=11, interval_s=3.0, app_params={"messages": 15})


def run_with(protocol: type[Protocol], **changes: Any) -> Any:
    config = dataclasses.replace(BASE, protocol=protocol.name, protocol_cls=protocol, **changes)
    return run_simulation(config)


def test_correct_protocol_passes_every_check_with_crashes() -> None:
    result = run_with(Independent, crash_at=((1, 4.0), (2, 9.0)))
    assert result.stats["crashes"] == 2 and result.stats["recoveries"] == 2
    names = {c.name for c in result.checks}
    assert names == {
        "exactly-once delivery",
        "consistent recovery",
        "exactly-once output",
        "app invariant",
        "termination",
        "failure-free result",
    }
    assert result.passed


def test_orphan_messages_are_caught_with_seed_and_command() -> None:
    with pytest.raises(SimulationError) as info:
        run_with(FailedOnlyLatest, crash_at=((1, 7.5),))
    text = str(info.value)
    assert "orphan" in text
    assert "seed 11" in text and "reproduce with:" in text


def test_a_plan_that_leaves_a_failed_rank_down_is_caught() -> None:
    with pytest.raises(SimulationError, match="leaves failed ranks \\[2\\] unrestored"):
        run_with(ForgetsFailed, crash_at=((2, 5.0),))


def test_a_plan_naming_an_uncommitted_checkpoint_is_caught() -> None:
    with pytest.raises(SimulationError, match="not committed"):
        run_with(RestoresUncommitted, crash_at=((0, 5.0),))


def test_an_invented_replayed_message_is_caught() -> None:
    with pytest.raises(SimulationError, match="never sent"):
        run_with(InventsMessages, crash_at=((0, 5.0),))


def test_a_double_delivery_is_caught() -> None:
    with pytest.raises(SimulationError, match="not arrived"):
        run_with(DeliversTwice)


def test_a_lost_message_stalls_the_job_and_names_the_channel() -> None:
    with pytest.raises(SimulationError, match="1->0") as info:
        run_with(LosesAMessage, stall_timeout_s=50.0)
    assert "did not finish" in str(info.value)


class OrderRecorder(Process):
    """Nondeterministic on purpose: its result is the arrival order."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.sent = 0

    def state(self) -> State:
        return {"seen": list(self.seen), "sent": self.sent}

    def restore(self, state: State) -> None:
        self.seen = list(state["seen"])
        self.sent = int(state["sent"])

    def on_start(self, ctx: Context) -> None:
        ctx.set_timer("go", 0.1)

    def on_timer(self, ctx: Context, name: str) -> None:
        for dst in ctx.outbound:
            ctx.send(dst, ctx.rank)
        self.sent += 1
        if self.sent < 10:
            ctx.set_timer("go", 0.05)
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.seen.append(int(payload))

    def result(self) -> object:
        return self.seen


def test_a_schedule_dependent_result_fails_the_failure_free_comparison() -> None:
    config = SimConfig(
        app=None,
        process_factory=lambda rank, n: OrderRecorder(),
        deterministic=True,
        n=4,
        seed=2,
        delay="exp:0.2",
        crash_at=((1, 0.3),),
    )
    with pytest.raises(SimulationError, match="failure-free result"):
        run_simulation(config)
    # Declared nondeterministic, the same run passes (it is internally consistent).
    assert run_simulation(dataclasses.replace(config, deterministic=False)).passed


def test_same_seed_gives_the_same_trace_byte_for_byte() -> None:
    config = dataclasses.replace(
        BASE,
        protocol="two-phase",
        crash_rate=0.02,
        loss_rate=0.1,
        dup_rate=0.1,
        trace=True,
        reference=False,
    )
    first = run_simulation(config)
    second = run_simulation(config)
    assert first.trace is not None and second.trace is not None
    assert first.trace.dumps() == second.trace.dumps()
    other = run_simulation(dataclasses.replace(config, seed=12))
    assert other.trace is not None and other.trace.dumps() != first.trace.dumps()


def test_crash_during_checkpoint_write_loses_that_checkpoint() -> None:
    result = run_with(
        Independent, persist_delay="const:2.0", crash_in_write=0.9, max_crashes=3, reference=True
    )
    assert result.stats["crashes"] >= 1
    assert result.stats["checkpoint_writes_lost"] >= 1


def test_crash_during_recovery_restarts_it_with_the_union_of_failed_ranks() -> None:
    result = run_with(Independent, crash_at=((1, 4.0), (2, 5.5)), restart_delay_s=3.0)
    (recovery,) = result.recoveries  # one recovery covering both crashes
    assert recovery["failed"] == [1, 2]


def test_several_ranks_crash_at_once() -> None:
    result = run_with(Independent, crash_at=((0, 4.0), (3, 4.0)))
    assert result.stats["crashes"] == 2 and result.recoveries[0]["failed"] == [0, 3]


def test_faults_stop_after_the_safety_phase_and_max_crashes_bounds_them() -> None:
    result = run_with(Independent, crash_rate=0.5, max_crashes=3, faults_until_s=20.0)
    assert result.stats["crashes"] == 3
    unbounded = run_with(Independent, crash_rate=0.05, max_crashes=100, faults_until_s=6.0)
    assert all(r["t_fail"] <= 6.0 for r in unbounded.recoveries)


def test_network_faults_are_hidden_by_the_reliable_layer() -> None:
    result = run_with(
        Independent,
        loss_rate=0.3,
        dup_rate=0.3,
        partitions=(),
        crash_at=((1, 6.0),),
    )
    assert result.stats["retransmits"] > 0 and result.stats["duplicates_dropped"] > 0


def test_partitions_delay_messages_until_they_heal() -> None:
    from snapline.runtime.sim import Partition

    clean = run_with(Independent, reference=False)
    cut = run_with(Independent, partitions=(Partition(2.0, 30.0, frozenset({0, 1})),))
    assert cut.stats["partition_delays"] > 0
    assert cut.stats["sim_time_s"] >= 30.0 > clean.stats["sim_time_s"]
    assert cut.results == clean.results


def test_reordering_is_refused_for_fifo_protocols_and_works_otherwise() -> None:
    with pytest.raises(ConfigError, match="needs FIFO"):
        run_simulation(dataclasses.replace(BASE, protocol="chandy-lamport", reorder=True))
    result = run_simulation(
        dataclasses.replace(BASE, protocol="none", reorder=True, delay="exp:0.5")
    )
    assert result.passed


def test_slow_disk_and_per_channel_delays_are_used() -> None:
    fast = run_with(Independent, reference=False)
    slow = run_with(
        Independent,
        slow_disks={0: "const:50"},
        channel_delays={(1, 2): "const:3"},
        reference=False,
    )
    assert slow.stats["committed"] < fast.stats["committed"]
    assert slow.stats["sim_time_s"] > fast.stats["sim_time_s"]


def test_stale_messages_of_old_incarnations_are_dropped() -> None:
    result = run_with(Independent, crash_at=((1, 4.0),), delay="uniform:0.5:1.5")
    assert result.stats["stale_dropped"] + result.stats["lost_to_crash"] > 0


def test_checkpoint_requests_fire_on_every_rank_or_only_on_rank_zero() -> None:
    every = run_with(Independent, reference=False, interval_s=2.0)
    one = run_with(Independent, reference=False, interval_s=2.0, checkpoint_requests="one")
    assert one.stats["checkpoints_basic"] * 3 < every.stats["checkpoints_basic"]
    with pytest.raises(ConfigError, match="'all' or 'one'"):
        dataclasses.replace(BASE, checkpoint_requests="some")


@pytest.mark.parametrize(
    "protocol", ["two-phase", "chandy-lamport", "message-logging", "uncoordinated"]
)
def test_outputs_released_counts_each_output_once_across_crashes(protocol: str) -> None:
    """Restored ranks release again what their checkpoints held; the world sees each output
    once, and so must the statistic (it counted every re-release)."""
    config = SimConfig(
        app="chatter",
        n=3,
        seed=0,
        protocol=protocol,
        interval_s=2.0,
        crash_rate=0.1,
        max_crashes=3,
    )
    result = run_simulation(config)
    assert result.stats["crashes"] > 0
    assert result.stats["outputs_released"] == sum(len(o) for o in result.outputs)
