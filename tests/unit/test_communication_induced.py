"""BCS and FDAS: forced checkpoints, piggybacks, recovery through the in-memory link."""

from __future__ import annotations

import pytest

from snapline.errors import ProtocolError
from snapline.protocols.base import (
    CheckpointPersisted,
    CheckpointRequested,
    Deliver,
    MessageArrived,
    Redelivery,
    SendControl,
    TakeCheckpoint,
    is_consistent,
)
from snapline.protocols.communication_induced import BCS, FDAS
from snapline.protocols.link import InMemoryLink
from snapline.topology import Topology

BOTH_WAYS = Topology.complete(2).edges


def test_bcs_forces_a_checkpoint_with_the_senders_index() -> None:
    proto = BCS(rank=1, n=2, inbound=frozenset({0}), outbound=frozenset({0}))
    actions = proto.handle(MessageArrived(src=0, seq=1, payload="x", piggyback=3))
    assert actions == [
        TakeCheckpoint(index=3, forced=True, meta=actions[0].meta),  # type: ignore[union-attr]
        Deliver(src=0, seq=1),
    ]
    # Equal or smaller index: delivered at once. A basic checkpoint takes the next index.
    assert proto.handle(MessageArrived(src=0, seq=2, payload="y", piggyback=3)) == [
        Deliver(src=0, seq=2)
    ]
    basic = proto.handle(CheckpointRequested())
    assert [a.index for a in basic if isinstance(a, TakeCheckpoint)] == [4]
    assert proto.stats["checkpoints_forced"] == 1
    assert proto.stats["checkpoints_basic"] == 1


def test_fdas_forces_only_after_a_send_and_on_new_dependencies() -> None:
    proto = FDAS(rank=1, n=3, inbound=frozenset({0, 2}), outbound=frozenset({0}))
    # Intervals are numbered from 1 (the one after the initial checkpoint); 0 = no dependency.
    assert proto.dv == [0, 1, 0]
    # Nothing sent in this interval: new dependency absorbed, no checkpoint.
    assert proto.handle(MessageArrived(src=0, seq=1, payload=0, piggyback=[1, 0, 0])) == [
        Deliver(src=0, seq=1)
    ]
    assert proto.dv == [1, 1, 0]
    from snapline.protocols.base import SendRequested, Transmit

    sent = proto.handle(SendRequested(send_id=1, dst=0, payload="p"))
    assert sent == [Transmit(send_id=1, dst=0, payload="p", piggyback=[1, 1, 0])]
    # Known dependency: no checkpoint even after a send.
    assert proto.handle(MessageArrived(src=0, seq=2, payload=0, piggyback=[1, 0, 0])) == [
        Deliver(src=0, seq=2)
    ]
    assert proto.dv == [1, 1, 0]  # nothing newer: the vector stays as it was
    # New dependency after a send -- on rank 2's first interval, before any checkpoint of
    # it: forced checkpoint first, then the vector merges.
    actions = proto.handle(MessageArrived(src=2, seq=1, payload=0, piggyback=[0, 0, 1]))
    assert isinstance(actions[0], TakeCheckpoint) and actions[0].forced and actions[0].index == 1
    assert actions[1] == Deliver(src=2, seq=1)
    assert actions[0].meta["dv"] == [1, 1, 0]
    assert proto.dv == [1, 2, 1]
    with pytest.raises(ProtocolError, match="dependency vector"):
        proto.handle(MessageArrived(src=0, seq=3, payload=0, piggyback=[1]))


def test_fdas_tracks_a_dependency_on_a_ranks_first_interval() -> None:
    """The minimal case of ``snapline sim --app token-ring -n 3 --protocol fdas --seed 15``.

    Rank 0 sends to rank 1, which delivers it and checkpoints (C(1,1)). Rank 2, before any
    checkpoint of its own, sends to rank 0, which has already sent in its current interval:
    delivering now would make a Z-path from C(2,0) to C(1,1) with no causal path behind it, so
    FDAS must force a checkpoint first. And the vector stored with C(1,1) must name the minimal
    consistent cut containing it.
    """
    link = InMemoryLink.build(FDAS, 3, Topology.complete(3).edges, {"gc": False})
    link.send(0, 1, "a")
    link.deliver(0, 1)
    link.request_checkpoint(1)
    link.send(2, 0, "b")
    before = len(link.ranks[0].actions)
    link.deliver(2, 0)
    actions = link.ranks[0].actions[before:]
    assert isinstance(actions[0], TakeCheckpoint) and actions[0].forced, actions
    assert actions[1] == Deliver(src=2, seq=1)
    link.persist_all()
    c11 = link.committed_cut({1: 1})[1]
    dv = c11.meta["dv"]  # type: ignore[index, call-overload]
    assert dv == [1, 1, 0]
    # {C(q, dv[q])} is a consistent cut (C(0,0) would be orphaned by the message "a").
    cut = link.committed_cut({q: int(dv[q]) for q in range(3)})
    assert is_consistent(cut)


