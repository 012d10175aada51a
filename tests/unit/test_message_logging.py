"""Pessimistic message logging: logging before delivery, acks, checkpoints, recovery planning."""

from __future__ import annotations

import pytest

from snapline.errors import ConfigError, ProtocolError, RecoveryError
from snapline.protocols import protocol_class
from snapline.protocols.base import (
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    CheckpointWriteFailed,
    CollectGarbage,
    Commit,
    ControlArrived,
    Deliver,
    DiscardCheckpoint,
    FireAppTimer,
    LogMessage,
    MessageArrived,
    MessageLogged,
    OutputRequested,
    PeerFailed,
    RecoveryView,
    Redelivery,
    ReleaseOutput,
    SendControl,
    SendRequested,
    TakeCheckpoint,
    TimerFired,
    TimerReplay,
    Transmit,
    initial_record,
)
from snapline.protocols.link import InMemoryLink
from snapline.protocols.message_logging import (
    PessimisticMessageLogging,
    history,
    history_position,
    truncatable_log_prefix,
)

BOTH_WAYS = frozenset({(0, 1), (1, 0)})
ONE_WAY = frozenset({(0, 1)})


def proto(
    rank: int = 1,
    *,
    n: int = 2,
    inbound: set[int] | None = None,
    outbound: set[int] | None = None,
    ack_every: int = 8,
) -> PessimisticMessageLogging:
    return PessimisticMessageLogging(
        rank=rank,
        n=n,
        inbound=frozenset({0} if inbound is None else inbound),
        outbound=frozenset({0} if outbound is None else outbound),
        options={"ack_every": ack_every},
    )


def arrived(src: int, seq: int, payload: object = "x", ack: int | None = None) -> MessageArrived:
    return MessageArrived(
        src=src, seq=seq, payload=payload, piggyback=None if ack is None else {"ack": ack}
    )


# ------------------------------------------------------------------------------ logging


def test_registered_under_its_command_line_name() -> None:
    assert protocol_class("message-logging") is PessimisticMessageLogging


def test_a_message_is_logged_before_it_is_delivered() -> None:
    link = InMemoryLink.build(PessimisticMessageLogging, 2, ONE_WAY)
    link.send(0, 1, {"v": 1})
    link.deliver(0, 1)
    receiver = link.ranks[1]
    assert receiver.delivered == []
    [entry] = receiver.log_pending.values()
    assert entry["kind"] == "msg" and (entry["src"], entry["seq"]) == (0, 1)
    assert entry["payload"] == {"v": 1}
    link.confirm_logs(1)
    assert [(m.src, m.seq) for m in receiver.delivered] == [(0, 1)]
    assert receiver.protocol.stats["messages_logged"] == 1


def test_deliveries_follow_log_order_even_when_writes_complete_out_of_order() -> None:
    p = proto(inbound={0, 2}, n=3)
    [log_a] = p.handle(arrived(0, 1))
    [log_b] = p.handle(arrived(2, 1))
    [log_c] = p.handle(arrived(0, 2))
    assert isinstance(log_a, LogMessage) and isinstance(log_b, LogMessage)
    assert isinstance(log_c, LogMessage)
    assert p.handle(MessageLogged(entry_id=log_c.entry_id)) == []
    assert p.handle(MessageLogged(entry_id=log_b.entry_id)) == []
    assert p.handle(MessageLogged(entry_id=log_a.entry_id)) == [
        Deliver(src=0, seq=1),
        Deliver(src=2, seq=1),
        Deliver(src=0, seq=2),
    ]


def test_an_app_timer_is_logged_as_a_determinant_before_it_fires() -> None:
    p = proto()
    [log_msg] = p.handle(arrived(0, 1))
    [log_timer] = p.handle(AppTimerDue(timer_id=7, name="tick"))
    assert isinstance(log_timer, LogMessage)
    assert log_timer.entry["kind"] == "timer" and log_timer.entry["name"] == "tick"
    assert p.handle(MessageLogged(entry_id=log_timer.entry_id)) == []
    assert p.handle(MessageLogged(entry_id=log_msg.entry_id)) == [
        Deliver(src=0, seq=1),
        FireAppTimer(timer_id=7),
    ]
    assert p.stats["timers_logged"] == 1


def test_a_duplicate_arrival_is_not_logged_twice() -> None:
    p = proto()
    assert len(p.handle(arrived(0, 1))) == 1
    assert p.handle(arrived(0, 1)) == []
    assert p.stats["duplicates_dropped"] == 1


