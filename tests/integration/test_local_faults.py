"""Faults beyond a single crash: whole-job kill and --resume, strangers, hangs, restart limit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import RuntimeFailure
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.status import pid_alive
from snapline.runtime.local.verify import check_run
from snapline.runtime.local.wire import WireError, connect_handshake, frame
from snapline.runtime.process import Context, Process

pytestmark = pytest.mark.timeout(120)

BANK = {"messages": 100, "step_s": 0.01}


class JobThread(threading.Thread):
    """Runs ``snapline.run`` in this process; the ranks are real child processes."""

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
        assert not self.is_alive(), "the job did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def wait_for(store: Path, predicate: Any, timeout_s: float = 60.0) -> Any:
    """Poll the status file until ``predicate(status)`` holds; return the status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.05)
            continue
        if predicate(status):
            return status
        assert status.state not in ("finished", "failed"), f"job ended early: {status.state}"
        time.sleep(0.02)
    raise AssertionError(f"status of {store} never satisfied the condition")


def running_with_progress(delivered: int) -> Any:
    return lambda s: s.state == "running" and s.messages_delivered >= delivered


def test_whole_job_kill_then_resume_continues_from_recovery_line(tmp_path: Path) -> None:
    store = tmp_path / "job"
    cmd = [sys.executable, "-m", "snapline", "run", "bank", "-n", "3", "--store", str(store)]
    cmd += ["--interval", "0.15s", "-p", "messages=200", "-p", "step_s=0.01"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        status = wait_for(
            store,
            lambda s: (
                s.state == "running"
                and s.messages_delivered >= 150
                and all(r.last_checkpoint > 0 for r in s.ranks)
            ),
        )
        # The machine "reboots": supervisor and every worker die at once, by kill -9.
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

    result = run("bank", store=store, resume=True)
    restore = result.recoveries[0]["restore"]
    assert result.recoveries[0]["whole_job"]
    assert sorted(restore) == ["0", "1", "2"]
    # Continued from the recovery line, not from scratch.
    assert all(index > 0 for index in restore.values()), restore
    params = {"messages": 200, "step_s": 0.01}
    assert check_run(result, app="bank", app_params=params, topology="complete") == []

    ps = subprocess.run(
        [sys.executable, "-m", "snapline", "ps", str(store)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "finished" in ps.stdout


def test_stranger_cannot_join_channels(tmp_path: Path) -> None:
    store = tmp_path / "job"
    job = JobThread(app="bank", n=3, store=store, interval="0.2s", app_options=BANK)
    job.start()
    status = wait_for(store, running_with_progress(20))
    socket_dir = Path(status.socket_dir)
    assert socket_dir.stat().st_mode & 0o777 == 0o700

    # 1. No secret at all: push a forged application frame at rank 0.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_dir / "rank-0.sock"))
        sock.settimeout(5.0)
        sock.sendall(frame([0, 0, 1, 10**9, None]) * 3)
        closed = b""
        with pytest.raises(OSError):
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed by the job")
                closed += chunk

    # 2. A wrong secret, speaking the protocol correctly.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_dir / "rank-0.sock"))
        with pytest.raises(WireError):
            connect_handshake(sock, b"x" * 32, "channel", {"rank": 1})

    # 3. The supervisor's control socket turns away a wrong secret too.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_dir / "control.sock"))
        with pytest.raises(WireError):
            connect_handshake(sock, b"y" * 32, "control", {"rank": 0, "pid": os.getpid()})

    result = job.outcome()
    assert result.stats[0]["rejected_connections"] >= 2
    assert result.failures == []
    assert check_run(result, app="bank", app_params=BANK, topology="complete") == []


def test_hung_rank_is_detected_by_heartbeats(tmp_path: Path) -> None:
    store = tmp_path / "job"
    job = JobThread(
        app="bank",
        n=3,
        store=store,
        interval="0.2s",
        app_options=BANK,
        heartbeat_timeout="1s",
    )
    job.start()
    status = wait_for(store, running_with_progress(30))
    pid = int(status.ranks[1].pid)
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    result = job.outcome()
    assert [f["rank"] for f in result.failures] == [1]
    detect_s = result.recoveries[0]["t_detect"]
    assert detect_s > 0
    log = [json.loads(x) for x in (store / "logs" / "supervisor.jsonl").read_text().splitlines()]
    hangs = [e for e in log if e["event"] == "hang_detected"]
    assert [e["rank"] for e in hangs] == [1]
    assert 1.0 <= hangs[0]["silent_s"] < 1.0 + 2.0
    assert time.monotonic() - stopped_at > 1.0
    assert not pid_alive(pid)  # the hung process was killed, not left stopped
    assert check_run(result, app="bank", app_params=BANK, topology="complete") == []


class CrashOnThirdMessage(Process):
    """Rank 1 raises on its third message, in every incarnation, an error naming the process:
    never the same one twice, so the supervisor restarts it like a crash, to the limit."""

    def __init__(self, rank: int, n: int) -> None:
        self.rank = rank
        self.count = 0

    def state(self) -> object:
        return {"count": self.count}

    def restore(self, state: Any) -> None:
        self.count = int(state["count"])

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            ctx.send(1, "ping")

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.count += 1
        if self.rank == 1 and self.count >= 3:
            raise RuntimeError(f"boom: a failure that recovery cannot fix (pid {os.getpid()})")
        ctx.send(src, payload)


def test_restart_limit_ends_the_job_with_a_report(tmp_path: Path) -> None:
    store = tmp_path / "job"
    with pytest.raises(RuntimeFailure) as info:
        run(
            f"{Path(__file__).resolve()}:CrashOnThirdMessage",
            2,
            store=store,
            topology="complete",
            max_restarts=2,
            timeout="60s",
        )
    message = str(info.value)
    assert "restart limit reached" in message
    assert "boom" in message
    assert read_status(store).state == "failed"
    log = [json.loads(x) for x in (store / "logs" / "supervisor.jsonl").read_text().splitlines()]
    assert any(e["event"] == "backoff" for e in log)


class Announcer(Process):
    """Rank 0 sends 1..count on a timer; rank 1 outputs each number it receives."""

    def __init__(self, rank: int, n: int, count: int = 300) -> None:
        self.rank, self.count = rank, count
        self.next = 1

    def state(self) -> object:
        return {"next": self.next}

    def restore(self, state: Any) -> None:
        self.next = int(state["next"])

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            ctx.set_timer("tick", 0.01)
        ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        ctx.send(1, self.next)
        self.next += 1
        if self.next <= self.count:
            ctx.set_timer("tick", 0.01)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        ctx.output(("got", payload))

    def result(self) -> object:
        return self.next


@pytest.mark.parametrize("protocol", ["chandy-lamport", "message-logging"])
def test_output_is_released_exactly_once_across_a_kill(tmp_path: Path, protocol: str) -> None:
    store = tmp_path / "job"
    job = JobThread(
        app=f"{Path(__file__).resolve()}:Announcer",
        n=2,
        store=store,
        protocol=protocol,
        topology="complete",
        interval="0.2s",
    )
    job.start()
    status = wait_for(store, running_with_progress(60))
    os.kill(int(status.ranks[1].pid), signal.SIGKILL)
    result = job.outcome()
    assert [f["rank"] for f in result.failures] == [1]
    assert result.outputs[1] == [("got", i) for i in range(1, 301)]
    assert result.outputs[0] == []


class WaitsForever(Process):
    """Rank 0 sends one message that rank 1 handles without ever finishing: a stuck job."""

    def __init__(self, rank: int, n: int) -> None:
        self.rank = rank

    def state(self) -> object:
        return {}

    def restore(self, state: Any) -> None:
        pass

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            ctx.send(1, "hello")
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        pass  # rank 1 waits for a second message that nobody will ever send


def test_a_stuck_job_fails_fast_naming_what_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stall detector's patience, shortened so this test is cheap (10 s in real jobs).
    monkeypatch.setattr("snapline.runtime.local.job._STALL_S", 1.0)
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as info:
        run(
            f"{Path(__file__).resolve()}:WaitsForever",
            2,
            store=tmp_path / "job",
            topology="complete",
            timeout="60s",
        )
    message = str(info.value)
    assert "the job is stuck" in message
    assert "ranks not finished: [1]" in message
    assert "channels with sent != delivered: none" in message
    assert time.monotonic() - started < 30.0