def test_the_domino_workload_under_cic_rolls_back_to_the_latest_checkpoints() -> None:
    for cls in (BCS, FDAS):
        link = InMemoryLink.build(cls, 2, BOTH_WAYS, {"gc": False})
        for k in range(1, 5):
            link.request_checkpoint(0)
            link.send(0, 1, f"a{k}")
            link.deliver(0, 1)
            link.request_checkpoint(1)
            link.send(1, 0, f"b{k}")
            link.deliver(1, 0)
            link.persist_all()
        newest = {r: link.committed_index(r) for r in range(2)}
        forced = sum(link.ranks[r].protocol.stats["checkpoints_forced"] for r in range(2))
        assert forced > 0, cls.name
        link.crash(1)
        plan = link.recover()
        # Rank 1 restores its newest checkpoint; rank 0 goes back at most to its newest one.
        assert plan.restore[1] == newest[1], cls.name
        assert plan.restore.get(0, newest[0]) == newest[0], cls.name


def test_restored_fdas_keeps_its_dependency_vector_and_resends_in_transit() -> None:
    link = InMemoryLink.build(FDAS, 2, BOTH_WAYS, {"gc": False})
    link.send(0, 1, "m1")
    link.request_checkpoint(0)
    link.send(0, 1, "m2")
    link.deliver(0, 1)
    link.request_checkpoint(1)
    link.persist_all()
    link.crash(1)
    plan = link.recover()
    assert plan.restore == {1: 1}
    # The in-transit message arrives again through the protocol, with its piggyback.
    assert plan.replay == {}
    assert list(plan.rearrive[1]) == [Redelivery(src=0, seq=2, payload="m2", piggyback=[2, 0])]
    proto = link.ranks[1].protocol
    assert isinstance(proto, FDAS)
    assert proto.dv == [2, 2]
    assert [m.payload for m in link.ranks[1].delivered] == ["m1", "m2"]


def test_a_resent_in_transit_message_forces_the_checkpoint_it_calls_for() -> None:
    """After a recovery, BCS takes the forced checkpoint an in-transit message asks for."""
    link = InMemoryLink.build(BCS, 2, BOTH_WAYS, {"gc": False})
    link.request_checkpoint(1)  # C(1,1)
    link.request_checkpoint(0)
    link.request_checkpoint(0)  # rank 0 at index 2
    link.send(0, 1, "m")  # piggybacks 2; rank 1 crashes before it arrives
    link.persist_all()
    link.crash(1)
    before = len(link.ranks[1].actions)
    plan = link.recover()
    assert plan.restore == {1: 1}
    assert list(plan.rearrive[1]) == [Redelivery(src=0, seq=1, payload="m", piggyback=2)]
    actions = link.ranks[1].actions[before:]
    assert isinstance(actions[0], TakeCheckpoint), actions
    assert actions[0].forced and actions[0].index == 2
    assert actions[1] == Deliver(src=0, seq=1)


def test_bcs_recovery_handles_a_rank_without_a_checkpoint_of_an_index() -> None:
    link = InMemoryLink.build(BCS, 3, Topology.ring(3).edges, {"gc": False})
    link.request_checkpoint(0)
    link.request_checkpoint(0)  # 0@2; ranks 1 and 2 never see index 1
    link.send(0, 1, "x")
    link.deliver(0, 1)  # forces 1@2
    link.persist_all()
    assert [r.index for r in link.ranks[1].committed] == [0, 2]
    link.crash(0)
    link.crash(1)
    plan = link.recover()
    assert plan.restore == {0: 2, 1: 2}


def test_bcs_summarizes_only_the_first_checkpoint_at_or_above_each_stride() -> None:
    """Forced checkpoints (up to one per arriving message) stay out of the gc flood.

    For every multiple ``i`` of the stride the first checkpoints at or above ``i`` form a
    consistent cut, so those are the ones the garbage line needs; flooding every forced
    checkpoint made the knowledge n x E summaries per round (bcs on 100 ranks did not finish).
    """
    proto = BCS(
        rank=1, n=2, inbound=frozenset({0}), outbound=frozenset({0}), options={"gc_stride": 4}
    )
    taken: list[int] = []
    for seq, index in enumerate((1, 2, 3, 5, 6, 9, 13, 14), 1):
        actions = proto.handle(MessageArrived(src=0, seq=seq, payload=0, piggyback=index))
        taken += [a.index for a in actions if isinstance(a, TakeCheckpoint)]
    for index in taken:
        proto.handle(CheckpointPersisted(index=index))
    # 5 is the first at or above 4, 9 above 8, 13 above 12: the others are left out.
    assert taken == [1, 2, 3, 5, 6, 9, 13, 14]
    assert proto.stats["gc_summarized"] == 3
    # Reported to the collector (rank 0) with the next basic commit.
    proto.handle(CheckpointRequested())
    actions = proto.handle(CheckpointPersisted(index=15))
    (report,) = [a.control for a in actions if isinstance(a, SendControl)]
    assert isinstance(report, dict)
    assert [entry[1] for entry in report["summaries"]] == [5, 9, 13]
