"""The system level on real QEMU guests: two VMs play ping-pong over TCP through snapline's
switch; one QEMU is killed with kill -9 from outside, then everything is; the counters go on
from the checkpoint with the TCP connection alive, and the output the host collected holds
every number exactly once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from vm_support import (
    PINGPONG,
    kill_all,
    qemu_pids,
    records,
    released,
    require_qemu,
    snapline,
    status,
    wait_for,
)

ROUNDS = 240  # as in examples/vm/pingpong.sh


def _numbers(text: str, word: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{word} (\d+)$", text, re.MULTILINE)]


def test_kill9_of_one_vm_then_of_everything_and_resume(tmp_path: Path) -> None:
    require_qemu()
    job = tmp_path / "job"
    run = snapline("vm", "run", str(PINGPONG), "--store", str(job), "--interval", "2s")
    resumed = None

    def pongs() -> list[int]:
        return _numbers(released(job, 0), "pong")

    try:
        # Killed mid-game: the TCP connection is open in the checkpoint that is restored.
        wait_for("released output", lambda: len(pongs()) >= 3, 120, run)
        victim = status(job)["ranks"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "the recovery",
            lambda: status(job).get("recoveries") == 1 and status(job).get("state") == "running",
            120,
            run,
        )
        assert victim not in qemu_pids(job)
        after_recovery = len(pongs())
        # The vm checkpoint command, against the restored guests.
        done = records(job)[-1]["step"]
        ck = snapline("vm", "checkpoint", str(job))
        out, _ = ck.communicate(timeout=120)
        assert ck.returncode == 0, out
        taken = re.match(r"checkpoint (\d+): pause \d+ ms", out)
        assert taken is not None and int(taken.group(1)) > done, out
        wait_for("progress after the restore", lambda: len(pongs()) > after_recovery, 60, run)
        # Everything dies: the supervisor and both QEMUs.
        kill_all(job, run)
        assert len(pongs()) < ROUNDS // 2, "the game ended before everything was killed"
        resumed = snapline("vm", "run", "--resume", "--store", str(job), "--interval", "2s")
        out, _ = resumed.communicate(timeout=240)
        assert resumed.returncode == 0, out
    finally:
        kill_all(job, resumed)
        kill_all(job, run)
    assert pongs() == list(range(1, ROUNDS, 2)), pongs()
    assert _numbers(released(job, 1), "ping") == list(range(2, ROUNDS + 1, 2))
    assert f"[vm 1] ping {ROUNDS}" in out
    steps = [r["step"] for r in records(job)]
    assert steps == list(range(1, len(steps) + 1))
    # A mostly idle guest: a later checkpoint writes a fraction of its migration stream.
    last = records(job)[-1]
    assert sum(last["written_bytes"]) < 0.5 * sum(last["stream_bytes"]), last
    ls = snapline("vm", "ls", str(job))
    listing, _ = ls.communicate(timeout=60)
    assert ls.returncode == 0 and f"{len(steps)} complete checkpoint(s)" in listing, listing
