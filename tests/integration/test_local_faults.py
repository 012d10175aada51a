"""Faults beyond a single crash: whole-job kill and --resume, strangers, hangs, restart limit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from snapline.errors import ConfigError, RuntimeFailure
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


def test_resume_of_a_job_that_still_runs_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "job"
    cmd = [sys.executable, "-m", "snapline", "run", "bank", "-n", "2", "--store", str(store)]
    cmd += ["-p", "messages=100000", "-p", "step_s=0.01"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        status = wait_for(store, lambda s: s.state == "running")
        # Two supervisors on one store would each restart the other's ranks.
        with pytest.raises(ConfigError, match=f"still runs \\(supervisor pid {proc.pid}\\)"):
            run("bank", n=2, store=store, resume=True)
        assert proc.poll() is None and read_status(store).supervisor_pid == status.supervisor_pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_resume_after_recoveries_continues_the_incarnations(tmp_path: Path) -> None:
    """Two recoveries, a snapshot of the second incarnation, a whole-job kill, --resume.

    The resume used to number its recovery epochs from 1 again, so Chandy-Lamport's new
    snapshot ids (which start with the incarnation) were older than the restored complete
    snapshot, and every rank crashed with "marker of finished snapshot" until the restart
    limit.
    """
    store = tmp_path / "job"
    params = {"messages": 400, "step_s": 0.01}
    cmd = [sys.executable, "-m", "snapline", "run", "bank", "-n", "3", "--store", str(store)]
    cmd += ["--protocol", "chandy-lamport", "--interval", "0.15s"]
    cmd += ["-p", "messages=400", "-p", "step_s=0.01"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def settled_in(incarnation: int) -> Any:
        return lambda s: (
            s.state == "running"
            and s.recoveries == incarnation
            and all(r.last_checkpoint >> 32 >= incarnation for r in s.ranks)
        )

    try:
        status = wait_for(store, running_with_progress(50))
        os.kill(int(status.ranks[1].pid), signal.SIGKILL)
        status = wait_for(store, settled_in(1))
        os.kill(int(status.ranks[2].pid), signal.SIGKILL)
        status = wait_for(store, settled_in(2))
        pids = [status.supervisor_pid] + [int(r.pid) for r in status.ranks]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in pids[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    result = run("bank", store=store, resume=True, max_restarts=2, timeout="90s")
    # The resume itself is the one recovery; no rank crashed after it.
    assert len(result.recoveries) == 1 and result.restarts == 0, result.failures
    restore = result.recoveries[0]["restore"]
    assert all(index >> 32 >= 2 for index in restore.values()), restore
    assert check_run(result, app="bank", app_params=params, topology="complete") == []


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
            connect_handshake(sock, b"x" * 32, "channel", rank=1)

    # 3. The supervisor's control socket turns away a wrong secret too.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_dir / "control.sock"))
        with pytest.raises(WireError):
            connect_handshake(sock, b"y" * 32, "control", rank=0, pid=os.getpid())

    result = job.outcome()
    assert result.stats[0]["rejected_connections"] >= 2
    assert result.failures == []
    assert check_run(result, app="bank", app_params=BANK, topology="complete") == []


#: The job for the crafted-frames test runs in a child process: if a crafted frame crashed the
#: supervisor (it once did, with SIGSEGV), that must fail the test, not kill the test runner.
_JOB_IN_CHILD = """
import json, sys
from snapline.runtime.local import run
from snapline.runtime.local.verify import check_run
params = {"messages": 300, "step_s": 0.01}
result = run("bank", 3, store=sys.argv[1], interval="0.2s", app_options=params)
print(json.dumps({
    "failures": [f["rank"] for f in result.failures],
    "problems": check_run(result, app="bank", app_params=params, topology="complete"),
}))
"""


def _nested_tuple_ext(depth: int) -> bytes:
    body = b"\x90"
    for _ in range(depth):
        body = msgpack.packb(msgpack.ExtType(1, b"\x91" + body))  # a 1-tuple of the level below
    return body


#: Handshake replies crafted against the first handshake (length-prefixed msgpack): an ndarray
#: extension with a 1-byte body (struct.error killed every acceptor thread) and tuple
#: extensions nested 250 deep (overflowed the C stack), each also after a valid-looking
#: preamble so that they reach whatever reads past the first bytes.
_DEEP = _nested_tuple_ext(250)
CRAFTED = [
    bytes.fromhex("03000000d40201"),
    struct.pack("<I", len(_DEEP)) + _DEEP,
    b"SNAPLINE" + struct.pack("<I", 2) + bytes.fromhex("03000000d40201"),
    b"SNAPLINE" + struct.pack("<I", 2) + _DEEP,
]


def _send_crafted(path: Path, payload: bytes) -> None:
    """Connect as a stranger, take the challenge, send ``payload``, wait for the hang-up."""
    # A stranger does not care how it is turned away (a reset, with its bytes unread, or a
    # dead acceptor): what counts is what the job does afterwards.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, contextlib.suppress(OSError):
        sock.connect(str(path))
        sock.settimeout(10.0)
        sock.recv(4096)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


def test_crafted_frames_from_a_stranger_leave_the_job_able_to_recover(tmp_path: Path) -> None:
    store = tmp_path / "job"
    job = subprocess.Popen(
        [sys.executable, "-c", _JOB_IN_CHILD, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        status = wait_for(store, running_with_progress(30))
        socket_dir = Path(status.socket_dir)
        targets = [socket_dir / f"rank-{r}.sock" for r in range(3)] + [socket_dir / "control.sock"]
        for target in targets:
            for payload in CRAFTED:
                _send_crafted(target, payload)
        assert job.poll() is None, f"a stranger's frames ended the job (exit {job.returncode})"
        # Every acceptor must still work: a replacement of rank 1 connects to the supervisor
        # and to ranks 0 and 2, which all saw the crafted frames.
        os.kill(int(status.ranks[1].pid), signal.SIGKILL)
        out, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, f"the job failed (exit {job.returncode}):\n{err[-3000:]}"
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict == {"failures": [1], "problems": []}
    log = [json.loads(x) for x in (store / "logs" / "supervisor.jsonl").read_text().splitlines()]
    assert len([e for e in log if e["event"] == "control_rejected"]) == len(CRAFTED)
    for rank in (0, 2):
        lines = (store / "logs" / f"rank-{rank}.jsonl").read_text().splitlines()
        rejected = [e for e in map(json.loads, lines) if e["event"] == "connection_rejected"]
        assert len(rejected) == len(CRAFTED), rejected


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
