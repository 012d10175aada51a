"""The Ray engine against the local runtime and a bare Ray actor call, side by side in one run.

1. Two ranks, no protocol: small-message throughput (one way) and round trip, on
   ``--engine local``, on ``--engine ray`` and as bare Ray actor calls (fire-and-forget ``put``
   calls; a call's round trip), interleaved over ``--rounds`` rounds, order rotated per round.
2. Recovery time after ``kill -9`` of one rank (4 ranks, small state): failure detected -> job
   resumed, on both engines.

One local Ray serves the whole run. Prints a table and writes ``bench/results/ray_engine.json``.
Run from the repository root: ``.venv/bin/python bench/ray_engine_bench.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray

from runtime_bench import bench_pair_ray, bench_pair_snapline, bench_recovery

RESULTS = Path(__file__).resolve().parent / "results" / "ray_engine.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000, help="messages one way")
    parser.add_argument("--pings", type=int, default=400, help="messages in the ping-pong")
    parser.add_argument("--kills", type=int, default=3, help="kill -9s per recovery run")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    contenders = ["local", "ray", "actor-call"]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    for k in range(args.rounds):
        for name in contenders[k % 3 :] + contenders[: k % 3]:
            if name == "actor-call":
                got = bench_pair_ray(args.count, args.pings)
                assert isinstance(got, dict), got
            else:
                got = bench_pair_snapline(args.count, args.pings, engine=name)
            runs[name].append(got)
            print(f"round {k + 1} {name}: {got}", flush=True)
    recovery = {e: bench_recovery(4, args.kills, engine=e) for e in ("local", "ray")}
    ray.shutdown()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}",
        "rounds": args.rounds,
        "pair": {
            name: {
                "msgs_per_s": statistics.median(r["msgs_per_s"] for r in rs),
                "rtt_us": statistics.median(r["rtt_us"] for r in rs),
                "runs": rs,
            }
            for name, rs in runs.items()
        },
        "recovery_ms": recovery,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    pair = report["pair"]
    print(f"\n{'':12} {'msgs/s':>10} {'rtt us':>9}   (medians of {args.rounds} rounds)")
    for name, row in pair.items():
        print(f"{name:12} {row['msgs_per_s']:10.0f} {row['rtt_us']:9.0f}")
    ratio = pair["ray"]["msgs_per_s"] / pair["actor-call"]["msgs_per_s"]
    print(f"engine ray vs bare actor calls, throughput: {ratio:.1f}x")
    for engine, rec in recovery.items():
        runs_ms = ", ".join(f"{t:.0f}" for t in rec["runs_ms"])
        print(f"recovery after kill -9, {engine}: median {rec['median_ms']:.0f} ms ({runs_ms})")


if __name__ == "__main__":
    main()
