"""Run one workload and one fault schedule under every protocol and compare what each cost.

Theory of operation
-------------------
A fair comparison needs the same job and the same failures for every protocol. The simulator
draws everything from its seed, but a protocol changes the order in which the run consumes
random numbers, so a crash *rate* alone would give each protocol different crashes. ``compare``
therefore draws the crash schedule itself, once, from its own generator seeded with the
comparison's seed -- a Poisson process of ``crash_rate`` crashes per rank per second, capped at
``max_crashes`` -- and hands every protocol the same explicit ``crash_at`` list. The horizon of
the schedule is the failure-free run time of the baseline (``none``), measured first: every
protocol runs at least that long, so every scheduled crash hits every protocol's job. (A
longer horizon would put crashes after the end of the faster runs, and "the same crashes"
would no longer be true.) ``crashes_everywhere`` says whether each run saw the whole schedule,
and the report warns when a comparison saw no crash at all.

Each protocol runs with tracing on; its metrics are summarised from the trace (``metrics``).
A protocol that cannot be imported, or whose run raises (a checker found a violation, the run
stalled, the protocol hit an illegal transition), becomes a failed row with its reason: a
comparison never silently leaves a protocol out.

The optimal checkpoint interval comes from Young's and Daly's formulas (``interval``) with the
checkpoint cost and MTBF given, or taken from the run: the simulated disk's mean write time,
and the job's MTBF ``1 / (n * crash_rate)``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from snapline.analysis.interval import IntervalAdvice, advise_interval
from snapline.analysis.metrics import TraceMetrics, summarize, with_driver_stats
from snapline.analysis.trace_view import view_trace
from snapline.errors import ConfigError
from snapline.protocols import protocol_class, protocol_names
from snapline.runtime.sim.config import Delay, SimConfig

BASELINE = "none"
#: The schedule covers this fraction of the baseline's failure-free run time.
HORIZON_FACTOR = 1.0

# Defaults chosen so that a bare ``snapline compare`` shows what protocols differ in: a job of
# about 23 simulated seconds on 8 ranks, four or five checkpoints per rank, and a few crashes
# inside the job (about 5 expected: 8 ranks x 0.03/s x 23 s; seed 7 draws 5).
DEFAULT_APP = "bank"
DEFAULT_RANKS = 8
DEFAULT_INTERVAL_S = 5.0
DEFAULT_CRASH_RATE = 0.03


@dataclass(frozen=True, kw_only=True)
class ComparisonConfig:
    """One comparison: the job, the faults, the protocols, and the interval model's inputs.

    ``protocols`` empty means every registered protocol. ``sim_options`` passes any other
    ``SimConfig`` field (topology, delay, persist_delay, ...) to every run unchanged.
    ``checkpoint_cost_s``, ``mtbf_s`` and ``restart_s`` default to values taken from the run.
    """

    app: str = DEFAULT_APP
    n: int = DEFAULT_RANKS
    interval_s: float | None = DEFAULT_INTERVAL_S
    crash_rate: float = 0.0
    max_crashes: int = 10
    seed: int = 7
    protocols: tuple[str, ...] = ()
    checkpoint_cost_s: float | None = None
    mtbf_s: float | None = None
    restart_s: float | None = None
    sim_options: Mapping[str, Any] = field(default_factory=dict)

    def chosen_protocols(self) -> tuple[str, ...]:
        """The protocols to run, baseline first, each once, names checked."""
        known = protocol_names()
        wanted = self.protocols or tuple(known)
        for name in wanted:
            if name not in known:
                raise ConfigError(f"unknown protocol {name!r}; choose from: {', '.join(known)}")
        ordered = [BASELINE] + [p for p in wanted if p != BASELINE]
        return tuple(dict.fromkeys(ordered))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolOutcome:
    """One protocol's run: its metrics, or why it failed."""

    protocol: str
    metrics: TraceMetrics | None
    failure: str | None
    command: str
    host_s: float

    @property
    def ok(self) -> bool:
        """Whether the run completed and passed its checkers."""
        return self.failure is None


