"""The store's writer threads run at the priority ``set_background_nice`` asks for."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from snapline.store import open_store, priority

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's"
)


@pytest.fixture
def nice_setting() -> Iterator[None]:
    before = priority.background_nice()
    yield
    priority.set_background_nice(before)


def _niceness_seen_by_save(store_dir: Path) -> tuple[int, int]:
    """The niceness of the thread that writes a ``save_async``, and of the caller's thread."""
    seen: list[int] = []
    with open_store(store_dir) as store:
        # The save thread runs the progress callback: it reports its own niceness.
        def progress(done: int, total: int) -> None:
            if not seen:
                seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        store.save_async({"w": np.arange(1000.0)}, step=1, progress=progress).result()
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen, "the progress callback never ran"
    return seen[0], caller


def test_writer_threads_yield_to_the_caller_when_asked(tmp_path: Path, nice_setting: None) -> None:
    priority.set_background_nice(7)
    writer, caller = _niceness_seen_by_save(tmp_path / "s")
    assert writer == min(19, caller + 7)
    # Only the store's own threads: the caller's thread keeps its priority.
    assert caller == os.getpriority(os.PRIO_PROCESS, os.getpid())


def test_by_default_writer_threads_keep_the_callers_priority(
    tmp_path: Path, nice_setting: None
) -> None:
    priority.set_background_nice(0)
    writer, caller = _niceness_seen_by_save(tmp_path / "s")
    assert writer == caller


def test_out_of_range_setting_is_refused(nice_setting: None) -> None:
    with pytest.raises(ValueError, match=r"0\.\.19"):
        priority.set_background_nice(20)
    with pytest.raises(ValueError, match=r"0\.\.19"):
        priority.set_background_nice(-1)
