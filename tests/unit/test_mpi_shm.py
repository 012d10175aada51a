"""Sweeping the MPICH segments killed ranks leave in /dev/shm: only this launch's orphans."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

from snapline.mpi._shm import PREFIX, mapped_segments, sweep_orphaned_segments


def _segment(directory: Path, name: str, age_s: float = 0.0) -> Path:
    path = directory / f"{PREFIX}{name}"
    path.write_bytes(b"\0" * 4096)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_only_unmapped_segments_of_this_launch_are_removed(tmp_path: Path) -> None:
    since = time.time()
    orphan = _segment(tmp_path, "orphan_0")
    older = _segment(tmp_path, "older_0", age_s=3600)  # another job's, from before the launch
    live = _segment(tmp_path, "live_0")  # a running job's: mapped by a live process (this one)
    other = tmp_path / "not_mpich"
    other.write_bytes(b"x")
    with open(live, "r+b") as fh, mmap.mmap(fh.fileno(), 4096) as mapped:
        assert str(live) in mapped_segments(tmp_path)
        assert sweep_orphaned_segments(since, tmp_path) == [orphan.name]
        assert mapped[0] == 0
    assert not orphan.exists()
    assert older.exists() and live.exists() and other.exists()
    # Unmapped now: the next sweep takes it.
    assert sweep_orphaned_segments(since, tmp_path) == [live.name]


def test_nothing_to_sweep_reads_no_process_maps(tmp_path: Path) -> None:
    assert sweep_orphaned_segments(time.time(), tmp_path / "missing") == []