def test_output_is_released_at_once_because_everything_handled_is_logged() -> None:
    link = InMemoryLink.build(PessimisticMessageLogging, 2, ONE_WAY)
    link.send(0, 1, 1)
    link.deliver(0, 1)
    link.confirm_logs(1)
    output_id = link.output(1)
    assert link.ranks[1].released_output == output_id
    assert proto().handle(OutputRequested(output_id=3)) == [ReleaseOutput(output_id=3)]


# ------------------------------------------------------------------------------ retransmission


def test_sender_keeps_messages_until_the_receiver_acks_having_logged_them() -> None:
    link = InMemoryLink.build(PessimisticMessageLogging, 2, BOTH_WAYS)
    for i in range(3):
        link.send(0, 1, i)
    sender = link.ranks[0].protocol
    assert isinstance(sender, PessimisticMessageLogging)
    assert sorted(sender.retransmit[1]) == [1, 2, 3]
    for _ in range(3):
        link.deliver(0, 1)
    link.confirm_logs(1)
    link.send(1, 0, "reply")  # piggybacks "logged up to 3 from you"
    assert link.ranks[0].protocol is sender
    message = link.channels[(1, 0)][0]
    assert getattr(message, "piggyback", None) == {"ack": 3}
    link.deliver(1, 0)
    assert sender.retransmit[1] == {}
    assert sender.volatile_meta()["retransmit"] == []


def test_a_control_ack_goes_back_when_no_application_message_does() -> None:
    link = InMemoryLink.build(PessimisticMessageLogging, 2, BOTH_WAYS, {"ack_every": 2})
    for i in range(4):
        link.send(0, 1, i)
    for _ in range(4):
        link.deliver(0, 1)
    link.confirm_logs(1)
    controls = [a for a in link.ranks[1].actions if isinstance(a, SendControl)]
    assert controls == [
        SendControl(dst=0, control={"ack": 2}),
        SendControl(dst=0, control={"ack": 4}),
    ]
    link.run(persist=False)
    sender = link.ranks[0].protocol
    assert isinstance(sender, PessimisticMessageLogging)
    assert sender.retransmit[1] == {}
    assert link.ranks[1].protocol.stats["control_messages"] == 2


def test_without_a_reverse_channel_the_buffer_is_kept() -> None:
    link = InMemoryLink.build(PessimisticMessageLogging, 2, ONE_WAY, {"ack_every": 1})
    link.send(0, 1, "a")
    link.deliver(0, 1)
    link.confirm_logs(1)
    assert not any(isinstance(a, SendControl) for a in link.ranks[1].actions)
    sender = link.ranks[0].protocol
    assert sender.stats["retransmit_buffered"] == 1
    transmit = next(a for a in link.ranks[0].actions if isinstance(a, Transmit))
    assert transmit.piggyback is None


def test_the_buffer_holds_a_copy_of_the_payload() -> None:
    p = proto(rank=0, inbound={1}, outbound={1})
    payload = [1, 2]
    p.handle(SendRequested(send_id=1, dst=1, payload=payload))
    payload.append(3)  # the application reuses its list after sending
    assert p.retransmit[1][1] == [1, 2]


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoints_are_local_commit_when_persisted_and_record_the_log_position() -> None:
    p = proto()
    [log] = p.handle(arrived(0, 1))
    p.handle(MessageLogged(entry_id=log.entry_id))
    [take] = p.handle(CheckpointRequested())
    assert isinstance(take, TakeCheckpoint) and not take.forced
    assert take.meta["life"] == 0 and take.meta["delivered"] == 1
    assert take.meta["log_truncate_before"] == [0, 1]
    assert p.handle(CheckpointPersisted(index=take.index)) == [
        Commit(index=take.index),
        CollectGarbage(before_index=take.index),
    ]
    assert p.stats["checkpoints_basic"] == 1


def test_a_checkpoint_persisted_after_a_newer_one_committed_is_discarded() -> None:
    p = proto()
    [first] = p.handle(CheckpointRequested())
    [second] = p.handle(CheckpointRequested())
    assert isinstance(first, TakeCheckpoint) and isinstance(second, TakeCheckpoint)
    assert p.handle(CheckpointPersisted(index=second.index))[0] == Commit(index=second.index)
    assert p.handle(CheckpointPersisted(index=first.index)) == [
        DiscardCheckpoint(index=first.index)
    ]


