"""Three levels on one program: application, process (CRIU, DMTCP) and system level, one run.

The program is one Python counter with numpy state (``--mib`` MiB of float64 plus an int): every
20 ms it adds one to the counter and to one element of the array and prints ``count N``.
Each level checkpoints it ``--checkpoints`` times, about a second apart, while it runs, and
restores it ``--restores`` times:

* **application**: the program itself, run with ``--store DIR``, declares its state (the
  counter and the array) and saves it with ``snapline.open_store(DIR).save`` every 25 counts;
  a restore is a new process of the program, which loads the newest step;
* **process** (each backend ``snapline.levels.process.BACKENDS`` names; one that cannot run
  here is reported as ``not available: <why>``): the unmodified program, its output on a
  pipe; a checkpoint freezes, dumps and resumes it and stores the images in a snapline store;
  a restore kills it, loads the images from the store and brings the tree back;
* **system**: the unmodified program in a 256 MiB QEMU guest (TCG) booted from the Python
  root disk (``rootfs = "python"``); a checkpoint stops the guest, migrates its RAM, devices
  and CPU state into a snapline store and continues it; a restore kills QEMU and starts a new
  one from the stored stream.

Per level: **pause** (what the program experiences per checkpoint: the synchronous save, the
freeze, the stopped VM; median of all checkpoints), the **state** of the first checkpoint
(bytes it holds) and the **bytes written** for the first and the second (the store
deduplicates: the second writes what changed), and **restore** (from the start of the restore
to the program's next printed line; median of ``--restores``). Every restore checks that the
program went on from the checkpoint: its next line is the count after the last one printed
before the checkpoint. The application level is the baseline: the JSON holds each level's
pause and restore as a ratio to it.

Needs root (the process level runs in a private network namespace, as ``snapline run --level
process`` does), CRIU as ``snapline doctor`` finds it, QEMU, busybox-static, e2fsprogs and the
vm extra. Usage: ``python bench/levels_bench.py [--mib 8] [--checkpoints 4] [--restores 3]``.
Prints a table; JSON: ``bench/results/levels_bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from snapline.errors import ConfigError, SnaplineError
from snapline.levels.process import BACKENDS, make_backend, procs
from snapline.levels.process.images import load_global, save_global
from snapline.levels.process.supervisor import scratch_dir, shm_dir
from snapline.levels.system import VmJob, VmSpec
from snapline.store import open_store

RESULTS = Path(__file__).parent / "results" / "levels_bench.json"
SAVE_EVERY = 25  # counts between two application-level saves (half a second)
TIMEOUT_S = 240.0

PROGRAM = '''"""A counter with numpy state: what every level checkpoints (levels_bench.py)."""
import argparse
import time

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("mib", type=int)
parser.add_argument("--store", help="application level: save the state into this store")
parser.add_argument("--save-every", type=int, default=25)
args = parser.parse_args()
state = {"count": 0, "data": np.random.default_rng(7).random(args.mib * 2**20 // 8)}
store = None
if args.store:
    from snapline import open_store

    store = open_store(args.store)
    if store.steps():
        state = store.load()
while True:
    state["count"] += 1
    data = state["data"]
    data[state["count"] % data.size] += 1.0
    print("count", state["count"], flush=True)
    if store is not None and state["count"] % args.save_every == 0:
        start = time.perf_counter()
        info = store.save(state, step=state["count"] // args.save_every)
        pause = time.perf_counter() - start
        print("saved", info.step, pause, info.total_bytes, info.written_bytes, flush=True)
    time.sleep(0.02)
'''

COUNT = re.compile(rb"^count (\d+)$", re.MULTILINE)


class Lines:
    """The lines a program writes on a pipe, read without blocking longer than asked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        os.set_blocking(fd, False)

    def drain(self) -> bytes:
        """Everything written so far (complete lines kept in ``buffer``)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.buffer
            if not chunk:
                return self.buffer
            self.buffer += chunk

    def wait_for(self, pattern: re.Pattern[bytes], after: int = 0) -> re.Match[bytes]:
        """The first match of ``pattern`` at or after byte ``after`` (waits for it)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            found = pattern.search(self.drain(), after)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern.pattern!r} within {TIMEOUT_S:.0f} s")
            select.select([self.fd], [], [], 0.5)

    def read_all(self) -> None:
        """``drain`` as a checkpoint's drain callback (CRIU calls it with the program frozen)."""
        self.drain()

    def close(self) -> None:
        os.close(self.fd)


