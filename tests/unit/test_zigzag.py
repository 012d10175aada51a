"""Z-paths, Z-cycles and useless checkpoints on hand-made executions."""

from __future__ import annotations

import random

import pytest

from snapline.errors import ConfigError
from snapline.protocols.zigzag import (
    CheckpointId,
    Execution,
    ExecutionRecorder,
    RdtViolation,
    dependency_vectors,
    execution_from_trace,
    rdt_violations,
    useless_checkpoints,
    useless_indices,
    z_cycle_checkpoints,
    z_path,
    z_precedes,
)


def test_a_zigzag_path_that_is_not_causal() -> None:
    # 1 sends m2 to 2 *before* receiving m1 from 0, in the same interval: a Z-path 0 -> 2
    # without a causal path.
    rec = ExecutionRecorder(3)
    m2 = rec.send(1, 2)
    m1 = rec.send(0, 1)
    rec.deliver(m1)
    rec.deliver(m2)
    rec.checkpoint(2, 1)
    execution = rec.execution()
    assert z_precedes(execution, (0, 0), (2, 1))
    assert z_path(execution, (0, 0), (2, 1)) == [m1, m2]
    # A checkpoint at 1 between the send of m2 and the delivery of m1 breaks the zigzag.
    rec = ExecutionRecorder(3)
    m2 = rec.send(1, 2)
    rec.checkpoint(1, 1)
    m1 = rec.send(0, 1)
    rec.deliver(m1)
    rec.deliver(m2)
    rec.checkpoint(2, 1)
    execution = rec.execution()
    assert not z_precedes(execution, (0, 0), (2, 1))
    assert z_path(execution, (0, 0), (2, 1)) is None


def test_the_domino_pattern_makes_checkpoints_useless() -> None:
    rec = ExecutionRecorder(2)
    for k in range(1, 4):
        rec.checkpoint(0, k)
        a = rec.send(0, 1)
        rec.deliver(a)
        rec.checkpoint(1, k)
        b = rec.send(1, 0)
        rec.deliver(b)
    execution = rec.execution()
    assert useless_checkpoints(execution) == {(0, 2), (0, 3), (1, 1), (1, 2), (1, 3)}
    # A Z-cycle through C1_1: b_1 (sent after it) reaches 0, a_2 comes back before C1_2...
    assert z_path(execution, (1, 1), (1, 1)) is not None
    assert z_path(execution, (0, 1), (0, 1)) is None


def test_useless_indices_name_checkpoints_by_protocol_index() -> None:
    rec = ExecutionRecorder(2)
    rec.checkpoint(1, 7)  # BCS-style indices need not be positions
    m = rec.send(1, 0)
    rec.checkpoint(0, 3)
    b = rec.send(0, 1)
    rec.deliver(m)
    rec.checkpoint(0, 4)
    rec.deliver(b)
    rec.checkpoint(1, 9)
    execution = rec.execution()
    assert useless_checkpoints(execution) == set()
    assert useless_indices(execution) == set()
    # m sent after C1(7) reaches 0 before C0(4)... and b sent after C0(3) reaches 1 before
    # C1(9): 0@1 -> 1@2 and 1@1 -> 0@2 but no cycle.
    assert z_precedes(execution, (1, 1), (0, 2))
    assert not z_precedes(execution, (1, 1), (1, 1))


def test_execution_from_trace() -> None:
    trace = {
        "n": 2,
        "events": [
            {"t": 0.0, "rank": 0, "kind": "send", "dst": 1, "seq": 1},
            {"t": 0.1, "rank": 1, "kind": "checkpoint", "index": 1, "forced": False},
            {"t": 0.2, "rank": 1, "kind": "deliver", "src": 0, "seq": 1},
        ],
    }
    execution = execution_from_trace(trace)
    assert execution.checkpoints == {1: (1,)}
    assert execution.messages[0].deliver_interval == 1
    with pytest.raises(ConfigError, match="failure-free"):
        execution_from_trace({"n": 1, "events": [{"t": 0, "rank": 0, "kind": "crash"}]})
    with pytest.raises(ConfigError, match="before it was sent"):
        execution_from_trace(
            {"n": 2, "events": [{"rank": 1, "kind": "deliver", "src": 0, "seq": 1}]}
        )
    with pytest.raises(ConfigError, match="not a snapline trace"):
        execution_from_trace({"events": []})


