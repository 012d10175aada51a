"""Local runtime benchmarks, measured side by side in one run.

1. Two ranks, no protocol: small-message throughput (one way) and round trip (ping-pong), on
   snapline's local runtime, on raw mpi4py (``mpiexec -n 2``, if mpi4py and an MPI are
   installed: ``pip install mpi4py mpich``) and on a Ray actor call (if ``ray`` is installed).
2. Protocol overhead on the bank app (8 ranks, transfers as fast as timers fire, one
   checkpoint per second): throughput per protocol against protocol ``none``.
3. Chandy-Lamport snapshot latency with 16 ranks under load: from the initiator's local
   checkpoint to the last rank's SnapshotComplete (markers in; state writes are not waited for).
4. Recovery time after kill -9 of one rank (small state): failure detected -> job resumed.

Prints a table and writes ``bench/results/runtime_bench.json``. Run from the repository root:
``.venv/bin/python bench/runtime_bench.py [--quick] [--only overhead,snapshot] [--messages N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from snapline.runtime.process import Context, Process

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "runtime_bench.json"


# ------------------------------------------------------------------------------------------
# Benchmark apps (imported by the worker processes from this file). They read the clock only
# to report timings; that is fine for a benchmark and never feeds back into their behaviour.


class Blast(Process):
    """Rank 0 sends ``count`` small messages to rank 1 as fast as the runtime takes them."""

    def __init__(self, rank: int, n: int, count: int = 100_000, batch: int = 500) -> None:
        self.rank, self.count, self.batch = rank, count, batch
        self.sent = 0
        self.got = 0
        self.t_first = 0.0
        self.t_last = 0.0

    def state(self) -> object:
        return {"sent": self.sent, "got": self.got}

    def restore(self, state: Any) -> None:
        self.sent, self.got = int(state["sent"]), int(state["got"])

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            self.t_first = time.perf_counter()
            ctx.set_timer("more", 0.0)
        ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        for _ in range(min(self.batch, self.count - self.sent)):
            ctx.send(1, self.sent)
            self.sent += 1
        if self.sent < self.count:
            ctx.set_timer("more", 0.0)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.got += 1
        self.t_last = time.perf_counter()

    def result(self) -> object:
        return {"t_first": self.t_first, "t_last": self.t_last, "got": self.got}


class PingPong(Process):
    """Rank 0 and rank 1 bounce one message ``rounds`` times."""

    def __init__(self, rank: int, n: int, rounds: int = 2000) -> None:
        self.rank, self.rounds = rank, rounds
        self.count = 0
        self.t0 = 0.0
        self.t1 = 0.0

    def state(self) -> object:
        return {"count": self.count}

    def restore(self, state: Any) -> None:
        self.count = int(state["count"])

    def on_start(self, ctx: Context) -> None:
        if self.rank == 0:
            self.t0 = time.perf_counter()
            ctx.send(1, 0)
        ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.count += 1
        if self.rank == 0 and int(payload) + 1 >= self.rounds:
            self.t1 = time.perf_counter()
            return
        ctx.send(src, int(payload) + 1)

    def result(self) -> object:
        return {"t0": self.t0, "t1": self.t1, "count": self.count}


# ------------------------------------------------------------------------------------------


def _store() -> Path:
    return Path(tempfile.mkdtemp(prefix="snapline-bench-"))


def _run(app: str, n: int, **kwargs: Any) -> Any:
    from snapline.runtime.local import run

    store = _store()
    try:
        return run(app, n, store=store / "job", heartbeat_interval="0.05s", **kwargs)
    finally:
        shutil.rmtree(store, ignore_errors=True)


def bench_pair_snapline(count: int, rounds: int, engine: str = "local") -> dict[str, float]:
    """Throughput and round trip between two ranks on snapline (``engine``), no protocol."""
    blast = _run(
        f"{HERE}:Blast",
        2,
        protocol="none",
        topology="complete",
        trace=False,
        app_options={"count": count},
        engine=engine,
    )
    r0, r1 = blast.results[0], blast.results[1]
    assert r1["got"] == count
    throughput = count / (r1["t_last"] - r0["t_first"])
    pong = _run(
        f"{HERE}:PingPong",
        2,
        protocol="none",
        topology="complete",
        trace=False,
        app_options={"rounds": rounds},
        engine=engine,
    )
    p0 = pong.results[0]
    rtt_us = (p0["t1"] - p0["t0"]) / (rounds / 2) * 1e6
    return {"msgs_per_s": throughput, "rtt_us": rtt_us}


_MPI_SCRIPT = """
import sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
count, rounds = int(sys.argv[1]), int(sys.argv[2])
comm.Barrier()
t0 = time.perf_counter()
if rank == 0:
    reqs = []
    for i in range(count):
        comm.send(i, dest=1, tag=1)
    comm.recv(source=1, tag=2)
    t1 = time.perf_counter()
