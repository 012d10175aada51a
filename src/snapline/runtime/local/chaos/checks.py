"""What a chaos run must satisfy, checked from what the job left in its store directory.

A run is compared with a failure-free run of the same job (``Reference``): the simulator's
for a built-in app, a plain local run for any other app. The checks:

* **finished** -- the job ended on its own with a ``summary.json``;
* **result** -- every rank's result equals the failure-free one (deterministic apps);
* **exactly-once** -- the supervisor saw no violation, and the trace replayed through the
  simulator's ``ChannelChecker`` shows each channel delivering ``1..k`` once, in order, with
  nothing sent left undelivered (``verify.check_channels``);
* **outputs** -- per rank, the released outputs (from the ledger) are the failure-free run's,
  as a multiset: none lost, none repeated, none invented (order may differ between schedules);
* **no process left behind** -- no worker of the run is alive after it;
* **failures reported = failures injected** -- the pids of the ``rank_failed`` lines of the
  supervisor log are exactly the pids the campaign's landed kills and hangs hit, and the job's
  own count in ``summary.json`` agrees with its log. A rank killed after the job's last
  ``collecting_results`` line is not a failure of the job (every result was in). A rank
  declared hung that the campaign did not hang (or only paused) is a *heartbeat false
  positive*: reported apart from failures, since load alone can cause it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.runtime.local.chaos.inject import Injection
from snapline.runtime.local.job import RunResult, summary_json
from snapline.runtime.local.ledger import ledger_path, read_ledger
from snapline.runtime.local.verify import check_channels


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A failure-free run of the job: results in ``summary_json`` form, outputs per rank."""

    source: str  # "simulator" or "failure-free run"
    results: tuple[Any, ...]
    outputs: Mapping[int, tuple[str, ...]]
    delivered: int
    deterministic: bool


def canonical(item: object) -> str:
    """One output item as a comparable string (outputs are compared as multisets of these)."""
    return json.dumps(summary_json(item), sort_keys=True)


@dataclass(slots=True, kw_only=True)
class Verdict:
    """The outcome of the checks of one run."""

    problems: list[str] = field(default_factory=list)
    heartbeat_false_positives: list[str] = field(default_factory=list)
    failures_injected: int = 0
    failures_reported: int = 0
    late_kills: int = 0

    @property
    def name(self) -> str:
        """``pass``, ``fail``, or ``hb-timeout`` (all well but for heartbeat false positives)."""
        if self.problems:
            return "fail"
        return "hb-timeout" if self.heartbeat_false_positives else "pass"

    @property
    def reason(self) -> str:
        """The first problem (or false positive), for a table cell."""
        if self.problems:
            return self.problems[0]
        return self.heartbeat_false_positives[0] if self.heartbeat_false_positives else ""


def read_log(store: Path) -> list[dict[str, Any]]:
    """The supervisor's structured log lines (every run and resume of the job)."""
    path = store / "logs" / "supervisor.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill -9 of the supervisor
    return out


