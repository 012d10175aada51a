"""Uncoordinated checkpointing through the in-memory link: domino, sender logs, gc."""

from __future__ import annotations

import pytest

from snapline.errors import ProtocolError
from snapline.protocols.base import (
    CheckpointPersisted,
    CheckpointRequested,
    ControlArrived,
    MessageArrived,
    MessageLogged,
    Redelivery,
    TakeCheckpoint,
    TimerFired,
)
from snapline.protocols.link import InMemoryLink
from snapline.protocols.uncoordinated import Uncoordinated, garbage_report
from snapline.topology import Topology

BOTH_WAYS = Topology.complete(2).edges


def domino(rounds: int) -> InMemoryLink:
    """Round k: 0 checkpoints, sends a_k; 1 receives it, checkpoints, sends b_k; 0 receives."""
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS, {"gc": False})
    for k in range(1, rounds + 1):
        link.request_checkpoint(0)
        link.send(0, 1, f"a{k}")
        link.deliver(0, 1)
        link.request_checkpoint(1)
        link.send(1, 0, f"b{k}")
        link.deliver(1, 0)
        link.persist_all()
    return link


def test_domino_effect_rolls_back_to_the_first_checkpoints() -> None:
    link = domino(4)
    assert link.committed_index(1) == 4
    report = garbage_report(link.recovery_view())
    assert report.useless == {(0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3), (1, 4)}
    assert report.collectable(0, [1, 2, 3, 4]) == [2, 3, 4]
    link.crash(1)
    plan = link.recover()
    # Every checkpoint of rank 1 holds a message sent after rank 0's checkpoint of that round.
    assert plan.restore == {0: 1, 1: 0}
    # 0@1 sent nothing yet, 1@0 received nothing: no in-transit messages.
    assert dict(plan.replay) == {} and dict(plan.rearrive) == {}


def test_in_transit_messages_are_resent_from_the_senders_log() -> None:
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS, {"gc": False})
    for k in range(3):
        link.send(0, 1, f"m{k}")
    link.deliver(0, 1)
    link.request_checkpoint(1)  # 1@1 has received m0 only
    link.persist_all()
    link.deliver(0, 1)
    link.crash(1)
    plan = link.recover()
    assert plan.restore == {1: 1}
    # They arrive through the protocol again, with the piggybacks they were sent with.
    assert list(plan.rearrive[1]) == [
        Redelivery(src=0, seq=2, payload="m1", piggyback=0),
        Redelivery(src=0, seq=3, payload="m2", piggyback=0),
    ]
    # The restored rank continues, and m2 (still queued) is dropped as a duplicate.
    link.run()
    assert [m.payload for m in link.ranks[1].delivered] == ["m0", "m1", "m2"]


def test_a_failed_sender_resends_from_its_checkpointed_log() -> None:
    link = InMemoryLink.build(Uncoordinated, 3, Topology.complete(3).edges, {"gc": False})
    link.send(0, 1, "x")
    link.request_checkpoint(0)  # the log of 0@1 holds "x"
    link.persist_all()
    link.crash(0)
    link.crash(1)
    plan = link.recover()
    assert plan.restore == {0: 1, 1: 0}
    assert list(plan.rearrive[1]) == [Redelivery(src=0, seq=1, payload="x", piggyback=0)]


def test_events_it_cannot_take_raise_protocol_errors() -> None:
    proto = Uncoordinated(rank=0, n=2, inbound=frozenset({1}), outbound=frozenset({1}))
    with pytest.raises(ProtocolError, match="out of channel order"):
        proto.handle(MessageArrived(src=1, seq=2, payload=None, piggyback=0))
    with pytest.raises(ProtocolError, match="no timers"):
        proto.handle(TimerFired(name="x"))
    with pytest.raises(ProtocolError, match="no timers"):
        proto.handle(MessageLogged(entry_id=1))
    with pytest.raises(ProtocolError, match="no such checkpoint"):
        proto.handle(CheckpointPersisted(index=3))
    with pytest.raises(ProtocolError, match="unknown control"):
        proto.handle(ControlArrived(src=1, control="hello"))


def test_basic_checkpoints_count_and_index_up() -> None:
    proto = Uncoordinated(rank=0, n=2, inbound=frozenset({1}), outbound=frozenset({1}))
    actions = proto.handle(CheckpointRequested()) + proto.handle(CheckpointRequested())
    assert [a.index for a in actions if isinstance(a, TakeCheckpoint)] == [1, 2]
    assert proto.stats["checkpoints_basic"] == 2
    assert proto.stats["checkpoints_forced"] == 0
