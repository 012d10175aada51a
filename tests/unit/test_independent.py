"""Garbage collection of the independent protocols: reports to one collector, lines back down."""

from __future__ import annotations

import pytest

from snapline.errors import ConfigError, ProtocolError
from snapline.protocols.base import (
    Action,
    CheckpointPersisted,
    CheckpointRequested,
    CollectGarbage,
    ControlArrived,
    MessageArrived,
    OutputRequested,
    PlainData,
    RecoveryCompleted,
    ReleaseOutput,
    SendControl,
    SendRequested,
)
from snapline.protocols.link import InMemoryLink
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.topology import Topology

BOTH_WAYS = Topology.complete(2).edges


def edges_option(edges: frozenset[tuple[int, int]]) -> list[list[int]]:
    """The channel list as the drivers pass it in ``options["edges"]``."""
    return [[s, d] for s, d in sorted(edges)]


def rank_on(
    edges: frozenset[tuple[int, int]], rank: int, n: int, **options: PlainData
) -> Uncoordinated:
    """One protocol object of a job over ``edges``, told the channel list as drivers do."""
    return Uncoordinated(
        rank=rank,
        n=n,
        inbound=frozenset(s for s, d in edges if d == rank),
        outbound=frozenset(d for s, d in edges if s == rank),
        options={"edges": edges_option(edges), **options},
    )


def report(
    *entries: tuple[int, int, dict[int, int], dict[int, int]],
    waiting: bool = False,
    incarnation: int = 0,
) -> dict[str, PlainData]:
    """A ``gc-report`` of summaries ``(rank, index, sent, received)``."""
    return {
        "kind": "gc-report",
        "summaries": [
            [r, i, incarnation, sorted(sent.items()), sorted(received.items())]
            for r, i, sent, received in entries
        ],
        "waiting": waiting,
    }


def controls(actions: list[Action]) -> dict[int, PlainData]:
    """The control messages among ``actions``, by destination (one each)."""
    sends = [a for a in actions if isinstance(a, SendControl)]
    assert len({a.dst for a in sends}) == len(sends)
    return {a.dst: a.control for a in sends}


def commit_basic(proto: Uncoordinated) -> list[Action]:
    """Take a basic checkpoint and persist it; the actions of the persist."""
    proto.handle(CheckpointRequested())
    return proto.handle(CheckpointPersisted(index=proto.last_index))


def test_gc_collects_trims_the_log_and_releases_output() -> None:
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS)
    out = link.output(1)
    link.send(1, 0, "m")
    link.run()
    link.request_checkpoint(1)  # 1@1: its report goes to the collector, rank 0
    link.request_checkpoint(0)  # 0@1 received "m"
    link.run()
    collector = link.ranks[0].protocol
    assert isinstance(collector, Uncoordinated)
    assert collector.stats["gc_summaries"] == 2 and collector.stats["gc_collections"] >= 1
    # Both line checkpoints are the newest: 1 collects below 1@1, its output before it is
    # released, and "m" (received by 0@1) leaves its log.
    state1 = link.ranks[1]
    assert CollectGarbage(before_index=1) in state1.actions
    assert ReleaseOutput(output_id=out) in state1.actions
    proto1 = state1.protocol
    assert isinstance(proto1, Uncoordinated)
    assert proto1.log[0] == (2, [], [])
    assert (collector.floor(0), collector.floor(1), proto1.floor(1)) == (1, 1, 1)
    link.crash(1)
    assert link.recover().restore == {1: 1}


def test_reports_travel_a_shortest_path_and_are_forwarded_unread() -> None:
    # A line 3 -> 2 -> 1 -> 0 and back.
    edges = frozenset({(3, 2), (2, 1), (1, 0), (0, 1), (1, 2), (2, 3)})
    far = rank_on(edges, 3, 4)
    actions = commit_basic(far)
    assert controls(actions) == {2: report((3, 1, {}, {}))}
    middle = rank_on(edges, 2, 4)
    forwarded = middle.handle(ControlArrived(src=3, control=report((3, 1, {}, {}))))
    assert controls(forwarded) == {1: report((3, 1, {}, {}))}
    assert middle.known == {} and middle.stats["gc_reports_forwarded"] == 1
    # The collector's own summaries never leave it: it learns and collects them at once.
    collector = rank_on(edges, 0, 4)
    assert controls(commit_basic(collector)) == {}
    assert collector.floor(0) == 1 and collector.stats["gc_summaries"] == 1