def read_summary(store: Path) -> dict[str, Any] | None:
    """``summary.json`` of the job's last run, None if it did not finish."""
    try:
        summary: dict[str, Any] = json.loads((store / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary


def released_outputs(store: Path, n: int) -> dict[int, list[Any]]:
    """Every rank's released outputs, from its ledger."""
    return {r: list(read_ledger(ledger_path(store, r), r).outputs) for r in range(n)}


def check_run(
    *,
    store: Path,
    n: int,
    reference: Reference,
    injections: Sequence[Injection],
    whole_job_kills: int,
    left_behind: Sequence[int],
    ended: str,
) -> Verdict:
    """Every check of the module docstring on the run whose store is ``store``."""
    verdict = Verdict()
    log = read_log(store)
    summary = read_summary(store)
    if summary is None:
        errors = [str(e.get("error")) for e in log if e.get("event") == "job_failed"]
        why = errors[-1] if errors else ended
        verdict.problems.append(f"the job did not finish: {why}")
    else:
        _check_results(summary, reference, n, verdict)
        _check_exactly_once(summary, store, n, verdict)
        _check_outputs(store, n, reference, verdict)
    if left_behind:
        verdict.problems.append(
            f"process(es) left behind after the run: worker pid(s) {list(left_behind)}"
        )
    check_failures(log, summary, injections, whole_job_kills, n, verdict)
    return verdict


def _check_results(
    summary: Mapping[str, Any], reference: Reference, n: int, verdict: Verdict
) -> None:
    if not reference.deterministic:
        return
    got = summary.get("results", {})
    for rank in range(n):
        have, want = got.get(str(rank)), reference.results[rank]
        if have != want:
            verdict.problems.append(
                f"rank {rank} ended with {_short(have)}; the {reference.source} gives "
                f"{_short(want)}"
            )
            return


def _check_exactly_once(summary: Mapping[str, Any], store: Path, n: int, verdict: Verdict) -> None:
    for violation in summary.get("violations", []):
        verdict.problems.append(f"the supervisor saw a violation: {violation}")
    trace = store / "trace.json"
    result = RunResult(
        results={},
        outputs={},
        stats={int(k): v for k, v in summary.get("stats", {}).items()},
        recoveries=list(summary.get("recoveries", [])),
        restarts=int(summary.get("restarts", 0)),
        elapsed_s=float(summary.get("elapsed_s", 0.0)),
        store=store,
        trace_path=trace if trace.exists() else None,
        protocol=str(summary.get("protocol")),
        n=n,
    )
    problem = check_channels(result)
    if problem is not None:
        verdict.problems.append(f"exactly-once delivery: {problem}")


def _check_outputs(store: Path, n: int, reference: Reference, verdict: Verdict) -> None:
    if not reference.deterministic:
        return
    for rank, items in released_outputs(store, n).items():
        got = Counter(canonical(item) for item in items)
        want = Counter(reference.outputs.get(rank, ()))
        lost, extra = want - got, got - want
        if lost or extra:
            repeated = {k: v for k, v in extra.items() if k in want}
            invented = {k: v for k, v in extra.items() if k not in want}
            parts = []
            if lost:
                parts.append(f"lost {_sample(lost)}")
            if repeated:
                parts.append(f"repeated {_sample(Counter(repeated))}")
            if invented:
                parts.append(f"not in the {reference.source} {_sample(Counter(invented))}")
            verdict.problems.append(
                f"rank {rank} released {len(items)} output(s), the {reference.source} "
                f"{sum(want.values())}: " + "; ".join(parts)
            )


def check_failures(
    log: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any] | None,
    injections: Sequence[Injection],
    whole_job_kills: int,
    n: int,
    verdict: Verdict,
) -> None:
    """Match the failures the job reported (its log) with the landed faults, into ``verdict``.

    ``log`` is the supervisor log of every run of the job (``read_log``), ``summary`` the last
    run's ``summary.json`` (None if it did not finish). See the module docstring.
    """
    reported = [e for e in log if e.get("event") == "rank_failed"]
    verdict.failures_reported = len(reported) + whole_job_kills
    unclaimed = Counter(int(e["pid"]) for e in reported if e.get("pid") is not None)
    starts = [i for i, e in enumerate(log) if e.get("event") == "job_start"]
    final = log[starts[-1] :] if starts else list(log)
    collecting = [float(e["ts"]) for e in final if e.get("event") == "collecting_results"]
    end_ts = collecting[-1] if summary is not None and collecting else None
    # A process fails once: a kill -9 of a rank already hung (stopped, not yet detected) is
    # the same failure as the hang.
    expected: dict[int | None, Injection] = {}
    for inj in injections:
        if inj.landed and inj.expect_failure:
            expected.setdefault(inj.pid, inj)
    for inj in expected.values():
        if inj.pid is not None and unclaimed[inj.pid] > 0:
            unclaimed[inj.pid] -= 1
            verdict.failures_injected += 1
        elif end_ts is not None and inj.t_unix >= end_ts:
            verdict.late_kills += 1  # every result was in: not a failure of the job
        else:
            verdict.failures_injected += 1
            verdict.problems.append(
                f"{inj.action} of rank {inj.rank} (pid {inj.pid}, {inj.fault}) landed but the "
                "job never reported that failure"
            )
    verdict.failures_injected += whole_job_kills
    paused = {i.pid: i.note for i in injections if i.action == "stop" and not i.expect_failure}
    supervisor_kills = {
        int(e["pid"]): str(e.get("why")) for e in log if e.get("event") == "kill" and "pid" in e
    }
    fatal = {int(e["rank"]): str(e.get("error")) for e in log if e.get("event") == "rank_fatal"}
    for event in reported:
        pid = int(event.get("pid") or -1)
        if unclaimed[pid] <= 0:
            continue
        unclaimed[pid] -= 1
        rank, why = event.get("rank"), str(event.get("why"))
        if why == "no heartbeat":
            cause = f"paused {paused[pid]}" if pid in paused else "never stopped by the campaign"
            verdict.heartbeat_false_positives.append(
                f"rank {rank} (pid {pid}) declared hung ({cause}): heartbeat false positive"
            )
            continue
        detail = supervisor_kills.get(pid) or fatal.get(int(rank) if rank is not None else -1)
        verdict.problems.append(
            f"rank {rank} (pid {pid}) failed ({why}) without an injected fault"
            + (f": {detail}" if detail else "")
        )
    if summary is not None:
        resumed = sum(1 for r in summary.get("recoveries", []) if r.get("whole_job"))
        if resumed != whole_job_kills:
            verdict.problems.append(
                f"{whole_job_kills} whole-job kill(s) injected, but the last run reports "
                f"{resumed} whole-job recovery(ies)"
            )
        in_log = sum(1 for e in final if e.get("event") == "rank_failed")
        in_summary = len(summary.get("failures", [])) - n * resumed
        if in_summary != in_log:
            verdict.problems.append(
                f"summary.json reports {in_summary} rank failure(s), the supervisor log {in_log}"
            )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _sample(counts: Counter[str]) -> str:
    shown = list(counts.items())[:3]
    items = [f"{k} x{v}" if v > 1 else k for k, v in shown]
    more = sum(counts.values()) - sum(v for _, v in shown)
    return ", ".join(items) + (f" (+{more} more)" if more > 0 else "")
