"""Output commit under crashes, every protocol: each output released exactly once.

The ``chatter`` app outputs every send and every receipt; a re-execution after a rollback
receives in another order, so it produces the same outputs in another order under the same
output ids. The simulator's ``OutputChecker`` fails a run when an id is released twice with
different items (released output was rolled back) or never released, and the run's released
outputs must equal the failure-free run's per rank, as a multiset. Seeds vary the topology,
the number of ranks and the crash mix (bursts, crashes in checkpoint writes and in recovery).
"""

from __future__ import annotations

from collections import Counter

import pytest

from snapline.protocols import protocol_class, protocol_names
from snapline.runtime.sim import SimConfig, run_simulation

TOPOLOGIES = ("complete", "ring", "random:2", "star")


def config(protocol: str, seed: int) -> SimConfig:
    """A small chatter job with a crash mix drawn from the seed."""
    return SimConfig(
        app="chatter",
        protocol=protocol,
        n=3 + seed % 4,
        topology=TOPOLOGIES[seed % len(TOPOLOGIES)],
        seed=seed,
        interval_s=2.0,
        crash_rate=0.03,
        crash_burst=2,
        crash_in_write=0.2,
        crash_in_recovery=0.3,
        max_crashes=4,
        faults_until_s=30.0,
        reorder=not protocol_class(protocol).needs_fifo and seed % 3 == 0,
        app_params={"messages": 15, "step_s": 0.5},
    )


@pytest.mark.parametrize("protocol", protocol_names())
def test_outputs_are_released_exactly_once_under_crashes(protocol: str) -> None:
    seen: Counter[str] = Counter()
    for seed in range(30):
        result = run_simulation(config(protocol, seed))  # raises with a repro on a violation
        checks = {c.name for c in result.checks}
        assert {"exactly-once output", "failure-free outputs"} <= checks, checks
        seen["recoveries"] += result.stats["recoveries"]
        seen["outputs"] += sum(len(o) for o in result.outputs)
        seen["in doubt"] += result.stats["protocol"].get("rounds_in_doubt", 0)
    # Not vacuous: crashes were recovered and output flowed.
    assert seen["recoveries"] >= 30, seen
    assert seen["outputs"] >= 30 * 3 * 15 * 2, seen
    if protocol == "two-phase":
        assert seen["in doubt"] >= 10, "the sweep must exercise in-doubt rounds"
