"""``--engine mpi`` against raw mpi4py (and the local engine): two ranks, protocol ``none``.

Measures small-message throughput (rank 0 sends ``--count`` small ints to rank 1 as fast as the
engine takes them) and round trip (one message bounced ``--rounds`` times) with the apps of
``runtime_bench.py`` (``Blast``, ``PingPong``), on:

* ``snapline run --engine mpi`` (two MPI ranks under the mpich wheel's ``mpiexec``),
* raw mpi4py ``comm.send``/``comm.recv`` of the same small objects (``runtime_bench``'s script),
* ``snapline run --engine local`` (Unix sockets), for reference.

The three run interleaved, ``--rounds-outer`` times; figures are medians, and the ratio
engine-mpi / raw-mpi4py is taken per round (then the median), so both sides of a ratio saw the
same machine load. Prints a table and writes ``bench/results/engine_mpi_bench.json``. Run from
the repository root: ``.venv/bin/python bench/engine_mpi_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime_bench

RESULTS = Path(__file__).resolve().parent / "results" / "engine_mpi_bench.json"


def bench_engine(engine: str, count: int, rounds: int) -> dict[str, float]:
    """Throughput and round trip between two ranks of ``engine``, protocol ``none``."""
    app = str(runtime_bench.HERE)
    common: dict[str, Any] = {"protocol": "none", "topology": "complete", "trace": False}
    blast = runtime_bench._run(
        f"{app}:Blast", 2, engine=engine, app_options={"count": count}, **common
    )
    r0, r1 = blast.results[0], blast.results[1]
    assert r1["got"] == count, r1
    pong = runtime_bench._run(
        f"{app}:PingPong", 2, engine=engine, app_options={"rounds": rounds}, **common
    )
    p0 = pong.results[0]
    return {
        "msgs_per_s": count / (r1["t_last"] - r0["t_first"]),
        "rtt_us": (p0["t1"] - p0["t0"]) / (rounds / 2) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4_000, help="ping-pong messages")
    parser.add_argument("--rounds-outer", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds, args.rounds_outer = 20_000, 1_000, 3
    runs: dict[str, list[dict[str, float]]] = {"mpi": [], "raw_mpi4py": [], "local": []}
    for i in range(args.rounds_outer):
        raw = runtime_bench.bench_pair_mpi(args.count, args.rounds)
        if isinstance(raw, str):
            raise SystemExit(f"raw mpi4py baseline unavailable: {raw}")
        runs["raw_mpi4py"].append(raw)
        runs["mpi"].append(bench_engine("mpi", args.count, args.rounds))
        runs["local"].append(bench_engine("local", args.count, args.rounds))
        print(
            f"round {i + 1}: "
            + ", ".join(
                f"{k} {v[-1]['msgs_per_s']:,.0f} msg/s {v[-1]['rtt_us']:.0f} us"
                for k, v in runs.items()
            ),
            flush=True,
        )
    ratios = [
        m["msgs_per_s"] / r["msgs_per_s"]
        for m, r in zip(runs["mpi"], runs["raw_mpi4py"], strict=True)
    ]
    summary = {
        name: {
            "msgs_per_s": statistics.median(x["msgs_per_s"] for x in values),
            "rtt_us": statistics.median(x["rtt_us"] for x in values),
            "runs": values,
        }
        for name, values in runs.items()
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "count": args.count,
        "rounds": args.rounds,
        "repeats": args.rounds_outer,
        "engines": summary,
        "throughput_ratio_mpi_vs_raw": {"median": statistics.median(ratios), "runs": ratios},
        "target_ratio": 0.8,
    }
    print()
    print(f"{'':<12}{'msg/s (median)':>16}{'round trip us':>16}")
    for name, row in summary.items():
        print(f"{name:<12}{row['msgs_per_s']:>16,.0f}{row['rtt_us']:>16.0f}")
    med = statistics.median(ratios)
    print(
        f"engine mpi / raw mpi4py throughput: {med:.2f}x (target >= 0.8x); per round "
        + " ".join(f"{r:.2f}" for r in ratios)
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
