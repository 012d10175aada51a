"""Failures reported = failures injected: the accounting of ``chaos.checks.check_failures``."""

from __future__ import annotations

from typing import Any

from snapline.runtime.local.chaos.checks import Verdict, check_failures
from snapline.runtime.local.chaos.inject import Injection


def kill(pid: int, t: float, *, rank: int = 1, landed: bool = True) -> Injection:
    return Injection(
        fault=f"kill r{rank}@50%",
        action="kill",
        rank=rank,
        pid=pid,
        t_unix=t,
        landed=landed,
        expect_failure=True,
    )


def failed(pid: int, ts: float, why: str = "exited", rank: int = 1) -> dict[str, Any]:
    return {"event": "rank_failed", "pid": pid, "rank": rank, "why": why, "ts": ts}


START = {"event": "job_start", "ts": 0.0}
COLLECT = {"event": "collecting_results", "ts": 100.0}
SUMMARY: dict[str, Any] = {"failures": [{"rank": 1, "pid": 11}], "recoveries": []}


def account(
    log: list[dict[str, Any]],
    injections: list[Injection],
    summary: dict[str, Any] | None = SUMMARY,
    whole_job_kills: int = 0,
) -> Verdict:
    verdict = Verdict()
    check_failures(log, summary, injections, whole_job_kills, 3, verdict)
    return verdict


def test_a_reported_kill_matches() -> None:
    verdict = account([START, failed(11, 10.0), COLLECT], [kill(11, 9.0)])
    assert verdict.name == "pass", verdict.problems
    assert (verdict.failures_injected, verdict.failures_reported) == (1, 1)


def test_a_process_fails_once_however_many_faults_hit_it() -> None:
    hang = Injection(
        fault="hang r1@20%",
        action="stop",
        rank=1,
        pid=11,
        t_unix=8.0,
        landed=True,
        expect_failure=True,
    )
    verdict = account([START, failed(11, 10.0, "no heartbeat"), COLLECT], [hang, kill(11, 9.0)])
    assert verdict.name == "pass", verdict.problems
    assert (verdict.failures_injected, verdict.failures_reported) == (1, 1)


def test_a_kill_that_did_not_land_is_not_expected() -> None:
    verdict = account([START, COLLECT], [kill(11, 9.0, landed=False)], {"failures": []})
    assert verdict.name == "pass", verdict.problems
    assert (verdict.failures_injected, verdict.failures_reported) == (0, 0)


def test_an_unreported_kill_is_a_failure_unless_every_result_was_in() -> None:
    missed = account([START, COLLECT], [kill(11, 99.0)], {"failures": []})
    assert missed.name == "fail"
    assert "landed but the job never reported" in missed.problems[0]
    late = account([START, COLLECT], [kill(11, 100.5)], {"failures": []})
    assert late.name == "pass" and late.late_kills == 1
    # A job that never finished has no "late": every landed kill had to be reported.
    unfinished = account([START, COLLECT], [kill(11, 100.5)], None)
    assert "landed but the job never reported" in unfinished.problems[0]


def test_a_failure_nobody_injected_is_a_failure() -> None:
    log = [
        START,
        {"event": "rank_fatal", "rank": 2, "error": "ProtocolError('boom')"},
        failed(12, 10.0, "control link closed", rank=2),
        COLLECT,
    ]
    verdict = account(log, [], {"failures": [{"rank": 2}], "recoveries": []})
    assert verdict.name == "fail"
    assert "without an injected fault: ProtocolError('boom')" in verdict.problems[0]


def test_a_hang_nobody_caused_is_a_heartbeat_false_positive() -> None:
    pause = Injection(
        fault="pause r1@50% for 300ms",
        action="stop",
        rank=1,
        pid=11,
        t_unix=9.0,
        landed=True,
        note="300ms",
    )
    verdict = account([START, failed(11, 10.0, "no heartbeat"), COLLECT], [pause])
    assert verdict.name == "hb-timeout" and verdict.problems == []
    assert "paused 300ms" in verdict.heartbeat_false_positives[0]


def test_whole_job_kills_are_counted_through_the_resumed_run() -> None:
    log = [START, failed(11, 10.0), {"event": "job_start", "ts": 20.0}, COLLECT]
    resumed = {
        "failures": [{"rank": r} for r in range(3)],
        "recoveries": [{"whole_job": True}],
    }
    verdict = account(log, [kill(11, 9.0)], resumed, whole_job_kills=1)
    assert verdict.name == "pass", verdict.problems
    assert (verdict.failures_injected, verdict.failures_reported) == (2, 2)
    no_resume = account(log, [kill(11, 9.0)], {"failures": [], "recoveries": []}, 1)
    assert "1 whole-job kill(s) injected" in no_resume.problems[0]


def test_the_summary_must_agree_with_the_log() -> None:
    verdict = account([START, failed(11, 10.0), COLLECT], [kill(11, 9.0)], {"failures": []})
    assert "summary.json reports 0 rank failure(s), the supervisor log 1" in verdict.problems[0]
