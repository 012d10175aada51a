"""Z-paths, Z-cycles and useless checkpoints on hand-made executions."""

from __future__ import annotations

import pytest

from snapline.errors import ConfigError
from snapline.protocols.zigzag import (
    ExecutionRecorder,
    execution_from_trace,
    useless_checkpoints,
    useless_indices,
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
