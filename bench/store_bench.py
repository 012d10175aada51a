"""Store benchmark: snapline save/load against raw I/O, pickle and numpy.save, in the same run.

Run: ``python bench/store_bench.py [--size-mib 1024] [--rounds 5] [--dir PATH]
[--small-only]``. Each round
measures every baseline right next to the snapline operation it is compared with, so a
figure is a ratio of two timings taken seconds apart on the same disk; the table shows the
median over rounds of each per-round ratio (and the median times). Every write is fsync'd.
Cold reads drop the page cache first (``sync`` then ``/proc/sys/vm/drop_caches``, which needs
root; without it the reads are warm and the JSON says so). JSON: ``bench/results/
store_bench.json``.

Figures (the issue's targets in brackets):

* ``save_vs_raw_write``: raw write + fsync of the state's bytes to one file / snapline
  ``save`` of the same state, all of it new (>= 0.9).
* ``load_vs_raw_read_cold``: raw read of that file into fresh memory / snapline ``load``
  with hash verification, both from a cold cache (>= 0.9).
* ``async_durable_vs_sync_save``: time from ``save_async`` until its checkpoint is committed
  / a sync ``save`` of the same (changed) state (<= 1.1).
* ``small_save_vs_raw_write``: 5,000 arrays of 16 KiB: raw write + fsync / snapline ``save``
  (>= 0.8), and ``small_pickle_vs_raw_write`` for pickle (snapline should be ahead), and
  ``small_torch_vs_raw_write`` for ``torch.save`` of the same arrays as tensors when CPU
  torch is installed (an optional benchmark dependency). These full saves run in an order
  rotated every round, so none always runs first or last on a shared disk.
* ``small_resave_1pct_vs_full``: re-save after changing 1% of the small arrays / a full save
  of them (< 1).
* Peers on the same large state when CPU torch is installed: ``torch_save_vs_raw_write``,
  ``dcp_save_vs_raw_write`` (``torch.distributed.checkpoint``, one process, no process group),
  ``torch_load_vs_raw_read_cold`` and ``dcp_load_vs_raw_read_cold``.

``python bench/all.py`` (``./dev bench all``) runs these figures with the runtime's and the
simulator's in interleaved rounds.
"""

from __future__ import annotations

import argparse
import datetime
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

from snapline.store import Store, open_store

N_ARRAYS = 8
SMALL_COUNT = 5000
SMALL_BYTES = 16 * 1024


def make_state(size_mib: int) -> dict[str, Any]:
    per = size_mib * 2**20 // N_ARRAYS // 4
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.random(per, dtype=np.float32) for i in range(N_ARRAYS)}


