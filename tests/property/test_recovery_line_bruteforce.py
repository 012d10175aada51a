"""Rollback propagation agrees with brute force, and counters agree with Z-cycles.

Random small executions (sends, FIFO deliveries, checkpoints on random ranks) are built by
hypothesis; from each we derive the checkpoint records a driver would have stored and the
message pattern ``zigzag`` analyses.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from snapline.protocols.base import CheckpointRecord, RecoveryView, is_consistent
from snapline.protocols.recovery_line import (
    VOLATILE_INDEX,
    brute_force_maximum_cut,
    candidate_records,
    garbage_line,
    maximum_consistent_cut,
    recovery_line,
    useless_checkpoints,
)
from snapline.protocols.zigzag import Execution, ExecutionRecorder
from snapline.protocols.zigzag import useless_checkpoints as z_useless


@dataclass
class History:
    n: int
    committed: dict[int, list[CheckpointRecord]]
    volatile: dict[int, CheckpointRecord]
    execution: Execution


def _record(
    rank: int, index: int, sent: dict[int, int], received: dict[int, int]
) -> CheckpointRecord:
    return CheckpointRecord(
        rank=rank, index=index, forced=False, sent=dict(sent), received=dict(received)
    )


@st.composite
def histories(draw: st.DrawFn, max_ranks: int = 4, max_ops: int = 30) -> History:
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
    queues: dict[tuple[int, int], list[int]] = {}
    committed = {r: [_record(r, 0, {}, {})] for r in range(n)}
    recorder = ExecutionRecorder(n)
    for kind, a, b in ops:
        if kind == "ckpt":
            recorder.checkpoint(a, len(committed[a]))
            committed[a].append(_record(a, len(committed[a]), sent[a], received[a]))
        elif kind == "send" and a != b:
            sent[a][b] = sent[a].get(b, 0) + 1
            queues.setdefault((a, b), []).append(recorder.send(a, b))
        elif kind == "deliver":
            pending = [ch for ch, q in sorted(queues.items()) if q]
            if pending:
                src, dst = pending[(a * n + b) % len(pending)]
                recorder.deliver(queues[(src, dst)].pop(0))
                received[dst][src] = received[dst].get(src, 0) + 1
    volatile = {r: _record(r, VOLATILE_INDEX, sent[r], received[r]) for r in range(n)}
    return History(n=n, committed=committed, volatile=volatile, execution=recorder.execution())


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_propagation_finds_the_brute_force_maximum(history: History, data: st.DataObject) -> None:
    failed = frozenset(data.draw(st.sets(st.integers(0, history.n - 1), min_size=1)))
    view = RecoveryView(
        n=history.n,
        failed=failed,
        committed=history.committed,
        volatile={r: v for r, v in history.volatile.items() if r not in failed},
    )
    candidates = candidate_records(view)
    fast = maximum_consistent_cut(candidates)
    assert fast == brute_force_maximum_cut(candidates)
    line = recovery_line(view)
    assert is_consistent(line.cut)
    assert failed <= set(line.restore)
    # Nothing the line restores is newer than the committed checkpoints it had.
    for rank, index in line.restore.items():
        assert index in {rec.index for rec in history.committed[rank]}


@settings(max_examples=300, deadline=None)
@given(histories())
def test_counters_and_z_cycles_find_the_same_useless_checkpoints(history: History) -> None:
    by_counters = useless_checkpoints(history.committed, history.volatile)
    by_z_cycles = {(r, p) for r, p in z_useless(history.execution)}
    # Position p of rank r is the record with index p in these histories.
    assert by_counters == by_z_cycles


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_garbage_line_is_never_after_a_recovery_line(history: History, data: st.DataObject) -> None:
    failed = frozenset(data.draw(st.sets(st.integers(0, history.n - 1), min_size=1)))
    view = RecoveryView(
        n=history.n,
        failed=failed,
        committed=history.committed,
        volatile={r: v for r, v in history.volatile.items() if r not in failed},
    )
    line = recovery_line(view)
    garbage = garbage_line(history.committed)
    for rank, rec in line.cut.items():
        if rec.index != VOLATILE_INDEX:
            assert garbage.before_index[rank] <= rec.index
        for (src, dst), upto in garbage.received.items():
            if dst == rank:
                assert rec.received.get(src, 0) >= upto
