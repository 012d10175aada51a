"""save_async: capture then mutate, one staged checkpoint at a time, background errors."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from snapline.errors import StoreError
from snapline.store import Memory, drop_memory_store, open_store


def test_mutation_right_after_save_async_does_not_leak_into_the_checkpoint(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        w = np.zeros(4_000_000, np.float32)  # 16 MB: still being written while we mutate
        capacity = None
        for step in range(1, 4):
            w[:] = step
            pending = store.save_async({"w": w, "view": w[::1000]}, step=step)
            w[:] = -1.0  # mutate at once, many times, while the writer runs
            w[::7] = 99.0
            pending.result(timeout_s=60)
            if capacity is None:
                capacity = store._staging.capacity_bytes
            assert store._staging.capacity_bytes == capacity  # staging memory is reused
        for step in range(1, 4):
            got = store.load(step=step)
            assert (got["w"] == step).all() and (got["view"] == step).all()


def test_at_most_one_staged_checkpoint(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        first = store.save_async({"w": np.ones(2_000_000)}, step=1)
        second = store.save_async({"w": np.zeros(10)}, step=2)
        assert first.done()  # the second call waited for the first
        second.result(timeout_s=60)
        assert store.steps() == [1, 2]


class FailingMemory(Memory):
    """A memory backend whose chunk writes fail while ``fail`` is set (a fault injector)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fail = threading.Event()

    def write(self, key: str, pieces: Sequence[memoryview]) -> None:
        if self.fail.is_set() and key.startswith("chunks/"):
            raise StoreError(f"injected write failure for {key}")
        super().write(key, pieces)


@pytest.fixture
def failing() -> FailingMemory:
    name = f"fail-{uuid.uuid4().hex}"
    yield FailingMemory(name)  # type: ignore[misc]
    drop_memory_store(name)


def test_background_error_surfaces_on_result(failing: FailingMemory) -> None:
    with open_store(failing) as store:
        store.save({"w": np.ones(10)}, step=1)
        failing.fail.set()
        pending = store.save_async({"w": np.arange(100_000.0)}, step=2)
        with pytest.raises(StoreError, match="injected"):
            pending.result(timeout_s=30)
        failing.fail.clear()
        store.save({"w": np.zeros(3)}, step=3)  # already seen: not raised again
        assert store.steps() == [1, 3]


def test_background_error_surfaces_on_the_next_call(failing: FailingMemory) -> None:
    with open_store(failing) as store:
        failing.fail.set()
        store.save_async({"w": np.arange(100_000.0)}, step=1)
        with pytest.raises(StoreError, match="injected"):
            store.save_async({"w": np.zeros(3)}, step=2)
        failing.fail.clear()
        store.save({"w": np.zeros(3)}, step=2)
        assert store.steps() == [2]
        store.gc()
        assert store.verify().ok


def test_close_waits_for_the_pending_save(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.save_async({"w": np.ones(1_000_000)}, step=1)
    store.close()
    with open_store(tmp_path / "s") as again:
        assert again.steps() == [1]