def random_execution(seed: int, n: int, steps: int) -> Execution:
    """Random sends, deliveries (FIFO per channel) and checkpoints of ``n`` ranks."""
    rng = random.Random(seed)
    rec = ExecutionRecorder(n)
    queues: dict[tuple[int, int], list[int]] = {}
    indices = [0] * n
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.4:
            src, dst = rng.sample(range(n), 2)
            queues.setdefault((src, dst), []).append(rec.send(src, dst))
        elif roll < 0.85:
            ready = [c for c, q in queues.items() if q]
            if ready:
                rec.deliver(queues[ready[rng.randrange(len(ready))]].pop(0))
        else:
            rank = rng.randrange(n)
            indices[rank] += 1
            rec.checkpoint(rank, indices[rank])
    return rec.execution()


def causally_precedes(execution: Execution, frm: CheckpointId, to: CheckpointId) -> bool:
    """Brute force: a chain of messages, each sent after the previous one was delivered."""
    messages = execution.messages
    frontier = [
        i
        for i, m in enumerate(messages)
        if m.src == frm[0] and m.send_interval >= frm[1] and m.deliver_interval is not None
    ]
    seen = set(frontier)
    while frontier:
        i = frontier.pop()
        m = messages[i]
        assert m.deliver_interval is not None and m.deliver_step is not None
        if m.dst == to[0] and m.deliver_interval < to[1]:
            return True
        for k, nxt in enumerate(messages):
            if (
                k not in seen
                and nxt.deliver_interval is not None
                and nxt.src == m.dst
                and nxt.send_step is not None
                and nxt.send_step > m.deliver_step
            ):
                seen.add(k)
                frontier.append(k)
    return False


@pytest.mark.parametrize("seed", range(40))
def test_dependency_vectors_agree_with_path_search(seed: int) -> None:
    n = 2 + seed % 4
    execution = random_execution(seed, n, 60 + seed % 3 * 40)
    vectors = dependency_vectors(execution)
    for to, zigzag in vectors.zigzag.items():
        causal = vectors.causal[to]
        for q in range(n):
            for x in range(execution.positions(q)):
                if q == to[0] and x < to[1]:
                    # Program order: earlier checkpoints of the rank precede it trivially.
                    assert causal[q] >= x and zigzag[q] >= x
                    continue
                assert (zigzag[q] >= x) == z_precedes(execution, (q, x), to), (q, x, to)
                assert (causal[q] >= x) == causally_precedes(execution, (q, x), to), (q, x, to)
    assert z_cycle_checkpoints(vectors) == useless_checkpoints(execution)
    # Every Z-path a violation names exists, and is not causal.
    for violation in rdt_violations(vectors):
        assert z_precedes(execution, violation.frm, violation.to)
        assert not causally_precedes(execution, violation.frm, violation.to)


def test_rdt_violation_on_a_zigzag_that_no_causal_path_doubles() -> None:
    rec = ExecutionRecorder(3)
    m2 = rec.send(1, 2)
    m1 = rec.send(0, 1)
    rec.deliver(m1)
    rec.deliver(m2)
    rec.checkpoint(2, 1)
    vectors = dependency_vectors(rec.execution())
    assert rdt_violations(vectors) == [RdtViolation(frm=(0, 0), to=(2, 1))]
    assert z_cycle_checkpoints(vectors) == set()
    # Rank 1 delivering m1 before it sends m2 makes the same Z-path causal: RDT holds.
    rec = ExecutionRecorder(3)
    m1 = rec.send(0, 1)
    rec.deliver(m1)
    m2 = rec.send(1, 2)
    rec.deliver(m2)
    rec.checkpoint(2, 1)
    assert rdt_violations(dependency_vectors(rec.execution())) == []
