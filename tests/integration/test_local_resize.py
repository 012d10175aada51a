"""Resuming a killed job on another number of ranks: ``snapline run --resume -n M``.

Each test starts ``snapline run wordcount`` as a real job, waits until every rank has a
committed checkpoint and words are flowing, kills the supervisor and every rank with SIGKILL
from outside, and resumes the job in the same store on M ranks. The word counts at the end
must equal the counts of the job's input (every split's words, once), which an uninterrupted
run also produces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from snapline.apps.wordcount import WordCounter
from snapline.errors import ConfigError
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.status import pid_alive
from snapline.runtime.local.verify import check_run
from snapline.runtime.sim import SimConfig, run_simulation

pytestmark = pytest.mark.timeout(240)

PARAMS = {"messages": 30, "step_s": 0.02, "splits": 12}


def expected_counts(params: dict[str, Any] = PARAMS) -> Counter[str]:
    """The counts of every word of every split: what any correct run ends with."""
    source = WordCounter(
        rank=0, n=1, messages=params["messages"], vocabulary=50, step_s=1.0,
        splits=params["splits"], key_groups=128,
    )  # fmt: skip
    return Counter(
        source.word_at(split, offset)
        for split in range(params["splits"])
        for offset in range(params["messages"])
    )


def counts(result: RunResult) -> Counter[str]:
    total: Counter[str] = Counter()
    for per_rank in result.results.values():
        total.update(per_rank)
    return total


def start_and_kill(store: Path, n: int, protocol: str, delivered: int = 60) -> None:
    """Run wordcount on ``n`` ranks until checkpointed and busy, then kill -9 the whole job."""
    cmd = [sys.executable, "-m", "snapline", "run", "wordcount", "-n", str(n)]
    cmd += ["--store", str(store), "--protocol", protocol, "--interval", "0.15s"]
    for key, value in PARAMS.items():
        cmd += ["-p", f"{key}={value}"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "the job never checkpointed every rank"
            try:
                status = read_status(store)
            except Exception:
                time.sleep(0.05)
                continue
            assert status.state not in ("finished", "failed"), f"ended early: {status.state}"
            if (
                status.state == "running"
                and status.messages_delivered >= delivered
                # Under "none" nothing is ever checkpointed: the resize splits initial states.
                and (protocol == "none" or all(r.last_checkpoint > 0 for r in status.ranks))
            ):
                break
            time.sleep(0.02)
        pids = [status.supervisor_pid] + [int(r.pid) for r in status.ranks]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in pids[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids[1:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def resume_on(store: Path, m: int, **kwargs: Any) -> RunResult:
    result = run("wordcount", m, store=store, resume=True, timeout="120s", **kwargs)
    assert result.n == m
    assert check_run(result, app="wordcount", app_params=PARAMS, topology="complete") == []
    assert counts(result) == expected_counts()
    return result


def resize_meta(store: Path, generation: int) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(
        (store / "resize" / str(generation) / "meta.json").read_text()
    )
    return meta


def uninterrupted_counts(n: int) -> Counter[str]:
    """The counts of an uninterrupted run of the same job (in the simulator: same app code)."""
    result = run_simulation(SimConfig(app="wordcount", n=n, app_params=PARAMS))
    total: Counter[str] = Counter()
    for per_rank in result.results:
        assert isinstance(per_rank, dict)
        total.update(per_rank)
    return total


def test_chandy_lamport_4_to_6_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = uninterrupted_counts(4)
    assert whole == expected_counts()

    store = tmp_path / "job"
    start_and_kill(store, 4, "chandy-lamport")
    result = resume_on(store, 6)
    assert counts(result) == whole
    assert resize_meta(store, 1)["from_n"] == 4
    # The old ranks' checkpoints are kept until the new job has a committed global checkpoint.
    previous = store / "resize" / "1" / "previous"
    assert sorted(p.name for p in previous.iterdir()) == ["ledger"] + [
        f"rank-{r}" for r in range(4)
    ]
    assert json.loads((store / "job.json").read_text())["n"] == 6


def test_two_phase_6_to_3_with_a_rank_killed_after_the_resize(tmp_path: Path) -> None:
    store = tmp_path / "job"
    start_and_kill(store, 6, "two-phase")
    # Rank 1 dies soon after the resized job runs: it restarts from its checkpoint or, if it
    # has none yet, from its start state of the resize (not from the job's first start).
    result = resume_on(store, 3, kill=["1@0.3s"])
    assert result.restarts >= 1
    assert len(result.recoveries) >= 2


def test_an_app_without_keyed_state_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "job"
    run("bank", 2, store=store, app_options={"messages": 5, "step_s": 0.01}, timeout="60s")
    with pytest.raises(ConfigError, match="bank declares no keyed state, so it can only resume"):
        run("bank", 3, store=store, resume=True)
    assert json.loads((store / "job.json").read_text())["n"] == 2
    assert not (store / "resize").exists()


def test_message_logging_is_refused_with_the_reason(tmp_path: Path) -> None:
    store = tmp_path / "job"
    params = {**PARAMS, "messages": 5}
    run("wordcount", 2, store=store, protocol="message-logging", app_options=params,
        interval="0.05s", timeout="60s")  # fmt: skip
    with pytest.raises(ConfigError, match="message-logging recovers by re-executing"):
        run("wordcount", 3, store=store, resume=True)
    assert json.loads((store / "job.json").read_text())["n"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "protocol", ["chandy-lamport", "two-phase", "uncoordinated", "bcs", "fdas", "none"]
)
@pytest.mark.parametrize(("n", "m"), [(4, 6), (6, 3)])
def test_resize_matrix(tmp_path: Path, protocol: str, n: int, m: int) -> None:
    store = tmp_path / "job"
    start_and_kill(store, n, protocol)
    resume_on(store, m)


@pytest.mark.slow
def test_a_real_uninterrupted_run_counts_the_same(tmp_path: Path) -> None:
    whole = run("wordcount", 4, store=tmp_path / "whole", app_options=PARAMS, timeout="120s")
    assert counts(whole) == expected_counts() == uninterrupted_counts(4)


@pytest.mark.slow
def test_second_resize_and_prune(tmp_path: Path) -> None:
    store = tmp_path / "job"
    start_and_kill(store, 4, "chandy-lamport")
    # Resized to 6, killed again mid-run, then resized to 3 from the 6-rank checkpoints
    # (or, for a rank with none yet, from its start state of the first resize).
    cmd = [sys.executable, "-m", "snapline", "run", "--resume", "-n", "6", "--store", str(store)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline
            try:
                status = read_status(store)
            except Exception:
                time.sleep(0.05)
                continue
            if (
                status.n == 6
                and status.state == "running"
                and all(r.last_checkpoint > 0 for r in status.ranks)
            ):
                break
            assert status.state != "failed"
            time.sleep(0.02)
        for pid in [status.supervisor_pid] + [int(r.pid) for r in status.ranks]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    resume_on(store, 3)
    assert resize_meta(store, 2)["from_n"] == 6
    # Every rank of the 3-rank job checkpointed: a later resume prunes the old ranks' files.
    resume_on(store, 3)
    assert not (store / "resize" / "1" / "previous").exists()


def test_a_resize_cut_short_after_its_commit_is_finished_by_the_next_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapline.runtime.local import resize

    store = tmp_path / "job"
    run("wordcount", 3, store=store, app_options=PARAMS, interval="0.1s", timeout="120s")
    real_finish = resize._finish

    def crash_after_moving_the_ledgers(*args: Any) -> Any:
        # The start states are committed; the process dies having moved the ledgers only.
        (store / "resize" / "1" / "previous").mkdir()
        os.replace(store / "ledger", store / "resize" / "1" / "previous" / "ledger")
        raise KeyboardInterrupt

    monkeypatch.setattr(resize, "_finish", crash_after_moving_the_ledgers)
    with pytest.raises(KeyboardInterrupt):
        run("wordcount", 5, store=store, resume=True)
    assert json.loads((store / "job.json").read_text())["n"] == 3
    monkeypatch.setattr(resize, "_finish", real_finish)
    # A plain --resume finishes the resize (to 5 ranks), then runs.
    result = run("wordcount", store=store, resume=True, timeout="120s")
    assert result.n == 5
    assert counts(result) == expected_counts()
    assert sorted(p.name for p in (store / "resize" / "1" / "previous").iterdir()) == [
        "ledger", "rank-0", "rank-1", "rank-2",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["mpi", "ray"])
def test_a_store_resized_resumes_on_the_mpi_and_ray_engines(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    # The engines share the local runtime's resume path: the resize happens before any rank
    # starts, and each engine's ranks build their start states the same way.
    kwargs: dict[str, Any] = {"engine": engine}
    if engine == "mpi":
        from mpi_support import require_mpi

        require_mpi()
    else:
        ray = request.getfixturevalue("ray_session")
        kwargs["ray_address"] = ray.get_runtime_context().gcs_address
    store = tmp_path / "job"
    start_and_kill(store, 4, "chandy-lamport")
    resume_on(store, 3, **kwargs)
