"""The checkers on their own: payload equality, exactly-once channels, checkpoint patterns."""

from __future__ import annotations

import numpy as np
import pytest

from snapline.protocols.base import CheckpointRecord, RecoveryPlan, RecoveryView, initial_record
from snapline.runtime.sim.checks import (
    ChannelChecker,
    CheckFailed,
    CheckpointPatternChecker,
    OutputChecker,
    RecoveryChecker,
    compare_outputs,
    compare_results,
    values_equal,
)


def test_values_equal_understands_numpy_inside_plain_data() -> None:
    a = {"u": np.arange(3.0), "k": [1, (2, "x")]}
    assert values_equal(a, {"u": np.arange(3.0), "k": [1, (2, "x")]})
    assert not values_equal(a, {"u": np.arange(3.0) + 1, "k": [1, (2, "x")]})
    assert not values_equal(np.arange(3.0), np.arange(3))  # dtype differs
    assert not values_equal([1, 2], (1, 2))
    assert not values_equal(np.zeros(2), [0.0, 0.0])


def test_compare_results_names_the_first_difference() -> None:
    assert compare_results([1, 2], [1, 2]) is None
    assert "rank 1 ended with 3" in (compare_results([1, 2], [1, 3]) or "")
    assert "1 results, expected 2" in (compare_results([1, 2], [1]) or "")


def test_channel_checker_accepts_exactly_once_in_order() -> None:
    check = ChannelChecker(3, track_payloads=True)
    check.sent(0, 1, 1, "a")
    check.sent(0, 1, 2, "b")
    check.delivered(1, 0, 1, "a")
    check.delivered(1, 0, 2, "b")
    check.check_end({0: {1: 2}, 1: {}, 2: {}})


@pytest.mark.parametrize(
    ("deliveries", "error"),
    [
        ([(1, "a"), (1, "a")], "duplicate"),
        ([(2, "b")], "gap"),
        ([(1, "zzz")], "differs"),
        ([(1, "a"), (2, "b"), (3, "c")], "never sent"),
    ],
)
def test_channel_checker_catches(deliveries: list[tuple[int, str]], error: str) -> None:
    check = ChannelChecker(2, track_payloads=True)
    check.sent(0, 1, 1, "a")
    check.sent(0, 1, 2, "b")
    with pytest.raises(CheckFailed, match=error):
        for seq, payload in deliveries:
            check.delivered(1, 0, seq, payload)


def test_channel_checker_catches_lost_messages_at_the_end() -> None:
    check = ChannelChecker(2, track_payloads=False)
    check.delivered(1, 0, 1, "a")
    with pytest.raises(CheckFailed, match="2 messages sent, 1 delivered"):
        check.check_end({0: {1: 2}, 1: {}})


def test_rollback_trims_the_log_and_resends_must_match_deliveries() -> None:
    check = ChannelChecker(2, track_payloads=True)
    for seq, p in enumerate("abc", 1):
        check.sent(0, 1, seq, p)
    check.delivered(1, 0, 1, "a")
    check.delivered(1, 0, 2, "b")
    # Sender rolls back to having sent 1: message 2 was delivered, so it stays; 3 goes.
    check.rollback({0: {1: 1}, 1: {}}, {0: {}, 1: {0: 2}}, {0})
    assert check.logs[1] == ["a", "b"]
    with pytest.raises(CheckFailed, match="orphan"):
        check.sent(0, 1, 2, "B")
    check.sent(0, 1, 2, "b")
    check.sent(0, 1, 3, "c2")
    assert check.in_transit({0: {1: 3}, 1: {}}) == ["c2"]


def test_recovery_checker_validates_plans_and_cuts() -> None:
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed={0: [initial_record(0)], 1: [initial_record(1)]},
        volatile={0: initial_record(0)},
    )
    checker = RecoveryChecker()
    checker.validate_plan(view, RecoveryPlan(restore={1: 0}), {0: {0}, 1: {0}})
    with pytest.raises(CheckFailed, match="unrestored"):
        checker.validate_plan(view, RecoveryPlan(restore={0: 0}), {0: {0}, 1: {0}})
    with pytest.raises(CheckFailed, match="not committed"):
        checker.validate_plan(view, RecoveryPlan(restore={1: 4}), {0: {0}, 1: {0}})
    with pytest.raises(CheckFailed, match="does not restore"):
        checker.validate_plan(view, RecoveryPlan(restore={1: 0}, replay={0: []}), {0: {0}, 1: {0}})
    checker.check_cut([(0, 1)], {0: {1: 3}, 1: {}}, {0: {}, 1: {0: 3}})
    with pytest.raises(CheckFailed, match="orphan"):
        checker.check_cut([(0, 1)], {0: {1: 2}, 1: {}}, {0: {}, 1: {0: 3}})


