"""Process-level benchmark: CRIU checkpoint pause, restore time and image bytes of a Python
process holding numpy state, against application-level ``store.save`` of the same arrays.

Run (root, CRIU 4.2+ found by ``snapline doctor``): ``python bench/process_bench.py
[--sizes 50,500] [--rounds 3] [--dir PATH]``. The script moves itself into a private network
namespace (as ``snapline run --level process`` does). Per round and size:

* a worker process (no snapline import) allocates SIZE MiB of random float64 and then, every
  10 ms, changes the same 1% of it;
* ``pause_s``: the coordinated checkpoint as the supervisor takes it -- SIGSTOP, ``criu
  dump --leave-running`` (into ``/dev/shm`` when it has room, as the supervisor does),
  SIGCONT -- from freeze to resume; ``image_bytes``: the dump;
* ``store_s`` / ``store_written``: committing the images to a snapline store (chunked,
  deduplicated, fsync'd); then a **second** checkpoint 1 s later: ``second_written`` is
  what the store wrote for it (the chunks that changed);
* ``restore_s``: kill the worker, ``criu restore`` from the image directory, SIGCONT;
  ``restore_from_store_s``: the same, images first loaded from the store;
* ``app_save_s`` / ``app_written`` / ``app_second_written`` / ``app_load_s``: the same
  arrays saved with ``store.save`` in this process (first save, then after the same 1%
  change), and loaded back.

Medians over rounds are printed; JSON: ``bench/results/process_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from snapline.levels.process import make_backend, procs
from snapline.levels.process.criu import CriuBackend
from snapline.levels.process.images import load_global, save_global
from snapline.levels.process.supervisor import scratch_dir, shm_dir
from snapline.store import open_store

WORKER = """
import sys, time
import numpy as np
state = np.random.default_rng(3).random(int(sys.argv[1]) * 2**20 // 8)
step = max(1, state.size // 100)
print("ready", flush=True)
while True:
    state[:step] += 1.0
    time.sleep(0.01)
"""


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _start_worker(backend: CriuBackend, size_mib: int, work: Path) -> int:
    ready = work / "ready"
    code = WORKER.replace('print("ready", flush=True)', f"open({str(ready)!r}, 'w').close()")
    pid = backend.launch([sys.executable, "-c", code, str(size_mib)], [])
    while not ready.exists():
        time.sleep(0.01)
    ready.unlink()
    time.sleep(0.3)
    return pid


def one_round(backend: CriuBackend, size_mib: int, work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    store = open_store(work / "images")
    pid = _start_worker(backend, size_mib, work)
    try:
        # Image directories as the supervisor picks them (/dev/shm when it has room).
        scratch = scratch_dir(work, procs.resident_bytes([pid]))
        first, second = scratch / "dump-1", scratch / "dump-2"
        out["pause_s"] = backend.checkpoint(pid, [pid], first, lambda: None)
        out["image_bytes"] = _dir_bytes(first)
        t = time.monotonic()
        info = save_global(store, 1, first, {}, {"level": "process", "root": pid})
        out["store_s"] = time.monotonic() - t
        out["store_written"] = info.written_bytes
        time.sleep(1.0)
        out["second_pause_s"] = backend.checkpoint(pid, [pid], second, lambda: None)
        info = save_global(store, 2, second, {}, {"level": "process", "root": pid})
        out["second_written"] = info.written_bytes
        procs.kill_sessions([pid])
        t = time.monotonic()
        restored = backend.restore(second, {})
        backend.resume([restored])
        out["restore_s"] = time.monotonic() - t
        procs.kill_sessions([restored])
        t = time.monotonic()
        again = scratch / "restore"
        load_global(store, 2, again)
        restored = backend.restore(again, {})
        backend.resume([restored])
        out["restore_from_store_s"] = time.monotonic() - t
        procs.kill_sessions([restored])
    finally:
        procs.kill_sessions([pid])
        store.close()
        shutil.rmtree(shm_dir(work), ignore_errors=True)
    # Application level: the same arrays, saved by the program itself.
    state = np.random.default_rng(3).random(size_mib * 2**20 // 8)
    app = open_store(work / "app")
    try:
        t = time.monotonic()
        out["app_written"] = app.save({"state": state}, step=1).written_bytes
        out["app_save_s"] = time.monotonic() - t
        step = max(1, state.size // 100)
        state[:step] += 1.0
        out["app_second_written"] = app.save({"state": state}, step=2).written_bytes
        t = time.monotonic()
        app.load(2)
        out["app_load_s"] = time.monotonic() - t
    finally:
        app.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,500", help="MiB of numpy state, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    backend = make_backend("criu")
    assert isinstance(backend, CriuBackend)
    procs.enter_private_network()
    procs.become_subreaper()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"kernel {platform.release()}",
        "criu": backend.criu,
        "rounds": args.rounds,
        "sizes": {},
    }
    for size in (int(s) for s in args.sizes.split(",")):
        rounds = []
        for r in range(args.rounds):
            work = Path(tempfile.mkdtemp(prefix="snapline-pbench-", dir=args.dir))
            try:
                rounds.append(one_round(backend, size, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"{size} MiB round {r}: {json.dumps(rounds[-1])}", flush=True)
        medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        results["sizes"][str(size)] = {"median": medians, "rounds": rounds}
        mib = 2**20
        print(
            f"\n{size} MiB numpy, median of {args.rounds}: "
            f"pause {medians['pause_s']:.2f}s (2nd {medians['second_pause_s']:.2f}s), "
            f"image {medians['image_bytes'] / mib:.0f} MiB, store commit "
            f"{medians['store_s']:.2f}s, 2nd checkpoint wrote "
            f"{medians['second_written'] / mib:.1f} MiB; restore {medians['restore_s']:.2f}s "
            f"({medians['restore_from_store_s']:.2f}s from the store) | app-level save "
            f"{medians['app_save_s']:.2f}s, {medians['app_written'] / mib:.0f} MiB, 2nd "
            f"{medians['app_second_written'] / mib:.1f} MiB, load {medians['app_load_s']:.2f}s\n",
            flush=True,
        )
    out = Path(__file__).resolve().parent / "results" / "process_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
