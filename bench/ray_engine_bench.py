"""The Ray engine against the local runtime and a bare Ray actor call, side by side in one run.

1. Two ranks, no protocol: small-message throughput (one way) and round trip, on
   ``--engine local``, on ``--engine ray`` over its Unix sockets (every node on this host), on
   ``--engine ray`` over TCP (``SNAPLINE_RAY_TRANSPORT=tcp``: the transport of a cluster that
   spans hosts, here over loopback) and as bare Ray actor calls (fire-and-forget ``put`` calls;
   a call's round trip), interleaved over ``--rounds`` rounds, order rotated per round.
2. Recovery time after ``kill -9`` of one rank (4 ranks, small state): failure detected -> job
   resumed, on the local engine and on both Ray transports, and where the Ray engine's time
   goes (from the supervisor log: detected -> actor taken and told to run -> its rank's hello
   (the actor's worker booted, listening, control link up) -> every rank resumed (restore from
   the store, reconnection, replay)); and what a new rank actor costs to start cold, which a
   recovery that finds no spare ready waits for.

One local Ray serves the whole run. Prints a table and writes ``bench/results/ray_engine.json``.
Run from the repository root: ``.venv/bin/python bench/ray_engine_bench.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray

from runtime_bench import bench_pair_ray, bench_pair_snapline
from snapline.runtime.local import run
from snapline.runtime.ray.supervisor import TRANSPORT_ENV

RESULTS = Path(__file__).resolve().parent / "results" / "ray_engine.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000, help="messages one way")
    parser.add_argument("--pings", type=int, default=400, help="messages in the ping-pong")
    parser.add_argument("--kills", type=int, default=3, help="kill -9s per recovery run")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    contenders = ["local", "ray", "ray-tcp", "actor-call"]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    for k in range(args.rounds):
        for name in contenders[k % 4 :] + contenders[: k % 4]:
            if name == "actor-call":
                got = bench_pair_ray(args.count, args.pings)
                assert isinstance(got, dict), got
            else:
                engine, transport = ENGINES[name]
                with transport_forced(transport):
                    got = bench_pair_snapline(args.count, args.pings, engine=engine)
            runs[name].append(got)
            print(f"round {k + 1} {name}: {got}", flush=True)
    recovery = {}
    for name in ("local", "ray", "ray-tcp"):
        engine, transport = ENGINES[name]
        with transport_forced(transport):
            recovery[name] = recovery_times(4, args.kills, engine)
        print(f"recovery {name}: {recovery[name]}", flush=True)
    cold_ms = actor_cold_start_ms(3)
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
        "actor_cold_start_ms": cold_ms,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    pair = report["pair"]
    print(f"\n{'':12} {'msgs/s':>10} {'rtt us':>9}   (medians of {args.rounds} rounds)")
    for name, row in pair.items():
        print(f"{name:12} {row['msgs_per_s']:10.0f} {row['rtt_us']:9.0f}")
    ratio = pair["ray"]["msgs_per_s"] / pair["actor-call"]["msgs_per_s"]
    print(f"engine ray vs bare actor calls, throughput: {ratio:.1f}x")
    tcp = pair["ray-tcp"]["msgs_per_s"] / pair["ray"]["msgs_per_s"]
    tcp_rtt = pair["ray-tcp"]["rtt_us"] / pair["ray"]["rtt_us"]
    print(f"ray over TCP vs Unix sockets: throughput {tcp:.2f}x, round trip {tcp_rtt:.2f}x")
    for name, rec in recovery.items():
        runs_ms = ", ".join(f"{t:.0f}" for t in rec["runs_ms"])
        print(f"recovery after kill -9, {name}: median {rec['median_ms']:.0f} ms ({runs_ms})")
        for phase, ms in rec.get("phases_ms", {}).items():
            print(f"    {phase:32} median {statistics.median(ms):6.0f} ms  {ms}")
    print(f"a new rank actor, cold (process start + imports): {cold_ms} ms")


#: Contender -> (engine, the Ray transport forced, if any).
ENGINES: dict[str, tuple[str, str | None]] = {
    "local": ("local", None),
    "ray": ("ray", None),
    "ray-tcp": ("ray", "tcp"),
}


@contextlib.contextmanager
def transport_forced(transport: str | None) -> Iterator[None]:
    """Force the Ray engine's transport for the jobs this process runs meanwhile."""
    if transport is None:
        yield
        return
    os.environ[TRANSPORT_ENV] = transport
    try:
        yield
    finally:
        del os.environ[TRANSPORT_ENV]


def recovery_times(n: int, kills: int, engine: str) -> dict[str, Any]:
    """kill -9 one rank ``kills`` times (1.5 s apart); per recovery, detected -> resumed.

    On Ray, also the recovery's phases from the supervisor log (see the module docstring).
    """
    schedule = [f"{1 + i % (n - 1)}@{1.0 + 1.5 * i:.1f}s" for i in range(kills)]
    root = Path(tempfile.mkdtemp(prefix="snapline-bench-"))
    try:
        result = run(
            "bank",
            n,
            store=root / "job",
            protocol="chandy-lamport",
            interval="0.3s",
            trace=False,
            kill=schedule,
            heartbeat_interval="0.05s",
            app_options={"messages": int((2.5 + 1.5 * kills) / 0.01), "step_s": 0.01},
            timeout="300s",
            engine=engine,
        )
        times = [(r["t_done"] - r["t_detect"]) * 1000.0 for r in result.recoveries]
        report: dict[str, Any] = {
            "median_ms": statistics.median(times) if times else None,
            "runs_ms": [round(t) for t in times],
        }
        if engine == "ray":
            report["phases_ms"] = recovery_phases(root / "job" / "logs" / "supervisor.jsonl")
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def recovery_phases(log: Path) -> dict[str, list[float]]:
    """Per recovery of one failed rank: how long each step took, from the supervisor log."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    phases: dict[str, list[float]] = {
        "detected -> actor told to run": [],
        "-> hello (worker booted)": [],
        "-> resumed (restore, reconnect)": [],
    }
    failed: dict[int, float] = {}
    spawned: dict[int, float] = {}
    started: dict[int, float] = {}
    for e in events:
        kind = e["event"]
        if kind == "rank_failed":
            failed[e["rank"]] = e["ts"]
        elif kind == "spawned" and e["rank"] in failed:
            spawned[e["rank"]] = e["ts"]
        elif kind == "rank_started" and e["rank"] in spawned:
            started[e["rank"]] = e["ts"]
        elif kind == "recovered" and len(e.get("failed", [])) == 1:
            rank = e["failed"][0]
            if rank in started:
                t = [failed.pop(rank), spawned.pop(rank), started.pop(rank), e["ts"]]
                for name, (a, b) in zip(phases, itertools.pairwise(t), strict=True):
                    phases[name].append(round((b - a) * 1000.0))
    return phases


def actor_cold_start_ms(times: int) -> list[float]:
    """How long a new rank actor takes to be ready (a Ray worker process, its imports)."""
    from snapline.runtime.ray.rank import RankActor

    actor_class: Any = ray.remote(max_restarts=0)(RankActor)
    got = []
    for _ in range(times):
        t0 = time.perf_counter()
        actor = actor_class.options(num_cpus=0).remote()
        ray.get(actor.__ray_ready__.remote())
        got.append(round((time.perf_counter() - t0) * 1000.0))
        ray.kill(actor)
    return got


if __name__ == "__main__":
    main()
