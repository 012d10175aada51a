"""Simulator scale: CPU seconds per protocol at 100 ranks, and at 1,000 ranks where it scales.

The target: every protocol simulates the bank app at 100 ranks x 300 transfers per rank
(complete topology, two crashes, basic checkpoints every 50 simulated seconds, every checker
on) within 60 CPU seconds, and chandy-lamport, uncoordinated and message-logging do the same at
1,000 ranks (on ``random:8``: a complete graph of 1,000 ranks has a million channels, and a
snapshot marks every one of them). CPU seconds of this process, not wall time: the machine
may be shared. Prints a table and writes ``bench/results/sim_scale.json``.

    python bench/sim_scale.py                          # both scales, every protocol, 1 run each
    python bench/sim_scale.py --scale 100 --repeats 3  # medians of 3
    python bench/sim_scale.py --scale 1000 --protocols uncoordinated
    python bench/sim_scale.py --out /tmp/x --cpu-limit 120  # give up on a run after 120 CPU-s
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sim_bench import bench_one, machine_speed_us
from snapline.errors import SnaplineError
from snapline.protocols import protocol_names

#: CPU seconds a configuration may take to meet the target.
TARGET_CPU_S = 60.0
#: Protocols expected to reach 1,000 ranks.
LARGE_SCALE = ("chandy-lamport", "uncoordinated", "message-logging")
SCALES = {
    100: {"ranks": 100, "messages": 300, "topology": "complete"},
    1000: {"ranks": 1000, "messages": 300, "topology": "random:8"},
}


class OverBudget(BaseException):
    """A run used up its CPU seconds (a BaseException: the simulator does not wrap it)."""


def _over_budget(signum: int, frame: object) -> None:
    raise OverBudget


def run_config(
    protocol: str, scale: int, repeats: int, seed: int, cpu_limit_s: float
) -> dict[str, Any]:
    """``repeats`` runs of one protocol at one scale; the median CPU time and the last stats.

    A run still going after ``cpu_limit_s`` CPU seconds is stopped and reported unfinished.
    """
    shape = SCALES[scale]
    args = argparse.Namespace(
        ranks=shape["ranks"],
        messages=shape["messages"],
        topology=shape["topology"],
        interval=50.0,
        crashes=2,
        seed=seed,
        no_payload_checks=False,
        requests=None,
        duration_s=float(shape["messages"]),
    )
    cpu: list[float] = []
    row: dict[str, Any] = {}
    for _ in range(repeats):
        cpu0 = time.process_time()
        signal.signal(signal.SIGPROF, _over_budget)
        signal.setitimer(signal.ITIMER_PROF, cpu_limit_s)
        try:
            row = bench_one(protocol, args)
        except OverBudget:
            spent = round(time.process_time() - cpu0, 1)
            return {
                "protocol": protocol,
                "scale": scale,
                "ranks": shape["ranks"],
                "topology": shape["topology"],
                "unfinished_after_cpu_s": spent,
                "target_cpu_s": TARGET_CPU_S,
                "met": False,
            }
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        cpu.append(row["cpu_s"])
    median = statistics.median(cpu)
    return {
        **row,
        "scale": scale,
        "cpu_s_runs": cpu,
        "cpu_s_median": round(median, 2),
        "target_cpu_s": TARGET_CPU_S,
        "met": median <= TARGET_CPU_S,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 1 if a run failed, else 0 (targets are reported, not judged)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, choices=sorted(SCALES), nargs="*", default=None)
    parser.add_argument("--protocols", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cpu-limit", type=float, default=300.0, help="stop a run after this many CPU-s"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    speed = machine_speed_us()
    rows: list[dict[str, Any]] = []
    for scale in args.scale or sorted(SCALES):
        names = args.protocols or [p for p in protocol_names() if p != "none"]
        if scale == 1000 and args.protocols is None:
            names = list(LARGE_SCALE)
        for name in names:
            try:
                row = run_config(name, scale, args.repeats, args.seed, args.cpu_limit)
            except SnaplineError as exc:
                print(f"{name} at {scale} ranks failed: {exc}", flush=True)
                rows.append({"protocol": name, "scale": scale, "error": str(exc)})
                continue
            rows.append(row)
            if "unfinished_after_cpu_s" in row:
                print(
                    f"{name:16} {scale:5} ranks  unfinished after "
                    f"{row['unfinished_after_cpu_s']} CPU-s  OVER",
                    flush=True,
                )
                continue
            print(
                f"{name:16} {scale:5} ranks  cpu {row['cpu_s_median']:7.1f} s "
                f"(runs {row['cpu_s_runs']})  delivered {row['messages_delivered']:>9,}  "
                f"ckpts {row['checkpoints']:>7,}  control {row['control_messages']:>9,}  "
                f"{'met' if row['met'] else 'OVER'}",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "sim_scale.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "sim_scale",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "sum_range_1000_us": round(speed, 2),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "argv": argv if argv is not None else sys.argv[1:],
                "rows": rows,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"machine yardstick: sum(range(1000)) takes {speed:.1f} us; written {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
