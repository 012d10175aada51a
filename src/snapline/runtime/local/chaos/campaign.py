"""A chaos campaign: many runs of real jobs, each with a seeded fault schedule, each checked.

Run ``i`` of a campaign with seed ``S`` runs the ``i``-th (protocol, app) pair (cycling through
every pair) with seed ``S + i``; its schedule depends on that seed alone, so its replay command
(``RunRecord.replay``) injects the same faults. Each run:

1. starts ``snapline run APP ...`` as a child process (the supervisor, in a new session, with
   the run's environment marker) and reads its status file like ``snapline ps`` does;
2. fires each fault when the job's progress reaches the fault's point (``schedule``), from
   outside the job (``inject``); a whole-job kill is followed by ``snapline run --resume``;
3. waits for the job to end, for its workers to be gone, and checks it against the
   failure-free reference (``checks``).

Runs execute one after another: a job is a handful of processes already, and faults that fire
on progress points need the machine's attention to land where they were drawn.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError
from snapline.runtime.local.chaos.checks import (
    Reference,
    Verdict,
    canonical,
    check_run,
    read_log,
    read_summary,
    released_outputs,
)
from snapline.runtime.local.chaos.driver import WATCHDOG_GRACE_S, JobDriver, ScheduleRunner
from snapline.runtime.local.chaos.inject import (
    Injection,
    kill_all,
    send_signal,
    wait_dead,
    wait_gone,
)
from snapline.runtime.local.chaos.schedule import (
    DEFAULT_FAULTS,
    FaultKind,
    draw_schedule,
)
from snapline.runtime.local.config import format_duration_s, is_builtin_app
from snapline.runtime.local.job import summary_json

#: How long workers may take to exit after their supervisor ended.
_EXIT_GRACE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignConfig:
    """What a campaign runs: which jobs, how many runs or how long, which faults."""

    apps: tuple[str, ...]
    protocols: tuple[str, ...]
    out_dir: Path
    n: int = 3
    runs: int | None = None
    time_budget_s: float | None = None
    seed: int = 0
    faults: tuple[FaultKind, ...] = DEFAULT_FAULTS
    max_faults: int = 3
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_s: float = 0.2
    heartbeat_timeout_s: float = 3.0
    job_timeout_s: float = 120.0
    keep_stores: bool = False

    def __post_init__(self) -> None:
        if not self.apps or not self.protocols:
            raise ConfigError("a campaign needs at least one app and one protocol")
        if self.n < 2:
            raise ConfigError(f"a chaos run needs at least 2 ranks, got -n {self.n}")
        if self.runs is not None and self.runs < 1:
            raise ConfigError(f"--runs must be >= 1, got {self.runs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError("--time must be positive")
        if self.interval_s <= 0 or self.heartbeat_timeout_s <= 0 or self.job_timeout_s <= 0:
            raise ConfigError("--interval, --heartbeat-timeout and --job-timeout must be > 0")

    def validate(self) -> None:
        """Check that every protocol, app and app parameter exists (``ConfigError`` if not).

        Cheap, and done before the first run, so that a typo fails at once rather than as a
        failure-free run that never starts.
        """
        from snapline.apps import app_spec
        from snapline.protocols import protocol_class
        from snapline.runtime.local.config import load_app_class

        for protocol in self.protocols:
            protocol_class(protocol)
        for app in self.apps:
            if is_builtin_app(app):
                for protocol in self.protocols:
                    app_spec(app).resolve_params(self.job_params(protocol, app))
            else:
                load_app_class(app)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (protocol, app) pair, in the order runs cycle through them."""
        return [(protocol, app) for app in self.apps for protocol in self.protocols]

    def planned_runs(self) -> int | None:
        """How many runs the campaign makes (None: as many as ``time_budget_s`` allows)."""
        if self.runs is not None:
            return self.runs
        return None if self.time_budget_s is not None else len(self.pairs())

    def job_params(self, protocol: str, app: str) -> dict[str, Any]:
        """The app parameters of a run: small built-in defaults, then the user's."""
        return {**default_params(app, protocol), **self.params}

    def replay(self, protocol: str, app: str, seed: int) -> str:
        """The command that runs exactly this run's schedule again."""
        words = ["snapline", "chaos", app, "--protocol", protocol, "--seed", str(seed)]
        words += ["--runs", "1", "-n", str(self.n)]
        words += ["--faults", ",".join(k.value for k in self.faults)]
        words += ["--max-faults", str(self.max_faults)]
        words += ["--interval", format_duration_s(self.interval_s)]
        words += ["--heartbeat-timeout", format_duration_s(self.heartbeat_timeout_s)]
        # Every parameter the job ran with, defaults included: the replay stays exact when
        # the defaults change.
        for key, value in sorted(self.job_params(protocol, app).items()):
            words += ["-p", f"{key}={value}"]
        return shlex.join(words)


