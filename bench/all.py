"""Every figure of snapline's cost targets, in one command, as ratios measured in the same run.

    ./dev bench all                       # 5 interleaved rounds (about 15 minutes here)
    ./dev bench all --rounds 1 --quick    # a smoke run (about a minute)
    ./dev bench all --only runtime,sim    # some sections only

One round measures every figure once: the local runtime (protocol overhead on the bank app,
8 ranks, one checkpoint per second, each protocol against ``none`` in the same round; the
Chandy-Lamport snapshot latency on 16 ranks), the simulator (messages per CPU second, 32 ranks,
``none`` and ``chandy-lamport``) and the store (1 GiB against a raw write+fsync and a raw read
from a cold cache, ``save_async`` against a sync save, 5,000 small arrays against a raw write,
pickle and ``torch.save``, a 1% re-save; and the peers ``torch.save``, ``torch.load`` and
``torch.distributed.checkpoint`` on the same 1 GiB when torch is installed -- the optional
``bench`` extra, ``pip install -e '.[bench]'``). The sections, and the protocols inside the
runtime section, run in an order rotated every round, so that none always runs first on a
shared machine. Each figure is
a ratio of timings taken seconds apart; the table shows the median over rounds (and every
round's value), the target and whether the median meets it. The store's save target says
"every run", so its row is judged by the worst round. JSON: ``bench/results/all.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime_bench
import sim_bench
import store_bench

RESULTS = Path(__file__).resolve().parent / "results" / "all.json"
PROTOCOLS = ("none", "chandy-lamport", "uncoordinated", "bcs", "fdas", "message-logging")
SLOW = ("fdas", "message-logging")
SECTIONS = ("runtime", "sim", "store")


@dataclass(frozen=True)
class Figure:
    """One row of the table: a key into each round's results, its target and how to judge it."""

    key: str
    label: str
    op: str  # ">=", "<=", "<", or "" (no target: a peer shown for comparison)
    target: float
    unit: str = "x"
    every_round: bool = False  # judged by the worst round rather than the median


FIGURES = (
    Figure("loss_chandy-lamport", "Chandy-Lamport overhead vs none (bank, 8 ranks)", "<=", 5, "%"),
    Figure("loss_bcs", "bcs overhead vs none", "<=", 10, "%"),
    Figure("loss_uncoordinated", "uncoordinated overhead vs none", "<=", 10, "%"),
    Figure("loss_fdas", "fdas overhead vs none", "<=", 10, "%"),
    Figure("loss_message-logging", "message-logging overhead vs none", "<=", 10, "%"),
    Figure("snapshot_ms", "Chandy-Lamport snapshot latency, 16 ranks", "<=", 20, "ms"),
    Figure("sim_none", "simulator msgs/CPU-s, none, 32 ranks", ">=", 100_000, "/s"),
    Figure("sim_chandy-lamport", "simulator msgs/CPU-s, chandy-lamport", ">=", 50_000, "/s"),
    Figure("save_vs_raw_write", "save 1 GiB vs raw write+fsync", ">=", 0.9, every_round=True),
    Figure("torch_save_vs_raw_write", "  torch.save 1 GiB vs raw (peer)", "", 0),
    Figure("dcp_save_vs_raw_write", "  DCP save 1 GiB vs raw (peer)", "", 0),
    Figure("load_vs_raw_read_cold", "load, verified, vs raw read, cold cache", ">=", 0.9),
    Figure("torch_load_vs_raw_read_cold", "  torch.load vs raw read, cold (peer)", "", 0),
    Figure("dcp_load_vs_raw_read_cold", "  DCP load vs raw read, cold (peer)", "", 0),
    Figure("async_durable_vs_sync_save", "save_async until durable vs sync save", "<=", 1.1),
    Figure("small_save_vs_raw_write", "5,000 x 16 KiB: save vs raw write+fsync", ">=", 0.8),
    Figure("small_pickle_vs_raw_write", "  pickle vs raw (snapline must lead)", "", 0),
    Figure("small_torch_vs_raw_write", "  torch.save vs raw (peer)", "", 0),
    Figure("small_resave_1pct_vs_full", "5,000 small: 1% re-save vs full save", "<", 1.0),
)


