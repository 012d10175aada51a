"""Checking a finished local run with the simulator's checkers.

The simulator watches a run from inside; a local run is checked afterwards from what it left:
the merged trace (every delivery, every restore with the restored counters), the supervisor's
own checks (every recovery plan validated by ``RecoveryChecker.validate_plan``, every recovered
cut by ``RecoveryChecker.check_cut``), the final results and the final send counters. The
guarantees are the simulator's, through the same checker objects:

* ``ChannelChecker`` -- in the surviving history each channel delivered ``1..k`` exactly once
  and in order, and at the end every message sent was delivered;
* the app's ``check_final`` invariant on the results (built-in apps);
* for deterministic built-in apps, the results equal the simulator's failure-free results for
  the same job and seed (``reference_results``): nothing lost, nothing duplicated;
* for built-in apps whose outputs are deterministic, each rank's released outputs (its ledger)
  equal the simulator's failure-free outputs as a multiset (``reference_outputs``): output
  commit released nothing twice and lost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from snapline.runtime.local.config import is_builtin_app
from snapline.runtime.local.job import RunResult
from snapline.runtime.sim.checks import (
    ChannelChecker,
    CheckFailed,
    compare_outputs,
    compare_results,
)
from snapline.runtime.trace import load_trace


def check_channels(result: RunResult) -> str | None:
    """Replay the trace through ``ChannelChecker``; None when delivery was exactly-once."""
    if result.trace_path is None:
        return "the run kept no trace (trace=False): channels cannot be checked"
    trace = load_trace(result.trace_path)
    checker = ChannelChecker(trace.n, track_payloads=False)
    try:
        for event in trace.events:
            kind = event["kind"]
            rank = int(event["rank"])
            if kind == "restore":
                received = {int(k): int(v) for k, v in event.get("received", {}).items()}
                for src in received:
                    # A resumed run's trace starts at the restore: make the channel known so
                    # that the rollback sets its delivered count.
                    checker.deliveries.setdefault(src * trace.n + rank, 0)
                checker.rollback({}, {rank: received}, {rank})
            elif kind == "deliver":
                checker.delivered(
                    src=int(event["src"]), dst=rank, seq=int(event["seq"]), payload=None
                )
        final_sent = {
            rank: {int(k): int(v) for k, v in stats.get("sent_per_channel", {}).items()}
            for rank, stats in result.stats.items()
        }
        checker.check_end(final_sent)
    except CheckFailed as exc:
        return str(exc)
    return None


def check_run(
    result: RunResult,
    *,
    app: str,
    app_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    topology: str | None = None,
) -> list[str]:
    """Every violation found in a finished run (empty when it is correct)."""
    problems = list(result.violations)
    channel_problem = check_channels(result)
    if channel_problem is not None:
        problems.append(channel_problem)
    results = [result.results[r] for r in range(result.n)]
    if is_builtin_app(app):
        from snapline.apps import app_spec
        from snapline.runtime.sim import SimConfig, reference_outputs, reference_results

        spec = app_spec(app)
        params = spec.resolve_params(app_params or {})
        if spec.check_final is not None:
            problem = spec.check_final(results, params, result.n)
            if problem is not None:
                problems.append(f"app invariant: {problem}")
        job = SimConfig(
            app=app, n=result.n, seed=seed, app_params=dict(app_params or {}), topology=topology
        )
        if spec.deterministic:
            problem = compare_results(reference_results(job), results)
            if problem is not None:
                problems.append(f"failure-free result: {problem}")
        if spec.outputs_deterministic:
            released = [list(result.outputs.get(r, [])) for r in range(result.n)]
            problem = compare_outputs(reference_outputs(job), released)
            if problem is not None:
                problems.append(f"failure-free outputs: {problem}")
    return problems