def default_params(app: str, protocol: str) -> dict[str, Any]:
    """Parameters that keep a built-in app running for a few seconds on a few idle cores.

    Faults fire on progress read from the status file, which the supervisor rewrites a few
    times a second: a job over in a second would finish between two readings, before most
    faults could land (``RunRecord.faults_missed`` counts those).
    """
    if not is_builtin_app(app):
        return {}
    from snapline.apps import app_spec

    spec = app_spec(app)
    if "step_s" in spec.params:  # paced by timers
        return {spec.size_param: 200, "step_s": 0.01}
    if protocol in ("bcs", "fdas"):
        # As fast as messages go, but nearly every message forces a checkpoint (an fsync).
        return {spec.size_param: 400}
    return {spec.size_param: 5000}


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """One run of a campaign and its verdict."""

    index: int
    protocol: str
    app: str
    seed: int
    schedule: list[str]
    injections: list[Injection]
    verdict: str
    problems: list[str]
    heartbeat_false_positives: list[str]
    failures_injected: int
    failures_reported: int
    #: Landed kills after every result was in: not failures of the job (``checks``).
    late_kills: int
    #: Faults of the schedule that never fired: the job ended before their progress point.
    faults_missed: list[str]
    elapsed_s: float
    replay: str
    store: str | None

    @property
    def reason(self) -> str:
        """The first problem (or heartbeat false positive), for a table."""
        if self.problems:
            return self.problems[0]
        return self.heartbeat_false_positives[0] if self.heartbeat_false_positives else ""

    def faults_landed(self) -> list[str]:
        """The schedule entries of which at least one action landed."""
        seen: list[str] = []
        for inj in self.injections:
            if inj.landed and inj.fault not in seen:
                seen.append(inj.fault)
        return seen

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (for the campaign summary file)."""
        out = asdict(self)
        out["faults_landed"] = self.faults_landed()
        return out


def reference_run(config: CampaignConfig, protocol: str, app: str) -> Reference:
    """The failure-free run the chaos runs of ``app`` under ``protocol`` are compared with.

    Built-in apps: the simulator's run of the same job and seed (no processes to start).
    Other apps: a plain local run of the same job, without faults.
    """
    params = config.job_params(protocol, app)
    if is_builtin_app(app):
        from snapline.apps import app_spec
        from snapline.runtime.sim import SimConfig, failure_free, run_simulation

        spec = app_spec(app)
        sim = run_simulation(
            failure_free(
                SimConfig(
                    app=app,
                    n=config.n,
                    app_params=params,
                    topology=spec.default_topology,
                    reference=False,
                )
            )
        )
        results = summary_json(list(sim.results))
        assert isinstance(results, list)
        return Reference(
            source="simulator",
            results=tuple(results),
            outputs={r: tuple(canonical(x) for x in items) for r, items in enumerate(sim.outputs)},
            delivered=int(sim.stats["messages_delivered"]),
            deterministic=spec.deterministic,
        )
    run_dir = config.out_dir / f"reference-{protocol}-{_slug(app)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    token = f"ref-{os.getpid()}-{secrets.token_hex(4)}"
    job = JobDriver(config=config, protocol=protocol, app=app, run_dir=run_dir, token=token)
    job.start(resume=False)
    ended = job.wait(config.job_timeout_s + WATCHDOG_GRACE_S)
    kill_all(token)
    summary = read_summary(job.store)
    if summary is None:
        raise ConfigError(
            f"the failure-free run of {app} under {protocol} did not finish ({ended}); "
            f"see {run_dir}: a chaos campaign needs an app that runs without faults"
        )
    released = released_outputs(job.store, config.n)
    reference = Reference(
        source="failure-free run",
        results=tuple(summary["results"][str(r)] for r in range(config.n)),
        outputs={r: tuple(canonical(x) for x in items) for r, items in released.items()},
        delivered=int(summary.get("messages_delivered", 0)),
        deterministic=True,
    )
    if not config.keep_stores:
        shutil.rmtree(run_dir, ignore_errors=True)
    return reference


def run_one(
    config: CampaignConfig,
    *,
    index: int,
    protocol: str,
    app: str,
    seed: int,
    reference: Reference,
) -> RunRecord:
    """Run, fault and check one job; its store is kept only when it failed (or if asked)."""
    schedule = draw_schedule(
        seed,
        n=config.n,
        kinds=config.faults,
        max_faults=config.max_faults,
        heartbeat_timeout_s=config.heartbeat_timeout_s,
    )
    run_dir = config.out_dir / f"run-{index:04d}-{protocol}-{_slug(app)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    token = f"{os.getpid()}-{index}-{secrets.token_hex(4)}"
    job = JobDriver(config=config, protocol=protocol, app=app, run_dir=run_dir, token=token)
    runner = ScheduleRunner(job, reference, schedule)
    started = time.monotonic()
    try:
        ended = runner.run()
    finally:
        if job.running():
            send_signal(job.pid, signal.SIGKILL, token)
        if job.proc is not None:
            job.proc.wait()
        left = wait_gone(token, timeout_s=_EXIT_GRACE_S)
        # Never leave a process behind, whatever the verdict (or an interrupt): kill what is
        # left and wait until every process the job ever spawned has exited.
        kill_all(token)
        spawned = [int(e["pid"]) for e in read_log(job.store) if e.get("event") == "spawned"]
        wait_dead(spawned, timeout_s=_EXIT_GRACE_S)
    verdict: Verdict = check_run(
        store=job.store,
        n=config.n,
        reference=reference,
        injections=runner.injections,
        whole_job_kills=runner.whole_job_kills,
        left_behind=left,
        ended=ended,
    )
    verdict.problems[:0] = runner.problems
    keep = config.keep_stores or verdict.name != "pass"
    record = RunRecord(
        index=index,
        protocol=protocol,
        app=app,
        seed=seed,
        schedule=[f.describe() for f in schedule],
        injections=runner.injections,
        verdict=verdict.name,
        problems=verdict.problems,
        heartbeat_false_positives=verdict.heartbeat_false_positives,
        failures_injected=verdict.failures_injected,
        failures_reported=verdict.failures_reported,
        late_kills=verdict.late_kills,
        faults_missed=[
            f.describe()
            for f in schedule
            if f.describe() not in {i.fault for i in runner.injections}
        ],
        elapsed_s=round(time.monotonic() - started, 3),
        replay=config.replay(protocol, app, seed),
        store=str(job.store) if keep else None,
    )
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def run_campaign(
    config: CampaignConfig,
    *,
    on_start: Callable[[int, str, str], None] | None = None,
    on_done: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Run the campaign; write ``chaos-summary.json`` into ``out_dir``; return every record.

    An interrupt (Ctrl-C) stops the run in progress (its processes are killed), writes the
    summary of the runs done and propagates; ``on_done`` has seen each of those runs.
    """
    if not Path("/proc/self/environ").exists():
        raise ConfigError("snapline chaos needs Linux (/proc) to find a job's processes")
    config.validate()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    references: dict[tuple[str, str, str], Reference] = {}
    records: list[RunRecord] = []
    started = time.monotonic()
    try:
        _campaign_loop(config, references, records, started, on_start, on_done)
    finally:
        write_summary(config, records, time.monotonic() - started)
    return records