def make_small_state() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {f"p{i}": rng.random(SMALL_BYTES // 8) for i in range(SMALL_COUNT)}


def drop_caches() -> bool:
    """Drop the page cache (root only); False when it could not be dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def fsync_write(path: Path, arrays: list[np.ndarray[Any, Any]]) -> None:
    """The raw baseline: the arrays' bytes into one file (few system calls), then fsync."""
    views = [memoryview(a).cast("B") for a in arrays]  # type: ignore[arg-type]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(views), 512):
            batch = views[i : i + 512]
            want = sum(v.nbytes for v in batch)
            if os.writev(fd, batch) != want:  # a regular file takes it all at once
                raise OSError("short write")
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_read(path: Path, size_bytes: int) -> None:
    # A loader must return new memory, so the raw read allocates its buffer too.
    buf = np.empty(size_bytes, np.uint8)
    with open(path, "rb", buffering=0) as f:
        mv = memoryview(buf)  # type: ignore[arg-type]
        got = 0
        while got < size_bytes:
            n = f.readinto(mv[got:])
            assert n
            got += n


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def change_all(state: dict[str, Any]) -> None:
    """Change every array, so the next save shares nothing with the previous one."""
    for a in state.values():
        a += 1.0


def fresh_step(store: Store) -> int:
    """The next step, after dropping older ones (untimed) so the disk does not fill."""
    steps = store.steps()
    for s in steps[:-1]:
        store.delete(s)
    store.gc()
    return steps[-1] + 1 if steps else 1


def big_round(
    base: Path, state: dict[str, Any], sync: Store, async_: Store, size_bytes: int
) -> dict[str, float]:
    r: dict[str, float] = {}
    arrays = list(state.values())
    raw = base / "raw.bin"

    change_all(state)
    r["raw_write_s"] = timed(lambda: fsync_write(raw, arrays))
    step = fresh_step(sync)
    r["save_s"] = timed(lambda: sync.save(state, step=step))
    r["save_vs_raw_write"] = r["raw_write_s"] / r["save_s"]

    drop_caches()
    r["raw_read_cold_s"] = timed(lambda: raw_read(raw, size_bytes))
    drop_caches()
    r["load_cold_s"] = timed(lambda: sync.load(step=step))
    r["load_vs_raw_read_cold"] = r["raw_read_cold_s"] / r["load_cold_s"]
    raw.unlink()

    # Async: from the call until the checkpoint is durable, against a sync save of the same
    # changed state just before it. Staging is warm (sized by earlier rounds / the warm-up).
    change_all(state)
    step = fresh_step(sync)
    r["save2_s"] = timed(lambda: sync.save(state, step=step))
    step = fresh_step(async_)
    t0 = time.perf_counter()
    pending = async_.save_async(state, step=step)
    r["async_block_s"] = time.perf_counter() - t0
    pending.result()
    r["async_durable_s"] = time.perf_counter() - t0
    r["async_durable_vs_sync_save"] = r["async_durable_s"] / r["save2_s"]

    # Incremental saves: 1% of elements changed, one contiguous block / scattered.
    step = fresh_step(sync)
    flat = arrays[0]
    n_change = size_bytes // 4 // 100
    start = len(flat) // 3
    flat[start : start + min(n_change, len(flat) - start)] += 1.0
    t0 = time.perf_counter()
    info = sync.save(state, step=step)
    r["incr_block_s"] = time.perf_counter() - t0
    r["incr_block_written_bytes"] = info.written_bytes
    rng = np.random.default_rng(1)
    for a in arrays:
        a[rng.integers(0, len(a), n_change // len(arrays))] += 1.0
    t0 = time.perf_counter()
    info = sync.save(state, step=step + 1)
    r["incr_scattered_s"] = time.perf_counter() - t0
    r["incr_scattered_written_bytes"] = info.written_bytes

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
    for name in ("state.pkl", "state.npy"):
        (base / name).unlink(missing_ok=True)
    return r


def _torch_tensors(state: dict[str, Any]) -> dict[str, Any] | None:
    """The state as torch tensors sharing its memory, or None without (CPU) torch installed."""
    try:
        import torch
    except ImportError:
        return None
    return {k: torch.from_numpy(v) for k, v in state.items()}


def peers_round(base: Path, state: dict[str, Any], tensors: dict[str, Any]) -> dict[str, float]:
    """torch.save / torch.load and torch.distributed.checkpoint on the same state, each next
    to its own raw write+fsync or cold raw read (CPU torch; DCP runs without a process group,
    as one process). Loads return fresh memory, as a raw read into a new buffer does."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    r: dict[str, float] = {}
    arrays = list(state.values())
    size_bytes = sum(a.nbytes for a in arrays)
    raw = base / "peer-raw.bin"
    change_all(state)  # the tensors share the arrays' memory

    def torch_save() -> None:
        with open(base / "state.pt", "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())

    def dcp_save() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group: saving as one process"
            dcp.save(tensors, checkpoint_id=base / "dcp")

    r["peer_raw_write_s"] = timed(lambda: fsync_write(raw, arrays))
    r["torch_save_s"] = timed(torch_save)
    r["dcp_save_s"] = timed(dcp_save)
    r["torch_save_vs_raw_write"] = r["peer_raw_write_s"] / r["torch_save_s"]
    r["dcp_save_vs_raw_write"] = r["peer_raw_write_s"] / r["dcp_save_s"]

    drop_caches()
    r["peer_raw_read_cold_s"] = timed(lambda: raw_read(raw, size_bytes))
    drop_caches()
    r["torch_load_cold_s"] = timed(lambda: torch.load(base / "state.pt", weights_only=True))

    def dcp_load() -> None:
        fresh = {k: torch.empty_like(v) for k, v in tensors.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(fresh, checkpoint_id=base / "dcp")

    drop_caches()
    r["dcp_load_cold_s"] = timed(dcp_load)
    r["torch_load_vs_raw_read_cold"] = r["peer_raw_read_cold_s"] / r["torch_load_cold_s"]
    r["dcp_load_vs_raw_read_cold"] = r["peer_raw_read_cold_s"] / r["dcp_load_cold_s"]
    raw.unlink()
    (base / "state.pt").unlink()
    shutil.rmtree(base / "dcp")
    return r


def small_round(
    base: Path, state: dict[str, Any], store: Store, tensors: dict[str, Any] | None, turn: int
) -> dict[str, float]:
    """One round of the small-arrays figures; ``turn`` rotates the order of the full saves."""
    r: dict[str, float] = {}
    arrays = list(state.values())
    change_all(state)
    step = fresh_step(store)

    def raw_write() -> None:
        fsync_write(base / "small.bin", arrays)

    def snapline_save() -> None:
        store.save(state, step=step)

    def pickle_save() -> None:
        with open(base / "small.pkl", "wb") as f:
            pickle.dump(state, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())

    def torch_save() -> None:
        import torch

        with open(base / "small.pt", "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())

    ops: list[tuple[str, Callable[[], None]]] = [
        ("small_raw_write_s", raw_write),
        ("small_save_s", snapline_save),
        ("small_pickle_s", pickle_save),
    ]
    if tensors is not None:
        ops.append(("small_torch_s", torch_save))
    turn %= len(ops)
    for name, op in ops[turn:] + ops[:turn]:
        r[name] = timed(op)
    for a in arrays[::100]:  # 1% of the arrays
        a[0] += 1.0
    t0 = time.perf_counter()
    info = store.save(state, step=step + 1)
    r["small_resave_1pct_s"] = time.perf_counter() - t0
    r["small_resave_written_bytes"] = info.written_bytes
    r["small_save_vs_raw_write"] = r["small_raw_write_s"] / r["small_save_s"]
    r["small_pickle_vs_raw_write"] = r["small_raw_write_s"] / r["small_pickle_s"]
    if tensors is not None:
        r["small_torch_vs_raw_write"] = r["small_raw_write_s"] / r["small_torch_s"]
    r["small_resave_1pct_vs_full"] = r["small_resave_1pct_s"] / r["small_save_s"]
    for name in ("small.bin", "small.pkl", "small.pt"):
        (base / name).unlink(missing_ok=True)
    return r


TARGETS = {
    "save_vs_raw_write": (">=", 0.9),
    "load_vs_raw_read_cold": (">=", 0.9),
    "async_durable_vs_sync_save": ("<=", 1.1),
    "small_save_vs_raw_write": (">=", 0.8),
    "small_resave_1pct_vs_full": ("<", 1.0),
}


def main() -> None:
    """Parse flags, run the rounds, print and write the medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (local disk)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/store_bench.json"))
    parser.add_argument(
        "--small-only", action="store_true", help="only the many-small-arrays figures"
    )
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    base = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir or Path.cwd()))
    size_bytes = args.size_mib * 2**20
    cold = drop_caches()
    rounds: list[dict[str, float]] = []
    try:
        state = {} if args.small_only else make_state(args.size_mib)
        small = make_small_state()
        tensors = _torch_tensors(small)
        big_tensors = None if args.small_only else _torch_tensors(state)
        with (
            open_store(base / "sync") as sync,
            open_store(base / "async") as async_,
            open_store(base / "small") as small_store,
        ):
            if not args.small_only:
                async_.save_async(state, step=0).result()  # sizes and faults in staging
            small_store.save(small, step=0)
            for i in range(args.rounds):
                r = {} if args.small_only else big_round(base, state, sync, async_, size_bytes)
                r.update(small_round(base, small, small_store, tensors, i))
                if big_tensors is not None:
                    r.update(peers_round(base, state, big_tensors))
                rounds.append(r)
                print(f"round {i + 1}/{args.rounds} done")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    gib = size_bytes / 2**30
    table = Table(
        title=f"store bench: {0 if args.small_only else args.size_mib} MiB + {SMALL_COUNT} x "
        f"{SMALL_BYTES // 1024} KiB, "
        f"median of {args.rounds} rounds, {started:%Y-%m-%d %H:%M} UTC"
    )
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("target", justify="right")
    for k, v in med.items():
        if k in TARGETS and (k.startswith("small") or not args.small_only):
            op, want = TARGETS[k]
            ok = v >= want if op == ">=" else v <= want if op == "<=" else v < want
            table.add_row(f"[bold]{k}", f"{v:.3f}x", f"{op} {want} {'met' if ok else 'NOT met'}")
        elif k.endswith("_vs_raw_write"):
            table.add_row(k, f"{v:.3f}x", "")
        elif k.endswith("_s"):
            rate = f" ({gib / v:.2f} GiB/s)" if k in ("raw_write_s", "save_s") else ""
            table.add_row(k, f"{v:.3f} s{rate}", "")
        else:
            table.add_row(k, f"{v / 2**20:.1f} MiB", "")
    Console().print(table)
    print("cold reads:", "page cache dropped" if cold else "NOT dropped (not root): warm")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date_utc": started.isoformat(timespec="seconds"),
                "size_mib": 0 if args.small_only else args.size_mib,
                "torch": tensors is not None,
                "small": f"{SMALL_COUNT} x {SMALL_BYTES} B",
                "rounds": args.rounds,
                "cold_cache": cold,
                "machine": f"{platform.node()} {os.cpu_count()} cpus",
                "medians": med,
                "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
                "order": "full saves of the small state rotated per round",
                "all_rounds": rounds,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