def test_checkpoint_pattern_checker_finds_a_zigzag_without_a_causal_path() -> None:
    checker = CheckpointPatternChecker(3, "rdt")
    checker.sent(1, 2, 1)  # 1 sends to 2 before it hears from 0: a zig-zag
    checker.sent(0, 1, 1)
    checker.delivered(1, 0, 1)
    checker.delivered(2, 1, 1)
    checker.checkpoint(2, 1)
    with pytest.raises(CheckFailed, match=r"from C\(0,0\) to C\(2,1\): Z-path 0->1#1 1->2#1"):
        checker.check_end()
    # The same pattern is no Z-cycle: only RDT is broken.
    relaxed = CheckpointPatternChecker(3, "no-useless-checkpoint")
    relaxed.events = [list(e) for e in checker.events]
    relaxed.check_end()
    assert relaxed.runs == 1


def test_checkpoint_pattern_checker_forgets_what_a_rollback_undid() -> None:
    checker = CheckpointPatternChecker(2, "no-useless-checkpoint")
    # The domino pattern puts C(1,1) on a Z-cycle ...
    for k in range(1, 3):
        checker.checkpoint(0, k)
        checker.sent(0, 1, k)
        checker.delivered(1, 0, k)
        checker.checkpoint(1, k)
        checker.sent(1, 0, k)
        checker.delivered(0, 1, k)
    with pytest.raises(CheckFailed, match="on a Z-cycle"):
        checker.check_end()
    # ... but a recovery to C(0,1) and C(1,0) undoes every message of the cycle, and the
    # re-execution that follows (0->1 #1 sent and delivered again) makes none.
    checker.rollback(0, 1)
    checker.rollback(1, 0)
    checker.sent(0, 1, 1)
    checker.delivered(1, 0, 1)
    checker.checkpoint(1, 1)
    checker.check_end()
    execution, keys = checker.execution()
    assert keys == [(0, 1, 1)] and dict(execution.checkpoints) == {0: (1,), 1: (1,)}
    with pytest.raises(CheckFailed, match="never took"):
        checker.rollback(1, 5)


def test_recovery_checker_accepts_restoring_a_checkpoint_the_plan_commits() -> None:
    tentative = CheckpointRecord(rank=1, index=4, forced=True, sent={}, received={})
    view = RecoveryView(
        n=2,
        failed=frozenset({1}),
        committed={0: [initial_record(0)], 1: [initial_record(1)]},
        volatile={0: initial_record(0)},
        tentative={1: [tentative]},
    )
    checker = RecoveryChecker()
    checker.validate_plan(view, RecoveryPlan(restore={1: 4}, commit={1: [4]}), {0: {0}, 1: {0}})
    with pytest.raises(CheckFailed, match="not tentative"):
        checker.validate_plan(view, RecoveryPlan(restore={1: 0}, commit={1: [5]}), {0: {0}, 1: {0}})


def test_output_checker_counts_each_id_once_and_catches_changed_re_releases() -> None:
    checker = OutputChecker(2)
    assert checker.release(0, 1, ["a", "b"]) == ["a", "b"]
    # Released again from a restored checkpoint: same items under the same ids are skipped.
    assert checker.release(0, 2, ["b", "c"]) == ["c"]
    checker.check_end([3, 0])
    with pytest.raises(CheckFailed, match="re-executed differently"):
        checker.release(0, 3, ["x"])
    with pytest.raises(CheckFailed, match="never released"):
        checker.release(1, 2, ["late"])
    with pytest.raises(CheckFailed, match="produced 4 outputs"):
        checker.check_end([4, 0])


def test_compare_outputs_is_a_per_rank_multiset_comparison() -> None:
    assert compare_outputs([[["got", 1], ["sent", 2]]], [[["sent", 2], ["got", 1]]]) is None
    problem = compare_outputs([[["got", 1], ["got", 2]]], [[["got", 1], ["got", 1]]])
    assert problem is not None and "never released" in problem and "repeated" in problem
