"""Koo–Toueg two-phase checkpointing through the in-memory link."""

from __future__ import annotations

import random

import pytest

from snapline.errors import ConfigError
from snapline.protocols.base import (
    Commit,
    DiscardCheckpoint,
    Redelivery,
    TakeCheckpoint,
    Transmit,
    is_consistent,
)
from snapline.protocols.coordinated_two_phase import Phase, TwoPhaseCoordinated
from snapline.protocols.link import InMemoryLink
from snapline.topology import Topology


def link(topology: Topology) -> InMemoryLink:
    return InMemoryLink.build(TwoPhaseCoordinated, topology.n, topology.edges)


def tp(lk: InMemoryLink, rank: int) -> TwoPhaseCoordinated:
    proto = lk.ranks[rank].protocol
    assert isinstance(proto, TwoPhaseCoordinated)
    return proto


def taken(lk: InMemoryLink, rank: int) -> list[int]:
    return [a.index for a in lk.ranks[rank].actions if isinstance(a, TakeCheckpoint)]


def latest_cut_is_consistent(lk: InMemoryLink) -> bool:
    return is_consistent({s.rank: s.committed[-1] for s in lk.ranks})


def test_only_ranks_the_initiator_depends_on_take_part() -> None:
    lk = link(Topology.complete(3))
    lk.send(1, 0, "dep")
    lk.run()
    lk.request_checkpoint(0)
    lk.run()
    assert lk.committed_index(0) == 1 and lk.committed_index(1) == 1
    assert taken(lk, 2) == [], "rank 2 sent nothing to 0: it does not take part"
    assert tp(lk, 1).stats["checkpoints_forced"] == 1
    assert [a.forced for a in lk.ranks[1].actions if isinstance(a, TakeCheckpoint)] == [True]
    assert latest_cut_is_consistent(lk)


def test_dependencies_are_followed_transitively() -> None:
    lk = link(Topology.ring(3))  # 0 -> 1 -> 2 -> 0: requests are flooded around the ring
    lk.send(1, 2, "a")
    lk.run()
    lk.send(2, 0, "b")
    lk.run()
    lk.request_checkpoint(0)
    lk.run(random.Random(5))
    assert [lk.committed_index(r) for r in range(3)] == [1, 1, 1]
    assert latest_cut_is_consistent(lk)
    assert tp(lk, 1).stats["control_forwarded"] > 0


def test_a_sender_whose_committed_checkpoint_covers_the_send_does_not_join() -> None:
    lk = link(Topology.complete(2))
    lk.send(1, 0, "old")
    lk.run()
    lk.request_checkpoint(1)  # rank 1 depends on nobody: commits alone
    lk.run()
    assert lk.committed_index(1) == 1
    lk.request_checkpoint(0)
    lk.run()
    assert lk.committed_index(0) == 1 and taken(lk, 1) == [1]


def test_sends_are_held_during_a_round_and_carry_the_new_label() -> None:
    lk = link(Topology.complete(2))
    lk.send(1, 0, "dep")
    lk.run()
    lk.request_checkpoint(0)
    lk.deliver(0, 1)  # the request: rank 1 joins
    assert tp(lk, 1).phase is Phase.COLLECTING
    lk.send(1, 0, "held")
    assert tp(lk, 1).stats["messages_held"] == 1
    assert not any(isinstance(a, Transmit) and a.payload == "held" for a in lk.ranks[1].actions)
    lk.run()
    sent = [a for a in lk.ranks[1].actions if isinstance(a, Transmit) and a.payload == "held"]
    assert sent and sent[0].piggyback == 1, "sent after commit, labelled with checkpoint 1"
    assert [m.payload for m in lk.ranks[0].delivered] == ["dep", "held"]
    # The held message came after rank 1's checkpoint: it is no dependency of that cut.
    assert lk.ranks[1].committed[-1].sent == {0: 1}


def test_a_failure_mid_round_aborts_and_only_the_failed_rank_rolls_back() -> None:
    lk = link(Topology.complete(3))
    lk.send(1, 0, "dep")
    lk.run()
    lk.request_checkpoint(0)
    lk.deliver(0, 1)  # rank 1 joins
    lk.crash(2)
    for r in (0, 1):
        assert DiscardCheckpoint(index=1) in lk.ranks[r].actions
        assert not any(isinstance(a, Commit) for a in lk.ranks[r].actions)
        assert tp(lk, r).stats["rounds_aborted"] == 1
    plan = lk.recover()
    assert plan.restore == {2: 0}, "survivors hold no orphan: they keep running"
    lk.run()  # stale round messages are ignored, nothing hangs
    lk.send(1, 0, "dep again")
    lk.run()
    lk.request_checkpoint(0)
    lk.run()
    assert lk.committed_index(0) == 2 and lk.committed_index(1) == 2
    assert latest_cut_is_consistent(lk)


