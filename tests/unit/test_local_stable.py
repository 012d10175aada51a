"""The local runtime's stable writer: durable-now ledger records and waits that keep beating."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from snapline.errors import SnaplineError
from snapline.runtime.local.ledger import read_ledger
from snapline.runtime.local.stable import CollectJob, SaveJob, StableWriter, wait_beating


def slow_fsync(path: Path, delay_s: float) -> threading.Event:
    """Write and fsync a real file on a thread, taking at least ``delay_s``."""
    done = threading.Event()

    def work() -> None:
        time.sleep(delay_s)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    return done


def test_a_slow_durable_write_keeps_heartbeating(tmp_path: Path) -> None:
    beats: list[float] = []
    start = time.monotonic()
    done = slow_fsync(tmp_path / "f", 0.5)
    wait_beating(
        done.wait,
        interval_s=0.05,
        timeout_s=10.0,
        beat=lambda: beats.append(time.monotonic()),
        why="test",
    )
    assert done.is_set()
    assert time.monotonic() - start >= 0.5
    # Beats come every interval while waiting, never with a gap near the wait's length.
    assert len(beats) >= 5
    gaps = [b - a for a, b in zip([start, *beats], beats, strict=False)]
    assert max(gaps) < 0.4


def test_a_write_that_never_finishes_is_a_clear_error() -> None:
    never = threading.Event()
    with pytest.raises(SnaplineError, match=r"within 0.2s \(commit marker\).*disk"):
        wait_beating(
            never.wait, interval_s=0.05, timeout_s=0.2, beat=lambda: None, why="commit marker"
        )


def test_append_now_is_durable_ahead_of_a_slow_queued_save(tmp_path: Path) -> None:
    ledger = tmp_path / "rank-0.ledger"
    posted: list[object] = []
    writer = StableWriter(ledger, 0, posted.extend)
    try:

        class SlowSave:
            """A pending save that takes a while, as a big checkpoint on a busy disk does."""

            def __init__(self) -> None:
                self.release = threading.Event()

            def result(self) -> None:
                self.release.wait(10.0)

        save = SlowSave()
        writer.put(SaveJob(generation=0, index=1, pending=save, record={"k": "noop"}))
        synced = writer.append_now({"k": "commit", "index": 0})
        synced.result(timeout=5.0)
        assert not save.release.is_set()  # the commit did not wait behind the save
        assert 0 in read_ledger(ledger, 0).committed
        save.release.set()
        assert writer.drain(5.0)
    finally:
        writer.close()


def test_collect_deletes_old_states_while_the_loop_saves_the_next(tmp_path: Path) -> None:
    """A ``CollectJob`` deletes the states below the horizon (never step 0) on the stable
    thread; a ``save_async`` started meanwhile on the caller's thread still commits."""
    import numpy as np

    from snapline.store import open_store

    with open_store(tmp_path / "rank-0") as store:
        for step in range(5):
            store.save({"x": np.full(1000, float(step))}, step=step)
        completions: list[tuple[object, ...]] = []
        writer = StableWriter(tmp_path / "ledger", 0, completions.extend)
        try:
            big = {"x": np.arange(4_000_000.0)}  # 32 MB: still writing when the job runs
            pending = store.save_async(big, step=5)
            writer.put(CollectJob(before=3, store=store))
            assert writer.drain(30.0)
            pending.result()
        finally:
            writer.close()
        assert store.steps() == [0, 3, 4, 5]
        assert [c for c in completions if c[0] == "gc_failed"] == []
        assert float(store.load(5)["x"][-1]) == 3_999_999.0


def test_a_failed_deletion_is_reported_not_raised(tmp_path: Path) -> None:
    # A stand-in store: as root (the test machines) permissions cannot make a real unlink fail.
    class Stuck:
        def steps(self) -> list[int]:
            return [1, 2]

        def discard(self, step: int) -> None:
            raise OSError(f"read-only file system deleting step {step}")

    completions: list[tuple[object, ...]] = []
    writer = StableWriter(tmp_path / "ledger", 0, completions.extend)
    try:
        writer.put(CollectJob(before=5, store=Stuck()))
        assert writer.drain(10.0)
    finally:
        writer.close()
    failed = [c for c in completions if c[0] == "gc_failed"]
    assert [c[1] for c in failed] == [1, 2]
    assert "read-only" in str(failed[0][2])
