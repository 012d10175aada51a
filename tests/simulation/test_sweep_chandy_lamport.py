"""Seed sweeps of Chandy–Lamport snapshots in the simulator, with crashes.

Every run must pass the simulator's checkers (consistent cut after recovery, exactly-once
delivery, termination, the failure-free result). On top of that, Chandy–Lamport restores every
rank to one snapshot on every recovery, and the sweep must actually restore from snapshots
taken after the start and re-deliver recorded channel messages.
"""

from __future__ import annotations

from collections import Counter

import pytest

from snapline.runtime.sim import SimConfig, run_simulation

#: complete, ring (a single inbound channel per rank), a random digraph, a star (leaves have a
#: single inbound channel) -- all strongly connected, as Chandy–Lamport requires.
TOPOLOGIES = ("complete", "ring", "random:2", "star")


def config(seed: int) -> SimConfig:
    """A small job with bursts of crashes, crashes in checkpoint writes and in recovery."""
    return SimConfig(
        app="bank",
        n=3 + seed % 4,
        protocol="chandy-lamport",
        topology=TOPOLOGIES[seed % len(TOPOLOGIES)],
        seed=seed,
        interval_s=3.0,
        crash_rate=0.01,
        crash_burst=2,
        crash_in_write=0.2,
        crash_in_recovery=0.3,
        max_crashes=4,
        faults_until_s=60.0,
    )


def sweep(seeds: range) -> Counter[str]:
    """Run every seed (checkers raise with a repro); check everyone restores; count coverage."""
    seen: Counter[str] = Counter()
    for seed in seeds:
        cfg = config(seed)
        result = run_simulation(cfg)
        for recovery in result.recoveries:
            assert len(recovery["restore"]) == cfg.n, f"seed {seed}: not every rank restored"
            seen["recoveries"] += 1
            seen["restored a snapshot"] += any(int(i) > 0 for i in recovery["restore"].values())
            seen["replayed"] += int(recovery["replayed"])
        seen["runs with a recovery"] += bool(result.recoveries)
    return seen


def test_sweep_everyone_restores_one_snapshot_and_results_match() -> None:
    seen = sweep(range(200))
    # The sweep must exercise recovery from real snapshots, not pass vacuously.
    assert seen["runs with a recovery"] >= 150, seen
    assert seen["restored a snapshot"] >= 150, seen
    assert seen["replayed"] >= 20, seen


def test_swarm_sweep_over_fault_mixes(swarm_sweep: object) -> None:
    report = swarm_sweep("chandy-lamport", "bank", "random:2", range(30), n=4)  # type: ignore[operator]
    assert report.recoveries > 0


@pytest.mark.slow
def test_long_sweep() -> None:
    seen = sweep(range(200, 5200))
    assert seen["restored a snapshot"] >= 1000, seen