def test_a_failed_checkpoint_write_is_discarded() -> None:
    p = proto()
    [take] = p.handle(CheckpointRequested())
    assert isinstance(take, TakeCheckpoint)
    assert p.handle(CheckpointWriteFailed(index=take.index, reason="disk full")) == [
        DiscardCheckpoint(index=take.index)
    ]


# ------------------------------------------------------------------------------ errors


def test_unexpected_events_raise_protocol_errors_naming_rank_and_state() -> None:
    p = proto()
    with pytest.raises(ProtocolError, match="rank 1 in state RUNNING"):
        p.handle(MessageLogged(entry_id=99))
    with pytest.raises(ProtocolError, match="no protocol timers"):
        p.handle(TimerFired(name="x"))
    with pytest.raises(ProtocolError, match="no checkpoint"):
        p.handle(CheckpointPersisted(index=5))
    with pytest.raises(ProtocolError, match="no channel"):
        p.handle(SendRequested(send_id=1, dst=5, payload=None))
    with pytest.raises(ProtocolError, match="unknown control"):
        p.handle(ControlArrived(src=0, control="hello"))
    [log] = p.handle(arrived(0, 1))
    p.handle(MessageLogged(entry_id=log.entry_id))
    with pytest.raises(ProtocolError):
        p.handle(MessageLogged(entry_id=log.entry_id))
    assert p.handle(PeerFailed(rank=0)) == []


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ack_every"):
        proto(ack_every=0)
    with pytest.raises(ConfigError, match="incarnation"):
        PessimisticMessageLogging.restored(
            record=initial_record(0), n=2, inbound=frozenset(), outbound=frozenset(), incarnation=0
        )


# ------------------------------------------------------------------------------ history


def msg(life: int, k: int, src: int, seq: int, payload: object = None) -> dict[str, object]:
    return {"kind": "msg", "life": life, "k": k, "src": src, "seq": seq, "payload": payload}


def timer(life: int, k: int, name: str = "tick") -> dict[str, object]:
    return {"kind": "timer", "life": life, "k": k, "name": name}


def test_history_concatenates_lives_and_stops_each_at_its_first_gap() -> None:
    log = [msg(0, 1, 2, 2), msg(0, 0, 2, 1), msg(0, 3, 2, 4), msg(4, 0, 2, 3), timer(4, 1)]
    # life 0: k=2 never became stable, so k=3 was never handled; life 4 follows life 0.
    assert [(e["life"], e["k"]) for e in history(log)] == [(0, 0), (0, 1), (4, 0), (4, 1)]
    assert history_position(None, log) == 0
    assert history_position({"life": 4, "delivered": 1}, log) == 3
    with pytest.raises(RecoveryError, match="incomplete"):
        history_position({"life": 4, "delivered": 3}, log)
    with pytest.raises(RecoveryError, match="not a message-logging entry"):
        history(["junk"])
    with pytest.raises(RecoveryError, match="not a message-logging entry"):
        history_position({"life": 1, "delivered": 0}, [{"kind": "marker"}])
    newest = CheckpointRecord(
        rank=0, index=9, forced=False, sent={}, received={}, meta={"life": 0, "delivered": 2}
    )
    assert truncatable_log_prefix(log, newest) == 2


# ------------------------------------------------------------------------------ planning


def meta(
    life: int, delivered: int, retransmit: list[list[object]] | None = None
) -> dict[str, object]:
    return {"life": life, "delivered": delivered, "retransmit": retransmit or []}


def record(
    rank: int,
    index: int,
    *,
    sent: dict[int, int] | None = None,
    received: dict[int, int] | None = None,
    meta_: object = None,
) -> CheckpointRecord:
    return CheckpointRecord(
        rank=rank, index=index, forced=False, sent=sent or {}, received=received or {}, meta=meta_
    )


