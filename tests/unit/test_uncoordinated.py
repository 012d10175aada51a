"""Uncoordinated checkpointing through the in-memory link: domino, sender logs, gc."""

from __future__ import annotations

import pytest

from snapline.errors import ProtocolError
from snapline.protocols.base import (
    CheckpointPersisted,
    CheckpointRequested,
    CollectGarbage,
    Commit,
    ControlArrived,
    MessageArrived,
    MessageLogged,
    OutputRequested,
    RecoveryCompleted,
    Redelivery,
    ReleaseOutput,
    SendControl,
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


def test_gc_collects_trims_the_log_and_releases_output() -> None:
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS)
    out = link.output(0)
    link.send(0, 1, "m")
    link.run()
    link.request_checkpoint(0)
    link.request_checkpoint(1)
    link.run()  # both persist and commit (0 first), then the summaries cross
    state0 = link.ranks[0]
    # 0@1 (it received nothing) with 1@0 is consistent: collected, the output before it released.
    assert CollectGarbage(before_index=1) in state0.actions
    assert ReleaseOutput(output_id=out) in state0.actions
    proto = state0.protocol
    assert isinstance(proto, Uncoordinated)
    # 1@1's summary came after that commit: 1 summary < n and no output waits, so it is not
    # collected yet and the log still holds "m".
    assert proto.unsettled == 1
    assert proto.log[1] == (1, ["m"], [0])
    link.request_checkpoint(0)
    link.run()
    # The next own commit collects: 1@1 received "m", so rank 0 never needs to re-send it.
    assert proto.floor(1) == 1
    assert proto.log[1] == (2, [], [])
    # One batch per own commit, each with its own summary only: 1@1 is not sent back to 1.
    assert proto.stats["control_messages"] == 2
    assert proto.stats["gc_summaries_sent"] == 2
    link.crash(1)
    plan = link.recover()
    assert plan.restore == {1: 1}


def summaries(
    *entries: tuple[int, int, dict[int, int], dict[int, int]], src: int = 1
) -> ControlArrived:
    """A gc batch from ``src`` of summaries ``(rank, index, sent, received)``, incarnation 0."""
    return ControlArrived(
        src=src,
        control={
            "kind": "committed",
            "summaries": [
                [r, i, 0, sorted(sent.items()), sorted(received.items())]
                for r, i, sent, received in entries
            ],
        },
    )


def test_collection_waits_for_n_summaries_or_an_own_commit() -> None:
    proto = Uncoordinated(rank=2, n=3, inbound=frozenset({0, 1}), outbound=frozenset({0, 1}))
    first = summaries((0, 1, {}, {}), (1, 1, {}, {}))
    assert proto.handle(first) == []
    assert (proto.unsettled, proto.floor(0), proto.floor(1)) == (2, 0, 0)
    # 0@1 again is old news; 1@2 makes n = 3 summaries: the line moves without an own commit,
    # and nothing is relayed before one.
    assert proto.handle(summaries((0, 1, {}, {}), (1, 2, {}, {}))) == []
    assert proto.stats["gc_collections"] == 1
    assert (proto.unsettled, proto.floor(0), proto.floor(1)) == (0, 1, 2)
    assert [a.index for a in proto.handle(CheckpointRequested()) if isinstance(a, TakeCheckpoint)]
    actions = proto.handle(CheckpointPersisted(index=1))
    sends = {a.dst: a.control for a in actions if isinstance(a, SendControl)}
    # One message per outbound channel: nothing back to where it came from (all came from 1)
    # or to the rank it describes (0@1 to 0), no summary below the line (1@1), the line's own
    # checkpoints still (0@1 to 1 would be, but it came from 1; 1@2 to 0).
    assert sends == {
        0: {"kind": "committed", "summaries": [[1, 2, 0, [], []], [2, 1, 0, [], []]]},
        1: {"kind": "committed", "summaries": [[2, 1, 0, [], []]]},
    }
    assert actions[0] == Commit(index=1)
    assert CollectGarbage(before_index=1) in actions
    assert proto.stats["gc_collections"] == 2


def test_a_summary_is_not_relayed_to_ranks_known_to_have_it() -> None:
    everyone = frozenset({0, 1, 3, 4})
    proto = Uncoordinated(rank=2, n=5, inbound=everyone, outbound=everyone)
    proto.handle(summaries((0, 1, {}, {}), src=1))
    proto.handle(summaries((0, 1, {}, {}), src=3))  # old news, but now 3 is known to have it
    proto.handle(CheckpointRequested())
    actions = proto.handle(CheckpointPersisted(index=1))
    sends = {a.dst: a.control for a in actions if isinstance(a, SendControl)}
    own = [2, 1, 0, [], []]
    assert sends == {
        0: {"kind": "committed", "summaries": [own]},
        1: {"kind": "committed", "summaries": [own]},
        3: {"kind": "committed", "summaries": [own]},
        4: {"kind": "committed", "summaries": [[0, 1, 0, [], []], own]},
    }
    assert proto.stats["gc_summaries"] == 2


