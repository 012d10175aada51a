"""Chandy–Lamport through the in-memory link: markers, recorded channels, concurrent snapshots."""

from __future__ import annotations

import random

import pytest

from snapline.errors import ConfigError, ProtocolError
from snapline.protocols.base import (
    CheckpointWriteFailed,
    CollectGarbage,
    ControlArrived,
    DiscardCheckpoint,
    Redelivery,
    ReleaseOutput,
    SendControl,
    SnapshotComplete,
    is_consistent,
)
from snapline.protocols.chandy_lamport import (
    CHANNEL_STATE_KEY,
    ChandyLamport,
    SnapshotId,
)
from snapline.protocols.link import ControlMessage, InMemoryLink
from snapline.protocols.reachability import reaches_all
from snapline.topology import Topology


def link(topology: Topology) -> InMemoryLink:
    """A link whose protocols know the channel list, as the drivers pass it."""
    options = {"edges": [list(e) for e in sorted(topology.edges)]}
    return InMemoryLink.build(ChandyLamport, topology.n, topology.edges, options)


def cl(lk: InMemoryLink, rank: int) -> ChandyLamport:
    proto = lk.ranks[rank].protocol
    assert isinstance(proto, ChandyLamport)
    return proto


def snapshot_cut(lk: InMemoryLink, snapshot_id: SnapshotId) -> dict[int, int]:
    """rank -> committed index of its part of ``snapshot_id``."""
    cut = {}
    for state in lk.ranks:
        for record in state.committed:
            if isinstance(record.meta, dict) and tuple(record.meta["snapshot_id"]) == snapshot_id:
                cut[state.rank] = record.index
    return cut


def test_one_snapshot_on_a_ring_commits_everywhere_as_a_consistent_cut() -> None:
    lk = link(Topology.ring(3))
    lk.send(0, 1, "a")
    lk.send(1, 2, "b")
    lk.request_checkpoint(0)
    lk.send(2, 0, "c")
    lk.run(random.Random(1))
    snapshot = (0, 1, 0)
    cut = lk.committed_cut(snapshot_cut(lk, snapshot))
    assert sorted(cut) == [0, 1, 2]
    assert is_consistent(cut)
    assert cl(lk, 0).stats["snapshots_initiated"] == 1
    # One marker per channel; the commit reports 1 -> 2 -> 0 and 2 -> 0; the announcement
    # 0 -> 1 -> 2.
    assert sum(cl(lk, r).stats["control_messages"] for r in range(3)) == 3 + 3 + 2
    for r in range(3):
        assert (list(snapshot), cut[r].index) in [
            (list(i), x) for i, x in lk.ranks[r].snapshots_complete
        ]


def test_message_sent_before_the_senders_marker_is_recorded_and_replayed() -> None:
    lk = link(Topology.complete(2))
    lk.send(1, 0, "in-transit")
    lk.request_checkpoint(0)  # 0 records channel 1->0 until 1's marker comes
    lk.deliver(1, 0)  # "in-transit" arrives while 0 records
    lk.deliver(0, 1)  # marker: 1 checkpoints with sent {0: 1}, sends its marker
    lk.send(1, 0, "after")  # behind 1's marker: not part of the snapshot
    lk.run()
    snapshot = (0, 1, 0)
    assert [m.payload for m in lk.ranks[0].recorded[repr(snapshot)]] == ["in-transit"]
    part = lk.committed_cut(snapshot_cut(lk, snapshot))
    assert part[0].attachments[CHANNEL_STATE_KEY] == {"1": [[1, "in-transit"]]}
    assert part[0].received == {} and part[1].sent == {0: 1}

    lk.crash(1)
    plan = lk.recover()
    assert plan.restore == {0: part[0].index, 1: part[1].index}
    assert plan.replay == {0: [Redelivery(src=1, seq=1, payload="in-transit")]}
    assert [m.payload for m in lk.ranks[0].delivered] == ["in-transit"]
    assert lk.ranks[0].received == {1: 1}


def test_concurrent_snapshots_from_two_initiators_record_one_message_in_both() -> None:
    lk = link(Topology.complete(3))
    lk.request_checkpoint(0)  # snapshot A = (0, 1, 0)
    lk.request_checkpoint(1)  # snapshot B = (0, 1, 1)
    lk.deliver(1, 0)  # B's marker reaches 0: 0 now records 2->0 for A and for B
    lk.send(2, 0, "both")
    lk.deliver(2, 0)
    assert repr((0, 1, 0)) in lk.ranks[0].recorded and repr((0, 1, 1)) in lk.ranks[0].recorded
    lk.run(random.Random(3))
    for snapshot in [(0, 1, 0), (0, 1, 1)]:
        cut = lk.committed_cut(snapshot_cut(lk, snapshot))
        assert sorted(cut) == [0, 1, 2], f"{snapshot} committed on every rank"
        assert is_consistent(cut)
        assert cut[0].attachments[CHANNEL_STATE_KEY] == {"2": [[1, "both"]]}
        assert cut[2].sent == {0: 1}
    # Both parts at rank 0 are separate local checkpoints.
    assert len(lk.ranks[0].committed) == 3