@dataclass(frozen=True, slots=True, kw_only=True)
class ComparisonResult:
    """Every protocol's outcome under the same crash schedule, and the interval advice."""

    config: ComparisonConfig
    crash_schedule: tuple[tuple[int, float], ...]
    outcomes: tuple[ProtocolOutcome, ...]
    advice: IntervalAdvice | None
    advice_sources: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready report."""
        config = asdict(self.config)
        config["sim_options"] = {k: repr(v) for k, v in self.config.sim_options.items()}
        return {
            "config": config,
            "crash_schedule": [[rank, t] for rank, t in self.crash_schedule],
            "protocols": [
                {
                    "protocol": o.protocol,
                    "ok": o.ok,
                    "failure": o.failure,
                    "command": o.command,
                    "host_s": o.host_s,
                    "metrics": None if o.metrics is None else o.metrics.as_dict(),
                }
                for o in self.outcomes
            ],
            "interval": None if self.advice is None else asdict(self.advice),
            "interval_sources": dict(self.advice_sources),
            "warnings": list(self.warnings()),
        }

    def crashes_seen(self) -> dict[str, int]:
        """How many crashes each completed run actually had (a crash after its end has none)."""
        return {o.protocol: o.metrics.crashes for o in self.outcomes if o.metrics is not None}

    def crashes_everywhere(self) -> bool:
        """True when every completed run had every scheduled crash."""
        return all(c == len(self.crash_schedule) for c in self.crashes_seen().values())

    def warnings(self) -> tuple[str, ...]:
        """What makes this comparison say less than it seems to, in words for the report."""
        out: list[str] = []
        seen = self.crashes_seen()
        if not self.crash_schedule:
            out.append(
                "no crash was scheduled, so no protocol recovered: work lost, rollback and "
                "recovery time are 0 for all; give --crash-rate or --crash-at"
            )
        elif seen and not any(seen.values()):
            out.append(
                f"none of the {len(self.crash_schedule)} scheduled crash(es) happened: every run "
                "ended before them; schedule earlier crashes with --crash-at"
            )
        elif not self.crashes_everywhere():
            detail = ", ".join(f"{p} {c}" for p, c in seen.items())
            out.append(
                f"not every run had all {len(self.crash_schedule)} scheduled crashes "
                f"(crashes seen: {detail}); some runs ended before a crash was due"
            )
        interval = self.config.interval_s
        base = next((o for o in self.outcomes if o.protocol == BASELINE and o.metrics), None)
        if interval is not None and base is not None and base.metrics is not None:
            makespan = base.metrics.makespan_s
            if makespan > 0 and interval >= makespan:
                out.append(
                    f"the checkpoint interval ({interval:g} s) is not shorter than the job "
                    f"({makespan:.3g} s): protocols take almost no basic checkpoints; use a "
                    "shorter --interval"
                )
        return tuple(out)


def mean_delay_s(spec: str) -> float:
    """The mean of a simulator delay spec (``const:X``, ``uniform:A:B``, ``exp:M``, ...)."""
    delay = Delay.parse(spec)
    match delay.kind:
        case "const" | "exp":
            return delay.a
        case "uniform":
            return (delay.a + delay.b) / 2.0
        case "lognormal":
            # Median m and shape s: mean = m * exp(s^2 / 2).
            return delay.a * math.exp(delay.b**2 / 2.0)
        case _:
            raise ConfigError(f"cannot take the mean of delay {spec!r}")


def draw_crash_schedule(
    *, n: int, crash_rate: float, horizon_s: float, max_crashes: int, seed: int
) -> tuple[tuple[int, float], ...]:
    """Crashes of a Poisson process of ``crash_rate`` per rank per second, sorted by time."""
    if crash_rate <= 0 or max_crashes <= 0:
        return ()
    # A generator of its own, so the schedule does not depend on anything the runs draw.
    rng = random.Random(f"snapline-compare-faults:{seed}")
    schedule: list[tuple[int, float]] = []
    t = 0.0
    job_rate = crash_rate * n
    while len(schedule) < max_crashes:
        t += rng.expovariate(job_rate)
        if t > horizon_s:
            break
        schedule.append((rng.randrange(n), round(t, 6)))
    return tuple(schedule)


def _sim_config(
    config: ComparisonConfig, protocol: str, crash_at: tuple[tuple[int, float], ...]
) -> SimConfig:
    options = dict(config.sim_options)
    options.pop("crash_at", None)
    try:
        return SimConfig(
            app=config.app,
            n=config.n,
            protocol=protocol,
            seed=config.seed,
            interval_s=config.interval_s,
            crash_at=crash_at,
            crash_rate=0.0,
            max_crashes=max(config.max_crashes, len(crash_at)),
            trace=True,
            **options,
        )
    except TypeError as exc:
        raise ConfigError(f"bad simulator option: {exc}") from None


RunSimulation = Callable[[SimConfig], Any]


def _default_runner() -> RunSimulation:
    from snapline.runtime.sim import run_simulation

    runner: RunSimulation = run_simulation
    return runner


def _run_one(run: RunSimulation, sim: SimConfig) -> ProtocolOutcome:
    started = time.perf_counter()
    try:
        # Importing the protocol is part of the row: a broken module fails its row only.
        protocol_class(sim.protocol)
        result = run(sim)
        if result.trace is None:
            raise ConfigError("the simulator returned no trace")
        if not result.passed:
            failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
            raise ConfigError("checker failed: " + "; ".join(failed))
        metrics = with_driver_stats(summarize(view_trace(result.trace)), result.stats)
        failure = None
    except Exception as exc:
        metrics = None
        failure = f"{type(exc).__name__}: {exc}"
    return ProtocolOutcome(
        protocol=sim.protocol,
        metrics=metrics,
        failure=failure,
        command=sim.command(),
        host_s=time.perf_counter() - started,
    )


def _advice(
    config: ComparisonConfig, schedule: tuple[tuple[int, float], ...]
) -> tuple[IntervalAdvice | None, dict[str, str]]:
    sources: dict[str, str] = {}
    base = _sim_config(config, BASELINE, ())
    cost = config.checkpoint_cost_s
    if cost is None:
        cost = mean_delay_s(base.persist_delay)
        sources["checkpoint_cost_s"] = f"mean checkpoint write time ({base.persist_delay})"
    else:
        sources["checkpoint_cost_s"] = "given"
    restart = config.restart_s
    if restart is None:
        restart = base.detect_delay_s + base.restart_delay_s
        sources["restart_s"] = "detection delay + restart delay of the simulator"
    else:
        sources["restart_s"] = "given"
    mtbf = config.mtbf_s
    if mtbf is None:
        if config.crash_rate > 0:
            mtbf = 1.0 / (config.n * config.crash_rate)
            sources["mtbf_s"] = f"1 / (n * crash rate) = 1 / ({config.n} * {config.crash_rate:g})"
        else:
            sources["mtbf_s"] = "unknown: no crash rate; give --mtbf-s"
            return None, sources
    else:
        sources["mtbf_s"] = "given"
    if cost <= 0:
        sources["checkpoint_cost_s"] += "; zero cost: give --checkpoint-cost-s"
        return None, sources
    del schedule  # the model uses the rate, not the particular draw
    return advise_interval(cost, mtbf, restart_s=restart, run_interval_s=config.interval_s), sources


def compare(
    config: ComparisonConfig,
    *,
    run: RunSimulation | None = None,
    progress: Callable[[str], None] | None = None,
) -> ComparisonResult:
    """Run every chosen protocol on the same job and crash schedule; summarise each run."""
    protocols = config.chosen_protocols()
    runner = run if run is not None else _default_runner()
    explicit = tuple(config.sim_options.get("crash_at", ()))
    if explicit:
        schedule = tuple(sorted(((int(r), float(t)) for r, t in explicit), key=lambda c: c[1]))
    elif config.crash_rate > 0:
        if progress:
            progress("measuring the failure-free run time")
        clean = runner(replace(_sim_config(config, BASELINE, ()), trace=False))
        horizon = HORIZON_FACTOR * max(float(clean.stats.get("sim_time_s", 0.0)), 1.0)
        schedule = draw_crash_schedule(
            n=config.n,
            crash_rate=config.crash_rate,
            horizon_s=horizon,
            max_crashes=config.max_crashes,
            seed=config.seed,
        )
    else:
        schedule = ()
    outcomes = []
    for protocol in protocols:
        if progress:
            progress(protocol)
        outcomes.append(_run_one(runner, _sim_config(config, protocol, schedule)))
    advice, sources = _advice(config, schedule)
    return ComparisonResult(
        config=config,
        crash_schedule=schedule,
        outcomes=tuple(outcomes),
        advice=advice,
        advice_sources=sources,
    )