def test_the_collector_collects_every_n_summaries_or_on_its_own_basic_commit() -> None:
    everyone = Topology.complete(3).edges
    collector = rank_on(everyone, 0, 3)
    assert collector.handle(ControlArrived(src=1, control=report((1, 1, {}, {})))) == []
    assert collector.unsettled == 1 and collector.floor(1) == 0
    # Old news does not count; the third new summary (n = 3) moves the line at once.
    collector.handle(ControlArrived(src=2, control=report((1, 1, {}, {}), (2, 1, {}, {}))))
    assert collector.unsettled == 2
    actions = collector.handle(ControlArrived(src=2, control=report((2, 2, {}, {}))))
    assert collector.unsettled == 0 and (collector.floor(1), collector.floor(2)) == (1, 2)
    assert controls(actions) == {
        1: {"kind": "gc-line", "updates": [[1, 1, []]]},
        2: {"kind": "gc-line", "updates": [[2, 2, []]]},
    }
    # One more, then an own basic commit collects it.
    collector.handle(ControlArrived(src=1, control=report((1, 2, {}, {}))))
    actions = commit_basic(collector)
    assert CollectGarbage(before_index=1) in actions
    assert controls(actions) == {1: {"kind": "gc-line", "updates": [[1, 2, []]]}}


def test_line_updates_go_down_the_tree_one_message_per_edge() -> None:
    # 0 reaches 1 and 2 directly, 3 and 4 through 1, 5 through 3.
    edges = frozenset(
        {(0, 1), (0, 2), (1, 3), (1, 4), (3, 5)} | {(1, 0), (2, 0), (3, 1), (4, 1), (5, 3)}
    )
    collector = rank_on(edges, 0, 6)
    # Every rank's first checkpoint received one message from its parent in the tree, which
    # sent it before its own first checkpoint.
    parent = {1: 0, 2: 0, 3: 1, 4: 1, 5: 3}
    children: dict[int, dict[int, int]] = {}
    for child, up in parent.items():
        children.setdefault(up, {})[child] = 1
    entries = [(r, 1, children.get(r, {}), {parent[r]: 1} if r in parent else {}) for r in range(6)]
    collector.handle(ControlArrived(src=1, control=report(*entries[1:])))
    assert collector.unsettled == 5
    for child in (1, 2):
        collector.handle(SendRequested(send_id=child, dst=child, payload="x"))
    actions = commit_basic(collector)
    assert [collector.floor(r) for r in range(6)] == [1] * 6
    sends = controls(actions)
    assert sorted(sends) == [1, 2]
    down_1 = sends[1]
    assert isinstance(down_1, dict)
    assert [e[0] for e in down_1["updates"]] == [1, 3, 4, 5]
    # Rank 1 applies its own and splits the rest by its next hop: 3 (with 5 behind it), 4.
    middle = rank_on(edges, 1, 6)
    middle.handle(SendRequested(send_id=1, dst=3, payload="x"))
    out = middle.handle(ControlArrived(src=0, control=down_1))
    assert CollectGarbage(before_index=1) in out
    assert middle.log[3] == (2, [], [])  # 3@1 received it
    hops = controls(out)
    assert sorted(hops) == [3, 4]
    assert [e[0] for e in hops[3]["updates"]] == [3, 5]  # type: ignore[index]
    assert middle.stats["gc_updates_sent"] == 3


def test_waiting_output_is_reported_and_collected_at_once() -> None:
    everyone = Topology.complete(3).edges
    rank1 = rank_on(everyone, 1, 3)
    rank1.handle(MessageArrived(src=0, seq=1, payload="x", piggyback=1))
    assert rank1.handle(OutputRequested(output_id=7)) == []
    # A forced-style commit would wait for the next basic one; output waits: report now.
    sent = controls(commit_basic(rank1))
    assert sent == {0: report((1, 1, {}, {0: 1}), waiting=True)}
    collector = rank_on(everyone, 0, 3)
    collector.handle(SendRequested(send_id=1, dst=1, payload="x"))
    commit_basic(collector)  # 0@1 sent "x": 1@1 can be on the line
    # One summary (< n) is enough when the report says output waits.
    actions = collector.handle(ControlArrived(src=1, control=sent[0]))
    assert controls(actions) == {1: {"kind": "gc-line", "updates": [[1, 1, []]]}}
    released = rank1.handle(ControlArrived(src=0, control=controls(actions)[1]))
    assert released == [CollectGarbage(before_index=1), ReleaseOutput(output_id=7)]


def test_ranks_keep_the_highest_line_they_were_told() -> None:
    rank1 = rank_on(BOTH_WAYS, 1, 2)
    for _ in range(3):
        commit_basic(rank1)
    update = {"kind": "gc-line", "updates": [[1, 3, []]]}
    assert rank1.handle(ControlArrived(src=0, control=update)) == [CollectGarbage(before_index=3)]
    # A late or restored collector's lower line changes nothing.
    stale = {"kind": "gc-line", "updates": [[1, 2, []]]}
    assert rank1.handle(ControlArrived(src=0, control=stale)) == []
    assert rank1.floor(1) == 3