def test_markers_advance_the_clock_so_a_later_snapshot_has_a_larger_id() -> None:
    lk = link(Topology.complete(3))
    lk.request_checkpoint(2)
    lk.run()
    lk.request_checkpoint(0)
    lk.run()
    assert cl(lk, 0).stats["snapshots_initiated"] == 1
    ids = [tuple(i) for i, _ in lk.ranks[1].snapshots_complete]
    assert ids == [(0, 1, 2), (0, 2, 0)]


def test_recovery_restores_the_newest_snapshot_committed_everywhere() -> None:
    lk = link(Topology.complete(3))
    lk.request_checkpoint(0)
    lk.run()
    lk.send(0, 1, "x")
    lk.request_checkpoint(2)
    lk.deliver(2, 0)
    lk.deliver(2, 1)  # rank 1 takes its part; rank 1 holds it unpersisted
    lk.run(persist=False)
    for r in (0, 2):
        while lk.persist(r) is not None:
            pass
    newest_everywhere = snapshot_cut(lk, (0, 1, 0))
    assert snapshot_cut(lk, (0, 2, 2)).keys() == {0, 2}
    lk.crash(1)
    plan = lk.recover()
    assert plan.restore == newest_everywhere
    # A fresh snapshot in the new incarnation uses fresh indices and ids.
    lk.request_checkpoint(1)
    lk.run()
    fresh = snapshot_cut(lk, (1, 2, 1))  # clock restored from (0, 1, 0)
    assert sorted(fresh) == [0, 1, 2] and min(fresh.values()) >= 1 << 32


def test_markers_of_an_older_incarnation_are_ignored() -> None:
    lk = link(Topology.complete(2))
    lk.crash(0)
    lk.recover()
    stale = ControlArrived(src=0, control={"kind": "marker", "id": [0, 9, 0], "committed": {}})
    assert cl(lk, 1).handle(stale) == []
    assert cl(lk, 1).stats["stale_markers"] == 1


def test_knowledge_on_markers_collects_garbage_and_releases_output() -> None:
    lk = link(Topology.complete(3))
    out = lk.output(1)
    for initiator in (0, 1, 2, 0):
        lk.request_checkpoint(initiator)
        lk.run()
    collected = [a for a in lk.ranks[1].actions if isinstance(a, CollectGarbage)]
    assert collected, "after a few snapshots every rank learns one is committed everywhere"
    assert ReleaseOutput(output_id=out) in lk.ranks[1].actions
    # The newest snapshot committed everywhere is never below anyone's collection bound.
    plan = type(cl(lk, 0)).plan_recovery(lk.recovery_view())
    for rank, index in plan.restore.items():
        assert index >= lk.ranks[rank].collected_before


def test_write_failure_discards_the_part_and_the_snapshot_is_not_used() -> None:
    lk = link(Topology.complete(2))
    lk.request_checkpoint(0)
    lk.run()
    lk.request_checkpoint(1)
    lk.run(persist=False)
    index = max(lk.ranks[0].taken)
    lk.feed(0, CheckpointWriteFailed(index=index, reason="disk full"))
    assert DiscardCheckpoint(index=index) in lk.ranks[0].actions
    lk.persist_all()
    plan = ChandyLamport.plan_recovery(lk.recovery_view())
    assert plan.restore == snapshot_cut(lk, (0, 1, 0))


def test_a_second_marker_on_one_channel_is_a_protocol_error() -> None:
    lk = link(Topology.complete(2))
    lk.request_checkpoint(0)
    marker = lk.deliver(0, 1)
    assert isinstance(marker, ControlMessage)
    with pytest.raises(ProtocolError, match="second marker"):
        lk.feed(1, ControlArrived(src=0, control=marker.control))


def test_topology_rules() -> None:
    dag = Topology.from_edges(3, [(0, 1), (0, 2), (1, 2)])
    with pytest.raises(ConfigError, match="no inbound"):
        InMemoryLink.build(ChandyLamport, 3, dag.edges)
    options = {"edges": [list(e) for e in sorted(dag.edges)]}
    lk = InMemoryLink.build(ChandyLamport, 3, dag.edges, options)
    lk.request_checkpoint(2)  # 2 reaches nobody: it declines
    assert cl(lk, 2).stats["requests_declined"] == 1
    lk.request_checkpoint(0)  # 0 reaches everyone: a full snapshot
    lk.run()
    assert sorted(snapshot_cut(lk, (0, 1, 0))) == [0, 1, 2]
    split = Topology.from_edges(4, [(0, 1), (1, 0), (2, 3), (3, 2)])
    with pytest.raises(ConfigError, match="reaches all"):
        InMemoryLink.build(ChandyLamport, 4, split.edges, {"edges": [list(e) for e in split.edges]})
    assert reaches_all(3, dag.edges, 0) and not reaches_all(3, dag.edges, 1)


