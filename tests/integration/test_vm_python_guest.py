"""System-level guests with ``rootfs = "python"``: the host's Python and numpy on a read-only
disk. A guest boots, runs a Python line and powers off; under ``-m slow``, a Python counter
guest is killed with kill -9 and restored from its checkpoint (the disk stays attached), and
the output the host collected holds every count exactly once. A checkpoint taken on another
disk is refused."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from vm_support import kill_all, records, released, require_python_guest, snapline, status, wait_for

from snapline.errors import ConfigError
from snapline.levels.system import CheckpointRecord, VmJob, VmSpec


def _spec(tmp_path: Path, workload: str) -> Path:
    (tmp_path / "w.sh").write_text(workload)
    spec = tmp_path / "job.toml"
    spec.write_text(
        'guests = 1\nmemory_mib = 256\nworkload = "w.sh"\nnetwork = "none"\nrootfs = "python"\n'
    )
    return spec


def test_a_python_guest_runs_a_python_line(tmp_path: Path) -> None:
    require_python_guest()
    line = "import sys, numpy; print('guest', sys.version_info[:2], int(numpy.arange(10).sum()))"
    job = tmp_path / "job"
    run = snapline("vm", "run", str(_spec(tmp_path, f'python3 -c "{line}"\n')), "--store", str(job))
    try:
        out, _ = run.communicate(timeout=180)
    finally:
        kill_all(job, run)
    assert run.returncode == 0, out
    expected = f"guest {tuple(sys.version_info[:2])} 45"
    assert f"[vm 0] {expected}" in out, out
    assert released(job, 0).strip() == expected


COUNT = 150
COUNTER = f"""cat > /tmp/counter.py <<'PY'
import time
import numpy as np
state = np.zeros(1 << 20)  # 8 MiB that the checkpoints carry
for i in range(1, {COUNT} + 1):
    state[i] = i
    print("count", i, int(state.sum()), flush=True)
    time.sleep(0.1)
PY
exec python3 /tmp/counter.py
"""


@pytest.mark.slow  # a minute of a TCG guest with Python
def test_a_python_guest_killed_is_restored_with_its_disk(tmp_path: Path) -> None:
    require_python_guest()
    job = tmp_path / "job"
    run = snapline(
        "vm", "run", str(_spec(tmp_path, COUNTER)), "--store", str(job), "--interval", "2s"
    )

    def counts() -> list[int]:
        return [int(n) for n in re.findall(r"^count (\d+) ", released(job, 0), re.MULTILINE)]

    try:
        wait_for("released counts", lambda: len(counts()) >= 10, 180, run)
        victim = status(job)["ranks"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        out, _ = run.communicate(timeout=240)
    finally:
        kill_all(job, run)
    assert run.returncode == 0, out
    assert "restored checkpoint" in out, out
    assert counts() == list(range(1, COUNT + 1)), counts()
    sums = re.findall(r"^count (\d+) (\d+)$", released(job, 0), re.MULTILINE)
    assert all(int(s) == int(i) * (int(i) + 1) // 2 for i, s in sums)
    assert records(job)


def test_a_checkpoint_of_guests_on_another_disk_is_not_restored(tmp_path: Path) -> None:
    """The guests' page caches hold blocks of their disk: restoring them over another one
    (the host's Python or numpy changed since) is refused before any QEMU starts."""
    require_python_guest()
    spec = VmSpec(guests=1, memory_mib=128, workload="true\n", network="none", rootfs="python")
    job = VmJob(spec, tmp_path / "job", interval_s=None)
    try:
        old = "python3.11-0123456789abcdef.ext4"
        state = {"stream": [np.zeros(4, np.uint8)], "frames": [], "output": np.zeros(0, np.uint8)}
        job.stores[0].save({**state, "output_base": 0}, step=1, meta={"disk": old})
        record = CheckpointRecord(
            step=1, created_unix_s=0.0, pause_s=0.1, stop_skew_s=0.0, save_s=0.1,
            stream_bytes=[4], written_bytes=[4], in_flight_frames=[0], frames_consumed=True,
        )  # fmt: skip
        (tmp_path / "job" / "checkpoints" / "00000001.json").write_text(
            json.dumps(record.to_json())
        )
        with pytest.raises(ConfigError, match=f"taken with the guest disk {old}"):
            job.start(step=1)
        assert job.machines == []
    finally:
        job.close()