else:
    for i in range(count):
        comm.recv(source=0, tag=1)
    comm.send(0, dest=0, tag=2)
comm.Barrier()
t2 = time.perf_counter()
for i in range(rounds // 2):
    if rank == 0:
        comm.send(i, dest=1, tag=3); comm.recv(source=1, tag=3)
    else:
        comm.recv(source=0, tag=3); comm.send(i, dest=0, tag=3)
t3 = time.perf_counter()
if rank == 0:
    print(count / (t1 - t0), (t3 - t2) / (rounds / 2) * 1e6)
"""


def bench_pair_mpi(count: int, rounds: int) -> dict[str, float] | str:
    """The same two measurements with raw mpi4py (pickled small objects, send/recv)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install mpi4py mpich)"
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    if not Path(mpiexec).exists():
        return "no mpiexec found"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(_MPI_SCRIPT)
        script = fh.name
    try:
        out = subprocess.run(
            [mpiexec, "-n", "2", sys.executable, script, str(count), str(rounds)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
    except (subprocess.SubprocessError, OSError) as exc:
        return f"mpiexec failed: {exc}"
    finally:
        os.unlink(script)
    return {"msgs_per_s": float(out[0]), "rtt_us": float(out[1])}


def bench_pair_ray(count: int, rounds: int) -> dict[str, float] | str:
    """Ray actor calls on this machine: fire-and-forget throughput and call round trip."""
    try:
        import ray
    except ImportError:
        return "ray not installed (pip install ray)"
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        class Sink:
            def __init__(self) -> None:
                self.got = 0

            def put(self, x: int) -> None:
                self.got += 1

            def count(self) -> int:
                return self.got

        sink = Sink.remote()  # type: ignore[attr-defined]
        ray.get(sink.count.remote())
        n = min(count, 20_000)
        t0 = time.perf_counter()
        for i in range(n):
            sink.put.remote(i)
        ray.get(sink.count.remote())
        throughput = n / (time.perf_counter() - t0)
        k = min(rounds // 2, 1000)
        t0 = time.perf_counter()
        for _ in range(k):
            ray.get(sink.count.remote())
        rtt_us = (time.perf_counter() - t0) / k * 1e6
    finally:
        if started:
            ray.shutdown()
    return {"msgs_per_s": throughput, "rtt_us": rtt_us}


def bench_protocol_overhead(protocols: list[str], messages: int, repeats: int) -> dict[str, Any]:
    """Bank on 8 ranks, transfers as fast as timers fire, a checkpoint per second."""
    out: dict[str, Any] = {}
    for protocol in protocols:
        rates = []
        for _ in range(repeats):
            result = _run(
                "bank",
                8,
                protocol=protocol,
                interval="1s",
                trace=False,
                app_options={"messages": messages, "step_s": 0.0},
                timeout="300s",
            )
            rates.append(result.messages_delivered / result.run_s)
        out[protocol] = {"msgs_per_s": statistics.median(rates), "runs": rates}
    base = out.get("none", {}).get("msgs_per_s")
    for row in out.values():
        row["loss_pct"] = 100.0 * (1.0 - row["msgs_per_s"] / base) if base else None
    return out


def bench_snapshot_latency(n: int, seconds: float) -> dict[str, Any]:
    """Chandy-Lamport on n ranks under bank load; latency of each snapshot's markers."""
    result = None
    store = _store()
    try:
        from snapline.runtime.local import run
        from snapline.runtime.trace import load_trace

        result = run(
            "bank",
            n,
            store=store / "job",
            protocol="chandy-lamport",
            interval="0.5s",
            heartbeat_interval="0.05s",
            app_options={"messages": int(seconds / 0.01), "step_s": 0.01},
            timeout="300s",
        )
        assert result.trace_path is not None
        trace = load_trace(result.trace_path)
        starts = [e["t"] for e in trace.events if e["kind"] == "checkpoint" and e["rank"] == 0]
        done: dict[int, list[float]] = {}
        for e in trace.events:
            if e["kind"] == "snapshot_complete":
                done.setdefault(int(e["rank"]), []).append(float(e["t"]))
        latencies = []
        for k, t0 in enumerate(starts):
            ends = [times[k] for times in done.values() if len(times) > k]
            if len(ends) == n:
                latencies.append((max(ends) - t0) * 1000.0)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return {
        "median_ms": statistics.median(latencies) if latencies else None,
        "max_ms": max(latencies) if latencies else None,
        "snapshots": len(latencies),
    }


def bench_recovery(n: int, kills: int, engine: str = "local") -> dict[str, Any]:
    """kill -9 one rank several times in a run; detection -> resumed, per recovery."""
    schedule = [f"{1 + i % (n - 1)}@{1.0 + 1.2 * i:.1f}s" for i in range(kills)]
    result = _run(
        "bank",
        n,
        protocol="chandy-lamport",
        interval="0.3s",
        trace=False,
        kill=schedule,
        app_options={"messages": int((2.0 + 1.2 * kills) / 0.01), "step_s": 0.01},
        timeout="300s",
        engine=engine,
    )
    times = [(r["t_done"] - r["t_detect"]) * 1000.0 for r in result.recoveries]
    return {"median_ms": statistics.median(times) if times else None, "runs_ms": times}


#: The parts of the benchmark, in the order they run (``--only``).
SECTIONS = ("pair", "overhead", "snapshot", "recovery")


def main() -> None:
    """Run everything, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="transfers per rank in the protocol-overhead runs (default 1500, quick 400); "
        "on a quiet machine 1500 take under a second, so hardly a checkpoint falls due",
    )
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if not only or not only <= set(SECTIONS):
        parser.error(f"--only takes sections of {', '.join(SECTIONS)}, got {args.only!r}")
    if args.messages is not None and args.messages < 1:
        parser.error(f"--messages must be a positive count, got {args.messages}")
    quick = args.quick
    count, rounds = (20_000, 1000) if quick else (200_000, 4000)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
    }
    if "pair" in only:
        report["pair"] = {
            "snapline": bench_pair_snapline(count, rounds),
            "mpi4py": bench_pair_mpi(count, rounds),
            "ray": bench_pair_ray(count, rounds),
        }
    if "overhead" in only:
        protocols = ["none", "chandy-lamport", "two-phase", "uncoordinated", "bcs", "fdas"]
        protocols.append("message-logging")
        messages = args.messages or (400 if quick else 1500)
        report["protocol_overhead"] = bench_protocol_overhead(
            protocols, messages=messages, repeats=1 if quick else 3
        )
    if "snapshot" in only:
        report["snapshot_latency_16"] = bench_snapshot_latency(16, 2.0 if quick else 6.0)
    if "recovery" in only:
        report["recovery"] = bench_recovery(4, 2 if quick else 5)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print_table(report)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def print_table(report: dict[str, Any]) -> None:
    """A plain-text summary of ``report``."""
    print(f"runtime bench, {report['date']}, {report['machine']}")
    if "pair" in report:
        print(f"{'two ranks, small messages':<34}{'msgs/s':>14}{'round trip us':>16}")
        for name, row in report["pair"].items():
            if isinstance(row, dict):
                print(f"  {name:<32}{row['msgs_per_s']:>14,.0f}{row['rtt_us']:>16,.1f}")
            else:
                print(f"  {name:<32}{row}")
    if "protocol_overhead" in report:
        print(f"{'bank, 8 ranks, 1 checkpoint/s':<34}{'msgs/s':>14}{'loss %':>16}")
        for name, row in report["protocol_overhead"].items():
            loss = "" if row["loss_pct"] is None else f"{row['loss_pct']:.1f}"
            print(f"  {name:<32}{row['msgs_per_s']:>14,.0f}{loss:>16}")
    if "snapshot_latency_16" in report:
        snap = report["snapshot_latency_16"]
        print(
            f"Chandy-Lamport snapshot, 16 ranks: median {_ms(snap['median_ms'])} ms over "
            f"{snap['snapshots']}"
        )
    if "recovery" in report:
        rec = report["recovery"]
        runs = ", ".join(f"{ms:.0f}" for ms in rec["runs_ms"])
        print(
            f"recovery after kill -9 (small state): median {_ms(rec['median_ms'])} ms "
            f"(runs: {runs})"
        )


if __name__ == "__main__":
    main()
