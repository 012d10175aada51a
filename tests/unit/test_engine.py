"""RankEngine: the process/protocol glue, driven through a recording port."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from snapline.errors import ConfigError, ProtocolError
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
    TimerReplay,
    Transmit,
)
from snapline.protocols.chandy_lamport import ChandyLamport
from snapline.protocols.none import NoCheckpointing
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.runtime.engine import (
    CheckpointImage,
    JobTally,
    RankEngine,
    declared_message_hooks,
    declared_pass_through,
)
from snapline.runtime.process import Context, Process, State


class Port:
    """Records every call an engine makes."""

    def __init__(self) -> None:
        self.t = 0.0
        self.calls: list[tuple[Any, ...]] = []
        self.images: list[CheckpointImage] = []
        self.released_upto = 0

    def now(self) -> float:
        return self.t

    def transmit(self, src: int, dst: int, seq: int, payload: object, piggyback: PlainData) -> None:
        self.calls.append(("transmit", dst, seq, payload))

    def send_control(self, src: int, dst: int, control: PlainData) -> None:
        self.calls.append(("control", dst, control))

    def persist_checkpoint(self, rank: int, image: CheckpointImage) -> None:
        self.images.append(image)
        self.calls.append(("persist", image.record.index))

    def attach_to_checkpoint(self, rank: int, index: int, key: str, meta: PlainData) -> None:
        self.calls.append(("attach", index, key))

    def commit_checkpoint(self, rank: int, index: int) -> None:
        self.calls.append(("commit", index))

    def discard_checkpoint(self, rank: int, index: int) -> None:
        self.calls.append(("discard", index))

    def collect_garbage(self, rank: int, before_index: int) -> None:
        self.calls.append(("gc", before_index))

    def set_protocol_timer(self, rank: int, name: str, delay_s: float) -> None:
        self.calls.append(("ptimer", name, delay_s))

    def set_app_timer(self, rank: int, timer_id: int, name: str, delay_s: float) -> None:
        self.calls.append(("timer", timer_id, name, delay_s))

    def log_message(self, rank: int, entry_id: int, entry: PlainData) -> None:
        self.calls.append(("log", entry_id))

    def release_output(self, rank: int, first_id: int, items: list[object]) -> int:
        self.calls.append(("output", items))
        # The world skips ids it has seen (what drivers do); say how many were new.
        last = first_id + len(items) - 1
        fresh = max(0, last - max(self.released_upto, first_id - 1))
        self.released_upto = max(self.released_upto, last)
        return fresh

    def delivered(self, rank: int, src: int, seq: int, payload: object) -> None:
        self.calls.append(("delivered", src, seq, payload))

    def rank_finished(self, rank: int) -> None:
        self.calls.append(("finished",))

    def record(self, rank: int, kind: str, **fields: object) -> None:
        self.calls.append(("trace", kind))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class Echo(Process):
    """Adds what it receives; on each message sends two messages back to rank 1."""

    def __init__(self) -> None:
        self.total = 0
        self.draws: list[float] = []

    def state(self) -> State:
        return {"total": self.total, "draws": list(self.draws)}

    def restore(self, state: State) -> None:
        self.total = state["total"]
        self.draws = list(state["draws"])

    def on_start(self, ctx: Context) -> None:
        ctx.set_timer("tick", 5.0)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.total += payload
        ctx.send(1, ("a", payload))
        ctx.send(1, ("b", payload))
        ctx.output(self.total)

    def on_timer(self, ctx: Context, name: str) -> None:
        self.draws.append(ctx.random.random())


class Scripted(Protocol):
    """Passes everything through, except that scripted events get extra actions first."""

    name = "scripted"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_sends = False
        self.held: list[SendRequested] = []
        self.before: dict[type, list[Action]] = {}
        self.checkpoint_after_first_send = False

    def handle(self, event: Event) -> list[Action]:
        extra = self.before.pop(type(event), [])
        match event:
            case SendRequested():
                if self.hold_sends:
                    self.held.append(event)
                    return extra
                actions: list[Action] = [
                    *extra,
                    Transmit(send_id=event.send_id, dst=event.dst, payload=event.payload),
                ]
                if self.checkpoint_after_first_send:
                    self.checkpoint_after_first_send = False
                    actions.append(TakeCheckpoint(index=7))
                return actions
            case MessageArrived(src=src, seq=seq):
                return [*extra, Deliver(src=src, seq=seq)]
            case AppTimerDue(timer_id=timer_id):
                return [*extra, FireAppTimer(timer_id=timer_id)]
            case OutputRequested(output_id=output_id):
                return [*extra, ReleaseOutput(output_id=output_id)]
            case CheckpointRequested():
                return [*extra, TakeCheckpoint(index=1)]
            case CheckpointPersisted(index=index):
                return [*extra, Commit(index=index)]
            case _:
                return extra

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
    ) -> Scripted:
        return cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound)

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        return RecoveryPlan(restore={})


def make(
    protocol: Protocol | None = None, port: Port | None = None
) -> tuple[RankEngine, Port, Echo, Scripted]:
    port = port or Port()
    proto = protocol or Scripted(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1}))
    assert isinstance(proto, Scripted)
    process = Echo()
    engine = RankEngine(
        rank=0,
        n=3,
        inbound=[1, 2],
        outbound=[1],
        process=process,
        protocol=proto,
        port=port,
        rng=random.Random(5),
    )
    return engine, port, process, proto


def restore(image: CheckpointImage, port: Port) -> RankEngine:
    """Rank 0 of ``make``'s job, restored from ``image`` with a fresh Echo and Scripted."""
    return RankEngine.restored(
        image=image,
        n=3,
        inbound=[1, 2],
        outbound=[1],
        process=Echo(),
        protocol=Scripted(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1})),
        port=port,
    )


