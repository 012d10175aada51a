"""Test your own Process classes (and protocols) under failures, with snapline's own checkers.

``simulate`` runs one seeded job in the deterministic simulator and returns a ``SimResult``
(``.results``, ``.stats``, ``.outputs``, ``.trace``, ``.checks``); every checker runs on it --
consistent recovery, exactly-once delivery, exactly-once output (each ``ctx.output`` released
once, never changed by a rollback), termination, and (for ``deterministic=True`` processes)
equality with the failure-free run -- and a violation raises ``SimulationError`` naming the
seed. ``assert_recovers`` runs a batch of seeds with crashes and also fails if no crash ever
happened (a test that never injects a fault proves nothing). ``sweep`` does the same for the
example apps; the project's seed-sweep tests use it.

Example::

    from snapline.testing import simulate, assert_recovers

    result = simulate(MyProcess, n=4, protocol="chandy-lamport", seed=1, crash_rate=0.01)
    assert result.results[0] == 42
    assert_recovers(MyProcess, n=4, protocol="fdas", seeds=range(20), deterministic=True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snapline.errors import ConfigError
from snapline.protocols.base import Protocol
from snapline.runtime.process import Process
from snapline.runtime.sim import Delay, Partition, SimConfig, SimResult, run_simulation
from snapline.runtime.sim.checks import CheckOutcome, values_equal
from snapline.runtime.sim.config import ProcessFactory
from snapline.runtime.trace import Trace, load_trace

__all__ = [
    "CheckOutcome",
    "Delay",
    "Partition",
    "SimConfig",
    "SimResult",
    "SweepReport",
    "Trace",
    "assert_recovers",
    "load_trace",
    "run_simulation",
    "simulate",
    "sweep",
    "values_equal",
]


def _factory(process: type[Process] | ProcessFactory) -> ProcessFactory:
    if isinstance(process, type):
        if not issubclass(process, Process):
            raise ConfigError(f"{process.__name__} is not a snapline.Process subclass")
        cls = process

        def build(rank: int, n: int) -> Process:
            return cls()

        return build
    if not callable(process):
        raise ConfigError("pass a Process subclass or a factory(rank, n) -> Process")
    return process


def simulate(
    process: type[Process] | ProcessFactory,
    *,
    n: int = 4,
    protocol: str | type[Protocol] = "none",
    seed: int = 0,
    topology: str = "complete",
    deterministic: bool = False,
    **options: Any,
) -> SimResult:
    """Run ``process`` (a Process subclass or ``factory(rank, n)``) on ``n`` simulated ranks.

    ``options`` are ``SimConfig`` fields: ``crash_rate``, ``crash_at``, ``interval_s``,
    ``max_crashes``, ``delay``, ``loss_rate``, ``trace``, ``protocol_options``, ...
    """
    protocol_name, protocol_cls = (
        (protocol, None) if isinstance(protocol, str) else (protocol.name, protocol)
    )
    try:
        config = SimConfig(
            app=None,
            process_factory=_factory(process),
            deterministic=deterministic,
            n=n,
            protocol=protocol_name,
            protocol_cls=protocol_cls,
            seed=seed,
            topology=topology,
            **options,
        )
    except TypeError as exc:
        raise ConfigError(f"bad simulate() option: {exc}") from None
    return run_simulation(config)


@dataclass(slots=True)
class SweepReport:
    """What a batch of simulated runs did (each one passed every checker)."""

    runs: int = 0
    crashes: int = 0
    recoveries: int = 0
    messages: int = 0
    checkpoints: int = 0
    results: list[SimResult] = field(default_factory=list)


def _account(report: SweepReport, result: SimResult, keep: bool) -> None:
    report.runs += 1
    report.crashes += int(result.stats["crashes"])
    report.recoveries += int(result.stats["recoveries"])
    report.messages += int(result.stats["messages_delivered"])
    report.checkpoints += int(result.stats["checkpoints_basic"]) + int(
        result.stats["checkpoints_forced"]
    )
    if keep:
        report.results.append(result)


def assert_recovers(
    process: type[Process] | ProcessFactory,
    *,
    n: int = 4,
    protocol: str | type[Protocol] = "none",
    seeds: Iterable[int] = range(10),
    crash_rate: float = 0.01,
    deterministic: bool = False,
    **options: Any,
) -> SweepReport:
    """Run every seed with crashes; each run must pass every check, and crashes must happen."""
    report = SweepReport()
    for seed in seeds:
        result = simulate(
            process,
            n=n,
            protocol=protocol,
            seed=seed,
            deterministic=deterministic,
            crash_rate=crash_rate,
            **options,
        )
        _account(report, result, keep=False)
    if report.runs == 0:
        raise AssertionError("assert_recovers ran no seeds")
    if report.crashes == 0:
        raise AssertionError(
            f"no crash happened in {report.runs} runs: raise crash_rate or give crash_at, "
            "otherwise nothing was tested"
        )
    return report


def sweep(
    protocol: str | type[Protocol],
    app: str,
    topology: str | None,
    seeds: Iterable[int],
    *,
    n: int = 4,
    keep_results: bool = False,
    app_params: Mapping[str, Any] | None = None,
    **faults: Any,
) -> SweepReport:
    """Run ``app`` under ``protocol`` for every seed with the given faults (SimConfig fields).

    Raises ``SimulationError`` (seed and replay command included) at the first failing run.
    """
    protocol_name, protocol_cls = (
        (protocol, None) if isinstance(protocol, str) else (protocol.name, protocol)
    )
    report = SweepReport()
    for seed in seeds:
        config = SimConfig(
            app=app,
            n=n,
            protocol=protocol_name,
            protocol_cls=protocol_cls,
            topology=topology,
            seed=seed,
            app_params=dict(app_params or {}),
            **faults,
        )
        _account(report, run_simulation(config), keep=keep_results)
    return report