def test_rollback_is_minimal_orphans_roll_back_and_in_transit_is_replayed() -> None:
    lk = link(Topology.complete(3))
    lk.send(0, 1, "in the cut")
    lk.request_checkpoint(0)  # 0 depends on nobody: checkpoint 1 with sent {1: 1}
    lk.persist_all()
    assert lk.committed_index(0) == 1
    lk.send(0, 1, "orphan-maker")
    lk.send(2, 1, "from 2")
    lk.run()
    lk.crash(0)
    plan = lk.recover()
    # Rank 1 received a message 0 sent after its checkpoint: it rolls back (to its initial
    # state); rank 2 keeps running.
    assert plan.restore == {0: 1, 1: 0}
    assert plan.replay == {
        1: [
            Redelivery(src=0, seq=1, payload="in the cut"),
            Redelivery(src=2, seq=1, payload="from 2"),
        ]
    }
    assert [m.payload for m in lk.ranks[1].delivered] == ["in the cut", "from 2"]


def test_an_undelivered_message_is_replayed_once_from_the_senders_log() -> None:
    lk = link(Topology.complete(2))
    lk.send(0, 1, "slow")  # stays queued
    lk.crash(1)
    plan = lk.recover()
    assert plan.restore == {1: 0}
    assert plan.replay == {1: [Redelivery(src=0, seq=1, payload="slow")]}
    lk.run()  # the queued copy arrives and is dropped as a duplicate
    assert [m.payload for m in lk.ranks[1].delivered] == ["slow"]


def test_concurrent_initiators_are_serialized_without_deadlock() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        lk = link(Topology.complete(4))
        for _ in range(12):
            src, dst = rng.sample(range(4), 2)
            lk.send(src, dst, (src, dst))
        lk.run(rng)
        for r in range(4):
            lk.request_checkpoint(r)
        lk.run(rng)
        assert all(tp(lk, r).phase is Phase.IDLE for r in range(4)), seed
        assert all(not lk.ranks[r].taken for r in range(4)), "every round decided"
        assert tp(lk, 0).stats["rounds_committed"] == 1, "the highest-priority round commits"
        assert latest_cut_is_consistent(lk), seed


def test_topology_must_let_control_flow_both_ways() -> None:
    with pytest.raises(ConfigError, match="no inbound"):
        InMemoryLink.build(TwoPhaseCoordinated, 2, frozenset({(0, 1)}))
    with pytest.raises(ConfigError, match="strongly connected"):
        InMemoryLink.build(
            TwoPhaseCoordinated,
            3,
            frozenset({(0, 1), (1, 0), (1, 2), (2, 1), (0, 2)}) - {(2, 1)},
            {"edges": [[0, 1], [1, 0], [1, 2], [0, 2]]},
        )


def test_a_failure_does_not_start_a_deferred_round_of_the_dead_initiator() -> None:
    # Rank 1 is in its own round when rank 0's (higher-priority) request arrives and is
    # deferred; then rank 0 dies. Aborting rank 1's round must not start rank 0's round.
    lk = link(Topology.ring(2))
    lk.send(1, 0, "m1")
    lk.run(random.Random(0))
    lk.request_checkpoint(0)
    lk.request_checkpoint(1)
    lk.deliver(0, 1)
    assert tp(lk, 1).deferred
    lk.crash(0)
    lk.recover()
    lk.run()
    assert tp(lk, 1).current is None and not lk.ranks[1].taken
    assert latest_cut_is_consistent(lk)


def test_checkpoints_after_a_rollback_are_not_candidates_again() -> None:
    # Rank 1 commits a checkpoint in a new incarnation, is rolled back past it when rank 0
    # fails, and a second failure must plan from what is left (not the undone future).
    lk = link(Topology.ring(2))
    lk.send(0, 1, "m1")
    lk.crash(1)
    lk.recover()
    lk.request_checkpoint(1)
    lk.run(random.Random(0))
    for _ in range(2):
        lk.crash(0)
        lk.recover()
    lk.run()
    assert all(not s.taken for s in lk.ranks)
    assert latest_cut_is_consistent(lk)
