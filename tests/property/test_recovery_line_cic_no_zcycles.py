"""BCS and FDAS executions never have a useless checkpoint (FDAS ones are RDT); uncoordinated do.

Random runs through the in-memory link (random sends, deliveries, basic checkpoints, persists)
are recorded as a ``zigzag.Execution`` and checked for Z-cycles; the counters-based check of
``recovery_line`` must agree on the stored records.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from snapline.protocols.base import Deliver, TakeCheckpoint
from snapline.protocols.communication_induced import BCS, FDAS
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.link import AppMessage, InMemoryLink
from snapline.protocols.recovery_line import useless_checkpoints
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.protocols.zigzag import (
    Execution,
    ExecutionRecorder,
    dependency_vectors,
    rdt_violations,
    useless_indices,
)
from snapline.topology import Topology


def random_run(
    cls: type[IndependentCheckpointing], seed: int, n: int, steps: int
) -> tuple[InMemoryLink, Execution]:
    rng = random.Random(seed)
    topology = Topology.random_graph(n, degree=rng.randint(1, n - 1), seed=seed)
    link = InMemoryLink.build(cls, n, topology.edges, {"gc": False})
    recorder = ExecutionRecorder(n)
    ids: dict[tuple[int, int, int], int] = {}

    def replay_actions(rank: int, before: int) -> None:
        for action in link.ranks[rank].actions[before:]:
            if isinstance(action, TakeCheckpoint):
                recorder.checkpoint(rank, action.index)
            elif isinstance(action, Deliver):
                recorder.deliver(ids[(action.src, rank, action.seq)])

    edges = sorted(topology.edges)
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.4:
            src, dst = edges[rng.randrange(len(edges))]
            link.send(src, dst, None)
            ids[(src, dst, link.ranks[src].sent[dst])] = recorder.send(src, dst)
        elif roll < 0.85:
            ready = link.deliverable()
            if ready:
                src, dst = ready[rng.randrange(len(ready))]
                before = len(link.ranks[dst].actions)
                item = link.deliver(src, dst)
                assert isinstance(item, AppMessage)
                replay_actions(dst, before)
        else:
            rank = rng.randrange(n)
            before = len(link.ranks[rank].actions)
            link.request_checkpoint(rank)
            replay_actions(rank, before)
    link.persist_all()
    return link, recorder.execution()


def _counter_useless(link: InMemoryLink) -> set[tuple[int, int]]:
    view = link.recovery_view()
    return useless_checkpoints(view.committed, view.volatile)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), fdas=st.booleans())
def test_communication_induced_runs_have_no_useless_checkpoint(
    seed: int, n: int, fdas: bool
) -> None:
    link, execution = random_run(FDAS if fdas else BCS, seed, n, 120)
    assert useless_indices(execution) == set()
    assert _counter_useless(link) == set()
    if fdas:
        # FDAS promises more: every Z-path is doubled by a causal path (RDT).
        assert rdt_violations(dependency_vectors(execution)) == []


def test_uncoordinated_random_runs_do_make_useless_checkpoints() -> None:
    found = 0
    for seed in range(40):
        link, execution = random_run(Uncoordinated, seed, 3, 120)
        by_z = useless_indices(execution)
        assert by_z == _counter_useless(link)
        found += bool(by_z)
    # The same workloads under uncoordinated checkpointing: Z-cycles are common.
    assert found >= 10


def test_bcs_checkpoints_with_equal_index_form_consistent_cuts() -> None:
    from snapline.protocols.base import is_consistent

    for seed in range(20):
        link, _ = random_run(BCS, seed, 4, 150)
        committed = {s.rank: s.committed for s in link.ranks}
        top = max(r.index for records in committed.values() for r in records)
        for i in range(top + 1):
            # Each rank's first checkpoint with index >= i (or its current state).
            cut = {}
            for rank, records in committed.items():
                later = [r for r in records if r.index >= i]
                cut[rank] = later[0] if later else link.volatile_record(rank)
            assert is_consistent(cut), (seed, i)
