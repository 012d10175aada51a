"""Seed sweeps of every registered protocol over every example app, with swarm faults.

Each run is checked by every checker (consistent recovery, exactly-once delivery, app
invariants at every recovered cut, termination, failure-free result); a failure names the
seed and the ``snapline sim`` command that replays it. The fast sweep runs in CI; the long one
is behind ``-m slow``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapline.protocols import protocol_names
from snapline.runtime.sim import SimConfig, run_simulation
from snapline.testing import SweepReport

APPS = {"bank": None, "token-ring": "ring", "wordcount": None, "heat": "line"}
SIZES = {"bank": 12, "token-ring": 12, "wordcount": 12, "heat": 15}

Sweeper = Callable[..., SweepReport]


@pytest.mark.parametrize("protocol", protocol_names())
def test_fast_swarm_sweep_over_apps(protocol: str, swarm_sweep: Sweeper) -> None:
    crashes = 0
    for app, topology in APPS.items():
        report = swarm_sweep(
            protocol, app, topology, range(12), n=4, app_params={"messages": SIZES[app]}
        )
        assert report.runs == 12
        crashes += report.crashes
    assert crashes > 0, "the swarm drew no crash at all: the sweep tested nothing"


def test_none_sweep_many_seeds(sweep: Sweeper) -> None:
    report = sweep(
        "none", "bank", "random:2", range(60), n=3, app_params={"messages": 6}, crash_rate=0.05
    )
    assert report.runs == 60 and report.crashes > 10


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    protocol=st.sampled_from(["none", "chandy-lamport", "uncoordinated", "message-logging"]),
    crashes=st.lists(
        st.tuples(st.integers(0, 3), st.floats(0.0, 12.0, allow_nan=False)),
        max_size=4,
    ),
    persist_s=st.sampled_from([0.05, 0.5, 2.0]),
)
def test_any_crash_schedule_recovers(
    protocol: str, crashes: list[tuple[int, float]], persist_s: float
) -> None:
    # A failing schedule shrinks to the fewest, earliest crashes that still break the run.
    result = run_simulation(
        SimConfig(
            app="bank",
            n=4,
            protocol=protocol,
            seed=1,
            interval_s=2.0,
            app_params={"messages": 10},
            crash_at=tuple(crashes),
            persist_delay=f"const:{persist_s}",
            max_crashes=len(crashes),
        )
    )
    assert result.passed
    assert result.stats["crashes"] <= len(crashes)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", protocol_names())
@pytest.mark.parametrize("app", list(APPS))
def test_long_swarm_sweep(protocol: str, app: str, swarm_sweep: Sweeper) -> None:
    report = swarm_sweep(
        protocol, app, APPS[app], range(100, 160), n=6, app_params={"messages": 30}
    )
    assert report.runs == 60 and report.crashes > 0
