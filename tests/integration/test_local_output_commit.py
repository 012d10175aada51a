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
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.ledger import ledger_path, read_ledger
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