class FileLines(Lines):
    """The lines a program appends to a file (DMTCP restores files, not outside pipes)."""

    def __init__(self, path: Path, start: int = 0) -> None:
        self.path = path
        self.start = start  # bytes written before this reader's program ran
        self.buffer = b""

    def drain(self) -> bytes:
        """Everything appended since ``start``."""
        with contextlib.suppress(FileNotFoundError):
            # A restored writer seeks past the end of a new file: skip the hole it leaves.
            self.buffer = self.path.read_bytes()[self.start :].replace(b"\0", b"")
        return self.buffer

    def wait_for(self, pattern: re.Pattern[bytes], after: int = 0) -> re.Match[bytes]:
        """The first match of ``pattern`` at or after byte ``after`` (waits for it)."""
        deadline = time.monotonic() + TIMEOUT_S
        while (found := pattern.search(self.drain(), after)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern.pattern!r} within {TIMEOUT_S:.0f} s")
            time.sleep(0.005)
        return found

    def close(self) -> None:
        pass


def last_count(data: bytes) -> int:
    counts = COUNT.findall(data)
    return int(counts[-1]) if counts else 0


def summary(
    name: str,
    saved: str,
    pauses: list[float],
    state_bytes: int,
    written: list[int],
    restores: list[float],
    continued: list[bool],
) -> dict[str, Any]:
    return {
        "level": name,
        "available": True,
        "saved": saved,
        "pause_s": [round(p, 5) for p in pauses],
        "pause_median_s": statistics.median(pauses),
        "state_bytes": state_bytes,
        "first_written_bytes": written[0],
        "second_written_bytes": written[1],
        "restore_s": [round(r, 4) for r in restores],
        "restore_median_s": statistics.median(restores),
        "continued": all(continued),
    }


# -- application level ---------------------------------------------------------------------------
def application_level(program: Path, work: Path, mib: int, checkpoints: int, restores: int) -> Any:
    store_dir = work / "app-store"
    argv = [sys.executable, str(program), str(mib), "--store", str(store_dir)]
    argv += ["--save-every", str(SAVE_EVERY)]
    saves: list[tuple[int, float, int, int]] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines = Lines(proc.stdout.fileno())
    try:
        pattern = re.compile(rb"^saved (\d+) (\S+) (\d+) (\d+)$", re.MULTILINE)
        at = 0
        while len(saves) < checkpoints:
            found = lines.wait_for(pattern, at)
            at = found.end()
            step, pause, total, written = found.groups()
            saves.append((int(step), float(pause), int(total), int(written)))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    times, continued = [], []
    for _ in range(restores):
        newest = open_store(store_dir, create=False)
        expected = newest.steps()[-1] * SAVE_EVERY + 1
        newest.close()
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            first = Lines(proc.stdout.fileno()).wait_for(COUNT)
            times.append(time.monotonic() - start)
            continued.append(int(first.group(1)) == expected)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    return summary(
        "application",
        "the state the program declares (counter + array)",
        [s[1] for s in saves],
        saves[0][2],
        [saves[0][3], saves[1][3]],
        times,
        continued,
    )


