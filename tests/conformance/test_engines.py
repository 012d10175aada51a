"""Every engine through the same cases: local processes, MPI and Ray, failures from outside.

Each case runs on each engine (``engine_jobs.ENGINES``) with the same app, protocol, seed and
parameters, and must end with the failure-free run's result and released outputs, exactly-once
in-order delivery in the surviving history and consistent recovered cuts (``check_run``: the
simulator's checkers). The failures come from outside the job, as a user's would: ``kill -9``
of a rank's pid as ``snapline ps`` lists it, ``SIGSTOP`` (a hang, found by heartbeats), the
whole job killed and resumed with ``--resume``, and on MPI ``mpiexec`` itself killed.

What differs by engine is only what a failure takes down: on the local runtime and on Ray the
killed rank alone fails (the others keep running and are rolled back only as far as the
protocol needs; on Ray the rank comes back as a new actor), on MPI one death ends the whole MPI
job, so every rank fails and the job is relaunched from the recovery line in stable storage.
The default run covers every protocol on each engine with one app (and one real outside
``kill -9`` each); ``-m slow`` runs every app.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from engine_jobs import (
    ENGINES,
    JobThread,
    kill9,
    parent_pid,
    skip_unless_linux_proc,
    start_cli_job,
    use_engine,
    wait_progress,
    wait_running,
)

from snapline.apps import APPS
from snapline.errors import RuntimeFailure
from snapline.protocols import protocol_names
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.chaos.inject import process_state
from snapline.runtime.local.status import pid_alive
from snapline.runtime.local.verify import check_run
from snapline.runtime.sim import SimConfig, run_simulation

pytestmark = pytest.mark.timeout(180)

#: One app per protocol in the default run (every app appears); ``slow`` runs them all.
_APPS = sorted(APPS)
DEFAULT_CASES = [(p, _APPS[i % len(_APPS)]) for i, p in enumerate(protocol_names())]
ALL_CASES = [(p, a) for p in protocol_names() for a in _APPS]


def small_params(app: str, protocol: str) -> dict[str, Any]:
    """Parameters that make ``app`` run for about a second on a few ranks."""
    spec = APPS[app]
    if "step_s" in spec.params:  # paced by timers
        return {spec.size_param: 60, "step_s": 0.01}
    if protocol in ("bcs", "fdas"):
        # As fast as messages go, but nearly every message forces a checkpoint (an fsync).
        return {spec.size_param: 200}
    return {spec.size_param: 1500}


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


def check_failed_as_engine_says(
    result: RunResult, engine: str, victim: int, pid: int, why: str
) -> str | None:
    """The failures and the one recovery the engine must report for one rank's death."""
    ranks = [f["rank"] for f in result.failures]
    # On MPI the other ranks' failures say that the job ended because of this one.
    causes = [f for f in result.failures if not str(f["why"]).startswith("the MPI job ended")]
    if [f["rank"] for f in causes] != [victim]:
        return f"failures {result.failures}: the cause must be rank {victim} alone"
    if causes[0]["pid"] != pid or why not in str(causes[0]["why"]):
        return f"failure {causes[0]} is not pid {pid} ({why})"
    expected = sorted(range(result.n)) if engine == "mpi" else [victim]
    if sorted(ranks) != sorted(expected) or len(result.recoveries) != 1:
        return f"{engine}: failures of {ranks} and recoveries {result.recoveries}"
    if sorted(result.recoveries[0]["failed"]) != sorted(expected):
        return f"{engine}: recovery {result.recoveries[0]} should recover {expected}"
    return None


def kill_one_rank(tmp_path: Path, engine: str, protocol: str, app: str) -> None:
    """Run ``app``, kill -9 one random rank mid-run from outside; it must end exactly."""
    rng = random.Random(zlib.crc32(f"{protocol}/{app}".encode()))
    n = 3 if app == "bank" else 2
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
            timeout="90s",
            engine=engine,
        )
        job.start()
        wait_running(store)
        victim = rng.randrange(n)
        killed: int | None = None
        if wait_progress(store, int(total * rng.uniform(0.2, 0.5)), job.is_alive):
            killed = wait_running(store).get(victim)
            if killed is not None:
                kill9(killed)
        result = job.outcome()
        if killed is not None and result.failures:
            break
        # Done before the kill landed (a fast machine): again, three times bigger.
        params = {**params, size: params[size] * 3}
    else:
        pytest.fail(f"{app}: the job always finished before the kill")
    assert killed is not None
    where = f"{engine}/{protocol}/{app} (store {store})"
    # How the death was seen first (its pidfd, or its control link closing) is a race.
    problem = check_failed_as_engine_says(result, engine, victim, killed, "")
    assert problem is None, f"{where}: {problem}"
    assert check_run(result, app=app, app_params=params, topology=topology) == [], where


@pytest.mark.parametrize(("protocol", "app"), DEFAULT_CASES)
@pytest.mark.parametrize("engine", ENGINES)
def test_outside_kill_9_of_a_rank_recovers_exactly(
    tmp_path: Path, engine: str, protocol: str, app: str
) -> None:
    kill_one_rank(tmp_path, use_engine(engine), protocol, app)


