"""Shared seed-sweep helpers for simulation tests.

Use the ``sweep`` fixture (or ``from conftest import sweep`` in this directory)::

    def test_my_protocol_sweep(sweep):
        report = sweep("fdas", "bank", "complete", range(50), crash_rate=0.01, interval_s=3.0)
        assert report.crashes > 0

``sweep(protocol, app, topology, seeds, **faults)`` runs every seed through the simulator with
every checker on and raises ``SimulationError`` -- seed and replay command included -- at the
first failing run; ``faults`` are ``SimConfig`` fields (plus ``n`` and ``app_params``).
``swarm_faults(seed)`` draws a whole fault configuration from a seed, TigerBeetle style, so a
sweep over seeds also sweeps over fault mixes: ``sweep(..., seeds, **swarm_faults(seed))`` per
seed, or ``swarm_sweep`` for the loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from snapline.protocols import protocol_class
from snapline.testing import SweepReport
from snapline.testing import sweep as _sweep

sweep = _sweep


def swarm_faults(seed: int, *, fifo_only: bool = True) -> dict[str, Any]:
    """A fault configuration drawn from ``seed``: crash mix, network trouble, slow disks."""
    rng = random.Random(f"swarm:{seed}")
    faults: dict[str, Any] = {
        "interval_s": rng.choice([1.5, 3.0, 6.0]),
        "crash_rate": rng.choice([0.0, 0.01, 0.03, 0.08]),
        "crash_burst": rng.choice([1, 1, 2, 3]),
        "crash_in_write": rng.choice([0.0, 0.0, 0.3]),
        "crash_in_recovery": rng.choice([0.0, 0.0, 0.4]),
        "max_crashes": rng.randint(1, 6),
        "faults_until_s": rng.choice([20.0, 40.0, 80.0]),
        "loss_rate": rng.choice([0.0, 0.0, 0.05, 0.2]),
        "dup_rate": rng.choice([0.0, 0.0, 0.1]),
        "delay": rng.choice(["uniform:0.01:0.1", "exp:0.05", "lognormal:0.05:1"]),
        "detect_delay_s": rng.choice([0.2, 1.0]),
        "restart_delay_s": rng.choice([0.2, 1.0, 3.0]),
    }
    if rng.random() < 0.3:
        faults["slow_disks"] = {0: "exp:2"}
    if rng.random() < 0.3:
        faults["crash_at"] = ((rng.randrange(3), rng.uniform(0.5, 10.0)),)
    if not fifo_only and rng.random() < 0.5:
        faults["reorder"] = True
    return faults


def swarm_sweep(
    protocol: str, app: str, topology: str | None, seeds: Iterable[int], **fixed: Any
) -> SweepReport:
    """``sweep`` with a fresh ``swarm_faults`` configuration per seed (``fixed`` overrides)."""
    fifo_only = protocol_class(protocol).needs_fifo
    total = SweepReport()
    for seed in seeds:
        faults = {**swarm_faults(seed, fifo_only=fifo_only), **fixed}
        report = _sweep(protocol, app, topology, [seed], **faults)
        total.runs += report.runs
        total.crashes += report.crashes
        total.recoveries += report.recoveries
        total.messages += report.messages
        total.checkpoints += report.checkpoints
    return total


@pytest.fixture(name="sweep")
def sweep_fixture() -> Callable[..., SweepReport]:
    """The ``sweep`` helper as a fixture."""
    return _sweep


@pytest.fixture(name="swarm_sweep")
def swarm_sweep_fixture() -> Callable[..., SweepReport]:
    """The ``swarm_sweep`` helper as a fixture."""
    return swarm_sweep