def _campaign_loop(
    config: CampaignConfig,
    references: dict[tuple[str, str, str], Reference],
    records: list[RunRecord],
    started: float,
    on_start: Callable[[int, str, str], None] | None,
    on_done: Callable[[RunRecord], None] | None,
) -> None:
    pairs = config.pairs()
    planned = config.planned_runs()
    index = 0
    while planned is None or index < planned:
        if config.time_budget_s is not None and time.monotonic() - started >= config.time_budget_s:
            break
        protocol, app = pairs[index % len(pairs)]
        if on_start is not None:
            on_start(index, protocol, app)
        # The simulator's reference does not depend on the protocol, only on the parameters
        # (which do: see default_params); a local reference run is the protocol's own.
        params = json.dumps(config.job_params(protocol, app), sort_keys=True, default=str)
        key = ("" if is_builtin_app(app) else protocol, app, params)
        if key not in references:
            references[key] = reference_run(config, protocol, app)
        record = run_one(
            config,
            index=index,
            protocol=protocol,
            app=app,
            seed=config.seed + index,
            reference=references[key],
        )
        records.append(record)
        write_summary(config, records, time.monotonic() - started)
        if on_done is not None:
            on_done(record)
        index += 1


def write_summary(config: CampaignConfig, records: Sequence[RunRecord], elapsed_s: float) -> Path:
    """``<out_dir>/chaos-summary.json``: the campaign's configuration, runs and totals."""
    verdicts = [r.verdict for r in records]
    summary = {
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("out_dir", "faults")},
            "out_dir": str(config.out_dir),
            "faults": [k.value for k in config.faults],
        },
        "elapsed_s": round(elapsed_s, 3),
        "totals": {v: verdicts.count(v) for v in ("pass", "fail", "hb-timeout")},
        "runs": [r.to_json() for r in records],
    }
    path = config.out_dir / "chaos-summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _slug(app: str) -> str:
    name = app.rsplit(":", 1)[-1] if ":" in app else app
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
