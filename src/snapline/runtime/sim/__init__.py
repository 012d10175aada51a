"""The deterministic simulator: run a job under faults and check every guarantee.

``run_simulation(SimConfig(...))`` runs one seeded job and returns a ``SimResult``; a violated
guarantee raises ``SimulationError`` whose message names the checker, the seed and the
``snapline sim ...`` command that replays the run exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import traceback

from snapline.apps import app_spec
from snapline.errors import SimulationError, SnaplineError
from snapline.runtime.sim.checks import (
    CheckFailed,
    CheckOutcome,
    compare_outputs,
    compare_results,
)
from snapline.runtime.sim.config import Delay, Partition, SimConfig
from snapline.runtime.sim.driver import Simulator
from snapline.runtime.sim.result import SimResult

__all__ = [
    "Delay",
    "Partition",
    "SimConfig",
    "SimResult",
    "reference_outputs",
    "reference_results",
    "run_simulation",
]


def _failure(config: SimConfig, what: str) -> SimulationError:
    return SimulationError(f"{what}\n  seed {config.seed}; reproduce with: {config.command()}")


def _run_raw(config: SimConfig) -> SimResult:
    sim = Simulator(config)
    try:
        results, stats, checks, trace = sim.run()
    except CheckFailed as exc:
        raise _failure(config, f"check failed at t={sim.now_s:g}: {exc}") from exc
    except SnaplineError as exc:
        if isinstance(exc, SimulationError):
            raise
        raise _failure(config, f"{type(exc).__name__} at t={sim.now_s:g}: {exc}") from exc
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise _failure(
            config,
            f"{type(exc).__name__} at t={sim.now_s:g} ({where.filename}:{where.lineno}): {exc}",
        ) from exc
    return SimResult(
        config=config,
        results=results,
        stats=stats,
        checks=checks,
        recoveries=sim.recoveries,
        outputs=sim.outputs,
        trace=trace,
    )


def failure_free(config: SimConfig) -> SimConfig:
    """The same job and seed with protocol ``none`` and no faults: the reference run."""
    return dataclasses.replace(
        config,
        protocol="none",
        protocol_cls=None,
        protocol_options={},
        reorder=False,
        crash_at=(),
        crash_rate=0.0,
        crash_in_write=0.0,
        crash_in_recovery=0.0,
        crash_burst=1,
        max_crashes=0,
        faults_until_s=None,
        loss_rate=0.0,
        dup_rate=0.0,
        partitions=(),
        slow_disks={},
        interval_s=None,
        trace=False,
        reference=False,
        check_payloads=False,
    )


_REFERENCE_CACHE: dict[str, tuple[list[object], list[list[object]]]] = {}
_REFERENCE_CACHE_SIZE = 256


def _reference_run(config: SimConfig) -> tuple[list[object], list[list[object]]]:
    """Results and released outputs of the failure-free run (cached per job and seed)."""
    reference = failure_free(config)
    if reference.process_factory is not None:
        raw = _run_raw(reference)
        return list(raw.results), raw.outputs
    # The repr of a config without a factory names every field: a complete cache key.
    key = repr(reference)
    cached = _REFERENCE_CACHE.get(key)
    if cached is None:
        if len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        raw = _run_raw(reference)
        cached = _REFERENCE_CACHE[key] = (list(raw.results), raw.outputs)
    return copy.deepcopy(cached)


def reference_results(config: SimConfig) -> list[object]:
    """The failure-free results of ``config``'s job (cached per job and seed for apps)."""
    return _reference_run(config)[0]


def reference_outputs(config: SimConfig) -> list[list[object]]:
    """What each rank releases in the failure-free run of ``config``'s job (cached)."""
    return _reference_run(config)[1]


def run_simulation(config: SimConfig) -> SimResult:
    """Run one simulated job and every checker on it; raise ``SimulationError`` on a violation."""
    result = _run_raw(config)
    deterministic = (
        config.deterministic
        if config.app is None or config.process_factory is not None
        else app_spec(config.app).deterministic
    )
    if config.reference and deterministic:
        expected = reference_results(config)
        problem = compare_results(expected, result.results)
        if problem is not None:
            raise _failure(config, f"check failed: failure-free result: {problem}")
        result.checks.append(CheckOutcome("failure-free result", True, 1))
    if (
        config.reference
        and config.app is not None
        and config.process_factory is None
        and app_spec(config.app).outputs_deterministic
    ):
        problem = compare_outputs(reference_outputs(config), result.outputs)
        if problem is not None:
            raise _failure(config, f"check failed: failure-free outputs: {problem}")
        result.checks.append(CheckOutcome("failure-free outputs", True, 1))
    return result