def test_snapshot_complete_comes_after_the_last_marker() -> None:
    lk = link(Topology.complete(2))
    lk.request_checkpoint(0)
    assert not any(isinstance(a, SnapshotComplete) for a in lk.ranks[0].actions)
    lk.run()
    assert any(isinstance(a, SnapshotComplete) for a in lk.ranks[0].actions)


def test_commits_are_reported_to_the_collector_and_announced_down_the_tree() -> None:
    """Markers carry no knowledge: one report per commit up, one announcement per tree edge.

    Markers used to carry which snapshots each rank committed, n ranks' ids over every channel
    (O(n x E) per snapshot), and output waited for the next snapshot's markers.
    """
    lk = link(Topology.ring(4))  # 0 -> 1 -> 2 -> 3 -> 0: the tree is the ring itself
    out = lk.output(2)
    lk.request_checkpoint(0)
    lk.run()
    markers = [
        a.control
        for state in lk.ranks
        for a in state.actions
        if isinstance(a, SendControl) and a.control["kind"] == "marker"  # type: ignore[index]
    ]
    assert markers == [{"kind": "marker", "id": [0, 1, 0]}] * 4
    # Rank 1's report travels 1 -> 2 -> 3 -> 0; the announcement 0 -> 1 -> 2 -> 3.
    reports = [
        (state.rank, a.dst, a.control["rank"])  # type: ignore[index]
        for state in lk.ranks
        for a in state.actions
        if isinstance(a, SendControl) and a.control["kind"] == "committed"  # type: ignore[index]
    ]
    assert sorted(reports) == sorted(
        [(1, 2, 1), (2, 3, 1), (3, 0, 1), (2, 3, 2), (3, 0, 2), (3, 0, 3)]
    )
    for state in lk.ranks:
        announced = [
            a.dst
            for a in state.actions
            if isinstance(a, SendControl) and a.control["kind"] == "complete"  # type: ignore[index]
        ]
        assert announced == ([] if state.rank == 3 else [state.rank + 1])
        assert cl(lk, state.rank).known_complete == (0, 1, 0)
    # Output before the snapshot is released right after it, not one snapshot later.
    assert ReleaseOutput(output_id=out) in lk.ranks[2].actions


def test_stale_or_malformed_reports() -> None:
    lk = link(Topology.complete(2))
    lk.crash(1)
    lk.recover()
    stale = ControlArrived(src=1, control={"kind": "committed", "rank": 1, "id": [0, 3, 0]})
    assert cl(lk, 0).handle(stale) == []
    assert cl(lk, 0).stats["stale_reports"] == 1
    with pytest.raises(ProtocolError, match="malformed committed"):
        cl(lk, 0).handle(ControlArrived(src=1, control={"kind": "committed", "id": [1, 1, 0]}))
    with pytest.raises(ProtocolError, match="commit report of rank 5"):
        cl(lk, 0).handle(
            ControlArrived(src=1, control={"kind": "committed", "rank": 5, "id": [1, 1, 0]})
        )


def test_without_a_channel_list_every_rank_needs_a_direct_channel_to_the_collector() -> None:
    ring = Topology.ring(3)
    with pytest.raises(ConfigError, match="pass options edges"):
        InMemoryLink.build(ChandyLamport, 3, ring.edges)
    lk = InMemoryLink.build(ChandyLamport, 3, Topology.complete(3).edges)
    lk.request_checkpoint(1)
    lk.run()
    assert all(cl(lk, r).known_complete == (0, 1, 1) for r in range(3))


def test_a_marker_of_an_older_concurrent_snapshot_after_a_newer_one_completed() -> None:
    """Concurrent initiators: a rank may learn S committed everywhere before an older S'
    reaches it. It still takes part in S' (the ranks that started S' wait for its markers)."""
    lk = link(Topology.complete(3))
    lk.request_checkpoint(1)  # S' = (0, 1, 1): its markers stay queued for now
    lk.request_checkpoint(2)  # S = (0, 1, 2) > S'
    # Deliver S's markers first wherever they are not behind an S' marker.
    lk.run()
    for rank in range(3):
        assert cl(lk, rank).known_complete == (0, 1, 2)
        assert cl(lk, rank).phase.value == "idle"
