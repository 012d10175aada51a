"""The scalable garbage collection agrees with the from-scratch computation it replaces.

``advance_garbage_line`` (incremental, only the ranks that learned something) must give the
same line as ``garbage_line`` over everything known so far, whatever order the checkpoints
become known in; ``maximum_consistent_cut`` (receivers indexed per sender) must agree with
brute force from any start. And in a whole run of the protocols through the in-memory link,
with batched summaries and collection at bounded frequency, no rank's line is ever after the
true garbage line, and recovery still finds every message it must re-send.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from snapline.protocols.base import CheckpointRecord, is_consistent
from snapline.protocols.communication_induced import BCS
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.link import InMemoryLink
from snapline.protocols.recovery_line import (
    advance_garbage_line,
    brute_force_maximum_cut,
    garbage_line,
    maximum_consistent_cut,
)
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.topology import Topology


def _record(
    rank: int, index: int, sent: dict[int, int], received: dict[int, int]
) -> CheckpointRecord:
    return CheckpointRecord(
        rank=rank, index=index, forced=False, sent=dict(sent), received=dict(received)
    )


@st.composite
def committed_checkpoints(
    draw: st.DrawFn, max_ranks: int = 5, max_ops: int = 40
) -> dict[int, list[CheckpointRecord]]:
    """Each rank's committed checkpoints (index 0 first) of a random FIFO execution."""
    n = draw(st.integers(2, max_ranks))
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["send", "deliver", "ckpt"]),
                st.integers(0, n - 1),
                st.integers(0, n - 1),
            ),
            max_size=max_ops,
        )
    )
    sent = [dict[int, int]() for _ in range(n)]
    received = [dict[int, int]() for _ in range(n)]
    queued: dict[tuple[int, int], int] = {}
    committed = {r: [_record(r, 0, {}, {})] for r in range(n)}
    for kind, a, b in ops:
        if kind == "ckpt":
            committed[a].append(_record(a, len(committed[a]), sent[a], received[a]))
        elif kind == "send" and a != b:
            sent[a][b] = sent[a].get(b, 0) + 1
            queued[(a, b)] = queued.get((a, b), 0) + 1
        elif kind == "deliver":
            pending = [ch for ch, q in sorted(queued.items()) if q]
            if pending:
                src, dst = pending[(a * n + b) % len(pending)]
                queued[(src, dst)] -= 1
                received[dst][src] = received[dst].get(src, 0) + 1
    return committed


@settings(max_examples=300, deadline=None)
@given(committed_checkpoints(), st.data())
def test_the_incremental_line_equals_the_line_from_scratch(
    committed: dict[int, list[CheckpointRecord]], data: st.DataObject
) -> None:
    pool = [rec for records in committed.values() for rec in records[1:]]
    order = data.draw(st.permutations(pool))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(order)), max_size=6)) | {len(order)})
    line: dict[int, CheckpointRecord] = {}
    known: dict[int, dict[int, CheckpointRecord]] = {}
    done = 0
    for upto in cuts:
        for rec in order[done:upto]:
            known.setdefault(rec.rank, {})[rec.index] = rec
        done = upto
        # What the protocol does: only the records above its line, ranks with news first.
        floor = {r: line[r].index if r in line else 0 for r in committed}
        newer = {
            r: [recs[i] for i in sorted(recs) if i > floor[r]]
            for r, recs in known.items()
            if any(i > floor[r] for i in recs)
        }
        line.update(advance_garbage_line(line, newer))
        scratch = garbage_line(
            {
                r: [committed[r][0], *(known.get(r, {})[i] for i in sorted(known.get(r, {})))]
                for r in committed
            }
        )
        assert {r: line[r].index if r in line else 0 for r in committed} == dict(
            scratch.before_index
        )
        assert is_consistent({r: line.get(r, committed[r][0]) for r in committed})


@settings(max_examples=300, deadline=None)
@given(committed_checkpoints(), st.data())
def test_propagation_from_any_start_is_the_maximum_below_it(
    committed: dict[int, list[CheckpointRecord]], data: st.DataObject
) -> None:
    start = {r: data.draw(st.integers(0, len(recs) - 1)) for r, recs in committed.items()}
    below = {r: recs[: start[r] + 1] for r, recs in committed.items()}
    assert maximum_consistent_cut(committed, start=start) == brute_force_maximum_cut(below)


def _floors(proto: IndependentCheckpointing, n: int) -> dict[int, int]:
    return {r: proto.floor(r) for r in range(n)}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([Uncoordinated, BCS]),
    st.integers(3, 5),
    st.sampled_from(["complete", "ring"]),
    st.randoms(use_true_random=False),
    st.integers(10, 60),
)
def test_batched_gc_never_passes_the_true_line(
    cls: type[IndependentCheckpointing],
    n: int,
    topology: str,
    rng: random.Random,
    steps: int,
) -> None:
    topo = Topology.complete(n) if topology == "complete" else Topology.ring(n)
    edges = topo.edges
    link = InMemoryLink.build(cls, n, edges, {"edges": [list(e) for e in sorted(edges)]})
    for _ in range(steps):
        rank = rng.randrange(n)
        what = rng.randrange(4)
        if what == 0:
            link.request_checkpoint(rank)
        elif what == 1:
            dst = rng.choice(sorted(d for s, d in edges if s == rank))
            link.send(rank, dst, f"{rank}->{dst}")
        elif what == 2:
            link.persist_all()
        else:
            link.step(rng)
        true_line = garbage_line(
            {r: list(state.committed) for r, state in enumerate(link.ranks)}
        ).before_index
        for state in link.ranks:
            proto = state.protocol
            assert isinstance(proto, IndependentCheckpointing)
            for r, floor in _floors(proto, n).items():
                assert floor <= true_line[r]
    # A crash after all that: the in-transit messages are still in the senders' logs
    # (``plan_recovery`` raises RecoveryError if gc trimmed one too early).
    link.crash(rng.randrange(n))
    link.recover()
    link.run(rng)
