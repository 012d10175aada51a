"""Process control for the process level: the private network, sessions, freeze, kill, reap.

Each rank is a *process tree* started in its own session (``setsid``), so the session id (the
pid of the rank's first process) names the whole tree, also after the first process died and
also after a restore (CRIU restores session ids). The supervisor

* runs the job in a private network namespace with only loopback up (``enter_private_network``):
  CRIU's network lock rules land there and not in the machine's firewall, and a restored TCP
  connection finds its addresses free;
* is a child subreaper (``become_subreaper``): processes of a killed or restored tree are
  reparented to it, so it can reap them before a restore reuses their pids;
* freezes a tree with SIGSTOP to every member until no unstopped member is left (a process
  forked meanwhile is found on the next pass) and thaws it with SIGCONT.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable

from snapline.errors import ConfigError, RuntimeFailure

_CLONE_NEWNET = 0x40000000
_PR_SET_CHILD_SUBREAPER = 36


def enter_private_network() -> None:
    """Move the calling process (call it before starting threads) into a new network namespace.

    Only loopback exists there: the job can talk to itself over TCP and Unix sockets but not
    to other machines.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise ConfigError(
            f"cannot create a private network namespace: {os.strerror(err)} (the process level "
            "needs root; see `snapline doctor`)"
        )
    done = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"cannot bring loopback up in the job's namespace: {done.stderr}")


def become_subreaper() -> None:
    """Orphaned descendants are reparented to this process instead of to pid 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise ConfigError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` split after the command name (field 3, the state, is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def state_of(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...), None when gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def members(sessions: Iterable[int]) -> list[int]:
    """Live pids (zombies excluded) whose session id is one of ``sessions``."""
    wanted = set(sessions)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields: state ppid pgrp session ...
        if fields and fields[0] not in ("Z", "X") and int(fields[3]) in wanted:
            out.append(int(entry))
    return out


def freeze(sessions: Iterable[int], *, timeout_s: float = 10.0) -> None:
    """SIGSTOP every member of ``sessions``; return once all of them are stopped."""
    wanted = list(sessions)
    deadline = time.monotonic() + timeout_s
    while True:
        running = [p for p in members(wanted) if state_of(p) not in ("T", "t", None)]
        if not running:
            return
        for pid in running:
            _signal(pid, signal.SIGSTOP)
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"processes {running} did not stop within {timeout_s:.0f}s")
        time.sleep(0.001)


def thaw(sessions: Iterable[int]) -> None:
    """SIGCONT every member of ``sessions``."""
    for pid in members(sessions):
        _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def reap() -> dict[int, int]:
    """Reap every exited child at hand; pid -> wait status."""
    out: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out[pid] = status


def kill_sessions(sessions: Iterable[int], *, timeout_s: float = 10.0) -> dict[int, int]:
    """SIGKILL every member of ``sessions`` and wait until none is left (reaping our own).

    Returns the wait statuses reaped meanwhile. Processes that are not our children (a
    previous supervisor's) are reaped by their parent; we only wait for them to vanish.
    """
    wanted = list(sessions)
    reaped: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        left = members(wanted)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        reaped.update(reap())
        # A zombie still holds its pid (and a restore of that pid fails): wait for it too.
        zombies = [p for p in _all_pids() if _in_sessions(p, wanted) and state_of(p) == "Z"]
        if not left and not zombies:
            return reaped
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"processes {left + zombies} of the job did not go away within {timeout_s:.0f}s"
            )
        time.sleep(0.005)


def descendants(ancestor: int) -> list[int]:
    """Live pids (zombies excluded) below ``ancestor`` in the process tree."""
    parent: dict[int, int] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] not in ("Z", "X"):
            parent[pid] = int(fields[1])
    out = []
    for pid in parent:
        up = parent.get(pid)
        while up is not None and up != ancestor:
            up = parent.get(up)
        if up == ancestor:
            out.append(pid)
    return out


def kill_descendants(sessions: Iterable[int], *, timeout_s: float = 10.0) -> None:
    """SIGKILL every process below this one and every member of ``sessions``; reap them.

    For jobs whose processes do not keep their sessions (DMTCP restores them as new
    processes): as a child subreaper, this process is an ancestor of all of them.
    """
    wanted = list(sessions)
    deadline = time.monotonic() + timeout_s
    while True:
        left = set(descendants(os.getpid())) | set(members(wanted))
        for pid in left:
            _signal(pid, signal.SIGKILL)
        reap()
        if not left:
            return
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"processes {sorted(left)} did not go away within {timeout_s:.0f}s"
            )
        time.sleep(0.005)


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _in_sessions(pid: int, sessions: list[int]) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and int(fields[3]) in sessions  # type: ignore[index]


def resident_bytes(pids: Iterable[int]) -> int:
    """The resident memory of ``pids`` together (what a dump of them roughly writes)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * page
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total


def wait_status_text(status: int) -> str:
    """``exit code 3`` / ``killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
