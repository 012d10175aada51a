"""Resharding benchmark: load M shards of an N-shard array, against loading it all and slicing.

Run: ``python bench/shard_bench.py [--size-mib 1024] [--n 8] [--m 6] [--rounds 3] [--dir PATH]``.
A float32 array of ``--size-mib`` is saved as ``--n`` shards along axis 0 (one store each,
every write fsync'd). Each round then measures, right next to each other:

* ``reshard``: every one of the ``--m`` new ranks loads its shard with ``load_shard`` (reads
  only the chunks overlapping it), one after the other;
* ``load_all_and_slice``: every new rank loads every saved shard whole (``Store.load``),
  concatenates and slices its rows -- what a loader without resharding does;

and the same for one new rank alone (``one_rank_*``). Figures are medians over rounds of the
per-round ratio baseline / reshard (> 1: resharding is faster) and of the bytes read per rank.
Reads are warm (page cache) unless the caches can be dropped (root): the JSON says which.
JSON: ``bench/results/shard_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from snapline.store import LocalDirectory, ShardSpec, Store, load_shard, save_shard
from snapline.store.store import open_backend

COLS = 1024


class CountingDirectory(LocalDirectory):
    """Counts the bytes read through ``read_range`` (chunk reads)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bytes_read = 0

    def read_range(self, key: str, offset: int, buffers: Sequence[memoryview]) -> int:
        self.bytes_read += sum(b.nbytes for b in buffers)
        return super().read_range(key, offset, buffers)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def open_shards(root: Path, n: int) -> list[Store]:
    return [
        Store(open_backend(CountingDirectory(root / f"shard-{i}"), create=True)) for i in range(n)
    ]


def bytes_read(stores: list[Store]) -> int:
    total = 0
    for store in stores:
        backend = store.backend
        assert isinstance(backend, CountingDirectory)
        total += backend.bytes_read
        backend.bytes_read = 0
    return total


def reshard(stores: list[Store], m: int, ranks: range) -> None:
    for j in ranks:
        load_shard(stores, step=1, shard=ShardSpec(j, m))


def load_all_and_slice(stores: list[Store], m: int, ranks: range, rows: int) -> None:
    for j in ranks:
        full = np.concatenate([store.load(1)["w"] for store in stores])
        lo = j * rows // m
        _ = full[lo : (j + 1) * rows // m].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--m", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/shard_bench.json"))
    args = parser.parse_args()
    rows = args.size_mib * 2**20 // (COLS * 4)
    base = Path(tempfile.mkdtemp(prefix="shard-bench-", dir=args.dir))
    try:
        stores = open_shards(base, args.n)
        rng = np.random.default_rng(0)
        for i, store in enumerate(stores):
            spec = ShardSpec(i, args.n)
            lo, hi = spec.bounds(rows)
            piece = rng.random((hi - lo, COLS), dtype=np.float32)
            save_shard(store, {"w": piece}, step=1, shard=spec, global_shapes={"w": (rows, COLS)})
        cold = drop_caches()
        samples: dict[str, list[float]] = {}

        def timed(name: str, fn: Any) -> None:
            if cold:
                drop_caches()
            t0 = time.perf_counter()
            fn()
            samples.setdefault(f"{name}_s", []).append(time.perf_counter() - t0)
            samples.setdefault(f"{name}_bytes", []).append(float(bytes_read(stores)))

        everyone, one = range(args.m), range(args.m // 2, args.m // 2 + 1)
        for round_no in range(args.rounds):
            order = [
                ("reshard", lambda: reshard(stores, args.m, everyone)),
                ("load_all_and_slice", lambda: load_all_and_slice(stores, args.m, everyone, rows)),
                ("one_rank_reshard", lambda: reshard(stores, args.m, one)),
                (
                    "one_rank_load_all_and_slice",
                    lambda: load_all_and_slice(stores, args.m, one, rows),
                ),
            ]
            for name, fn in order[round_no % 2 :: 1] + order[: round_no % 2]:
                timed(name, fn)
        med = {k: statistics.median(v) for k, v in samples.items()}
        ratios = {
            "all_ranks_speedup": statistics.median(
                b / a
                for a, b in zip(samples["reshard_s"], samples["load_all_and_slice_s"], strict=True)
            ),
            "one_rank_speedup": statistics.median(
                b / a
                for a, b in zip(
                    samples["one_rank_reshard_s"],
                    samples["one_rank_load_all_and_slice_s"],
                    strict=True,
                )
            ),
        }
        table = Table(title=f"{args.size_mib} MiB float32, {args.n} saved shards -> {args.m}")
        for col in ("case", "median s", "MiB read"):
            table.add_column(col)
        for name in (
            "reshard",
            "load_all_and_slice",
            "one_rank_reshard",
            "one_rank_load_all_and_slice",
        ):
            table.add_row(name, f"{med[name + '_s']:.3f}", f"{med[name + '_bytes'] / 2**20:.0f}")
        for name, value in ratios.items():
            table.add_row(name, f"{value:.2f}x", "")
        Console().print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                    "cold_cache": cold,
                    "size_mib": args.size_mib,
                    "n": args.n,
                    "m": args.m,
                    "rounds": args.rounds,
                    "medians": med,
                    "ratios": ratios,
                },
                indent=1,
            )
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
