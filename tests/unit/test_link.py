"""The in-memory link: FIFO channels, driver bookkeeping, contract checks, recovery."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from snapline.protocols.base import (
    Action,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    Commit,
    ControlArrived,
    Deliver,
    Event,
    MessageArrived,
    PeerFailed,
    PlainData,
    Protocol,
    RecoveryCompleted,
    RecoveryPlan,
    RecoveryView,
    Redelivery,
    SendControl,
    SendRequested,
    TakeCheckpoint,
    Transmit,
)
from snapline.protocols.link import AppMessage, ControlMessage, InMemoryLink, LinkViolation
from snapline.topology import Topology


class Toy(Protocol):
    """Delivers at once, checkpoints on request, commits on persist; options bend the rules."""

    name = "toy"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.index = 0
        self.events: list[Event] = []

    def handle(self, event: Event) -> list[Action]:
        self.events.append(event)
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                if payload == "ping-control":
                    return [SendControl(dst=dst, control={"ping": send_id})]
                return [Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=self.index)]
            case MessageArrived(src=src, seq=seq):
                if self.options.get("bad_deliver"):
                    return [Deliver(src=src, seq=seq + 1)]
                return [Deliver(src=src, seq=seq)]
            case CheckpointRequested():
                self.index += 1
                if self.options.get("commit_early"):
                    return [TakeCheckpoint(index=self.index), Commit(index=self.index)]
                return [TakeCheckpoint(index=self.index, meta={"i": self.index})]
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
    ) -> Toy:
        toy = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        toy.index = record.index + 1000 * incarnation
        return toy

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        # Everyone back to its newest committed checkpoint; no replay (right only when quiet).
        return RecoveryPlan(restore={r: view.committed[r][-1].index for r in range(view.n)})


def link(n: int = 3, options: dict[str, PlainData] | None = None) -> InMemoryLink:
    return InMemoryLink.build(Toy, n, Topology.complete(n).edges, options)


def toy(lk: InMemoryLink, rank: int) -> Toy:
    proto = lk.ranks[rank].protocol
    assert isinstance(proto, Toy)
    return proto


def test_messages_and_control_share_one_fifo_queue_per_channel() -> None:
    lk = link()
    lk.send(0, 1, "a")
    lk.send(0, 1, "ping-control")
    lk.send(0, 1, "b")
    lk.send(2, 1, "c")
    assert lk.deliverable() == [(0, 1), (2, 1)]
    first = lk.deliver(0, 1)
    assert isinstance(first, AppMessage) and (first.seq, first.payload) == (1, "a")
    second = lk.deliver(0, 1)
    assert isinstance(second, ControlMessage) and second.control == {"ping": 2}
    assert isinstance(toy(lk, 1).events[-1], ControlArrived)
    lk.run()
    assert [(m.src, m.seq, m.payload) for m in lk.ranks[1].delivered] == [
        (0, 1, "a"),
        (0, 2, "b"),
        (2, 1, "c"),
    ]
    assert lk.ranks[0].sent == {1: 2} and lk.ranks[1].received == {0: 2, 2: 1}


def test_chooser_makes_interleavings_reproducible() -> None:
    def delivery_order(seed: int) -> list[tuple[int, int]]:
        lk = link()
        for i in range(6):
            lk.send((i + 1) % 3, i % 3, i)
            lk.send((i + 2) % 3, i % 3, -i)
        lk.run(random.Random(seed))
        return [(m.src, m.seq) for r in lk.ranks for m in r.delivered]

    assert delivery_order(7) == delivery_order(7)
    assert len({tuple(delivery_order(s)) for s in range(10)}) > 1


def test_checkpoint_records_counters_then_commits_after_persist() -> None:
    lk = link()
    lk.send(0, 1, "x")
    lk.run()
    lk.request_checkpoint(1)
    assert lk.ranks[1].taken[1].received == {0: 1}
    assert lk.committed_index(1) == 0, "not committed before it is persisted"
    assert lk.persist(1) == 1
    assert lk.committed_index(1) == 1
    assert lk.ranks[1].committed[-1].meta == {"i": 1}
    assert lk.persist(1) is None


def test_commit_before_persist_is_a_violation() -> None:
    lk = link(options={"commit_early": True})
    with pytest.raises(LinkViolation, match="unpersisted"):
        lk.request_checkpoint(0)


def test_deliver_of_a_message_not_here_is_a_violation() -> None:
    lk = link(options={"bad_deliver": True})
    lk.send(0, 1, "x")
    with pytest.raises(LinkViolation, match="not here"):
        lk.deliver(0, 1)


def test_send_on_missing_channel_and_acting_on_crashed_rank_are_violations() -> None:
    lk = InMemoryLink.build(Toy, 3, Topology.ring(3).edges)
    with pytest.raises(LinkViolation, match="no channel"):
        lk.send(1, 0, "x")
    lk.crash(2)
    with pytest.raises(LinkViolation, match="crashed"):
        lk.send(2, 0, "x")


def test_crash_tells_peers_and_recover_restores_counters_and_replays() -> None:
    lk = link()
    lk.send(0, 1, "before")
    lk.run()
    for r in range(3):
        lk.request_checkpoint(r)
    lk.persist_all()
    lk.send(0, 1, "after")
    lk.run()
    lk.crash(1)
    assert PeerFailed(rank=1) in toy(lk, 0).events
    plan = lk.recover()
    # Rank 0 is rolled back to a send count of 1, so rank 1's second delivery is undone.
    assert plan.restore == {0: 1, 1: 1, 2: 1}
    assert lk.ranks[1].received == {0: 1}
    assert [m.payload for m in lk.ranks[1].delivered] == ["before"]
    assert toy(lk, 1).index == 1001, "rebuilt through restored() with the new incarnation"
    lk.send(0, 1, "again")
    lk.run()
    assert [(m.seq, m.payload) for m in lk.ranks[1].delivered] == [(1, "before"), (2, "again")]


def test_recover_rejects_an_inconsistent_plan() -> None:
    class RestoreOnlyFailed(Toy):
        @classmethod
        def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
            return RecoveryPlan(restore={r: 0 for r in view.failed})

    lk = InMemoryLink.build(RestoreOnlyFailed, 2, Topology.complete(2).edges)
    lk.send(0, 1, "x")
    lk.run()
    lk.crash(0)
    with pytest.raises(LinkViolation, match="inconsistent"):
        lk.recover()


def test_replay_fills_the_gap_and_survivors_hear_recovery_completed() -> None:
    class ReplayFromPayloads(Toy):
        @classmethod
        def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
            # Rank 1 restarts from scratch and gets rank 0's message back from a "log".
            return RecoveryPlan(
                restore={1: 0}, replay={1: [Redelivery(src=0, seq=1, payload="logged")]}
            )

    lk = InMemoryLink.build(ReplayFromPayloads, 2, Topology.complete(2).edges)
    lk.send(0, 1, "x")
    lk.run()
    lk.crash(1)
    lk.recover()
    assert lk.ranks[1].received == {0: 1}
    assert [m.payload for m in lk.ranks[1].delivered] == ["logged"]
    completed = [e for e in toy(lk, 0).events if isinstance(e, RecoveryCompleted)]
    assert completed == [RecoveryCompleted(restored=frozenset({1}), incarnation=1)]


def test_replay_out_of_order_is_rejected() -> None:
    class SkipsOne(Toy):
        @classmethod
        def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
            return RecoveryPlan(restore={1: 0}, replay={1: [Redelivery(src=0, seq=2, payload=0)]})

    lk = InMemoryLink.build(SkipsOne, 2, Topology.complete(2).edges)
    lk.send(0, 1, "x")
    lk.send(0, 1, "y")
    lk.run()
    lk.crash(1)
    with pytest.raises(LinkViolation, match="out of order"):
        lk.recover()


def test_in_transit_messages_of_a_restored_sender_stay_queued() -> None:
    lk = link(2)
    lk.send(0, 1, "in-transit")
    lk.request_checkpoint(0)
    lk.persist(0)
    lk.send(0, 1, "after-checkpoint")
    lk.crash(0)
    lk.recover()  # everyone back: rank 0 to checkpoint 1 (sent 1), rank 1 to 0
    assert lk.in_transit(lk.committed_cut({0: 1, 1: 0}))[(0, 1)] == range(1, 2)
    lk.run()
    assert [m.payload for m in lk.ranks[1].delivered] == ["in-transit"]
