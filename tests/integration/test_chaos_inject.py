"""Fault injection from outside: a signal lands only on a live process of the chaos run."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from snapline.runtime.local.chaos.inject import (
    MARKER_ENV,
    acceptor_answers,
    carries_marker,
    kill_all,
    run_workers,
    send_signal,
    stranger_bytes,
    wait_gone,
)

SLEEPER = "import sys, time; print('up', flush=True); time.sleep(60)"


def spawn(token: str | None, *args: str) -> subprocess.Popen[bytes]:
    """A sleeper that has finished starting when this returns.

    ``Popen`` returns once the child's ``exec`` has closed the error pipe, which the kernel does
    before it sets up the new program's environment area: for a moment ``/proc/<pid>/environ``
    reads empty and the marker seems missing. Waiting for the child's first line rules that out.
    """
    env = dict(os.environ)
    if token is not None:
        env[MARKER_ENV] = token
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *args], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def test_a_signal_lands_only_on_a_live_process_of_the_run() -> None:
    token = f"test-{os.getpid()}-{time.monotonic_ns()}"
    mine, other = spawn(token), spawn(None)
    try:
        assert carries_marker(mine.pid, token)
        assert not carries_marker(other.pid, token)
        assert not carries_marker(mine.pid, token + "x")
        # Never signal a process that is not the run's, whatever pid the status file names.
        assert not send_signal(other.pid, signal.SIGKILL, token)
        assert other.poll() is None
        assert send_signal(mine.pid, signal.SIGKILL, token)
        # Dead but not yet reaped (a zombie: WNOWAIT waits for that and leaves it so): a
        # second kill does not land.
        os.waitid(os.P_PID, mine.pid, os.WEXITED | os.WNOWAIT)
        assert not send_signal(mine.pid, signal.SIGKILL, token)
        assert mine.wait(timeout=10) == -signal.SIGKILL
        assert not send_signal(mine.pid, signal.SIGKILL, token)  # reaped: gone
        assert not send_signal(None, signal.SIGKILL, token)
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.communicate()  # reaps it and closes its pipe


def test_run_workers_finds_only_the_runs_workers() -> None:
    token = f"test-{os.getpid()}-{time.monotonic_ns()}"
    # A process whose command line names the worker module, as the job's workers do.
    worker = spawn(token, "snapline.runtime.local.worker")
    plain = spawn(token)
    try:
        assert run_workers(token) == [worker.pid]
        assert kill_all(token) == [worker.pid]
        assert wait_gone(token, timeout_s=5.0) == []
        assert plain.poll() is None  # kill_all is for workers only
    finally:
        for proc in (worker, plain):
            proc.kill()
            proc.communicate()  # reaps it and closes its pipe


def test_stranger_payloads_fit_a_handshake_frame() -> None:
    for payload in ("bad-array", "nested-tuples", "huge-length", "forged-hello"):
        data = stranger_bytes(payload)
        size = int.from_bytes(data[:4], "little")
        assert payload == "huge-length" or size == len(data) - 4 <= 64 * 1024
    assert stranger_bytes("bad-array") == bytes.fromhex("03000000d40201")
    assert stranger_bytes("silent") == b""


def test_acceptor_answers_tells_a_dead_acceptor_from_a_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.sock"
    assert acceptor_answers(path, timeout_s=1.0) is None  # nothing there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(8)
        # Listening but nobody accepting: what a crashed acceptor thread leaves.
        assert acceptor_answers(path, timeout_s=0.5) is False

    live = tmp_path / "rank-1.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(live))
        listener.listen(8)

        def accept_once() -> None:
            conn, _ = listener.accept()
            with conn:
                body = b"challenge"
                conn.sendall(struct.pack("<I", len(body)) + body)

        thread = threading.Thread(target=accept_once, daemon=True)
        thread.start()
        assert acceptor_answers(live, timeout_s=5.0) is True
        thread.join(5.0)