# -- process level --------------------------------------------------------------------------------
def process_level(
    backend_name: str, program: Path, work: Path, mib: int, checkpoints: int, restores: int
) -> Any:
    backend = make_backend(backend_name)  # ConfigError: not available here
    backend.bind(scratch_dir(work, 3 * (mib + 32) * 2**20), work)
    # CRIU swaps a fresh pipe in on restore; DMTCP cannot restore a pipe from outside the job
    # (snapline's supervisor relays output through the job root instead), so the program
    # appends to a file there, which DMTCP restores.
    out_file = work / f"{backend_name}-output"
    relays = getattr(backend, "relays_output", False)
    if relays:
        argv = ["/bin/sh", "-c", f'exec "$0" "$@" >>{out_file} 2>&1', sys.executable]
        root = backend.launch([*argv, str(program), str(mib)], [])
        lines: Lines = FileLines(out_file)
        pipe_name = ""
    else:
        read, write = os.pipe()
        pipe_name = f"pipe:[{os.fstat(write).st_ino}]"
        argv = ["/bin/sh", "-c", f'exec "$0" "$@" >&{write} 2>&1', sys.executable]
        root = backend.launch([*argv, str(program), str(mib)], [write])
        os.close(write)
        lines = Lines(read)
    store = open_store(work / f"{backend_name}-store")
    pauses, written, state_bytes, at_checkpoint = [], [], 0, 0
    try:
        lines.wait_for(COUNT)
        time.sleep(1.0)
        # Images where the supervisor writes them (/dev/shm when it has room).
        scratch = scratch_dir(work, procs.resident_bytes([root]))
        for step in range(1, checkpoints + 1):
            images = scratch / f"{backend_name}-dump-{step}"
            # CRIU drains the output with the program frozen: the cut is exactly the last count
            # read. DMTCP suspends the program some time after it is asked to, so its cut lies
            # between the last count read before the checkpoint and the last one read after.
            before = last_count(lines.drain())
            pauses.append(backend.checkpoint(root, [root], images, lines.read_all))
            at_checkpoint = last_count(lines.drain() if relays else lines.buffer)
            if step == 1:
                state_bytes = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
            info = save_global(store, step, images, {}, {"level": "process", "root": root})
            written.append(info.written_bytes)
            shutil.rmtree(images)
            time.sleep(1.0)
        backend.kill([root])
        times, continued = [], []
        for attempt in range(restores):
            images = scratch / f"{backend_name}-restore-{attempt}"
            restored: Lines
            start = time.monotonic()
            if relays:
                # DMTCP reopens the file and seeks to the checkpoint's offset: give it a new,
                # empty file, so what the restored program writes is all there is to read.
                out_file.rename(work / f"{backend_name}-output-{attempt}")
                out_file.touch()
                restored = FileLines(out_file)
                load_global(store, checkpoints, images)
                root = backend.restore(images, {})
                backend.resume([root])
            else:
                fresh_read, fresh_write = os.pipe()
                load_global(store, checkpoints, images)
                root = backend.restore(images, {pipe_name: fresh_write})
                backend.resume([root])
                os.close(fresh_write)
                restored = Lines(fresh_read)
            try:
                first = restored.wait_for(COUNT)
                times.append(time.monotonic() - start)
                cut = int(first.group(1)) - 1
                continued.append(before <= cut <= at_checkpoint if relays else cut == at_checkpoint)
            finally:
                backend.kill([root])
                restored.close()
                shutil.rmtree(images)
    finally:
        backend.kill([root])
        lines.close()
        store.close()
        shutil.rmtree(shm_dir(work), ignore_errors=True)
    return summary(
        f"process ({backend_name})",
        "the process tree: memory, files, registers",
        pauses,
        state_bytes,
        written,
        times,
        continued,
    )