def test_sends_are_issued_after_the_handler_in_order_with_channel_seqs() -> None:
    engine, port, process, _ = make()
    engine.start()
    assert engine.message_arrived(2, 1, 10, None)
    assert process.total == 10
    assert port.of("transmit") == [("transmit", 1, 1, ("a", 10)), ("transmit", 1, 2, ("b", 10))]
    assert engine.sent == {1: 2} and engine.received == {1: 0, 2: 1}
    assert port.of("output") == [("output", [10])]


def test_arrivals_are_resequenced_and_duplicates_dropped() -> None:
    engine, port, process, _ = make()
    engine.start()
    assert engine.message_arrived(2, 2, 5, None)  # early: waits for seq 1
    assert process.total == 0
    assert engine.undelivered_arrivals() == 1
    assert engine.message_arrived(2, 1, 1, None)
    assert process.total == 6
    assert [c[2] for c in port.of("delivered")] == [1, 2]
    assert not engine.message_arrived(2, 2, 5, None)  # duplicate
    assert not engine.message_arrived(2, 1, 1, None)
    assert process.total == 6


def test_message_from_a_rank_without_a_channel_is_a_protocol_error() -> None:
    engine, _, _, _ = make()
    with pytest.raises(ProtocolError, match="no channel"):
        engine.message_arrived(0, 1, 1, None)


