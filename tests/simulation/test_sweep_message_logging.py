"""Seed sweeps of pessimistic message logging in the simulator, with crashes.

Every run must pass the simulator's checkers (consistent cut after recovery, exactly-once
delivery, termination, the failure-free result). On top of that, message logging promises that
only failed ranks roll back: every recovery restores exactly the ranks that failed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from snapline.runtime.sim import SimConfig, SimResult, run_simulation

#: complete, ring (every rank has one inbound channel, no reverse channel for acks), a random
#: digraph and a star (the leaves have a single inbound channel, all acks go to the centre).
TOPOLOGIES = ("complete", "ring", "random:2", "star")


def config(seed: int) -> SimConfig:
    """A small bank job with bursts of crashes, crashes in checkpoint writes and in recovery."""
    return SimConfig(
        app="bank",
        n=3 + seed % 4,
        protocol="message-logging",
        topology=TOPOLOGIES[seed % len(TOPOLOGIES)],
        seed=seed,
        interval_s=5.0,
        crash_rate=0.01,
        crash_burst=2,
        crash_in_write=0.2,
        crash_in_recovery=0.3,
        max_crashes=4,
        faults_until_s=60.0,
    )


def sweep(seeds: range) -> Counter[str]:
    """Run every seed; check that survivors never roll back; count what was exercised."""
    seen: Counter[str] = Counter()
    for seed in seeds:
        result: SimResult = run_simulation(config(seed))  # raises SimulationError with a repro
        for recovery in result.recoveries:
            failed = {int(r) for r in recovery["failed"]}
            restored = {int(r) for r in recovery["restore"]}
            assert restored == failed, (
                f"seed {seed}: survivors rolled back: restored {sorted(restored)}, "
                f"failed {sorted(failed)}"
            )
            seen["recoveries"] += 1
            seen["multi-rank recoveries"] += len(failed) > 1
            seen["restored from a checkpoint"] += any(i > 0 for i in recovery["restore"].values())
            seen["replayed"] += int(recovery["replayed"])
        seen["runs with a recovery"] += bool(result.recoveries)
    return seen


def test_sweep_only_failed_ranks_roll_back_and_results_match() -> None:
    seen = sweep(range(400))
    # The sweep must actually exercise recovery, not pass vacuously.
    assert seen["runs with a recovery"] >= 300, seen
    assert seen["multi-rank recoveries"] >= 150, seen
    assert seen["restored from a checkpoint"] >= 300, seen
    assert seen["replayed"] >= 1500, seen


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_long_sweep() -> None:
    seen = sweep(range(400, 3400))
    assert seen["multi-rank recoveries"] >= 1000, seen
