"""Every driver through the same checkers: the simulator and each real engine (local, MPI).

The same job (app, ranks, seed, parameters, protocol) runs once in the simulator with a crash
and once on real processes with a ``kill -9``, on each engine (``engine_jobs.ENGINES``). Both
runs must pass the simulator's checkers -- ``ChannelChecker`` (exactly-once, in-order delivery
in the surviving history), ``RecoveryChecker`` (plans restore committed checkpoints; recovered
cuts are consistent), the app invariant -- and both must end with the failure-free result,
hence with the same result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_jobs import ENGINES, use_engine

from snapline.runtime.local import run
from snapline.runtime.local.verify import check_run
from snapline.runtime.sim import SimConfig, run_simulation

pytestmark = pytest.mark.timeout(120)

PARAMS = {"messages": 60, "step_s": 0.02}
N = 3
SEED = 11


@pytest.mark.parametrize("protocol", ["chandy-lamport", "uncoordinated", "message-logging"])
@pytest.mark.parametrize("engine", ENGINES)
def test_simulator_and_each_engine_pass_the_same_checkers(
    tmp_path: Path, engine: str, protocol: str
) -> None:
    sim = run_simulation(
        SimConfig(
            app="bank",
            n=N,
            protocol=protocol,
            seed=SEED,
            app_params=PARAMS,
            topology="complete",
            interval_s=0.3,
            crash_at=((1, 0.6),),
            detect_delay_s=0.05,
            restart_delay_s=0.05,
            delay="uniform:0.001:0.005",
            persist_delay="exp:0.01",
        )
    )
    assert sim.passed
    assert len(sim.recoveries) == 1
    names = {check.name for check in sim.checks}
    assert {"exactly-once delivery", "consistent recovery"} <= names

    local = run(
        "bank",
        N,
        store=tmp_path / "job",
        protocol=protocol,
        seed=SEED,
        topology="complete",
        interval="0.3s",
        app_options=PARAMS,
        kill=["1@0.6s"],
        timeout="60s",
        engine=use_engine(engine),
    )
    assert len(local.recoveries) == 1
    assert check_run(local, app="bank", app_params=PARAMS, seed=SEED, topology="complete") == []
    assert [local.results[r] for r in range(N)] == sim.results
