"""Real jobs on real processes: kill -9 of random ranks from outside, automatic recovery.

Every protocol x every example app runs with one kill -9 sent by this test (not by the job) to
a pid read from the job's status file, at a random point of its progress; the run must end with
exactly the failure-free result (nothing lost or duplicated) and pass the simulator's checkers.
The four apps of a protocol run at the same time (most of a small job is process start-up and
fsync waits, which overlap), which keeps the CI cost of 28 real recoveries low. The soak test
behind ``slow`` kills several random ranks per run.

A job that stops making progress fails on its own within seconds, naming the ranks that did
not finish and the channels with messages sent but never delivered (``LocalJob`` stall
detection); the test never waits for a hang to time out.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from snapline.apps import APPS
from snapline.protocols import protocol_names
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.verify import check_run
from snapline.runtime.sim import SimConfig, run_simulation

pytestmark = pytest.mark.timeout(150)


def small_params(app: str, protocol: str) -> dict[str, Any]:
    """Parameters that make ``app`` run for about a second on a few local ranks."""
    spec = APPS[app]
    if "step_s" in spec.params:  # paced by timers
        return {spec.size_param: 60, "step_s": 0.01}
    if protocol in ("bcs", "fdas"):
        # As fast as messages go, but nearly every message forces a checkpoint (an fsync).
        return {spec.size_param: 200}
    return {spec.size_param: 1500}  # as fast as messages go


def failure_free_deliveries(app: str, n: int, params: dict[str, Any]) -> int:
    """How many messages the job delivers without failures (from the simulator)."""
    result = run_simulation(
        SimConfig(
            app=app,
            n=n,
            app_params=params,
            topology=APPS[app].default_topology,
            interval_s=None,
            reference=False,
        )
    )
    return int(result.stats["messages_delivered"])


class JobThread(threading.Thread):
    """Runs ``snapline.run`` (supervisor in this process, ranks as real child processes)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: RunResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run(**self.kwargs)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def outcome(self, timeout_s: float = 90.0) -> RunResult:
        self.join(timeout_s)
        assert not self.is_alive(), "the job did not finish (nor fail) in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def wait_running(store: Path, timeout_s: float = 30.0) -> dict[int, int]:
    """Wait until every rank runs; return rank -> pid from the status file."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.05)
            continue
        if status.state == "running" and all(r.state == "running" for r in status.ranks):
            return {r.rank: int(r.pid) for r in status.ranks if r.pid is not None}
        if status.state in ("finished", "failed"):
            return {}
        time.sleep(0.05)
    raise AssertionError(f"job in {store} never ran")


def wait_progress(store: Path, delivered: int, job: JobThread, timeout_s: float = 60.0) -> bool:
    """Wait until the job has delivered ``delivered`` messages; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not job.is_alive():
            return False
        status = read_status(store)
        if status.messages_delivered >= delivered and status.state == "running":
            return True
        if status.state in ("finished", "failed"):
            return False
        time.sleep(0.02)
    raise AssertionError(f"job in {store} made no progress to {delivered} messages")


def kill_from_outside(store: Path, rank: int) -> int | None:
    """kill -9 the current pid of ``rank`` as listed in the status file (None: job ended)."""
    pid = wait_running(store).get(rank)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


