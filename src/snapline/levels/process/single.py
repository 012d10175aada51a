"""``snapline checkpoint PID`` and ``snapline restore DIR``: one process tree, no supervisor.

CRIU only: DMTCP checkpoints from inside processes started under ``dmtcp_launch``, so it
cannot take a process it did not start (``require_tree_backend`` says so).

The tree of ``PID`` is dumped with CRIU into a temporary directory and stored as the next step
of the store at ``DIR`` (images chunked and deduplicated like any state); ``restore`` writes
the images of a step back and restores the tree detached, with the same pids. A process that
is not the leader of its session (one started from an interactive shell) is dumped as a
"shell job" and restored onto the terminal of the restoring command. TCP connections are
dumped only when asked (``tcp=True``; CRIU then locks the network with nftables). This runs in
the caller's network namespace: use ``snapline run --level process`` for jobs of several
processes talking to each other.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from snapline.errors import CheckpointNotFound, ConfigError, RuntimeFailure
from snapline.levels.process.criu import criu_log_errors
from snapline.levels.process.images import load_global, newest_global, save_global
from snapline.levels.process.install import find_criu
from snapline.levels.process.procs import state_of
from snapline.store import CheckpointInfo, open_store

_TCP = ("--tcp-established", "--network-lock", "nftables")


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeCheckpoint:
    """What ``checkpoint_tree`` stored."""

    step: int
    pid: int
    info: CheckpointInfo
    dump_s: float


def require_tree_backend(name: str) -> None:
    """``ConfigError`` unless ``name`` can checkpoint a process tree it did not start."""
    if name == "criu":
        return
    if name == "dmtcp":
        raise ConfigError(
            "DMTCP cannot checkpoint a process that was not started under dmtcp_launch (its "
            "checkpointing runs inside the process); run the program with snapline run "
            "--level process --backend dmtcp -- COMMAND, or use --backend criu"
        )
    raise ConfigError(f"unknown backend {name!r}: choose criu (or dmtcp, see --help)")


def _criu() -> str:
    check = find_criu()
    if not check.ok or check.path is None:
        raise ConfigError(f"CRIU does not work here: {check.problem}. Fix: {check.fix}")
    return check.path


def _session_of(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise ConfigError(f"no process with pid {pid}") from None
    return int(text[text.rindex(")") + 2 :].split()[3])


def checkpoint_tree(
    pid: int, store_dir: Path, *, leave_running: bool = True, tcp: bool = False
) -> TreeCheckpoint:
    """Dump the tree of ``pid`` into the store at ``store_dir`` as its next step."""
    criu = _criu()
    shell_job = _session_of(pid) != pid
    store = open_store(store_dir)
    try:
        step = (store.steps() or [0])[-1] + 1
        with tempfile.TemporaryDirectory(dir=store_dir, prefix=".dump-") as tmp:
            argv = [criu, "dump", "-t", str(pid), "-D", tmp, "-o", "dump.log"]
            argv += ["--leave-running"] if leave_running else []
            argv += ["--shell-job"] if shell_job else []
            argv += list(_TCP) if tcp else []
            start = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            dump_s = time.monotonic() - start
            if done.returncode != 0:
                raise RuntimeFailure(f"criu dump failed: {criu_log_errors(Path(tmp) / 'dump.log')}")
            meta = {
                "level": "process",
                "backend": "criu",
                "root": pid,
                "shell_job": shell_job,
                "tcp": tcp,
                "command": _cmdline(pid),
            }
            info = save_global(store, step, Path(tmp), {}, meta)
    finally:
        store.close()
    return TreeCheckpoint(step=step, pid=pid, info=info, dump_s=dump_s)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def restore_tree(store_dir: Path, *, step: int | None = None) -> int:
    """Restore the tree stored at ``step`` (default: the newest) and return its root pid."""
    criu = _criu()
    store = open_store(store_dir, create=False)
    try:
        chosen = newest_global(store) if step is None else step
        if chosen is None:
            raise CheckpointNotFound(f"{store_dir} holds no checkpoint")
        with tempfile.TemporaryDirectory(dir=store_dir, prefix=".restore-") as tmp:
            meta, _ = load_global(store, chosen, Path(tmp))
            if meta.get("level") != "process":
                raise ConfigError(f"step {chosen} of {store_dir} is not a process image")
            root = int(meta["root"])
            if state_of(root) is not None:
                raise ConfigError(
                    f"pid {root} is in use (the checkpointed process still runs?): stop it "
                    "first; CRIU restores processes with their own pids"
                )
            pidfile = Path(tmp) / "restored.pid"
            argv = [criu, "restore", "-D", tmp, "-o", "restore.log", "-d"]
            argv += ["--pidfile", str(pidfile)]
            argv += ["--shell-job"] if meta.get("shell_job") else []
            argv += list(_TCP) if meta.get("tcp") else []
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                why = criu_log_errors(Path(tmp) / "restore.log")
                hint = (
                    " (a file the process had open changed size since the checkpoint: CRIU "
                    "restores only files as they were)"
                    if "bad size" in why
                    else ""
                )
                keep = store_dir / f"restore-{chosen}.log"
                shutil.copyfile(Path(tmp) / "restore.log", keep)
                raise RuntimeFailure(f"criu restore failed: {why}{hint}; log: {keep}")
            return int(pidfile.read_text().strip())
    finally:
        store.close()