def test_only_the_failed_rank_restores_and_replays_its_log_after_the_checkpoint() -> None:
    # Rank 1 checkpointed after handling 0:1; then handled timer, 0:2, 0:3 (all logged).
    ckpt = record(1, 1, received={0: 1}, meta_=meta(0, 1))
    log = [msg(0, 0, 0, 1, "a"), timer(0, 1), msg(0, 2, 0, 2, "b"), msg(0, 3, 0, 3, "c")]
    survivor = record(0, -1, sent={1: 4}, meta_=meta(0, 0, [[1, 3, "c"], [1, 4, "d"]]))
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed={0: [initial_record(0)], 1: [initial_record(1), ckpt]},
        volatile={0: survivor},
        message_logs={1: log},
        edges=BOTH_WAYS,
    )
    plan = PessimisticMessageLogging.plan_recovery(view)
    assert plan.restore == {1: 1}
    assert plan.replay[1] == [
        TimerReplay(name="tick"),
        Redelivery(src=0, seq=2, payload="b"),
        Redelivery(src=0, seq=3, payload="c"),
    ]
    assert plan.replay_timers_only == frozenset({1})
    # 0:4 was sent but never logged: it comes from the survivor's buffer, through the protocol.
    assert plan.rearrive == {1: [Redelivery(src=0, seq=4, payload="d")]}


def test_a_lost_unlogged_message_is_a_recovery_error() -> None:
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed={0: [initial_record(0)], 1: [initial_record(1)]},
        volatile={0: record(0, -1, sent={1: 2}, meta_=meta(0, 0, [[1, 2, "b"]]))},
        message_logs={1: []},
    )
    with pytest.raises(RecoveryError, match="seq 1 was never logged"):
        PessimisticMessageLogging.plan_recovery(view)


def test_two_failed_ranks_get_unlogged_messages_from_the_senders_checkpoint() -> None:
    # 0 checkpointed having sent 1..3 to 1 (3 unacked); 1 logged only 0:1 and 0:2.
    ckpt0 = record(0, 2, sent={1: 3}, meta_=meta(0, 0, [[1, 2, "m2"], [1, 3, "m3"]]))
    view = RecoveryView(
        n=3,
        failed=frozenset({0, 1}),
        committed={0: [initial_record(0), ckpt0], 1: [initial_record(1)], 2: [initial_record(2)]},
        volatile={2: record(2, -1, meta_=meta(0, 0))},
        message_logs={1: [msg(0, 0, 0, 1, "m1"), msg(0, 1, 0, 2, "m2")]},
    )
    plan = PessimisticMessageLogging.plan_recovery(view)
    assert plan.restore == {0: 2, 1: 0}
    assert plan.replay[1] == [
        Redelivery(src=0, seq=1, payload="m1"),
        Redelivery(src=0, seq=2, payload="m2"),
    ]
    assert plan.rearrive == {1: [Redelivery(src=0, seq=3, payload="m3")]}
    assert plan.replay_timers_only == frozenset({0, 1})


def test_a_failed_sender_behind_the_receiver_re_sends_by_re_execution() -> None:
    # Receiver 1 logged 0:1..3; sender 0's checkpoint had sent only 1: nothing to rearrive.
    view = RecoveryView(
        n=2,
        failed=frozenset({0, 1}),
        committed={
            0: [initial_record(0), record(0, 1, sent={1: 1}, meta_=meta(0, 0))],
            1: [initial_record(1)],
        },
        volatile={},
        message_logs={1: [msg(0, k, 0, k + 1) for k in range(3)]},
    )
    plan = PessimisticMessageLogging.plan_recovery(view)
    assert [item.seq for item in plan.replay[1] if isinstance(item, Redelivery)] == [1, 2, 3]
    assert plan.rearrive == {}


def test_restored_rank_starts_a_new_life_with_counters_and_buffer_from_its_checkpoint() -> None:
    ckpt = record(1, 3, sent={0: 5}, received={0: 2}, meta_=meta(0, 2, [[0, 5, "p"]]))
    p = PessimisticMessageLogging.restored(
        record=ckpt, n=2, inbound=frozenset({0}), outbound=frozenset({0}), incarnation=2
    )
    assert p.life == 2 and p.retransmit == {0: {5: "p"}}
    [transmit] = p.handle(SendRequested(send_id=1, dst=0, payload="q"))
    assert transmit == Transmit(send_id=1, dst=0, payload="q", piggyback={"ack": 2})
    assert sorted(p.retransmit[0]) == [5, 6]
    [log] = p.handle(arrived(0, 3))
    assert isinstance(log, LogMessage)
    assert (log.entry["life"], log.entry["k"]) == (2, 0)
    assert log.entry_id >> 32 == 2  # never collides with an id of life 0
    [take] = p.handle(CheckpointRequested())
    assert isinstance(take, TakeCheckpoint) and take.index >= 2 << 32
