"""Process-level benchmark: checkpoint pause, restore time and image bytes of a Python process
holding numpy state, for each backend (CRIU, DMTCP) in the same run, against
application-level ``store.save`` of the same arrays.

Run (root; the backends found by ``snapline doctor``): ``python bench/process_bench.py
[--sizes 50,500] [--rounds 3] [--backends criu,dmtcp] [--dir PATH]``. The script moves
itself into a private network namespace (as ``snapline run --level process`` does). Per
backend, round and size:

* a worker process (no snapline import) allocates SIZE MiB of random float64 and then, every
  10 ms, changes the same 1% of it and writes its step number into a small file;
* ``pause_s``: the coordinated checkpoint as the supervisor takes it, from freeze to resume,
  images into ``/dev/shm`` when it has room (as the supervisor does). CRIU: SIGSTOP, ``criu
  dump --leave-running``, SIGCONT. DMTCP: ``dmtcp_command --bcheckpoint`` (the worker runs
  under ``dmtcp_launch`` with its own coordinator; the time includes starting
  ``dmtcp_command``); ``image_bytes``: the images;
* ``store_s`` / ``store_written``: committing the images to a snapline store (chunked,
  deduplicated, fsync'd); then a **second** checkpoint 1 s later: ``second_written`` is
  what the store wrote for it (the chunks that changed);
* ``restore_s``: from the killed worker to the restored one's next step (CRIU: ``criu
  restore``, SIGCONT; DMTCP: a new coordinator and ``dmtcp_restart``);
  ``restore_from_store_s``: the same, images first loaded from the store;
* ``app_save_s`` / ``app_written`` / ``app_second_written`` / ``app_load_s``: the same
  arrays saved with ``store.save`` in this process (first save, then after the same 1%
  change), and loaded back (measured once per round, shared by the backends).

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
from snapline.levels.process.backend import ProcessBackend
from snapline.levels.process.images import load_global, save_global
from snapline.levels.process.supervisor import scratch_dir, shm_dir
from snapline.store import open_store

# The step file is opened, rewritten in place (same size) and closed each step: CRIU checks
# the size of files a process has open, and no descriptor of it stays open.
WORKER = """
import os, sys, time
import numpy as np
state = np.random.default_rng(3).random(int(sys.argv[1]) * 2**20 // 8)
step = max(1, state.size // 100)
i = 0
while True:
    state[:step] += 1.0
    i += 1
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
    os.pwrite(fd, b"%20d" % i, 0)
    os.close(fd)
    time.sleep(0.01)
"""


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _steps(counter: Path) -> int:
    try:
        return int(counter.read_bytes() or b"0")
    except (FileNotFoundError, ValueError):
        return 0


def _wait_past(counter: Path, value: int, timeout_s: float = 120) -> None:
    """Until the worker has taken a step after ``value``."""
    deadline = time.monotonic() + timeout_s
    while _steps(counter) <= value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker made no step past {value} in {timeout_s:.0f}s")
        time.sleep(0.002)


def _start_worker(backend: ProcessBackend, size_mib: int, counter: Path) -> int:
    pid = backend.launch([sys.executable, "-c", WORKER, str(size_mib), str(counter)], [])
    _wait_past(counter, 0)
    time.sleep(0.3)
    return pid


def _restore(backend: ProcessBackend, image_dir: Path, counter: Path) -> int:
    """Restore the worker and wait for its next step; its root pid."""
    at = _steps(counter)
    restored = backend.restore(image_dir, {})
    backend.resume([restored])
    _wait_past(counter, at)
    return restored


def one_round(backend: ProcessBackend, size_mib: int, work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    store = open_store(work / "images")
    counter = work / "steps"
    # Image directories as the supervisor picks them (/dev/shm when it has room).
    scratch = scratch_dir(work, 3 * size_mib * 2**20)
    backend.bind(scratch, work)
    pid = _start_worker(backend, size_mib, counter)
    try:
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
        backend.kill([pid])
        t = time.monotonic()
        restored = _restore(backend, second, counter)
        out["restore_s"] = time.monotonic() - t
        backend.kill([restored])
        t = time.monotonic()
        again = scratch / "restore"
        load_global(store, 2, again)
        restored = _restore(backend, again, counter)
        out["restore_from_store_s"] = time.monotonic() - t
        backend.kill([restored])
    finally:
        backend.kill([pid])
        store.close()
        shutil.rmtree(shm_dir(work), ignore_errors=True)
    return out


def app_round(size_mib: int, work: Path) -> dict[str, float]:
    """Application level: the same arrays, saved by the program itself."""
    out: dict[str, float] = {}
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
    parser.add_argument("--backends", default="criu,dmtcp", help="comma-separated")
    args = parser.parse_args()
    backends = {name: make_backend(name) for name in args.backends.split(",")}
    procs.enter_private_network()
    procs.become_subreaper()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"kernel {platform.release()}",
        "backends": {n: getattr(b, "criu", None) or str(getattr(b, "bin", "")) for n, b in
                     backends.items()},
        "rounds": args.rounds,
        "sizes": {},
    }  # fmt: skip
    mib = 2**20
    for size in (int(s) for s in args.sizes.split(",")):
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in [*backends, "app"]}
        for r in range(args.rounds):
            # The backends alternate within a round, so load from other work hits both alike.
            for name, backend in [*backends.items(), ("app", None)]:
                work = Path(tempfile.mkdtemp(prefix="snapline-pbench-", dir=args.dir))
                try:
                    rounds[name].append(
                        app_round(size, work) if backend is None else one_round(backend, size, work)
                    )
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                print(f"{size} MiB {name} round {r}: {json.dumps(rounds[name][-1])}", flush=True)
        medians = {
            name: {k: statistics.median(x[k] for x in got) for k in got[0]}
            for name, got in rounds.items()
        }
        results["sizes"][str(size)] = {"median": medians, "rounds": rounds}
        print(f"\n{size} MiB numpy, medians of {args.rounds} rounds:")
        for name in backends:
            m = medians[name]
            print(
                f"  {name:5}  pause {m['pause_s']:.2f}s (2nd {m['second_pause_s']:.2f}s), "
                f"image {m['image_bytes'] / mib:.0f} MiB, store commit {m['store_s']:.2f}s, "
                f"2nd checkpoint wrote {m['second_written'] / mib:.1f} MiB; restore "
                f"{m['restore_s']:.2f}s ({m['restore_from_store_s']:.2f}s from the store)"
            )
        a = medians["app"]
        print(
            f"  app    store.save {a['app_save_s']:.2f}s, {a['app_written'] / mib:.0f} MiB, "
            f"2nd {a['app_second_written'] / mib:.1f} MiB, load {a['app_load_s']:.2f}s",
            flush=True,
        )
        if "criu" in backends and "dmtcp" in backends:
            c, d = medians["criu"], medians["dmtcp"]
            print(
                f"  dmtcp/criu: pause {d['pause_s'] / c['pause_s']:.1f}x, image "
                f"{d['image_bytes'] / c['image_bytes']:.1f}x, restore "
                f"{d['restore_s'] / c['restore_s']:.1f}x\n",
                flush=True,
            )
    out = Path(__file__).resolve().parent / "results" / "process_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
