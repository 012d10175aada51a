"""Simulator throughput: application messages simulated per second, per protocol.

Runs the bank app (complete topology unless ``--topology``) under every registered protocol
whose module imports, with periodic checkpoints and a few crashes, all checkers on, and
reports messages delivered per wall second and per CPU second of this process (the machine
may be shared: CPU seconds are the fairer figure). Prints a table and writes
``bench/results/sim_bench.json``.

    python bench/sim_bench.py                 # 64 ranks x 500 messages each, every protocol
    python bench/sim_bench.py --ranks 1000 --messages 1000 --protocols none --topology random:8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapline.errors import SnaplineError
from snapline.protocols import protocol_class, protocol_names
from snapline.runtime.sim import SimConfig, run_simulation


def machine_speed_us() -> float:
    """Microseconds for ``sum(range(1000))``: a yardstick to compare machines by."""
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def bench_one(protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration and measure it."""
    crash_times = [args.duration_s * f for f in (0.3, 0.55, 0.8)][: args.crashes]
    config = SimConfig(
        app="bank",
        n=args.ranks,
        protocol=protocol,
        topology=args.topology,
        seed=args.seed,
        interval_s=args.interval,
        app_params={"messages": args.messages},
        crash_at=tuple((int(i * 7919 % args.ranks), t) for i, t in enumerate(crash_times, 1)),
        check_payloads=not args.no_payload_checks,
        checkpoint_requests=args.requests,
        reference=False,
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = run_simulation(config)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    stats = result.stats
    delivered = int(stats["messages_delivered"])
    return {
        "protocol": protocol,
        "ranks": args.ranks,
        "messages_per_rank": args.messages,
        "topology": args.topology,
        "messages_delivered": delivered,
        "events": stats["events"],
        "crashes": stats["crashes"],
        "recoveries": stats["recoveries"],
        "checkpoints": stats["checkpoints_basic"] + stats["checkpoints_forced"],
        "control_messages": stats["control_messages"],
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        "msgs_per_wall_s": round(delivered / wall_s),
        "msgs_per_cpu_s": round(delivered / cpu_s),
        "checks": [c.name for c in result.checks],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--messages", type=int, default=500, help="transfers per rank")
    parser.add_argument("--topology", default="complete")
    parser.add_argument("--interval", type=float, default=50.0, help="checkpoint interval, s")
    parser.add_argument("--crashes", type=int, default=2, choices=range(4))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--protocols", nargs="*", default=None)
    parser.add_argument("--no-payload-checks", action="store_true")
    parser.add_argument(
        "--requests",
        choices=["all", "one"],
        default=None,
        help="checkpoint requests on all ranks or rank 0 (default: what each protocol declares)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    # The bank makes one transfer per ~1 s per rank: the failure-free run lasts ~messages s.
    args.duration_s = float(args.messages)
    console = Console()
    speed = machine_speed_us()
    rows: list[dict[str, Any]] = []
    for name in args.protocols or protocol_names():
        try:
            protocol_class(name)
        except (ImportError, SnaplineError) as exc:
            console.print(f"[yellow]skipping {name}: {exc}[/]")
            continue
        with console.status(f"{name}: {args.ranks} ranks x {args.messages} messages"):
            try:
                rows.append(bench_one(name, args))
            except SnaplineError as exc:
                console.print(f"[red]{name} failed:[/] {exc}")
                rows.append({"protocol": name, "error": str(exc)})
    table = Table(title=f"simulator throughput (bank, {args.ranks} ranks, {args.topology})")
    for col in (
        "protocol",
        "delivered",
        "crashes",
        "ckpts",
        "ctrl",
        "wall s",
        "msgs/s",
        "msgs/cpu-s",
    ):
        table.add_column(col, justify="left" if col == "protocol" else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["protocol"], "[red]failed[/]", "", "", "", "", "", "")
            continue
        table.add_row(
            row["protocol"],
            f"{row['messages_delivered']:,}",
            str(row["crashes"]),
            f"{row['checkpoints']:,}",
            f"{row['control_messages']:,}",
            f"{row['wall_s']:.1f}",
            f"{row['msgs_per_wall_s']:,}",
            f"{row['msgs_per_cpu_s']:,}",
        )
    console.print(table)
    console.print(f"machine yardstick: sum(range(1000)) takes {speed:.1f} us")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "sim_bench.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "sim_bench",
                "python": sys.version.split()[0],
                "machine": platform.processor() or platform.machine(),
                "sum_range_1000_us": round(speed, 2),
                "argv": argv if argv is not None else sys.argv[1:],
                "rows": rows,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    console.print(f"written {out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
