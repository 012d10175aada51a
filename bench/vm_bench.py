"""Benchmark of the system level (snapline vm): coordinated whole-VM checkpoints under QEMU.

1. Pause per coordinated checkpoint (first ``stop`` to last ``cont``) for 1, 2 and 4 guests of
   ``--memory-mib`` on snapline's switch, each running the same busybox counter; median over
   checkpoints 2..``--checkpoints`` (the first one runs while the guests still settle).
2. For the single guest: the first and the second checkpoint, each with its pause, the time to
   store its migration stream after the guest continued, the stream's size and the bytes the
   store wrote (the second writes only the segments that changed); then restore time (kill
   QEMU, load the stream from the store, start QEMU with ``-incoming``, ``cont``), median of
   ``--restores``.
3. The same counter program's state saved at the application level in the same run: its
   state is the counter, saved into a snapline store and loaded back; median of 20.

Prints a table and writes bench/results/vm_bench.json. Needs QEMU, busybox-static, apt and
the vm extra (as the system-level tests do). Usage:
python bench/vm_bench.py [--guests 1,2,4] [--memory-mib 256] [--checkpoints 4] [--restores 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapline import open_store
from snapline.levels.system import VmJob, VmSpec

RESULTS = Path(__file__).parent / "results" / "vm_bench.json"
COUNTER = """i=0
while true; do i=$((i + 1)); echo "count $i"; sleep 0.2; done
"""


def _wait_up(job: VmJob, timeout_s: float = 180.0) -> float:
    t0 = time.monotonic()
    while not all(
        m.output_path.exists() and m.output_path.stat().st_size > 0 for m in job.machines
    ):
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("guests did not start their workload")
        time.sleep(0.1)
    return time.monotonic() - t0


def system_level(
    root: Path, guests: int, memory_mib: int, checkpoints: int, restores: int
) -> dict[str, Any]:
    spec = VmSpec(guests=guests, memory_mib=memory_mib, workload=COUNTER, network="switch")
    job = VmJob(spec, root / f"vm-{guests}", interval_s=None)
    try:
        job.start()
        boot_s = _wait_up(job)
        time.sleep(1.0)
        records = []
        for _ in range(checkpoints):
            records.append(job.checkpoint())
            time.sleep(1.0)
        out: dict[str, Any] = {
            "guests": guests,
            "memory_mib": memory_mib,
            "boot_to_workload_s": round(boot_s, 2),
            "pause_s": [r.pause_s for r in records],
            "pause_median_s": statistics.median(r.pause_s for r in records[1:]),
            "checkpoints": [r.to_json() for r in records],
        }
        if restores:
            for _ in range(restores):
                job.restore()
                time.sleep(0.5)
            out["restore_s"] = [round(s, 3) for s in job.result.restore_s]
            out["restore_median_s"] = round(statistics.median(job.result.restore_s), 3)
        return out
    finally:
        job.close()


def application_level(root: Path, repeats: int = 20) -> dict[str, Any]:
    """The counter's state as its program would declare it: one int (and its name)."""
    saves, loads, sizes = [], [], []
    with open_store(root / "app-level") as store:
        for step in range(1, repeats + 1):
            state = {"program": "counter", "i": 1000 + step}
            t0 = time.perf_counter()
            info = store.save(state, step=step)
            saves.append(time.perf_counter() - t0)
            sizes.append(info.written_bytes)
            t0 = time.perf_counter()
            assert store.load(step=step)["i"] == 1000 + step
            loads.append(time.perf_counter() - t0)
    return {
        "save_median_s": statistics.median(saves),
        "load_median_s": statistics.median(loads),
        "written_bytes_median": statistics.median(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--guests", default="1,2,4")
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--restores", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="snapline-vm-bench-"))
    try:
        runs = [
            system_level(root, n, args.memory_mib, args.checkpoints, args.restores if n == 1 else 0)
            for n in (int(g) for g in args.guests.split(","))
        ]
        app = application_level(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "system_level": runs,
        "application_level": app,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    console = Console()
    table = Table(title="coordinated checkpoint pause (median of checkpoints 2..)")
    for name in ("guests", "MiB each", "boot", "pause", "pauses"):
        table.add_column(name, justify="right")
    for run in runs:
        table.add_row(
            str(run["guests"]),
            str(run["memory_mib"]),
            f"{run['boot_to_workload_s']:.1f} s",
            f"{run['pause_median_s'] * 1000:.0f} ms",
            " ".join(f"{p * 1000:.0f}" for p in run["pause_s"]),
        )
    console.print(table)
    one = next((r for r in runs if r["guests"] == 1), None)
    if one is not None:
        detail = Table(title=f"one {args.memory_mib} MiB guest vs the application level")
        for name in ("", "pause", "store after cont", "state", "written", "restore"):
            detail.add_column(name, justify="right")
        for label, ck in (
            ("1st checkpoint", one["checkpoints"][0]),
            ("2nd", one["checkpoints"][1]),
        ):
            detail.add_row(
                label,
                f"{ck['pause_s'] * 1000:.0f} ms",
                f"{ck['save_s']:.2f} s",
                f"{sum(ck['stream_bytes']) / 2**20:.1f} MiB",
                f"{sum(ck['written_bytes']) / 2**20:.1f} MiB",
                f"{one.get('restore_median_s', 0):.2f} s",
            )
        detail.add_row(
            "application level",
            f"{app['save_median_s'] * 1000:.1f} ms",
            "-",
            f"{app['written_bytes_median']} B",
            f"{app['written_bytes_median']} B",
            f"{app['load_median_s'] * 1000:.1f} ms (load)",
        )
        console.print(detail)
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
