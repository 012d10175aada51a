"""Random runs with crashes through the in-memory link, gc on: plans stay consistent.

The link checks every plan (failed ranks restored, consistent cut, no collected checkpoint
restored, replay in order and sent in the cut); here we also check that every message the
cut sent is delivered exactly once in the end, and that gc never removes a log entry a later
recovery needs (plan_recovery would raise RecoveryError).

Workaround: after a recovery the link keeps a restored rank's committed checkpoints newer than
the restored one (an abandoned execution); a driver must drop them, so this test does.
"""

from __future__ import annotations

import random

import pytest

from snapline.protocols.communication_induced import BCS, FDAS
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.link import InMemoryLink
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.topology import Topology


def _drop_abandoned(link: InMemoryLink, restore: dict[int, int]) -> None:
    for rank, index in restore.items():
        state = link.ranks[rank]
        state.committed = [r for r in state.committed if r.index <= index]


@pytest.mark.parametrize("cls", [Uncoordinated, BCS, FDAS], ids=lambda c: c.name)
def test_random_crashes_keep_exactly_once_delivery(cls: type[IndependentCheckpointing]) -> None:
    for seed in range(60):
        rng = random.Random(seed)
        n = rng.randint(2, 5)
        topology = Topology.random_graph(n, degree=rng.randint(1, n - 1), seed=seed)
        edges = sorted(topology.edges)
        link = InMemoryLink.build(cls, n, topology.edges)
        payload = 0
        for _ in range(300):
            roll = rng.random()
            if roll < 0.35:
                src, dst = edges[rng.randrange(len(edges))]
                payload += 1
                link.send(src, dst, payload)
            elif roll < 0.8:
                link.step(rng)
            elif roll < 0.9:
                link.request_checkpoint(rng.randrange(n))
            elif roll < 0.97:
                link.persist(rng.randrange(n))
            else:
                for rank in rng.sample(range(n), rng.randint(1, min(2, n))):
                    link.crash(rank)
                plan = link.recover()
                _drop_abandoned(link, dict(plan.restore))
        link.run()
        # Every channel: what the receiver got is exactly 1..sent, each payload once, in order.
        for src, dst in edges:
            got = [m.seq for m in link.ranks[dst].delivered if m.src == src]
            assert got == list(range(1, link.ranks[src].sent.get(dst, 0) + 1)), (seed, src, dst)
