"""Every protocol at 100 ranks x 300 transfers per rank, every checker on (slow).

The jobs of ``bench/sim_scale.py`` (bank, two crashes, basic checkpoints every 50 simulated
seconds; 100 ranks on a complete topology, 1,000 on ``random:8``): here they must complete
with every checker passing. How long they take is the benchmark's business, not this test's
(the machine may be shared).
"""

from __future__ import annotations

import pytest

from snapline.protocols import protocol_class, protocol_names
from snapline.runtime.sim import SimConfig, run_simulation

RANKS = 100
TRANSFERS = 300


def scale_config(protocol: str, ranks: int = RANKS, topology: str = "complete") -> SimConfig:
    """The 100-rank job of the benchmark (or its 1,000-rank one)."""
    crash_times = (TRANSFERS * 0.3, TRANSFERS * 0.55)
    return SimConfig(
        app="bank",
        n=ranks,
        protocol=protocol,
        topology=topology,
        seed=1,
        interval_s=50.0,
        app_params={"messages": TRANSFERS},
        crash_at=tuple((i * 7919 % ranks, t) for i, t in enumerate(crash_times, 1)),
        reference=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [p for p in protocol_names() if p != "none"])
def test_a_hundred_ranks_complete_with_every_checker_passing(protocol: str) -> None:
    result = run_simulation(scale_config(protocol))
    assert result.passed, result.checks
    assert result.stats["crashes"] == 2 and result.stats["recoveries"] >= 1
    # Every transfer of the failure-free run was delivered at least once.
    assert result.stats["messages_delivered"] >= RANKS * TRANSFERS
    names = {c.name for c in result.checks if c.runs}
    assert {"exactly-once delivery", "consistent recovery"} <= names
    if protocol_class(protocol).checkpoint_pattern is not None:
        assert "checkpoint pattern" in names


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["chandy-lamport", "uncoordinated", "message-logging"])
def test_a_thousand_ranks_complete_with_every_checker_passing(protocol: str) -> None:
    ranks = 1000
    result = run_simulation(scale_config(protocol, ranks, "random:8"))
    assert result.passed, result.checks
    assert result.stats["crashes"] == 2 and result.stats["recoveries"] >= 1
    assert result.stats["messages_delivered"] >= ranks * TRANSFERS
