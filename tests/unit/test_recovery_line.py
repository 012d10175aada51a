"""Recovery line: rollback propagation, in-transit messages, rollback distance, garbage."""

from __future__ import annotations

import pytest

from snapline.errors import RecoveryError
from snapline.protocols.base import CheckpointRecord, RecoveryView
from snapline.protocols.recovery_line import (
    VOLATILE_INDEX,
    brute_force_maximum_cut,
    garbage_line,
    in_transit_messages,
    maximum_consistent_cut,
    recovery_line,
    useless_checkpoints,
)


def rec(rank: int, index: int, sent: dict[int, int], received: dict[int, int]) -> CheckpointRecord:
    return CheckpointRecord(rank=rank, index=index, forced=False, sent=sent, received=received)


def domino_records() -> dict[int, list[CheckpointRecord]]:
    """The classic domino pattern on two ranks, four rounds.

    Round k: 0 takes C0_k and sends a_k; 1 receives a_k, takes C1_k and sends b_k; 0
    receives b_k. Every checkpoint of rank 1 records a receive sent after C0_k, every C0_k
    (k >= 2) one sent after C1_(k-1): only C0_1 with C1_0 (or the initial cut) is consistent.
    """
    r0 = [rec(0, 0, {}, {})]
    r1 = [rec(1, 0, {}, {})]
    for k in range(1, 5):
        r0.append(rec(0, k, {1: k - 1}, {1: k - 1}))
        r1.append(rec(1, k, {0: k - 1}, {0: k}))
    return {0: r0, 1: r1}


def test_domino_effect_rolls_both_ranks_back_to_the_start() -> None:
    committed = domino_records()
    # Rank 1 failed before b_4 reached rank 0: rank 1 restores C1_4, rank 0 keeps running.
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed=committed,
        volatile={0: rec(0, VOLATILE_INDEX, {1: 4}, {1: 3})},
    )
    line = recovery_line(view)
    assert line.restore == {1: 4}
    assert line.cut[0].index == VOLATILE_INDEX
    assert line.rollback[1].checkpoints_lost == 0
    # Rank 0 received b_4 (sent after C1_4): the dominoes fall to C0_1 / C1_0.
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed=committed,
        volatile={0: rec(0, VOLATILE_INDEX, {1: 4}, {1: 4})},
    )
    line = recovery_line(view)
    assert line.restore == {0: 1, 1: 0}
    assert line.rollback[1].checkpoints_lost == 4
    assert line.rollback[0].checkpoints_lost == 4
    assert line.rollback[0].events_lost == 8
    assert line.in_transit == {}


def test_in_transit_messages_are_the_sent_but_not_received_sequence_numbers() -> None:
    cut = {0: rec(0, 2, {1: 5}, {}), 1: rec(1, 3, {}, {0: 2})}
    assert in_transit_messages(cut) == {(0, 1): range(3, 6)}


def test_survivor_keeps_running_when_nothing_orphans_it() -> None:
    committed = {0: [rec(0, 0, {}, {}), rec(0, 1, {1: 2}, {})], 1: [rec(1, 0, {}, {})]}
    view = RecoveryView(
        n=2,
        failed=frozenset({0}),
        committed=committed,
        volatile={1: rec(1, VOLATILE_INDEX, {}, {0: 1})},
    )
    line = recovery_line(view)
    assert line.restore == {0: 1}
    assert line.in_transit == {(0, 1): range(2, 3)}
    assert line.rollback[0].checkpoints_lost == 0


def test_pinning_a_checkpoint_that_is_in_no_consistent_cut_gives_none() -> None:
    committed = domino_records()
    candidates = {r: list(v) for r, v in committed.items()}
    assert maximum_consistent_cut(candidates, pinned={0: 2}) is None
    assert maximum_consistent_cut(candidates) == brute_force_maximum_cut(candidates)


def test_useless_checkpoints_of_the_domino_pattern() -> None:
    committed = domino_records()
    expected = {(0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3), (1, 4)}
    assert useless_checkpoints(committed) == expected
    final = {0: rec(0, VOLATILE_INDEX, {1: 4}, {1: 4}), 1: rec(1, VOLATILE_INDEX, {0: 4}, {0: 4})}
    assert useless_checkpoints(committed, final) == expected


def test_garbage_line_of_committed_checkpoints() -> None:
    committed = {
        0: [rec(0, 0, {}, {}), rec(0, 1, {1: 1}, {}), rec(0, 2, {1: 3}, {1: 1})],
        1: [rec(1, 0, {}, {}), rec(1, 1, {0: 1}, {0: 2})],
    }
    garbage = garbage_line(committed)
    assert garbage.before_index == {0: 2, 1: 1}
    assert garbage.received == {(1, 0): 1, (0, 1): 2}


def test_malformed_views_raise_recovery_error() -> None:
    shrinking = {0: [rec(0, 0, {}, {}), rec(0, 1, {1: 2}, {}), rec(0, 2, {1: 1}, {})]}
    with pytest.raises(RecoveryError, match="shrinks"):
        garbage_line(shrinking)
    unsorted = {0: [rec(0, 0, {}, {}), rec(0, 2, {}, {}), rec(0, 1, {}, {})]}
    with pytest.raises(RecoveryError, match="oldest first"):
        garbage_line(unsorted)
    view = RecoveryView(n=2, failed=frozenset({0}), committed={}, volatile={})
    with pytest.raises(RecoveryError, match="volatile"):
        recovery_line(view)
    huge = {r: [rec(r, i, {}, {}) for i in range(100)] for r in range(4)}
    with pytest.raises(RecoveryError, match="too many"):
        brute_force_maximum_cut(huge)