# ------------------------------------------------------------------------------------------
# Sections: each measures its figures once and returns {figure key: value}.


def runtime_round(turn: int, messages: int, snapshot_s: float) -> dict[str, float]:
    """Protocol overhead (protocols in rotated order) and the snapshot latency, once each."""
    order = PROTOCOLS[turn % len(PROTOCOLS) :] + PROTOCOLS[: turn % len(PROTOCOLS)]
    rates: dict[str, float] = {}
    for protocol in order:
        # fdas and message-logging run at a tenth of none's rate: a fifth of the transfers
        # still spans several checkpoint intervals and keeps a round within minutes.
        count = max(1, messages // 5) if protocol in SLOW else messages
        row = runtime_bench.bench_protocol_overhead([protocol], count, 1)[protocol]
        rates[protocol] = row["msgs_per_s"]
    out = {f"rate_{p}": r for p, r in rates.items()}
    for protocol in PROTOCOLS[1:]:
        out[f"loss_{protocol}"] = 100.0 * (1.0 - rates[protocol] / rates["none"])
    snapshot = runtime_bench.bench_snapshot_latency(16, snapshot_s)
    if snapshot["median_ms"] is not None:
        out["snapshot_ms"] = snapshot["median_ms"]
    return out


def sim_round(turn: int, messages: int) -> dict[str, float]:
    """Simulated bank, 32 ranks, two crashes, every checker on: msgs per CPU second."""
    args = argparse.Namespace(
        ranks=32,
        messages=messages,
        topology="complete",
        interval=50.0,
        crashes=2,
        seed=1,
        no_payload_checks=False,
        requests=None,
        duration_s=float(messages),
    )
    order = ("none", "chandy-lamport") if turn % 2 == 0 else ("chandy-lamport", "none")
    return {f"sim_{p}": float(sim_bench.bench_one(p, args)["msgs_per_cpu_s"]) for p in order}


class StoreSection:
    """The store's states, stores and scratch directory, kept across rounds."""

    def __init__(self, size_mib: int, scratch: Path) -> None:
        from snapline.store import open_store

        self.size_bytes = size_mib * 2**20
        self.base = Path(tempfile.mkdtemp(prefix="bench-all-", dir=scratch))
        self.state = store_bench.make_state(size_mib)
        self.small = store_bench.make_small_state()
        self.small_tensors = store_bench._torch_tensors(self.small)
        self.tensors = store_bench._torch_tensors(self.state)
        self.sync = open_store(self.base / "sync")
        self.async_ = open_store(self.base / "async")
        self.small_store = open_store(self.base / "small")
        self.async_.save_async(self.state, step=0).result()  # sizes and faults in staging
        self.small_store.save(self.small, step=0)

    def round(self, turn: int) -> dict[str, float]:
        parts: list[Callable[[], dict[str, float]]] = [
            lambda: store_bench.big_round(
                self.base, self.state, self.sync, self.async_, self.size_bytes
            ),
            lambda: store_bench.small_round(
                self.base, self.small, self.small_store, self.small_tensors, turn
            ),
        ]
        if self.tensors is not None:
            parts.append(lambda: store_bench.peers_round(self.base, self.state, self.tensors))
        out: dict[str, float] = {}
        for part in parts[turn % len(parts) :] + parts[: turn % len(parts)]:
            out.update(part())
        return out

    def close(self) -> None:
        for store in (self.sync, self.async_, self.small_store):
            store.close()
        shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------------------------------------


def judge(figure: Figure, values: list[float]) -> tuple[float, str]:
    """The value a figure is judged by and the verdict ("met", "NOT met" or "")."""
    if not figure.op:
        return statistics.median(values), ""
    if figure.every_round:
        value = min(values) if figure.op == ">=" else max(values)
    else:
        value = statistics.median(values)
    ok = {
        ">=": value >= figure.target,
        "<=": value <= figure.target,
        "<": value < figure.target,
    }[figure.op]
    return value, "met" if ok else "NOT met"


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="transfers per rank in the overhead runs (default 20000, quick 400; a fifth of "
        "it for fdas and message-logging): a quiet machine takes about 3 s for 20000 under "
        "none, so several one-second checkpoints fall due and the job's start and end "
        "detection (tens of ms) weigh little",
    )
    parser.add_argument("--size-mib", type=int, default=None, help="store state (default 1024)")
    parser.add_argument("--dir", type=Path, default=None, help="store scratch directory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only or not set(only) <= set(SECTIONS):
        parser.error(f"--only takes sections of {', '.join(SECTIONS)}, got {args.only!r}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    messages = args.messages or (400 if args.quick else 20000)
    size_mib = args.size_mib or (64 if args.quick else 1024)
    # A wide table even when the output is a file or a pipe (rich assumes 80 columns there).
    console = Console(width=None if sys.stdout.isatty() else 150)
    started = datetime.now(UTC)
    store = StoreSection(size_mib, args.dir or Path.cwd()) if "store" in only else None
    rounds: list[dict[str, float]] = []
    load: list[float] = []
    try:
        for turn in range(args.rounds):
            sections: list[tuple[str, Callable[[], dict[str, float]]]] = []
            snap_s, sim_messages = (2.0, 100) if args.quick else (6.0, 500)
            if "runtime" in only:
                sections.append(
                    ("runtime", functools.partial(runtime_round, turn, messages, snap_s))
                )
            if "sim" in only:
                sections.append(("sim", functools.partial(sim_round, turn, sim_messages)))
            if store is not None:
                sections.append(("store", functools.partial(store.round, turn)))
            k = turn % len(sections)
            result: dict[str, float] = {}
            for name, run in sections[k:] + sections[:k]:
                t0 = time.perf_counter()
                with console.status(f"round {turn + 1}/{args.rounds}: {name}"):
                    result.update(run())
                console.print(
                    f"round {turn + 1}/{args.rounds}: {name} ({time.perf_counter() - t0:.0f} s)"
                )
            load.append(os.getloadavg()[0])
            rounds.append(result)
    finally:
        if store is not None:
            store.close()
    table = Table(
        title=f"snapline cost, median of {args.rounds} interleaved rounds, "
        f"{started:%Y-%m-%d %H:%M} UTC, load average {min(load):.1f}-{max(load):.1f}"
    )
    for col in ("figure", "median", "rounds", "target", ""):
        table.add_column(col, justify="left" if col in ("figure", "rounds") else "right")
    verdicts: dict[str, Any] = {}
    for figure in FIGURES:
        values = [r[figure.key] for r in rounds if figure.key in r]
        if not values:
            continue
        value, verdict = judge(figure, values)
        per_round = " ".join(fmt(v, figure.unit) for v in values)
        want = f"{figure.op} {fmt(figure.target, figure.unit)}" if figure.op else ""
        if figure.every_round:
            want += " every round"
        style = {"met": "green", "NOT met": "red"}.get(verdict, "")
        table.add_row(
            figure.label,
            fmt(value, figure.unit),
            per_round,
            want,
            f"[{style}]{verdict}[/]" if style else "",
        )
        verdicts[figure.key] = {"value": value, "rounds": values, "verdict": verdict}
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date_utc": started.isoformat(timespec="seconds"),
                "machine": f"{platform.node()}, {os.cpu_count()} cpus, Python "
                f"{platform.python_version()}",
                "load_average": load,
                "rounds": args.rounds,
                "quick": args.quick,
                "messages": messages,
                "size_mib": size_mib,
                "figures": verdicts,
                "all_rounds": rounds,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