def test_send_to_a_rank_without_a_channel_is_a_config_error() -> None:
    class Bad(Echo):
        def on_start(self, ctx: Context) -> None:
            ctx.send(2, "x")

    port = Port()
    proto = Scripted(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1}))
    engine = RankEngine(
        rank=0, n=3, inbound=[1, 2], outbound=[1], process=Bad(), protocol=proto, port=port,
        rng=random.Random(1),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no channel to rank 2"):
        engine.start()


def test_deliver_out_of_order_or_unknown_is_a_protocol_error() -> None:
    engine, _, _, proto = make()
    proto.before[CheckpointRequested] = [Deliver(src=2, seq=1)]
    with pytest.raises(ProtocolError, match="not arrived"):
        engine.checkpoint_requested()


def test_transmit_of_unknown_send_id_is_a_protocol_error() -> None:
    engine, _, _, proto = make()
    proto.before[CheckpointRequested] = [Transmit(send_id=99, dst=1, payload=0)]
    with pytest.raises(ProtocolError, match="unknown or already sent"):
        engine.checkpoint_requested()


def test_checkpoint_captures_state_counters_timers_and_random_at_the_action() -> None:
    engine, port, process, _ = make()
    port.t = 1.0
    engine.start()  # timer "tick" due at 6.0
    engine.message_arrived(2, 1, 3, None)
    port.t = 2.0
    engine.checkpoint_requested()
    image = port.images[-1]
    assert image.record.index == 1 and not image.record.forced
    assert image.record.sent == {1: 2} and image.record.received == {1: 0, 2: 1}
    assert image.state == {"total": 3, "draws": []}
    assert image.extras["timers"] == [["tick", 4.0]]
    assert image.extras["requests"] == []
    assert engine.stats["checkpoints_basic"] == 1
    # After a restore the process, counters, timers and random stream continue identically.
    port.t = 6.0
    (tick,) = port.of("timer")
    engine.app_timer_due(tick[1], "tick")
    original_draw = process.draws[-1]
    port2 = Port()
    port2.t = 2.0
    restored = restore(image, port2)
    restored.resume()
    assert restored.sent == {1: 2} and restored.received == {1: 0, 2: 1}
    ((_, timer_id, name, delay_s),) = port2.of("timer")
    assert (name, delay_s) == ("tick", 4.0)
    port2.t = 6.0
    restored.app_timer_due(timer_id, name)
    assert isinstance(restored.process, Echo)
    assert restored.process.draws == [original_draw]


def test_checkpoint_between_queued_sends_saves_the_rest_and_restore_reissues_them() -> None:
    engine, port, _, proto = make()
    engine.start()
    proto.checkpoint_after_first_send = True
    engine.message_arrived(2, 1, 4, None)
    image = port.images[-1]
    # The handler sent a and b; the checkpoint came after a was transmitted.
    assert image.record.sent == {1: 1}
    assert image.extras["requests"] == [["send", 1, ("b", 4)], ["output", 4]]
    port2 = Port()
    restored = restore(image, port2)
    restored.resume()
    assert port2.of("transmit") == [("transmit", 1, 2, ("b", 4))]
    assert port2.of("output") == [("output", [4])]


class HoldsOutputs(Scripted):
    """Keeps every output until told otherwise, as an output-commit protocol does."""

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, OutputRequested):
            return []
        return super().handle(event)


def test_outputs_held_at_a_checkpoint_survive_a_rollback_to_it() -> None:
    proto = HoldsOutputs(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1}))
    engine, port, _, _ = make(proto)
    engine.start()
    engine.message_arrived(2, 1, 3, None)
    engine.message_arrived(2, 2, 4, None)
    assert port.of("output") == [] and engine.pending_outputs() == [3, 7]
    engine.checkpoint_requested()
    image = port.images[-1]
    assert image.extras["held_outputs"] == [[1, 3], [2, 7]]
    port2 = Port()
    restored = restore(image, port2)
    restored.resume()
    assert restored.pending_outputs() == [3, 7] and restored.output_id == 2
    # The next output's release (ids in order) carries the held ones with it.
    restored.message_arrived(2, 3, 1, None)
    assert port2.of("output") == [("output", [3, 7, 8])]


def test_outputs_released_counts_each_output_once_across_a_rollback() -> None:
    """Outputs held at a checkpoint and released before a failure are released again by the
    restored engine (the world skips them): the statistic must not count them twice."""
    proto = HoldsOutputs(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1}))
    engine, world, _, _ = make(proto)
    engine.start()
    engine.message_arrived(2, 1, 3, None)
    engine.message_arrived(2, 2, 4, None)
    engine.checkpoint_requested()  # holds outputs 1 and 2
    image = world.images[-1]
    engine.release_held_outputs()  # the protocol releases them; then the rank fails
    assert engine.stats["outputs_released"] == 2
    restored = restore(image, world)  # the same world: it has seen outputs 1 and 2
    restored.resume()
    restored.message_arrived(2, 3, 1, None)
    restored.release_held_outputs()  # outputs 1 and 2 again, and the new output 3
    assert world.of("output")[-1] == ("output", [3, 7, 8])
    assert restored.stats["outputs_released"] == 1
    assert engine.stats["outputs_released"] + restored.stats["outputs_released"] == 3


