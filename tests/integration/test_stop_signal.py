"""A supervisor stopped with SIGTERM (a plain ``kill``, a CI or ``timeout`` limit) leaves
nothing running: the process-level job's processes and the system level's QEMUs, which run in
sessions of their own and would not notice their supervisor's death, are killed with it."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import process_support
import vm_support

from snapline.runtime.local.chaos.inject import process_state


def _gone(pids: list[int], timeout_s: float = 10.0) -> dict[int, str | None]:
    """The state of each pid once all are gone or ``timeout_s`` passed (None: no such process;
    a zombie is dead too, its parent or init reaps it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {pid: process_state(pid) for pid in pids}
        if set(states.values()) <= {None, "Z"} or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def test_sigterm_of_a_process_level_supervisor_kills_the_job(tmp_path: Path) -> None:
    process_support.require_criu()
    job = tmp_path / "job"
    program = [sys.executable, str(process_support.PROGRAMS / "numpy_steps.py"), "400", "8"]
    argv = process_support.snapline(
        "run", "--level", "process", "--store", str(job), "--interval", "0.4s", "--", *program
    )
    proc = process_support.start(argv, cwd=tmp_path)
    try:
        st = process_support.wait_for_checkpoints(job, 1, proc)
        victim = process_support.rank_pid(st, 0)
        proc.send_signal(signal.SIGTERM)
        code, _, err = process_support.finish(proc, timeout_s=30)
    finally:
        process_support.stop(proc)
    assert code != 0, err
    states = _gone([victim])
    assert set(states.values()) <= {None, "Z"}, (states, err)


def test_sigterm_of_a_vm_supervisor_kills_its_qemus(tmp_path: Path) -> None:
    vm_support.require_qemu()
    job = tmp_path / "job"
    run = vm_support.snapline("vm", "run", str(vm_support.PINGPONG), "--store", str(job))
    try:
        pids = vm_support.wait_for(
            "both QEMUs",
            lambda: (p := vm_support.qemu_pids(job)) and len(p) == 2 and p,
            120,
            run,
        )
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
        states = _gone(pids)
    finally:
        vm_support.kill_all(job, run)
    assert run.returncode != 0, out
    assert set(states.values()) <= {None, "Z"}, (states, out)
