"""Output commit on real processes: kill -9 of one and of two ranks, outputs exactly once.

The ``chatter`` app outputs every send and every receipt. Its receipts interleave differently
in every run, so a rank re-executed after a rollback produces the same outputs in another
order under the same output ids: output released before the rollback would then be repeated
or lost (skipping "already released" ids drops real items). Under ``none`` every output must
wait for the end of the job; under ``two-phase`` for a committed checkpoint that no recovery
can fall behind (in-doubt rounds resolved from the initiator's decision). Each rank's released
outputs (its ledger) must equal the failure-free run's as a multiset, with no id twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.ledger import _scan, ledger_path, read_ledger
from snapline.runtime.local.status import pid_alive
from snapline.runtime.local.verify import check_run
from snapline.runtime.sim import SimConfig, reference_outputs

pytestmark = pytest.mark.timeout(150)

N = 3


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

    def outcome(self, timeout_s: float = 120.0) -> RunResult:
        self.join(timeout_s)
        assert not self.is_alive(), "the job did not finish (nor fail) in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def kill_when(store: Path, job: JobThread, delivered: int, victims: list[int]) -> list[int]:
    """kill -9 ``victims`` once the job delivered ``delivered`` messages; [] if it ended first."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if not job.is_alive():
            return []
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.02)
            continue
        if status.state in ("finished", "failed"):
            return []
        running = status.state == "running" and all(r.state == "running" for r in status.ranks)
        if running and status.messages_delivered >= delivered:
            pids = [int(status.ranks[v].pid) for v in victims]  # type: ignore[arg-type]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return pids
        time.sleep(0.01)
    raise AssertionError(f"job in {store} made no progress to {delivered} messages")


@pytest.mark.parametrize("victims", [[1], [0, 2]], ids=["one-rank", "two-ranks"])
@pytest.mark.parametrize("protocol", ["none", "two-phase"])
def test_outputs_released_exactly_once_across_kill_9(
    tmp_path: Path, protocol: str, victims: list[int]
) -> None:
    params: dict[str, Any] = {"messages": 40, "step_s": 0.01}
    for attempt in range(4):
        store = tmp_path / f"job-{attempt}"
        job = JobThread(
            app="chatter",
            n=N,
            store=store,
            protocol=protocol,
            topology="complete",
            interval="0.1s",
            app_options=params,
            timeout="90s",
        )
        job.start()
        # Mid-run, by progress: a third of the messages delivered.
        killed = kill_when(store, job, N * int(params["messages"]) // 3, victims)
        result = job.outcome()
        if killed and result.failures:
            break
        params = {**params, "messages": int(params["messages"]) * 3}  # finished too soon
    else:
        pytest.fail("the job always finished before the kill")

    assert sorted({f["rank"] for f in result.failures}) == victims, result.failures
    assert result.recoveries, "the kill was not recovered"
    assert check_run(result, app="chatter", app_params=params, topology="complete") == []
    expected = reference_outputs(
        SimConfig(app="chatter", n=N, app_params=params, topology="complete")
    )
    for rank in range(N):
        got = result.outputs[rank]
        assert Counter(map(repr, got)) == Counter(map(repr, expected[rank])), f"rank {rank}"
        # Ids 1..k reached the world, each once (the ledger skips ids already released).
        assert read_ledger(ledger_path(store, rank), rank).released_outputs == len(got)


def test_resume_resolves_a_round_left_in_doubt_by_a_whole_job_kill(tmp_path: Path) -> None:
    """kill -9 of the whole job, one participant in doubt on disk; --resume resolves it.

    The crash state is made exact from a real one: after the kill, a participant whose last
    checkpoint belongs to a round rank 0 initiated and committed loses the tail of its ledger
    from that round's commit marker on -- as if it had died after voting yes, before the
    decision reached it (what follows the marker is only output that the commit released).
    The initiator's commit is durable, so the resumed job must commit the participant's
    checkpoint and restore it, not fall back behind the initiator's committed checkpoint.
    """
    params = {"messages": 300, "step_s": 0.005}
    for attempt in range(3):
        store = tmp_path / f"job-{attempt}"
        kill_whole_job(store, params)
        found = make_participant_in_doubt(store)
        if found is not None:
            break
    else:
        pytest.fail("no participant ever had a committed last round to put in doubt")
    participant, index = found

    result = run(store=store, resume=True, timeout="90s")
    restore = result.recoveries[0]["restore"]
    assert restore[str(participant)] == index, restore
    log = (store / "logs" / "supervisor.jsonl").read_text()
    assert f'"commit": {{"{participant}": [{index}]}}' in log
    assert check_run(result, app="chatter", app_params=params, topology="complete") == []


def kill_whole_job(store: Path, params: dict[str, Any]) -> None:
    """Run chatter as ``snapline run`` and kill -9 the supervisor and every worker mid-run."""
    cmd = [sys.executable, "-m", "snapline", "run", "chatter", "-n", str(N), "--store"]
    cmd += [str(store), "--protocol", "two-phase", "--topology", "complete"]
    cmd += ["--interval", "0.05s"] + [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60.0
        while True:
            assert time.monotonic() < deadline, "the job never got going"
            try:
                status = read_status(store)
            except Exception:
                time.sleep(0.02)
                continue
            assert status.state not in ("finished", "failed"), status.state
            if (
                status.state == "running"
                and status.messages_delivered >= 200
                and sum(r.last_checkpoint > 0 for r in status.ranks) >= 2
            ):
                break
            time.sleep(0.01)
        for pid in [status.supervisor_pid] + [int(r.pid) for r in status.ranks]:  # type: ignore[arg-type]
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(pid_alive(int(r.pid)) for r in status.ranks):  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "workers outlived the kill"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def make_participant_in_doubt(store: Path) -> tuple[int, int] | None:
    """Cut a participant's ledger at the commit marker of its last committed round.

    Reachable by a crash: had the participant died right before writing that marker, nothing
    after it would exist, and no rank could have committed a checkpoint that received what the
    participant sent later (a round covering such a receipt would have asked the participant
    to join, and it would hold that round's checkpoint: committed, or tentative and in doubt,
    which the kill itself left and which is used as it is). Returns (rank, index) or None.
    """
    decided = {
        tuple(rec.meta["round"])
        for rec in read_ledger(ledger_path(store, 0), 0).committed_records()
        if rec.index > 0
    }
    for rank in range(1, N):
        for rec in read_ledger(ledger_path(store, rank), rank).tentative_records():
            if tuple(rec.meta["round"]) in decided:
                return rank, rec.index  # the kill itself left it in doubt
    for rank in range(1, N):
        path = ledger_path(store, rank)
        committed = read_ledger(path, rank).committed_records()
        if len(committed) < 2 or tuple(committed[-1].meta["round"]) not in decided:
            continue
        index = committed[-1].index
        records = list(_scan(path.read_bytes()))
        starts = [0] + [end for end, _ in records]
        for start, (_, rec) in zip(starts, records, strict=False):
            if rec.get("k") == "commit" and int(rec["index"]) == index:
                tail = {r.get("k") for end, r in records if end > start + 1} - {"commit"}
                assert tail <= {"ckpt", "discard", "output"}, tail
                with path.open("r+b") as f:
                    f.truncate(start)
                return rank, index
    return None
