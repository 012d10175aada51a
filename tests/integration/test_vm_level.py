"""The system level on real QEMU guests: two VMs play ping-pong over TCP through snapline's
switch; one QEMU is killed with kill -9 from outside, then everything is; the counters go on
from the checkpoint with the TCP connection alive, and the output the host collected holds
every number exactly once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
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


# Guest 1 pings guest 0 as fast as the guests go, in rounds, and prints each round's summary.
# ICMP is never retransmitted, so "0% packet loss" across a rollback to a checkpoint that had
# frames in flight holds only if the switch recorded them at the cut and put them back.
PING_COUNT = 500
PING_WORKLOAD = f"""
if [ "$RANK" = 1 ]; then
  until ping -c 1 -W 1 10.77.0.1 >/dev/null; do sleep 0.5; done  # guest 0 is up
  while true; do ping -q -c {PING_COUNT} -i 0.004 10.77.0.1 | grep transmitted; done
fi
sleep 100000
"""


@pytest.mark.slow  # about a minute more of TCG guests; the switch's unit tests run always
def test_frames_in_flight_are_recorded_and_put_back_on_restore(tmp_path: Path) -> None:
    require_qemu()
    (tmp_path / "ping.sh").write_text(PING_WORKLOAD)
    spec = tmp_path / "ping.toml"
    spec.write_text('guests = 2\nmemory_mib = 128\nworkload = "ping.sh"\n')
    job = tmp_path / "job"
    run = snapline("vm", "run", str(spec), "--store", str(job), "--interval", "1s")

    def summaries() -> list[str]:
        return [line for line in released(job, 1).splitlines() if "transmitted" in line]

    try:
        with_frames = wait_for(
            "a checkpoint with frames in flight",
            lambda: [r for r in records(job) if sum(r["in_flight_frames"])],
            120,
            run,
        )
        step = with_frames[0]["step"]
        restore = snapline("vm", "restore", str(job), "--step", str(step))
        restored, _ = restore.communicate(timeout=120)
        assert restore.returncode == 0, restored
        # The round the restore fell into, and one more, complete and are released.
        seen = len(summaries())
        wait_for("two more ping rounds", lambda: len(summaries()) >= seen + 2, 120, run)
        os.killpg(run.pid, signal.SIGKILL)
        out, _ = run.communicate(timeout=30)
    finally:
        kill_all(job, run)
    frames = sum(with_frames[0]["in_flight_frames"])
    assert f"restored checkpoint {step} " in out and f"({frames} frame(s) put back" in out, out
    lossless = f"{PING_COUNT} packets transmitted, {PING_COUNT} packets received, 0% packet loss"
    assert summaries() and all(line == lossless for line in summaries()), summaries()


@pytest.mark.slow
def test_a_vm_that_stops_answering_is_detected_and_every_vm_restored(tmp_path: Path) -> None:
    require_qemu()
    job = tmp_path / "job"
    run = snapline(
        "vm", "run", str(PINGPONG), "--store", str(job), "--interval", "2s",
        "--hang-timeout", "3s",
    )  # fmt: skip

    def pongs() -> list[int]:
        return _numbers(released(job, 0), "pong")

    try:
        wait_for("released output", lambda: len(pongs()) >= 3, 120, run)
        hung = status(job)["ranks"][0]["pid"]
        os.kill(hung, signal.SIGSTOP)  # QEMU alive, its QMP silent
        wait_for("the recovery", lambda: status(job).get("recoveries") == 1, 60, run)
        wait_for("the restored guests running", lambda: status(job)["state"] == "running", 60, run)
        assert hung not in qemu_pids(job)
        assert not os.path.exists(f"/proc/{hung}")  # killed and reaped
        seen = len(pongs())
        wait_for("progress after the restore", lambda: len(pongs()) > seen, 60, run)
    finally:
        kill_all(job, run)
    assert pongs() == list(range(1, 2 * len(pongs()), 2))