def kill_one_rank(tmp_path: Path, protocol: str, app: str) -> str | None:
    """Run ``app`` under ``protocol``, kill -9 one random rank mid-run; None if all is well."""
    rng = random.Random(zlib.crc32(f"{protocol}/{app}".encode()))
    n = 3 if app == "bank" else 2  # every process costs a Python start-up: keep CI cheap
    params = small_params(app, protocol)
    topology = APPS[app].default_topology
    size = APPS[app].size_param
    for attempt in range(4):
        total = failure_free_deliveries(app, n, params)
        store = tmp_path / f"{app}-{attempt}"
        job = JobThread(
            app=app,
            n=n,
            store=store,
            protocol=protocol,
            topology=topology,
            interval="0.2s",
            app_options=params,
            timeout="60s",
        )
        job.start()
        wait_running(store)
        # Kill at a random point of the run, measured in progress (not time). A job that got
        # done before the kill landed (on a fast machine) runs again, three times bigger.
        victim = rng.randrange(n)
        killed_pid = None
        if wait_progress(store, int(total * rng.uniform(0.2, 0.5)), job):
            killed_pid = kill_from_outside(store, victim)
        result = job.outcome()
        if killed_pid is not None and result.failures:
            break
        params = {**params, size: params[size] * 3}
    else:
        return f"{app}: the job always finished before the kill"
    where = f"{app} (store {store})"
    if [f["rank"] for f in result.failures] != [victim]:
        return f"{where}: failures {result.failures}, but only rank {victim} was killed"
    if result.failures[0]["pid"] != killed_pid:
        return f"{where}: failure {result.failures[0]} is not the killed pid {killed_pid}"
    if len(result.recoveries) != 1 or str(victim) not in result.recoveries[0]["restore"]:
        return f"{where}: expected one recovery restoring rank {victim}: {result.recoveries}"
    problems = check_run(result, app=app, app_params=params, topology=topology)
    return f"{where}: {problems}" if problems else None


@pytest.mark.parametrize("protocol", protocol_names())
def test_kill_random_rank_recovers_exactly(tmp_path: Path, protocol: str) -> None:
    """Each app under ``protocol`` survives a kill -9 of one random rank, exactly."""
    problems: dict[str, str | None] = {}

    def one(app: str) -> None:
        try:
            problems[app] = kill_one_rank(tmp_path, protocol, app)
        except BaseException as exc:  # reported for this app, not lost in a thread
            problems[app] = f"{app}: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=one, args=(app,), daemon=True) for app in sorted(APPS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(140.0)
    assert set(problems) == set(APPS), f"apps that never reported: {set(APPS) - set(problems)}"
    failed = [p for p in problems.values() if p is not None]
    assert failed == [], "\n".join(failed)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", protocol_names())
def test_soak_several_random_kills(tmp_path: Path, protocol: str) -> None:
    rng = random.Random(zlib.crc32(protocol.encode()))
    n = 5
    params = {"messages": 300, "step_s": 0.01}
    store = tmp_path / "job"
    job = JobThread(
        app="bank", n=n, store=store, protocol=protocol, interval="0.3s", app_options=params
    )
    job.start()
    kills = 0
    for _ in range(3):
        wait_running(store)
        time.sleep(rng.uniform(0.3, 0.8))
        if not job.is_alive():
            break
        kill_from_outside(store, rng.randrange(n))
        kills += 1
    result = job.outcome(timeout_s=120.0)
    assert len(result.failures) == kills
    assert check_run(result, app="bank", app_params=params, topology="complete") == []


def test_a_torn_trace_line_of_a_killed_rank_does_not_hide_its_restore(tmp_path: Path) -> None:
    """A kill -9 in the middle of a trace write must not make the checkers see duplicates.

    The rank is stopped, part of a line is appended to its trace file (what a kill -9 in the
    middle of its ``write`` leaves), and it is killed. Its next incarnation appends its
    ``restore`` event to the same file; glued to the fragment it was lost, and the messages the
    new incarnation delivered again were reported as duplicates.
    """
    params = {"messages": 3000}
    for attempt in range(3):
        store = tmp_path / f"job-{attempt}"
        job = JobThread(
            app="heat",
            n=2,
            store=store,
            protocol="uncoordinated",
            topology="line",
            interval="0.3s",
            app_options=params,
            timeout="60s",
        )
        job.start()
        pid = wait_running(store).get(1)
        if pid is not None and wait_progress(store, 400, job):
            os.kill(pid, signal.SIGSTOP)
            with (store / "trace" / "rank-1.jsonl").open("ab") as trace:
                trace.write(b'{"t": 1.5, "rank": 1, "kind": "deli')
            os.kill(pid, signal.SIGKILL)
            result = job.outcome()
            if result.failures:
                break
        else:
            job.outcome()
        params = {"messages": params["messages"] * 3}
    else:
        raise AssertionError("the job always finished before the kill")
    assert [f["rank"] for f in result.failures] == [1]
    assert check_run(result, app="heat", app_params=params, topology="line") == []
