"""Recoveries that finish: failures during a recovery, and a resume that keeps crashing.

* A replacement rank killed (kill -9, from this test) while the survivors connect to it is a
  new failure folded into the same recovery: the survivors back off, keep their processes and
  wait for the supervisor to plan again; nobody else dies, and the job ends correctly.
* ``--resume`` honours ``--max-restarts`` and the back-off: a job whose ranks crash on every
  resume ends with ``RuntimeFailure`` naming the ranks and the cause, instead of respawning
  them forever.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import RuntimeFailure
from snapline.protocols import protocol_names
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local import job as local_job
from snapline.runtime.local.verify import check_run
from snapline.runtime.local.worker import STOP_AFTER_ENV
from snapline.runtime.process import Context, Process

pytestmark = pytest.mark.timeout(150)

BANK = {"messages": 150, "step_s": 0.01}


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


def log_lines(store: Path, name: str) -> list[dict[str, Any]]:
    path = store / "logs" / f"{name}.jsonl"
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:  # a line being written right now
            continue
    return lines


def wait_until(what: str, predicate: Any, job: JobThread, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert job.is_alive(), f"the job ended before {what}"
        found = predicate()
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def running_pids(store: Path) -> dict[int, int] | None:
    try:
        status = read_status(store)
    except Exception:
        return None
    if status.state != "running" or status.messages_delivered < 30:
        return None
    return {r.rank: int(r.pid) for r in status.ranks if r.pid is not None}


def stopped(pid: int) -> bool:
    """True once ``pid`` is stopped by a signal (state ``T`` in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def kill_replacement_mid_connect(
    tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> RunResult:
    """Kill rank 2, then kill its replacement while the survivors connect to it.

    Checks what must hold under every protocol: a correct result, both deaths recorded as
    failures of rank 2 folded into one recovery, and survivors that kept their processes.
    """
    # The replacement freezes itself right after its ``ready`` reply to the first recovery
    # round's restore (a fault-injection point of the worker): the supervisor then tells every
    # rank to connect, and the survivors' handshakes wait on the frozen replacement. A SIGSTOP
    # from outside could only race for that moment.
    monkeypatch.setenv(STOP_AFTER_ENV, "2:restored:1")
    store = tmp_path / "job"
    job = JobThread(
        app="bank", n=4, store=store, protocol=protocol, interval="0.2s", app_options=BANK
    )
    job.start()
    pids = wait_until("progress", lambda: running_pids(store), job)
    os.kill(pids[2], signal.SIGKILL)

    def replacement_ready() -> int | None:
        for line in log_lines(store, "rank-2"):
            if line["event"] == "restored" and line["pid"] != pids[2]:
                return int(line["pid"])
        return None

    replacement = wait_until("the replacement's ready", replacement_ready, job)
    wait_until("the replacement to freeze", lambda: stopped(replacement), job)
    time.sleep(0.3)  # the survivors are connecting to it now
    os.kill(replacement, signal.SIGKILL)

    result = job.outcome()
    assert check_run(result, app="bank", app_params=BANK, topology="complete") == []
    assert [(f["rank"], f["pid"]) for f in result.failures][:2] == [
        (2, pids[2]),
        (2, replacement),
    ]
    assert {f["rank"] for f in result.failures} == {2}, result.failures
    # One recovery: the second failure was folded into it.
    assert len(result.recoveries) == 1, result.recoveries
    # The survivors kept their processes: never killed, never restarted.
    final = read_status(store)
    for rank in (0, 1, 3):
        assert final.ranks[rank].pid == pids[rank]
        assert final.ranks[rank].restarts == 0
        lines = log_lines(store, f"rank-{rank}")
        assert not [e for e in lines if e["event"] == "fatal"]
        # Back-off, and one line per peer and connect phase: no flood.
        assert len([e for e in lines if e["event"] == "connect_failed"]) <= 3
    assert final.ranks[2].restarts == 2
    return result


@pytest.mark.parametrize(
    ("protocol", "rolled_back"),
    [("message-logging", [2]), ("chandy-lamport", [0, 1, 2, 3])],
)
def test_replacement_killed_while_survivors_connect_is_folded_into_the_recovery(
    tmp_path: Path, protocol: str, rolled_back: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = kill_replacement_mid_connect(tmp_path, protocol, monkeypatch)
    # Message logging rolls back only the failed rank; Chandy-Lamport the whole job.
    assert sorted(int(r) for r in result.recoveries[0]["restore"]) == rolled_back
    for rank in read_status(tmp_path / "job").ranks:
        # A rank's incarnation is the recovery epoch that last restored it (0: never).
        assert (rank.incarnation > 0) == (rank.rank in rolled_back), rank


@pytest.mark.slow
@pytest.mark.parametrize(
    "protocol", [p for p in protocol_names() if p not in ("message-logging", "chandy-lamport")]
)
def test_replacement_killed_while_survivors_connect_every_protocol(
    tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kill_replacement_mid_connect(tmp_path, protocol, monkeypatch)


class CrashesOnResume(Process):
    """Ping-pong that checkpoints as it goes; rank 1 fails at message ``crash_at``, and no
    rank can ever be restored (``restore`` raises, after ``hang_s`` seconds, an error naming
    the process: never the same one twice, so it is restarted like a crash to the limit)."""

    def __init__(self, rank: int, n: int, crash_at: int = 60, hang_s: float = 0.0) -> None:
        self.rank, self.crash_at, self.hang_s = rank, crash_at, hang_s
        self.count = 0

    def state(self) -> object:
        return {"count": self.count}

    def restore(self, state: Any) -> None:
        time.sleep(self.hang_s)
        raise RuntimeError(f"this app cannot be resumed (pid {os.getpid()})")

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            ctx.send(1, 0)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.count += 1
        if self.rank == 1 and self.count >= self.crash_at:
            raise RuntimeError("crash")
        ctx.set_timer(f"reply-{payload}", 0.01)
        self._reply_to = src

    def on_timer(self, ctx: Context, name: str) -> None:
        ctx.send(1 - self.rank, int(name.split("-")[1]) + 1)


def failed_job_with_checkpoints(store: Path, **options: Any) -> None:
    """A job that ran long enough to commit checkpoints, then hit its restart limit."""
    with pytest.raises(RuntimeFailure, match="restart limit reached"):
        run(
            f"{Path(__file__).resolve()}:CrashesOnResume",
            2,
            store=store,
            protocol="chandy-lamport",
            interval="0.1s",
            max_restarts=0,
            app_options=options,
            timeout="60s",
        )


def test_resume_honours_max_restarts(tmp_path: Path) -> None:
    store = tmp_path / "job"
    failed_job_with_checkpoints(store)
    job = JobThread(store=store, resume=True, max_restarts=4, timeout="60s")
    job.start()
    with pytest.raises(RuntimeFailure) as info:
        job.outcome(60.0)
    message = str(info.value)
    assert "restart limit reached" in message and "--max-restarts 4" in message
    assert "this app cannot be resumed" in message
    log = log_lines(store, "supervisor")
    resumed = log[max(i for i, e in enumerate(log) if e["event"] == "job_start") :]
    spawns = [e for e in resumed if e["event"] == "spawned"]
    assert len(spawns) == 2 + 4  # the two ranks, then the four restarts allowed
    assert any(e["event"] == "backoff" for e in resumed)


def test_restart_limit_names_the_rank_and_the_step_it_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "job"
    failed_job_with_checkpoints(store, hang_s=30.0)
    # Heartbeats keep coming (the restore runs on the loop, but the worker is alive and the
    # heartbeat timeout is long); the step timeout is what runs out.
    monkeypatch.setattr(local_job, "_STEP_TIMEOUT_S", 1.5)
    job = JobThread(store=store, resume=True, max_restarts=1, heartbeat_timeout="60s")
    job.start()
    with pytest.raises(RuntimeFailure) as info:
        job.outcome(60.0)
    message = str(info.value)
    assert "restart limit reached" in message
    assert "no 'ready' reply to 'restore' of round" in message, message
    assert "rank 0 at" in message and "rank 1 at" in message


def test_a_rank_killed_during_start_up_restarts_the_job_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1 dies before its hello: the others never got ``init`` and have no state yet.

    Recovery planning used to fail ("rank 0 did not fail but the recovery view has no volatile
    record for it"); the ranks that never ran are now restored in place from their initial
    checkpoint, and only rank 1 counts as failed.
    """
    # Rank 1's first process (epoch 0) freezes itself before it connects to the supervisor.
    monkeypatch.setenv(STOP_AFTER_ENV, "1:booting:0")
    store = tmp_path / "job"
    job = JobThread(app="bank", n=3, store=store, interval="0.2s", app_options=BANK)
    job.start()

    def first_process() -> int | None:
        for line in log_lines(store, "rank-1"):
            if line["event"] == "booting":
                return int(line["pid"])
        return None

    pid = wait_until("rank 1 to boot", first_process, job)
    wait_until("rank 1 to freeze", lambda: stopped(pid), job)
    os.kill(pid, signal.SIGKILL)

    result = job.outcome()
    assert check_run(result, app="bank", app_params=BANK, topology="complete") == []
    assert [(f["rank"], f["pid"]) for f in result.failures] == [(1, pid)]
    assert len(result.recoveries) == 1
