"""Store benchmark: snapline save/load against raw I/O, pickle and numpy.save, side by side.

Run: ``python bench/store_bench.py [--size-mib 1024] [--rounds 3] [--dir PATH]``. Prints a
table of medians and writes ``bench/results/store_bench.json``. Every write is fsync'd; loads
run with a warm page cache for snapline and raw reads alike (the page cache cannot be dropped
without root, and the comparison is about CPU-side overhead: hashing, copies, file count).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from snapline.store import open_store

N_ARRAYS = 8


def make_state(size_mib: int) -> dict[str, Any]:
    per = size_mib * 2**20 // N_ARRAYS // 4
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.random(per, dtype=np.float32) for i in range(N_ARRAYS)}


def fsync_write(path: Path, chunks: list[memoryview]) -> None:
    with open(path, "wb", buffering=0) as f:
        for c in chunks:
            f.write(c)
        os.fsync(f.fileno())


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_round(base: Path, state: dict[str, Any], size_bytes: int) -> dict[str, float]:
    r: dict[str, float] = {}
    arrays = list(state.values())
    views = [memoryview(a).cast("B") for a in arrays]

    r["raw_write_s"] = timed(lambda: fsync_write(base / "raw.bin", views))

    store_dir = base / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    with open_store(store_dir) as store:
        r["save_s"] = timed(lambda: store.save(state, step=1))

        def raw_read() -> None:
            # A loader must return new memory, so the raw read allocates its buffer too.
            buf = np.empty(size_bytes, np.uint8)
            with open(base / "raw.bin", "rb", buffering=0) as f:
                mv = memoryview(buf)  # type: ignore[arg-type]
                got = 0
                while got < size_bytes:
                    n = f.readinto(mv[got:])
                    assert n
                    got += n

        raw_read()  # warm the cache for both readers
        store.load(step=1)
        r["raw_read_s"] = timed(raw_read)
        r["load_s"] = timed(lambda: store.load(step=1))

        # Incremental saves: 1% of elements changed, one contiguous block / scattered.
        flat = arrays[0]
        n_change = size_bytes // 4 // 100
        start = len(flat) // 3
        n_block = min(n_change, len(flat) - start)
        flat[start : start + n_block] += 1.0
        t = time.perf_counter()
        info = store.save(state, step=2)
        r["incr_block_s"] = time.perf_counter() - t
        r["incr_block_written_bytes"] = info.written_bytes
        rng = np.random.default_rng(1)
        per = n_change // len(arrays)
        for a in arrays:
            a[rng.integers(0, len(a), per)] += 1.0
        t = time.perf_counter()
        info = store.save(state, step=3)
        r["incr_scattered_s"] = time.perf_counter() - t
        r["incr_scattered_written_bytes"] = info.written_bytes

    # Async: blocking time of save_async vs a sync save of a fresh (unshared) state.
    shutil.rmtree(store_dir, ignore_errors=True)
    with open_store(store_dir) as store:
        for a in arrays:
            a += 1.0
        # Steady state: staging is sized and faulted in by a first save_async, as in training.
        store.save_async(state, step=0).result()
        for a in arrays:
            a += 1.0
        t = time.perf_counter()
        pending = store.save_async(state, step=1)
        r["async_block_s"] = time.perf_counter() - t
        pending.result()
        r["async_total_s"] = time.perf_counter() - t
    shutil.rmtree(store_dir, ignore_errors=True)

    def pickle_save() -> None:
        with open(base / "state.pkl", "wb") as f:
            pickle.dump(state, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())

    r["pickle_save_s"] = timed(pickle_save)

    def numpy_save() -> None:
        with open(base / "state.npy", "wb") as f:
            for a in arrays:
                np.save(f, a)
            f.flush()
            os.fsync(f.fileno())

    r["numpy_save_s"] = timed(numpy_save)
    try:
        import torch  # type: ignore[import-not-found]

        tensors = {k: torch.from_numpy(v) for k, v in state.items()}

        def torch_save() -> None:
            with open(base / "state.pt", "wb") as f:
                torch.save(tensors, f)
                f.flush()
                os.fsync(f.fileno())

        r["torch_save_s"] = timed(torch_save)
    except ImportError:
        pass
    for name in ("raw.bin", "state.pkl", "state.npy", "state.pt"):
        (base / name).unlink(missing_ok=True)
    return r


def main() -> None:
    """Parse flags, run the rounds, print and write the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (local disk)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/store_bench.json"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir or Path.cwd()))
    size_bytes = args.size_mib * 2**20
    rounds: list[dict[str, float]] = []
    try:
        for i in range(args.rounds):
            state = make_state(args.size_mib)
            rounds.append(one_round(base, state, size_bytes))
            print(f"round {i + 1}/{args.rounds} done")
            del state
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    gib = size_bytes / 2**30
    ratios = {
        "save_vs_raw_write": med["raw_write_s"] / med["save_s"],
        "load_vs_raw_read": med["raw_read_s"] / med["load_s"],
        "async_block_vs_sync_save": med["async_block_s"] / med["save_s"],
        "incr_block_bytes_fraction": med["incr_block_written_bytes"] / size_bytes,
        "incr_block_time_vs_full": med["incr_block_s"] / med["save_s"],
        "incr_scattered_bytes_fraction": med["incr_scattered_written_bytes"] / size_bytes,
        "incr_scattered_time_vs_full": med["incr_scattered_s"] / med["save_s"],
    }
    table = Table(title=f"store bench: {args.size_mib} MiB, median of {args.rounds} rounds")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("GiB/s", justify="right")
    for k, v in med.items():
        if k.endswith("_s"):
            rate = gib / v if not k.startswith("incr") and "async_block" not in k else None
            table.add_row(k, f"{v:.3f} s", f"{rate:.2f}" if rate else "")
        else:
            table.add_row(k, f"{v / 2**20:.1f} MiB", "")
    for k, v in ratios.items():
        table.add_row(f"[bold]{k}", f"{v:.3f}", "")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "rounds": args.rounds,
                "machine": f"{platform.node()} {os.cpu_count()} cpus",
                "medians": med,
                "ratios": ratios,
                "all_rounds": rounds,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
