"""Real crashes: kill -9 of savers at random moments, two concurrent writers, a full disk.

Savers run as real OS processes (started from a multiprocessing forkserver that has snapline
preloaded, so a start costs milliseconds) and are killed with SIGKILL from outside.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest

from snapline.errors import StoreError
from snapline.store import open_store

CHUNK = 64 * 1024


def state_for(step: int) -> dict[str, object]:
    rng = np.random.default_rng(step)
    return {"w": rng.random(125_000), "step": step, "tag": f"step-{step}"}  # 1 MB, 16 chunks


def check_state(state: dict[str, object], step: int) -> None:
    assert state["step"] == step and state["tag"] == f"step-{step}"
    np.testing.assert_array_equal(state["w"], state_for(step)["w"])  # type: ignore[arg-type]


def saver(root: str, conn: Connection, mode: str = "sync") -> None:
    """Child: save consecutive steps forever, reporting each commit.

    ``async``: with ``save_async`` and chunks of 256 KiB, so most chunks go to disk straight
    from staging (direct I/O) and the last one of the array through the page cache.
    """
    chunk = CHUNK if mode == "sync" else 4 * CHUNK
    with open_store(root, chunk_bytes=chunk, lock_timeout_s=10) as store:
        steps = store.steps()
        step = steps[-1] + 1 if steps else 1
        while True:
            if mode == "sync":
                store.save(state_for(step), step=step)
            else:
                store.save_async(state_for(step), step=step).result()
            conn.send(step)
            step += 1


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_9_at_random_moments_never_tears_a_checkpoint(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "snapline.store", __name__])
    rnd = random.Random(1234)
    last_reported = 0
    mid_save_kills = 0  # kills that left a partial save behind (the next save may reuse it)
    kills = 0
    before = 0
    window_s = 0.35  # kill delays are drawn from (0.03, window_s); adapts to machine speed
    # At least 25 kills; keep going (up to 80) until enough of them hit a save in progress.
    while kills < 25 or (kills < 80 and (mid_save_kills < 6 or last_reported < 8)):
        # A busy machine saves slower: widen the window while children commit nothing.
        if kills and last_reported == before:
            window_s = min(3.0, window_s * 1.3)
        kills += 1
        before = last_reported
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=saver, args=(str(root), child, mode))
        proc.start()
        child.close()
        # Let it start, then kill at a random moment; one save takes 0.1-0.5 s here (16
        # chunk files, each fsync'd), so most kills land mid-save.
        proc.join(timeout=rnd.uniform(0.03, window_s))
        # A saver saves until killed: one that ended by itself failed (its error is above).
        assert proc.exitcode is None, f"the saver exited by itself (code {proc.exitcode})"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        try:
            while parent.poll():
                last_reported = parent.recv()
        except EOFError:
            pass  # the pipe is closed once everything the child sent has been read
        parent.close()
        if not root.exists() or not (root / "snapline-store.json").exists():
            continue  # killed before the store was even created
        with open_store(root) as store:
            steps = store.steps()
            if not steps:
                continue
            newest = steps[-1]
            # The newest is the last reported commit, or the one in flight at the kill.
            assert newest in (last_reported, last_reported + 1), (steps, last_reported)
            last_reported = newest
            check_state(store.load(), newest)
            referenced = {c.key for s in steps for c in store.manifest(s).chunks}
            if tmp_files(root) or set(store.backend.list_keys("chunks/")) - referenced:
                mid_save_kills += 1
    with open_store(root) as store:
        assert len(store.steps()) >= 8, "the saver barely got to save"
        assert mid_save_kills >= 6, "too few kills landed mid-save"
        assert store.verify().ok
        store.gc()
        report = store.verify()
        assert report.ok
        referenced = {c.key for s in store.steps() for c in store.manifest(s).chunks}
        assert set(store.backend.list_keys("chunks/")) == referenced
        assert tmp_files(root) == []
        check_state(store.load(step=store.steps()[0]), store.steps()[0])


CONCURRENT_SAVER = """
import sys, numpy as np
from snapline.store import open_store
root, parity = sys.argv[1], int(sys.argv[2])
with open_store(root, chunk_bytes=64 * 1024, lock_timeout_s=60) as store:
    for i in range(6):
        step = 2 * i + parity
        store.save({"w": np.random.default_rng(step).random(200_000), "step": step}, step=step)
print("done")
"""


def test_two_processes_saving_to_one_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    open_store(root).close()  # create it once, so both writers open an existing store
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SAVER, str(root), str(parity)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for parity in (0, 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "done" in out
    with open_store(root) as store:
        assert store.steps() == list(range(12))
        assert store.verify().ok
        for step in range(12):
            got = store.load(step=step)
            assert got["step"] == step
            np.testing.assert_array_equal(got["w"], np.random.default_rng(step).random(200_000))


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_full_disk_on_a_real_small_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip(
            "cannot mount tmpfs here (needs root); test_file_size_limit covers ENOSPC's path"
        )
    try:
        root = mnt / "store"
        with open_store(root, chunk_bytes=256 * 1024) as store:
            small = {"w": np.arange(100_000, dtype=np.float64)}  # 800 kB
            store.save(small, step=1)
            big = {"w": np.random.default_rng(0).random(1_000_000)}  # 8 MB > 3 MiB disk
            with pytest.raises(StoreError, match="disk is full"):
                store.save(big, step=2)
            assert store.steps() == [1]
            np.testing.assert_array_equal(store.load()["w"], small["w"])
            assert tmp_files(root) == []
            store.gc()
            # Whatever the failed save left (whole pack files, never temporaries) is reclaimed.
            kept = {c.key for c in store.manifest(1).chunks}
            assert set(store.backend.list_keys("chunks/")) == kept
            assert store.verify().ok
            store.save({"w": np.ones(10)}, step=2)  # space is back
            assert store.steps() == [1, 2]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


FSIZE_CHILD = """
import json, resource, signal, sys
import numpy as np
from snapline.errors import StoreError
from snapline.store import open_store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
limit = 1024 * 1024
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
with open_store(sys.argv[1], chunk_bytes=4 * 1024 * 1024) as store:
    store.save({"w": np.arange(1000.0)}, step=1)
    try:
        store.save({"w": np.random.default_rng(0).random(400_000)}, step=2)  # 3.2 MB chunk
        print(json.dumps({"error": None}))
    except StoreError as exc:
        print(json.dumps({"error": str(exc), "steps": store.steps()}))
"""


def test_file_size_limit_in_a_child_process(tmp_path: Path) -> None:
    root = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FSIZE_CHILD), str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    assert result["error"] is not None and "file size limit" in result["error"]
    assert result["steps"] == [1]
    with open_store(root) as store:
        np.testing.assert_array_equal(store.load()["w"], np.arange(1000.0))
        assert tmp_files(root) == []
        assert store.verify().ok