def test_after_a_recovery_the_collector_forgets_abandoned_summaries_and_updates_everyone() -> None:
    everyone = Topology.complete(3).edges
    collector = rank_on(everyone, 0, 3)
    collector.handle(ControlArrived(src=1, control=report((2, 1, {}, {}))))
    commit_basic(collector)  # 0@1 and 2@1 on the line; 2 is told
    collector.handle(ControlArrived(src=1, control=report((1, 1, {}, {}), (2, 2, {}, {}))))
    # 1 is restored: what the collector knew of it goes; what it knows of survivors stands
    # (and the recovery is a moment to collect it), and every rank with a line hears it again.
    actions = collector.handle(RecoveryCompleted(restored=frozenset({1}), incarnation=1))
    assert 1 not in collector.known and collector.floor(2) == 2
    assert controls(actions) == {2: {"kind": "gc-line", "updates": [[2, 2, []]]}}
    # A late summary of 1's old incarnation is ignored; its restored rank reports anew.
    collector.handle(ControlArrived(src=1, control=report((1, 2, {}, {}))))
    assert 1 not in collector.known
    actions = collector.handle(
        ControlArrived(src=1, control=report((1, 1, {}, {}), incarnation=1, waiting=True))
    )
    assert collector.floor(1) == 1
    assert controls(actions) == {1: {"kind": "gc-line", "updates": [[1, 1, []]]}}


def test_a_restored_rank_reports_its_restored_checkpoint_again() -> None:
    link = InMemoryLink.build(Uncoordinated, 3, Topology.complete(3).edges)
    link.request_checkpoint(2)
    link.persist_all()
    link.run()
    link.crash(2)
    link.recover()
    link.run()
    collector = link.ranks[0].protocol
    assert isinstance(collector, Uncoordinated)
    # Reported twice: once when committed (incarnation 0), again after its restore.
    assert collector.restored_in == {2: 1}
    assert collector.stats["gc_summaries"] == 2
    restored = link.ranks[2].protocol
    assert isinstance(restored, Uncoordinated)
    assert restored.stats["gc_summaries_sent"] == 1 and restored.reports == []


def test_summaries_of_an_abandoned_execution_are_ignored() -> None:
    link = InMemoryLink.build(Uncoordinated, 2, BOTH_WAYS)
    link.request_checkpoint(1)
    link.persist(1)  # 1@1 is reported with the next basic commit: still in rank 1
    link.request_checkpoint(1)
    link.persist(1)
    link.crash(1)
    link.recover()
    link.run()
    collector = link.ranks[0].protocol
    assert isinstance(collector, Uncoordinated)
    assert all(s.incarnation >= 1 for known in collector.known.values() for s in known.values())


def test_malformed_gc_control_raises_protocol_errors() -> None:
    collector = rank_on(BOTH_WAYS, 0, 2)
    for control in (
        {"kind": "gc-report"},
        {"kind": "gc-report", "summaries": [[1, 2]]},
        {"kind": "gc-report", "summaries": [[1, "x", 0, [], []]]},
        {"kind": "gc-report", "summaries": [[7, 1, 0, [], []]]},
        {"kind": "gc-line"},
        {"kind": "gc-line", "updates": [[0, 1]]},
        {"kind": "gc-line", "updates": [[0, 1, [["a", 1]]]]},
    ):
        with pytest.raises(ProtocolError, match="malformed gc-"):
            collector.handle(ControlArrived(src=1, control=control))
    # The flooded batches of earlier versions are not accepted.
    with pytest.raises(ProtocolError, match="unknown control"):
        collector.handle(ControlArrived(src=1, control={"kind": "committed", "summaries": []}))


def test_the_collector_option_must_name_a_rank() -> None:
    with pytest.raises(ConfigError, match=r"gc_collector must be a rank in 0\.\.1"):
        rank_on(BOTH_WAYS, 0, 2, gc_collector=2)
    other = rank_on(BOTH_WAYS, 0, 2, gc_collector=1)
    assert controls(commit_basic(other)) == {1: report((0, 1, {}, {}))}


def test_reports_of_a_recovery_not_yet_heard_of_wait_for_it() -> None:
    """A restored rank's report can overtake the collector's news of the recovery.

    Learned at once, its counters would follow the abandoned timeline's checkpoints of the
    same rank, and the collector would stop with "counter shrinks" (seen in a local run: the
    restored rank reports as soon as its recovery completes, on another link than the news).
    """
    everyone = Topology.complete(3).edges
    collector = rank_on(everyone, 0, 3)
    collector.handle(ControlArrived(src=1, control=report((1, 1, {2: 5}, {}), (1, 2, {2: 9}, {}))))
    new_timeline = report((1, 3, {2: 6}, {}), incarnation=1)
    assert collector.handle(ControlArrived(src=1, control=new_timeline)) == []
    assert sorted(collector.known[1]) == [1, 2] and len(collector.early) == 1
    collector.handle(RecoveryCompleted(restored=frozenset({1}), incarnation=1))
    assert collector.early == [] and collector.floor(1) == 3
