"""Seed sweeps of uncoordinated checkpointing in the simulator, with crashes.

Every run must pass the simulator's checkers (consistent cut after recovery, exactly-once
delivery, app invariants at every recovered cut, termination, the failure-free result); a
failing run raises ``SimulationError`` with the seed and the ``snapline sim ...`` command that
replays it. The matrix crosses the four example apps with topologies in which some rank has a
single inbound channel (ring, star leaves, line ends) and ones in which none has (complete,
random:2), n = 3..6, and four fault mixes drawn from the seed: bursts of crashes of several
ranks at once, crashes during checkpoint writes on a slow disk, crashes during recovery, and
all of them together. The sweep counts what it exercised and fails if a fault mix never
produced its fault (a sweep that injects nothing proves nothing).

``test_sweep_cic.py`` runs the same matrix for BCS and FDAS (it imports the helpers below).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from snapline.runtime.sim import SimConfig, SimResult, run_simulation

#: (app, topology, app params). Single inbound channel: every rank of ``ring``, the leaves of
#: ``star``, the two ends of ``line``. Heat needs both neighbours, so it runs on line/complete.
CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("bank", "complete", {"messages": 12}),
    ("bank", "ring", {"messages": 12}),
    ("bank", "random:2", {"messages": 12}),
    ("bank", "star", {"messages": 10}),
    ("token-ring", "ring", {"messages": 8}),
    ("token-ring", "star", {"messages": 8}),
    ("wordcount", "random:2", {"messages": 12}),
    ("wordcount", "complete", {"messages": 12}),
    ("heat", "line", {"messages": 14}),
    ("heat", "complete", {"messages": 14}),
)

#: Fault mixes; the seed picks one. Crash rates are per rank per second (runs last ~10-40 s).
MIXES: dict[str, dict[str, Any]] = {
    # Several ranks crash at once.
    "burst": {"crash_rate": 0.03, "crash_burst": 3},
    # Checkpoint writes take seconds on rank 0's disk and often end in a crash of the writer.
    "write": {"crash_rate": 0.01, "crash_in_write": 0.3, "slow_disks": {0: "exp:2"}},
    # A second crash lands between detection and the end of the recovery.
    "recovery": {"crash_rate": 0.02, "crash_in_recovery": 0.6, "restart_delay_s": 2.0},
    "all": {
        "crash_rate": 0.02,
        "crash_burst": 2,
        "crash_in_write": 0.2,
        "crash_in_recovery": 0.3,
        "slow_disks": {1: "exp:1"},
    },
}
MIX_NAMES = tuple(MIXES)


def config(protocol: str, seed: int, *, scale: int = 1) -> SimConfig:
    """The job of ``seed``: app/topology, n = 3..6 and the fault mix all follow from it.

    ``scale`` multiplies the job size; every seventh seed runs without garbage collection (the
    sender logs and checkpoints are never trimmed: the plain protocol, without the flood).
    """
    app, topology, params = CASES[seed % len(CASES)]
    rest = seed // len(CASES)
    mix = MIXES[MIX_NAMES[rest % len(MIX_NAMES)]]
    return SimConfig(
        app=app,
        n=3 + (rest // len(MIX_NAMES)) % 4,
        protocol=protocol,
        topology=topology,
        seed=seed,
        app_params={k: v * scale for k, v in params.items()},
        # 0, not False: the replay command prints options with str() and the CLI reads JSON.
        protocol_options={"gc": 0} if seed % 7 == 6 else {},
        interval_s=(1.5, 3.0, 5.0)[seed % 3],
        max_crashes=5,
        faults_until_s=60.0,
        **mix,
    )


def account(seen: Counter[str], cfg: SimConfig, result: SimResult) -> None:
    """Count what one passing run exercised."""
    mix = MIX_NAMES[(cfg.seed // len(CASES)) % len(MIX_NAMES)]
    seen["runs"] += 1
    seen["crashes"] += int(result.stats["crashes"])
    seen[f"{mix}: crashes"] += int(result.stats["crashes"])
    seen[f"{mix}: writes lost to a crash"] += int(result.stats["checkpoint_writes_lost"])
    for recovery in result.recoveries:
        failed = {int(r) for r in recovery["failed"]}
        restore = {int(r): int(i) for r, i in recovery["restore"].items()}
        assert failed <= set(restore), f"seed {cfg.seed}: failed {failed} not all restored"
        seen["recoveries"] += 1
        seen[f"{mix}: multi-rank recoveries"] += len(failed) > 1
        seen["survivors rolled back"] += bool(set(restore) - failed)
        seen["restored a checkpoint"] += any(i > 0 for i in restore.values())
        seen["restored the initial state"] += any(i == 0 for i in restore.values())
        seen["replayed"] += int(recovery["replayed"])
    seen["runs with a recovery"] += bool(result.recoveries)
    app, topology, _ = CASES[cfg.seed % len(CASES)]
    seen[f"{app}/{topology}: recoveries"] += len(result.recoveries)


def run_sweep(protocol: str, seeds: range, *, scale: int = 1) -> Counter[str]:
    """Run every seed (a failing checker raises with the replay command); count coverage."""
    seen: Counter[str] = Counter()
    for seed in seeds:
        cfg = config(protocol, seed, scale=scale)
        account(seen, cfg, run_simulation(cfg))
    return seen


def assert_covered(seen: Counter[str], runs: int) -> None:
    """Fail if the sweep did not exercise every kind of fault on every case."""
    assert seen["runs"] == runs
    # At least half the runs recover from something, every fault mix produced its fault.
    assert seen["runs with a recovery"] * 2 >= runs, seen
    assert seen["burst: multi-rank recoveries"] > 0, seen
    assert seen["recovery: multi-rank recoveries"] > 0, seen
    assert seen["write: writes lost to a crash"] > 0, seen
    assert seen["all: writes lost to a crash"] > 0, seen
    assert seen["restored a checkpoint"] > 0 and seen["replayed"] > 0, seen
    for app, topology, _ in CASES:
        assert seen[f"{app}/{topology}: recoveries"] > 0, (app, topology, seen)


#: The CI sweep: small jobs, ~10 s on a loaded 2-core machine.
FAST_SEEDS = range(200)


def test_uncoordinated_sweep_passes_every_checker() -> None:
    seen = run_sweep("uncoordinated", FAST_SEEDS)
    assert_covered(seen, len(FAST_SEEDS))
    # Uncoordinated rollback propagates: survivors are dragged back too.
    assert seen["survivors rolled back"] > 0, seen


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_uncoordinated_long_sweep() -> None:
    seeds = range(1000, 5000)
    seen = run_sweep("uncoordinated", seeds)
    assert_covered(seen, len(seeds))
    # Jobs four times as long: more checkpoints, deeper rollbacks, more gc.
    seeds = range(5000, 5400)
    assert_covered(run_sweep("uncoordinated", seeds, scale=4), len(seeds))