def test_held_sends_are_saved_with_a_checkpoint_and_reissued() -> None:
    engine, port, _, proto = make()
    engine.start()
    proto.hold_sends = True
    engine.message_arrived(2, 1, 2, None)
    assert port.of("transmit") == []
    assert engine.in_transit_unsent() == [(1, ("a", 2)), (1, ("b", 2))]
    engine.checkpoint_requested()
    image = port.images[-1]
    assert image.extras["requests"] == [["send", 1, ("a", 2)], ["send", 1, ("b", 2)]]
    port2 = Port()
    restored = restore(image, port2)
    restored.resume()
    assert [c[2:] for c in port2.of("transmit")] == [(1, ("a", 2)), (2, ("b", 2))]


def test_replay_delivers_in_order_skips_duplicates_and_rejects_gaps() -> None:
    engine, _, process, _ = make()
    engine.start()
    engine.resume([Redelivery(src=2, seq=1, payload=5), Redelivery(src=2, seq=1, payload=5)])
    assert process.total == 5 and engine.stats["replayed"] == 1
    # The network copy of the replayed message is now a duplicate.
    assert not engine.message_arrived(2, 1, 5, None)
    with pytest.raises(ProtocolError, match="replay skips"):
        engine.resume([Redelivery(src=2, seq=3, payload=1)])


def test_timers_only_replay_fires_timers_from_the_plan_and_arms_them_after() -> None:
    engine, port, process, _ = make()
    engine.start(defer_timers=True)
    assert port.of("timer") == []
    engine.resume([TimerReplay(name="tick"), Redelivery(src=1, seq=1, payload=1)], timers_only=True)
    assert len(process.draws) == 1 and process.total == 1
    assert port.of("timer") == []  # the replayed timer was consumed; none left to arm


def test_forget_messages_from_drops_held_arrivals_above_the_count() -> None:
    port = Port()

    class Holding(NoCheckpointing):
        def handle(self, event: Event) -> list[Action]:
            if isinstance(event, MessageArrived):
                return []  # hold every arrival
            return super().handle(event)

    proto = Holding(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1}))
    engine = RankEngine(
        rank=0, n=3, inbound=[1, 2], outbound=[1], process=Echo(), protocol=proto, port=port,
        rng=random.Random(1),
    )  # fmt: skip
    engine.message_arrived(2, 1, 1, None)
    engine.message_arrived(2, 2, 1, None)
    engine.message_arrived(2, 4, 1, None)  # early
    engine.forget_messages_from(2, 1)
    assert engine.undelivered_arrivals() == 1
    assert engine.message_arrived(2, 2, 9, None)  # the restored sender's new seq 2 is accepted


def test_finish_is_reported_once_and_tally_counts_sends_and_deliveries() -> None:
    class Finisher(Echo):
        def on_start(self, ctx: Context) -> None:
            ctx.finish()
            ctx.finish()

    tally = JobTally()
    port = Port()
    engine = RankEngine(
        rank=0, n=3, inbound=[1, 2], outbound=[1], process=Finisher(),
        protocol=Scripted(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1})),
        port=port, rng=random.Random(1), tally=tally,
    )  # fmt: skip
    engine.start()
    assert port.of("finished") == [("finished",)] and engine.done
    engine.message_arrived(1, 1, 1, None)
    assert (tally.requested, tally.delivered) == (2, 1)


def test_volatile_record_has_counters_and_index_minus_one() -> None:
    engine, _, _, _ = make()
    engine.start()
    engine.message_arrived(2, 1, 1, None)
    record = engine.volatile_record()
    assert record.index == -1 and record.sent == {1: 2} and record.received == {1: 0, 2: 1}


class SpelledOut(NoCheckpointing):
    """``none`` with ``handle`` overridden: the engine must take the full event path for it."""

    def handle(self, event: Event) -> list[Action]:
        return super().handle(event)


def test_only_the_class_that_defines_handle_can_claim_the_fast_path() -> None:
    assert declared_pass_through(NoCheckpointing) == {"sends", "arrivals", "timers"}
    assert declared_pass_through(SpelledOut) == frozenset()
    assert declared_pass_through(Scripted) == frozenset()
    assert declared_pass_through(ChandyLamport) == {"sends", "timers"}


