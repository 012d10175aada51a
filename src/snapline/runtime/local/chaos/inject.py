"""Injecting faults into a running job from outside it: signals to pids, bytes to sockets.

The injector is not part of the job: it reads pids from the job's status file (as ``snapline
ps`` does) and the worker processes from ``/proc``. Every process of a chaos run carries an
environment marker (``MARKER_ENV=<run token>``) inherited from the supervisor the campaign
starts, which is how the campaign tells the run's workers from every other process on the
machine, even after their supervisor died and they were re-parented. A signal is only ever
sent to a pid that carries the run's marker.

A fault *lands* when its signal reached a live process (not one that had exited, nor a zombie
waiting to be reaped): only landed kills are failures the job must report.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from snapline.runtime.local.wire import HANDSHAKE_TIMEOUT_S

MARKER_ENV = "SNAPLINE_CHAOS_RUN"
_WORKER_MODULE = b"snapline.runtime.local.worker"


@dataclass(slots=True, kw_only=True)
class Injection:
    """What one signal or stranger connection did."""

    fault: str  # the schedule entry it belongs to (``Fault.describe()``)
    action: str  # kill | stop | cont | supervisor-kill | stranger
    rank: int
    pid: int | None
    t_unix: float
    landed: bool
    #: Whether the job must report this as a rank failure (a landed kill -9 or hang).
    expect_failure: bool = False
    note: str = ""


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z`` ...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat[stat.rindex(b")") + 2 :].split(b" ", 1)[0].decode()


def carries_marker(pid: int, token: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process of the chaos run ``token``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    marker = f"{MARKER_ENV}={token}".encode()
    return marker in environ.split(b"\0") and process_state(pid) not in (None, "Z", "X")


def run_workers(token: str) -> list[int]:
    """Pids of the live worker processes of the chaos run ``token`` (any incarnation)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if _WORKER_MODULE in cmdline and carries_marker(pid, token):
            out.append(pid)
    return sorted(out)


def send_signal(pid: int | None, sig: signal.Signals, token: str) -> bool:
    """Send ``sig`` to ``pid`` if it is a live process of the run; True when it landed."""
    if pid is None or not carries_marker(pid, token):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pids: list[int], *, timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` until each pid has exited (gone, or a zombie); return the rest.

    A process killed with SIGKILL takes a moment to release its memory and exit; until then
    it still runs, as far as anyone looking at the system can tell.
    """
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if process_state(p) not in (None, "Z", "X")]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if process_state(p) not in (None, "Z", "X")]
    return left


def stranger_bytes(payload: str) -> bytes:
    """The bytes a stranger sends (see ``schedule.STRANGER_PAYLOADS``)."""
    match payload:
        case "garbage":
            return os.urandom(257)
        case "bad-array":
            # Length 3, then msgpack fixext1 of type 2 (an array) holding one byte: too short
            # for the array header the decoder expects.
            return bytes.fromhex("03000000d40201")
        case "nested-tuples":
            # A tuple travels as an extension holding a packed list; 6000 levels stay under
            # the handshake's 64 KiB frame limit and far over Python's recursion limit.
            body: bytes = msgpack.packb([])
            for _ in range(6000):
                body = msgpack.packb(msgpack.ExtType(1, body))
            return struct.pack("<I", len(body)) + body
        case "huge-length":
            return struct.pack("<I", 0xFFFFFFFF) + b"\0" * 16
        case "forged-hello":
            reply: bytes = msgpack.packb(
                {"hello": {"rank": 0}, "nonce": os.urandom(32), "mac": os.urandom(32)}
            )
            return struct.pack("<I", len(reply)) + reply
        case "silent":
            return b""
    raise ValueError(f"unknown stranger payload {payload!r}")


def stranger(path: Path, payload: str) -> str:
    """Connect to the socket at ``path`` as a stranger and send ``payload``; say what happened.

    Waits (a few seconds at most) until the job closes the connection, which is the expected
    answer to a stranger.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANDSHAKE_TIMEOUT_S + 3.0)
        try:
            sock.connect(str(path))
        except OSError as exc:
            return f"could not connect: {exc}"
        try:
            if payload == "garbage":
                sock.sendall(stranger_bytes(payload))
            else:
                header = _recv_exact(sock, 4)
                (size,) = struct.unpack("<I", header)
                _recv_exact(sock, size)  # the challenge
                data = stranger_bytes(payload)
                if data:
                    sock.sendall(data)
            started = time.monotonic()
            while sock.recv(4096):
                if time.monotonic() - started > HANDSHAKE_TIMEOUT_S + 3.0:
                    return "the job kept talking to a stranger"
        except TimeoutError:
            return "the job neither answered nor closed the connection"
        except OSError as exc:
            return f"closed by the job ({type(exc).__name__})"
    return "closed by the job"


def acceptor_answers(path: Path, timeout_s: float = HANDSHAKE_TIMEOUT_S + 3.0) -> bool | None:
    """Whether the acceptor at ``path`` still opens a handshake (sends its challenge).

    True: it does. False: the connection was accepted (or queued) but no challenge came, so
    nobody accepts there any more. None: no socket to connect to (the process owning it
    ended or is being replaced), which says nothing about its acceptor.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        try:
            (size,) = struct.unpack("<I", _recv_exact(sock, 4))
            _recv_exact(sock, size)
        except TimeoutError:
            return False
        except OSError:
            return None  # closed without a word: its owner went away meanwhile
    return True


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        got = sock.recv(size - len(data))
        if not got:
            raise ConnectionResetError("closed by the job")
        data += got
    return bytes(data)


def kill_all(token: str, *, timeout_s: float = 10.0) -> list[int]:
    """``kill -9`` every worker of the run until none is left; return the pids signalled."""
    signalled: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = run_workers(token)
        if not pids:
            break
        for pid in pids:
            if send_signal(pid, signal.SIGKILL, token):
                signalled.append(pid)
        time.sleep(0.05)
    return signalled


def wait_gone(token: str, *, timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for the run's workers to exit; return those still alive."""
    deadline = time.monotonic() + timeout_s
    left = run_workers(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = run_workers(token)
    return left
