"""Running real QEMU guests from tests: what they need, and never leaving one behind.

The system-level tests need QEMU, a static busybox, apt (for Debian's kernel package) and the
``vm`` extra. Where something is missing they are skipped with the reason, except under CI
(``CI`` set), where a skip would hide them: there they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINGPONG = ROOT / "examples" / "vm" / "pingpong.toml"


def require_qemu() -> None:
    """Skip (or, under CI, fail) when the system level cannot run here."""
    from snapline.errors import ConfigError
    from snapline.levels.system.image import find_busybox
    from snapline.levels.system.machine import find_qemu, qmp_client_class

    try:
        find_qemu()
        find_busybox()
        qmp_client_class()
        if subprocess.run(
            ["apt-cache", "show", "linux-image-amd64"], capture_output=True
        ).returncode:
            raise ConfigError("apt knows no linux-image-amd64 (not Debian, or no apt-get update)")
    except (ConfigError, FileNotFoundError) as exc:
        message = f"the system level cannot run here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_python_guest() -> None:
    """``require_qemu`` and what the Python guest disk is built with (mke2fs, ldd, numpy)."""
    require_qemu()
    from snapline.errors import ConfigError
    from snapline.levels.system.rootfs import python_rootfs

    try:
        python_rootfs()  # built once and cached: later calls are a lookup
    except ConfigError as exc:
        message = f"the Python guest disk cannot be built here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def snapline(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m snapline ARGS`` in its own session (so ``stop`` can end all of it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SNAPLINE_") or k == "SNAPLINE_VM_CACHE"
    }
    return subprocess.Popen(
        [sys.executable, "-m", "snapline", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def status(job_dir: Path) -> dict[str, Any]:
    """The job's status.json ({} until the supervisor has written it)."""
    try:
        return dict(json.loads((job_dir / "status.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def records(job_dir: Path) -> list[dict[str, Any]]:
    """The job's complete checkpoint records, oldest first."""
    return [json.loads(p.read_text()) for p in sorted((job_dir / "checkpoints").glob("*.json"))]


def wait_for(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[str]) -> Any:
    """Poll ``check()`` until it returns something true; fail with the job's output if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the job ended while waiting for {what}:\n{output}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def released(job_dir: Path, rank: int) -> str:
    """The guest output the host has released for ``rank`` so far."""
    try:
        return (job_dir / "output" / f"rank-{rank}.log").read_text()
    except FileNotFoundError:
        return ""


def qemu_pids(job_dir: Path) -> list[int]:
    """The QEMU pids the job's status names."""
    return [r["pid"] for r in status(job_dir).get("ranks", []) if r.get("pid")]


def kill_all(job_dir: Path, proc: subprocess.Popen[str] | None) -> None:
    """Kill the supervisor and every QEMU the status names (tests never leave guests behind)."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    if proc is not None and proc.stdout is not None:
        proc.stdout.close()
    for pid in qemu_pids(job_dir):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