def test_an_unknown_pass_through_event_is_a_config_error() -> None:
    class Typo(NoCheckpointing):
        passes_through = frozenset({"send"})

        def handle(self, event: Event) -> list[Action]:
            return super().handle(event)

    with pytest.raises(ConfigError, match=r"unknown events \['send'\]"):
        declared_pass_through(Typo)


def test_fast_path_does_exactly_what_the_pass_through_handle_does() -> None:
    def drive(proto_cls: type[NoCheckpointing]) -> tuple[Any, ...]:
        port = Port()
        process = Echo()
        engine = RankEngine(
            rank=0,
            n=3,
            inbound=[1, 2],
            outbound=[1],
            process=process,
            protocol=proto_cls(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1})),
            port=port,
            rng=random.Random(5),
        )
        engine.start()
        # Out of order, a duplicate, a timer, and a stale timer id.
        assert engine.message_arrived(2, 2, 5, None)
        assert engine.message_arrived(1, 1, 1, None)
        assert engine.message_arrived(2, 1, 7, None)
        assert not engine.message_arrived(2, 1, 7, None)
        (timer,) = port.of("timer")
        engine.app_timer_due(timer[1], timer[2])
        engine.app_timer_due(timer[1], timer[2])
        return (
            port.calls,
            process.state(),
            dict(engine.sent),
            dict(engine.received),
            engine.stats,
            engine.undelivered_arrivals(),
        )

    fast = drive(NoCheckpointing)
    slow = drive(SpelledOut)
    assert fast == slow
    calls, state, sent, received, _, undelivered = fast
    assert state["total"] == 13 and len(state["draws"]) == 1
    assert sent == {1: 6} and received == {1: 1, 2: 2} and undelivered == 0
    assert [c[3] for c in calls if c[0] == "transmit"][:2] == [("a", 1), ("b", 1)]


class HookedOnly(Uncoordinated):
    """``uncoordinated`` whose ``handle`` refuses sends and arrivals: only hooks may take them."""

    message_hooks = frozenset({"sends", "arrivals"})

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, SendRequested | MessageArrived):
            raise AssertionError(f"{event} went through handle, not the hook")
        return super().handle(event)


class Unhooked(Uncoordinated):
    """``uncoordinated`` with every event through ``handle``."""

    def handle(self, event: Event) -> list[Action]:
        return super().handle(event)


def test_message_hooks_do_exactly_what_handle_does() -> None:
    def drive(proto_cls: type[Uncoordinated]) -> tuple[Any, ...]:
        port = Port()
        engine = RankEngine(
            rank=0,
            n=3,
            inbound=[1, 2],
            outbound=[1],
            process=Echo(),
            protocol=proto_cls(rank=0, n=3, inbound=frozenset({1, 2}), outbound=frozenset({1})),
            port=port,
            rng=random.Random(5),
        )
        engine.start()
        assert engine.message_arrived(2, 2, 5, 0)  # early: waits for seq 1
        assert engine.message_arrived(1, 1, 1, 0)
        engine.checkpoint_requested()
        assert engine.message_arrived(2, 1, 7, 1)
        protocol = engine.protocol
        assert isinstance(protocol, Uncoordinated)
        return port.calls, dict(engine.sent), dict(engine.received), protocol.log, protocol.deps

    assert declared_message_hooks(HookedOnly) == {"sends", "arrivals"}
    assert declared_message_hooks(Unhooked) == frozenset()
    hooked = drive(HookedOnly)
    assert hooked == drive(Unhooked)
    calls, sent, received, log, deps = hooked
    # The checkpoint started a new interval: only the dependency after it is left.
    assert sent == {1: 6} and received == {1: 1, 2: 2} and deps == {2: 1}
    assert len(log[1][1]) == 6 and ("persist", 1) in calls


def test_a_message_hook_that_also_passes_through_is_a_config_error() -> None:
    class Both(NoCheckpointing):
        passes_through = frozenset({"sends"})
        message_hooks = frozenset({"sends"})

        def handle(self, event: Event) -> list[Action]:
            return super().handle(event)

    with pytest.raises(ConfigError, match=r"events it also passes through: \['sends'\]"):
        declared_message_hooks(Both)