# -- system level ---------------------------------------------------------------------------------
def _first_count(path: Path, timeout_s: float = TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            found = COUNT.search(path.read_bytes().replace(b"\r\n", b"\n"))
            if found is not None:
                return int(found.group(1))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the guest printed no count within {timeout_s:.0f} s")
        time.sleep(0.01)


def system_level(program: Path, work: Path, mib: int, checkpoints: int, restores: int) -> Any:
    workload = (
        f"cat > /tmp/counter.py <<'SNAPLINE_PROGRAM'\n{program.read_text()}SNAPLINE_PROGRAM\n"
        f"exec python3 /tmp/counter.py {mib}\n"
    )
    spec = VmSpec(guests=1, memory_mib=256, workload=workload, network="none", rootfs="python")
    job = VmJob(spec, work / "vm", interval_s=None)
    released = work / "vm" / "output" / "rank-0.log"
    try:
        job.start()
        _first_count(job.machines[0].output_path)
        time.sleep(1.0)
        records = []
        for _ in range(checkpoints):
            records.append(job.checkpoint())
            time.sleep(1.0)
        at_checkpoint = last_count(released.read_bytes().replace(b"\r\n", b"\n"))
        times, continued = [], []
        for _ in range(restores):
            start = time.monotonic()
            job.restore()
            first = _first_count(job.machines[0].output_path)
            times.append(time.monotonic() - start)
            continued.append(first == at_checkpoint + 1)
    finally:
        job.close()
    return summary(
        "system",
        "the whole VM: RAM, devices, CPU (256 MiB guest)",
        [r.pause_s for r in records],
        records[0].stream_bytes[0],
        [records[0].written_bytes[0], records[1].written_bytes[0]],
        times,
        continued,
    )


def _guarded(name: str, run: Callable[[], Any]) -> Any:
    """A level that cannot run here (or fails) is reported with the reason; the others run."""
    try:
        return run()
    except ConfigError as exc:
        return {"level": name, "available": False, "why": str(exc)}
    except (SnaplineError, TimeoutError) as exc:
        return {"level": name, "available": False, "why": f"failed: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=8, help="MiB of numpy state in the program")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--restores", type=int, default=3)
    args = parser.parse_args()
    if args.checkpoints < 2 or args.restores < 1:
        parser.error("--checkpoints must be at least 2 and --restores at least 1")
    try:
        procs.enter_private_network()  # before any thread; the process level needs it
        procs.become_subreaper()
        isolated = None
    except ConfigError as exc:
        isolated = str(exc)
    work = Path(tempfile.mkdtemp(prefix="snapline-levels-"))
    program = work / "counter.py"
    program.write_text(PROGRAM)
    n, k = args.checkpoints, args.restores
    try:
        levels = [application_level(program, work, args.mib, n, k)]
        for name in BACKENDS:
            if isolated is not None:
                why = isolated
                levels.append({"level": f"process ({name})", "available": False, "why": why})
                continue
            run = functools.partial(process_level, name, program, work, args.mib, n, k)
            levels.append(_guarded(f"process ({name})", run))
        run = functools.partial(system_level, program, work, args.mib, n, k)
        levels.append(_guarded("system", run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = levels[0]
    for level in levels:
        if level["available"]:
            level["pause_vs_application"] = level["pause_median_s"] / base["pause_median_s"]
            level["restore_vs_application"] = level["restore_median_s"] / base["restore_median_s"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "program": f"Python counter + {args.mib} MiB numpy array",
        "checkpoints": n,
        "restores": k,
        "levels": levels,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['program']}: medians ({result['date']}, {result['machine']})")
    for name in ("level", "pause", "state, 1st", "written, 1st", "written, 2nd", "restore", "ok"):
        table.add_column(name, justify="left" if name == "level" else "right")
    missing = []
    for level in result["levels"]:
        if not level["available"]:
            failed = level["why"].startswith("failed: ")
            table.add_row(level["level"], "failed" if failed else "not available", *[""] * 5)
            missing.append(f"{level['level']} {'' if failed else 'not available: '}{level['why']}")
            continue
        table.add_row(
            level["level"],
            _seconds(level["pause_median_s"]),
            _bytes(level["state_bytes"]),
            _bytes(level["first_written_bytes"]),
            _bytes(level["second_written_bytes"]),
            _seconds(level["restore_median_s"]),
            "continued" if level["continued"] else "WRONG COUNT",
        )
    console = Console(width=140)
    console.print(table)
    for line in missing:
        console.print(line)
    console.print(f"wrote {RESULTS}")


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(value: int) -> str:
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 1024:.0f} KiB"


if __name__ == "__main__":
    main()
