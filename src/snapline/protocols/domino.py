"""A workload that provokes the domino effect, run through the in-memory link (pure).

Theory of operation
-------------------
Ranks on a bidirectional ring pass messages like bank transfers: each delivery makes the
receiver send one message on to a random neighbour. Each rank checkpoints on its own staggered
schedule (every ``period + rank`` deliveries), *right after a delivery and before the send it
causes* -- the classic pattern in which every checkpoint is followed by a message crossing
another rank's checkpoint. Then one rank crashes and the protocol's ``plan_recovery`` runs.

The choices (which channel delivers next, which neighbour gets the transfer) come from an
injected generator, and none depends on the protocol, so every protocol sees the same workload
for the same seed; only their checkpoints differ. Under uncoordinated checkpointing most
checkpoints end on Z-cycles and the recovery line falls far behind (the domino effect); BCS and
FDAS force checkpoints that keep every checkpoint useful, so the failed rank restores its
newest checkpoint. ``DominoOutcome`` carries the numbers reports compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from snapline.errors import ConfigError
from snapline.protocols.base import Deliver, TakeCheckpoint
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.link import AppMessage, Chooser, InMemoryLink
from snapline.protocols.recovery_line import recovery_line
from snapline.protocols.zigzag import ExecutionRecorder, useless_indices
from snapline.topology import Topology


@dataclass(frozen=True, slots=True, kw_only=True)
class DominoOutcome:
    """What one protocol did on the domino workload, and how far the crash rolled it back.

    ``checkpoints_lost[r]`` and ``events_lost[r]`` follow ``recovery_line.Rollback``.
    """

    protocol: str
    n: int
    failed: int
    newest: Mapping[int, int]
    restore: Mapping[int, int]
    checkpoints_lost: Mapping[int, int]
    events_lost: Mapping[int, int]
    checkpoints_basic: int
    checkpoints_forced: int
    useless_checkpoints: int


def run_domino_workload(
    protocol_cls: type[IndependentCheckpointing],
    chooser: Chooser,
    *,
    n: int = 4,
    deliveries: int = 200,
    period: int = 3,
    failed: int = 0,
) -> DominoOutcome:
    """Run the workload for ``deliveries`` deliveries, crash ``failed``, plan its recovery."""
    if n < 2 or not 0 <= failed < n or period < 1 or deliveries < 1:
        raise ConfigError("the domino workload needs n >= 2, a failed rank in 0..n-1, period >= 1")
    edges = Topology.ring(n, bidirectional=True).edges
    link = InMemoryLink.build(protocol_cls, n, edges, {"gc": False})
    recorder = ExecutionRecorder(n)
    ids: dict[tuple[int, int, int], int] = {}
    delivered = [0] * n

    def send(src: int, dst: int) -> None:
        link.send(src, dst, None)
        ids[(src, dst, link.ranks[src].sent[dst])] = recorder.send(src, dst)

    def record(rank: int, since: int) -> None:
        for action in link.ranks[rank].actions[since:]:
            if isinstance(action, TakeCheckpoint):
                recorder.checkpoint(rank, action.index)
            elif isinstance(action, Deliver):
                recorder.deliver(ids[(action.src, rank, action.seq)])

    for rank in range(n):
        send(rank, (rank + 1) % n)
    for _ in range(deliveries):
        ready = link.deliverable()
        src, dst = ready[chooser.randrange(len(ready))]
        since = len(link.ranks[dst].actions)
        item = link.deliver(src, dst)
        assert isinstance(item, AppMessage)
        delivered[dst] += 1
        if delivered[dst] % (period + dst) == 0:
            link.request_checkpoint(dst)
        record(dst, since)
        send(dst, (dst + (1 if chooser.randrange(2) else -1)) % n)
    link.persist_all()
    newest = {r: link.committed_index(r) for r in range(n)}
    basic = sum(s.protocol.stats["checkpoints_basic"] for s in link.ranks)
    forced = sum(s.protocol.stats["checkpoints_forced"] for s in link.ranks)
    useless = len(useless_indices(recorder.execution()))
    link.crash(failed)
    line = recovery_line(link.recovery_view())
    plan = link.recover()
    assert dict(plan.restore) == dict(line.restore)
    return DominoOutcome(
        protocol=protocol_cls.name,
        n=n,
        failed=failed,
        newest=newest,
        restore=dict(plan.restore),
        checkpoints_lost={r: rb.checkpoints_lost for r, rb in line.rollback.items()},
        events_lost={r: rb.events_lost for r, rb in line.rollback.items()},
        checkpoints_basic=basic,
        checkpoints_forced=forced,
        useless_checkpoints=useless,
    )