def test_waiting_output_is_released_as_soon_as_a_summary_allows() -> None:
    proto = Uncoordinated(rank=0, n=3, inbound=frozenset({1}), outbound=frozenset({1}))
    proto.handle(MessageArrived(src=1, seq=1, payload="x", piggyback=1))
    assert proto.handle(OutputRequested(output_id=7)) == []
    proto.handle(CheckpointRequested())
    # 0@1 received from 1, whose checkpoints are unknown: the line stays at 0@0.
    assert ReleaseOutput(output_id=7) not in proto.handle(CheckpointPersisted(index=1))
    # One summary (< n) is enough while output waits: 1@1 sent the message 0@1 received.
    actions = proto.handle(summaries((1, 1, {0: 1}, {})))
    assert CollectGarbage(before_index=1) in actions
    assert ReleaseOutput(output_id=7) in actions


def test_a_recovery_drops_summaries_of_the_abandoned_execution_from_the_outbox() -> None:
    proto = Uncoordinated(rank=2, n=4, inbound=frozenset({1}), outbound=frozenset({3}))
    proto.handle(summaries((0, 1, {}, {}), (1, 1, {}, {})))
    proto.handle(RecoveryCompleted(restored=frozenset({1}), incarnation=1))
    assert 1 not in proto.known
    # A late summary of the old incarnation is ignored.
    proto.handle(summaries((1, 2, {}, {})))
    assert 1 not in proto.known
    proto.handle(CheckpointRequested())
    actions = proto.handle(CheckpointPersisted(index=1))
    sends = [a.control for a in actions if isinstance(a, SendControl)]
    assert sends == [{"kind": "committed", "summaries": [[0, 1, 0, [], []], [2, 1, 1, [], []]]}]


def test_malformed_gc_batches_raise_protocol_errors() -> None:
    proto = Uncoordinated(rank=0, n=2, inbound=frozenset({1}), outbound=frozenset({1}))
    for control in (
        {"kind": "committed"},
        {"kind": "committed", "summaries": [[1, 2]]},
        {"kind": "committed", "summaries": [[1, "x", 0, [], []]]},
        # The single-summary form of earlier versions is not accepted.
        {"kind": "committed", "rank": 1, "index": 1, "incarnation": 0, "sent": [], "received": []},
    ):
        with pytest.raises(ProtocolError, match="malformed gc summaries"):
            proto.handle(ControlArrived(src=1, control=control))


def test_summaries_of_an_abandoned_execution_are_ignored() -> None:
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS)
    link.request_checkpoint(1)
    link.persist(1)  # the summary of 1@1 is queued to rank 0
    link.crash(1)
    link.recover()
    # The old summary is dropped with the old incarnation's control messages or ignored.
    link.run()
    proto = link.ranks[0].protocol
    assert isinstance(proto, Uncoordinated)
    assert 1 not in proto.known or all(i <= 1 for i in proto.known[1])


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


def test_a_summary_is_not_relayed_to_ranks_its_own_rank_sends_to() -> None:
    """Those are its neighbours: they get its summaries from it directly.

    Relaying every summary over every channel made the gc flood n x E summaries per round (on
    a complete graph each summary crossed every channel instead of about one per rank).
    """
    everyone = frozenset({0, 1, 3, 4})
    proto = Uncoordinated(rank=2, n=5, inbound=everyone, outbound=everyone)
    # Rank 0 sent to 1 and 4 before its checkpoint 1: it sends its summaries to them itself.
    proto.handle(summaries((0, 1, {1: 2, 4: 1}, {}), src=1))
    proto.handle(CheckpointRequested())
    actions = proto.handle(CheckpointPersisted(index=1))
    sends = {a.dst: a.control for a in actions if isinstance(a, SendControl)}
    own = [2, 1, 0, [], []]
    relayed = [0, 1, 0, [(1, 2), (4, 1)], []]
    assert sends == {
        0: {"kind": "committed", "summaries": [own]},
        1: {"kind": "committed", "summaries": [own]},
        3: {"kind": "committed", "summaries": [relayed, own]},
        4: {"kind": "committed", "summaries": [own]},
    }
