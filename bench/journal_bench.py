"""Benchmark of snapline.journal: group commit throughput and recovery time.

1. Acknowledged operations per second from 1, 8 and 32 writer threads, each appending
   key-value ops with the blocking ``append`` (ack = durable), with group commit
   (``batch_ops_max=4096``) and with one fsync per operation (``batch_ops_max=1``), in the same
   run on the same disk. Median of ``--repeats`` runs of ``--seconds`` each.
2. Recovery time (open of an existing journal) for ``--recovery-ops`` operations: replaying the
   whole log (no image), and loading an image plus a short tail (1000 ops). Median of
   ``--repeats`` opens.

Prints a table and writes bench/results/journal_bench.json.
Usage: python bench/journal_bench.py [--seconds 1.5] [--repeats 3] [--recovery-ops 1000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapline.journal import KEY_VALUE, JournalConfig, kv_set, open_journal

RESULTS = Path(__file__).parent / "results" / "journal_bench.json"


def throughput(root: Path, threads_n: int, batch_ops_max: int, seconds: float) -> float:
    """Acknowledged ops/s with ``threads_n`` threads doing blocking appends for ``seconds``."""
    directory = Path(tempfile.mkdtemp(dir=root))
    config = JournalConfig(checkpointer="off", batch_ops_max=batch_ops_max)
    counts = [0] * threads_n
    stop = threading.Event()
    with open_journal(directory, KEY_VALUE, config) as journal:

        def work(t: int) -> None:
            n = 0
            while not stop.is_set():
                journal.append(kv_set(f"{t}:{n % 1000}", n))
                n += 1
            counts[t] = n

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    shutil.rmtree(directory)
    return sum(counts) / elapsed


def timed_open(directory: Path) -> tuple[float, int]:
    """Seconds to open (recover) the journal, and the ops it replayed."""
    started = time.perf_counter()
    journal = open_journal(directory, KEY_VALUE, JournalConfig(checkpointer="off"))
    elapsed = time.perf_counter() - started
    replayed = journal.recovery.ops_replayed
    journal.close()
    return elapsed, replayed


def recovery(root: Path, ops: int, repeats: int) -> dict[str, Any]:
    """Recovery time from the log only, then from an image plus a 1000-op tail."""
    directory = root / "recovery"
    config = JournalConfig(checkpointer="off")
    started = time.perf_counter()
    with open_journal(directory, KEY_VALUE, config) as journal:
        for start in range(0, ops, 10_000):
            journal.append_batch(
                [kv_set(f"key{i % 100_000}", i) for i in range(start, min(ops, start + 10_000))]
            )
    write_s = time.perf_counter() - started
    log_only = [timed_open(directory) for _ in range(repeats)]
    with open_journal(directory, KEY_VALUE, config) as journal:
        started = time.perf_counter()
        journal.checkpoint()
        checkpoint_s = time.perf_counter() - started
        journal.append_batch([kv_set(f"tail{i}", i) for i in range(1000)])
    with_image = [timed_open(directory) for _ in range(repeats)]
    shutil.rmtree(directory)
    return {
        "ops": ops,
        "write_s": write_s,
        "checkpoint_merge_s": checkpoint_s,
        "log_only_s": statistics.median(s for s, _ in log_only),
        "log_only_replayed": log_only[0][1],
        "image_plus_tail_s": statistics.median(s for s, _ in with_image),
        "image_plus_tail_replayed": with_image[0][1],
    }


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recovery-ops", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write (default: tmp).")
    args = parser.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir))
    try:
        rows: list[dict[str, Any]] = []
        for threads_n in (1, 8, 32):
            for mode, batch_ops_max in (("group commit", 4096), ("fsync per op", 1)):
                runs = [
                    throughput(root, threads_n, batch_ops_max, args.seconds)
                    for _ in range(args.repeats)
                ]
                rows.append(
                    {
                        "threads": threads_n,
                        "mode": mode,
                        "ops_per_s_median": statistics.median(runs),
                        "ops_per_s_runs": runs,
                    }
                )
                console.print(f"{threads_n:>2} threads, {mode}: {statistics.median(runs):,.0f}/s")
        rec = recovery(root, args.recovery_ops, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title="journal: acknowledged (durable) ops/s, median")
    table.add_column("writer threads", justify="right")
    table.add_column("group commit", justify="right")
    table.add_column("fsync per op", justify="right")
    table.add_column("speed-up", justify="right")
    for threads_n in (1, 8, 32):
        group = next(r for r in rows if r["threads"] == threads_n and r["mode"] == "group commit")
        single = next(r for r in rows if r["threads"] == threads_n and r["mode"] == "fsync per op")
        table.add_row(
            str(threads_n),
            f"{group['ops_per_s_median']:,.0f}",
            f"{single['ops_per_s_median']:,.0f}",
            f"{group['ops_per_s_median'] / single['ops_per_s_median']:.1f}x",
        )
    console.print(table)
    recovery_table = Table(title=f"journal: recovery of {rec['ops']:,} ops, median open time")
    recovery_table.add_column("from")
    recovery_table.add_column("ops replayed", justify="right")
    recovery_table.add_column("seconds", justify="right")
    recovery_table.add_row("log only", f"{rec['log_only_replayed']:,}", f"{rec['log_only_s']:.2f}")
    recovery_table.add_row(
        "image + tail", f"{rec['image_plus_tail_replayed']:,}", f"{rec['image_plus_tail_s']:.2f}"
    )
    console.print(recovery_table)
    console.print(
        f"(writing {rec['ops']:,} ops in batches of 10k: {rec['write_s']:.1f} s; "
        f"checkpoint merge: {rec['checkpoint_merge_s']:.1f} s)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "journal",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "throughput": rows,
        "recovery": rec,
    }
    RESULTS.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
