"""Seed sweeps of communication-induced checkpointing (BCS, FDAS) in the simulator.

The crash sweep is the matrix of ``test_sweep_uncoordinated.py`` (four apps, topologies with
and without single-inbound ranks, n = 3..6, bursts / crashes in slow checkpoint writes /
crashes during recovery): every run must pass every checker, and a failing one raises
``SimulationError`` with its ``snapline sim ...`` replay command.

On top of that, the protocols' own guarantee is checked in the real simulator: in a
failure-free run no checkpoint lies on a Z-cycle (``zigzag`` on the run's trace), while
uncoordinated checkpoints of the same jobs do. With crashes that guarantee holds only between
recoveries (see ``protocols.communication_induced``), so it is checked on failure-free runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_sweep_uncoordinated import assert_covered, run_sweep

from snapline.protocols.zigzag import execution_from_trace, useless_indices
from snapline.runtime.sim import SimConfig, run_simulation

CIC = ("bcs", "fdas")
#: The CI sweep: small jobs, ~10 s per protocol on a loaded 2-core machine.
FAST_SEEDS = range(200)


@pytest.mark.parametrize("protocol", CIC)
def test_cic_sweep_passes_every_checker(protocol: str) -> None:
    seen = run_sweep(protocol, FAST_SEEDS)
    assert_covered(seen, len(FAST_SEEDS))


#: Failure-free jobs on which uncoordinated checkpoints end up on Z-cycles.
TRACED: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("bank", "complete", {"messages": 20}),
    ("bank", "ring", {"messages": 20}),
    ("token-ring", "star", {"messages": 10}),
    ("wordcount", "random:2", {"messages": 20}),
    ("heat", "line", {"messages": 20}),
)


def useless_in_failure_free_run(protocol: str, seed: int) -> tuple[int, int]:
    """(useless checkpoints, checkpoints taken) of one traced failure-free run."""
    app, topology, params = TRACED[seed % len(TRACED)]
    result = run_simulation(
        SimConfig(
            app=app,
            n=3 + seed % 4,
            protocol=protocol,
            topology=topology,
            seed=seed,
            app_params=params,
            interval_s=(1.5, 2.0, 4.0)[seed % 3],
            trace=True,
        )
    )
    assert result.trace is not None
    execution = execution_from_trace(result.trace.to_json())
    taken = sum(len(c) for c in execution.checkpoints.values())
    return len(useless_indices(execution)), taken


def test_no_useless_checkpoint_in_failure_free_runs() -> None:
    seeds = range(30)
    unco_useless = 0
    for seed in seeds:
        for protocol in CIC:
            useless, taken = useless_in_failure_free_run(protocol, seed)
            assert taken > 0, (protocol, seed)
            assert useless == 0, f"{protocol} seed {seed}: {useless} of {taken} on Z-cycles"
        unco_useless += useless_in_failure_free_run("uncoordinated", seed)[0]
    # The check can fail: the same jobs without forced checkpoints do have Z-cycles.
    assert unco_useless >= 100, unco_useless


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("protocol", CIC)
def test_cic_long_sweep(protocol: str) -> None:
    seeds = range(1000, 5000)
    seen = run_sweep(protocol, seeds)
    assert_covered(seen, len(seeds))
    seeds = range(5000, 5400)
    assert_covered(run_sweep(protocol, seeds, scale=4), len(seeds))