@pytest.mark.slow
@pytest.mark.parametrize(("protocol", "app"), [c for c in ALL_CASES if c not in DEFAULT_CASES])
@pytest.mark.parametrize("engine", ENGINES)
def test_outside_kill_9_every_app(tmp_path: Path, engine: str, protocol: str, app: str) -> None:
    kill_one_rank(tmp_path, use_engine(engine), protocol, app)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_hung_rank_is_found_by_heartbeats_and_recovered(tmp_path: Path, engine: str) -> None:
    """SIGSTOP from outside: silent past the heartbeat timeout, the rank is killed, recovered."""
    use_engine(engine)
    params = {"messages": 80, "step_s": 0.01}
    store = tmp_path / "job"
    job = JobThread(
        app="bank",
        n=3,
        store=store,
        protocol="chandy-lamport",
        interval="0.2s",
        app_options=params,
        heartbeat_timeout="1s",
        timeout="90s",
        engine=engine,
    )
    job.start()
    assert wait_progress(store, 60, job.is_alive)
    victim = 2
    pid = wait_running(store)[victim]
    os.kill(pid, signal.SIGSTOP)
    result = job.outcome()
    problem = check_failed_as_engine_says(result, engine, victim, pid, "no heartbeat")
    assert problem is None, problem
    # Dead is gone or a zombie: an MPI rank orphaned by its killed hydra proxy stays a zombie
    # until whoever adopts it gets round to reaping it, which can be after the job returned.
    assert process_state(pid) in (None, "Z", "X"), "the hung rank outlived its replacement"
    assert check_run(result, app="bank", app_params=params, topology="complete") == []


def kill_whole_job_then_resume(tmp_path: Path, engine: str, protocol: str) -> None:
    """kill -9 of ``snapline run`` and every rank; ``--resume`` ends with the failure-free run."""
    params = {"messages": 150, "step_s": 0.01}
    store = tmp_path / "job"
    argv = ["chatter", "-n", "3", "--protocol", protocol, "--interval", "0.1s"]
    argv += [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    proc = start_cli_job(store, engine, argv)
    try:
        assert wait_progress(store, 150, lambda: proc.poll() is None)
        deadline = time.monotonic() + 30
        while protocol != "none" and min(r.last_checkpoint for r in read_status(store).ranks) == 0:
            assert time.monotonic() < deadline, "some rank never committed a checkpoint"
            time.sleep(0.02)
        status = read_status(store)
        pids = [int(r.pid) for r in status.ranks if r.pid is not None]
        for pid in [status.supervisor_pid, *pids]:
            kill9(pid)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(pid_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "ranks outlived the kill"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = run(store=store, resume=True, timeout="90s", engine=engine)
    assert len(result.recoveries) == 1 and result.recoveries[0]["whole_job"]
    if protocol == "message-logging":
        # Every rank restores its own latest checkpoint, then replays its own log.
        assert all(int(i) > 0 for i in result.recoveries[0]["restore"].values())
    assert check_run(result, app="chatter", app_params=params, topology="complete") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_whole_job_killed_then_resumed(tmp_path: Path, engine: str) -> None:
    kill_whole_job_then_resume(tmp_path, use_engine(engine), "message-logging")


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [p for p in protocol_names() if p != "message-logging"])
@pytest.mark.parametrize("engine", ENGINES)
def test_whole_job_killed_then_resumed_every_protocol(
    tmp_path: Path, engine: str, protocol: str
) -> None:
    kill_whole_job_then_resume(tmp_path, use_engine(engine), protocol)


def test_mpiexec_killed_from_outside_is_relaunched(tmp_path: Path) -> None:
    """kill -9 of ``mpiexec`` (found as a rank's grandparent): the job is relaunched."""
    use_engine("mpi")
    skip_unless_linux_proc()
    params = {"messages": 80, "step_s": 0.01}
    store = tmp_path / "job"
    job = JobThread(
        app="bank",
        n=3,
        store=store,
        protocol="uncoordinated",
        interval="0.2s",
        app_options=params,
        timeout="90s",
        engine="mpi",
    )
    job.start()
    assert wait_progress(store, 60, job.is_alive)
    rank_pid = wait_running(store)[0]
    mpiexec = parent_pid(parent_pid(rank_pid))  # mpiexec -> hydra proxy -> rank
    assert "mpiexec" in Path(f"/proc/{mpiexec}/cmdline").read_bytes().decode(errors="replace")
    kill9(mpiexec)
    result = job.outcome()
    assert len(result.recoveries) == 1, result.recoveries
    assert all("mpiexec exited" in str(f["why"]) for f in result.failures), result.failures
    assert sorted(f["rank"] for f in result.failures) == [0, 1, 2]
    assert check_run(result, app="bank", app_params=params, topology="complete") == []


@pytest.mark.parametrize("engine", ENGINES)
def test_restart_limit_and_back_off(tmp_path: Path, engine: str) -> None:
    """kill -9 one rank as soon as each incarnation runs, two restarts allowed: the second
    restart backs off (its rank failed again within seconds of its restart), the third failure
    ends the job naming the limit.

    On MPI a restart is one relaunch of the whole job (``--max-restarts`` counts relaunches).
    """
    use_engine(engine)
    store = tmp_path / "job"
    job = JobThread(
        app="bank",
        n=3,
        store=store,
        protocol="chandy-lamport",
        interval="0.2s",
        app_options={"messages": 3000, "step_s": 0.01},
        max_restarts=2,
        timeout="120s",
        engine=engine,
    )
    job.start()
    killed = 0
    for _ in range(3):
        # Each kill waits for the previous recovery to end (a new pid, every rank running).
        deadline = time.monotonic() + 60
        while (pid := wait_running(store).get(1)) == killed:
            assert time.monotonic() < deadline and job.is_alive(), "no new incarnation ran"
            time.sleep(0.02)
        assert pid is not None, "the job ended before the kills"
        kill9(pid)
        killed = pid
    with pytest.raises(RuntimeFailure, match=r"restart limit reached: 2 restarts allowed"):
        job.outcome()
    lines = (store / "logs" / "supervisor.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events.count("recovered") == 2
    assert events.count("backoff") == 1  # the second restart came within seconds of the first
    if engine == "mpi":
        assert events.count("mpiexec_started") == 3  # the first launch and two relaunches
    else:
        assert events.count("spawned") == 3 + 2
