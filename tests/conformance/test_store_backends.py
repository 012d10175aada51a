"""The same store suite on every backend: LocalDirectory (rename finalizer), Memory (marker) and
ObjectStore on a real S3-compatible server on loopback (conditional-put finalizer, lock object)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapline
from snapline.errors import CheckpointNotFound, ConfigError, EncodeError, StoreLocked
from snapline.store import (
    LocalDirectory,
    Memory,
    ObjectStore,
    Store,
    drop_memory_store,
    open_store,
)


@pytest.fixture(params=["local", "memory", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "store")
    elif request.param == "s3":
        server = request.getfixturevalue("s3_env")
        yield f"s3://{server.new_bucket('conf')}/run-1/rank-0"
    else:
        name = f"conf-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        drop_memory_store(name)


@pytest.fixture
def store(where: str) -> Iterator[Store]:
    with open_store(where, chunk_bytes=64 * 1024) as s:
        yield s


def make_state(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "model": {"w": rng.standard_normal(100_000).astype(np.float32), "b": np.arange(10)},
        "opt": (1e-3, [np.int64(3), "adam"]),
        "blob": b"x" * 10,
        "none": None,
    }


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_backend_kinds(store: Store, where: str) -> None:
    kinds = {"memory": Memory, "s3": ObjectStore}
    expected = kinds.get(where.split("://")[0], LocalDirectory)
    assert isinstance(store.backend, expected)
    assert snapline.open_store is open_store and snapline.Store is Store


def test_save_load_roundtrip_newest_and_by_step(store: Store) -> None:
    s1, s2 = make_state(1), make_state(2)
    info = store.save(s1, step=10, meta={"epoch": 1})
    assert info.step == 10 and info.meta == {"epoch": 1} and info.total_bytes > 400_000
    store.save(s2, step=20)
    assert store.steps() == [10, 20]
    assert_same(store.load(), s2)
    assert_same(store.load(step=10), s1)
    assert store.info(10).meta == {"epoch": 1}


def test_loaded_arrays_are_writable_and_independent(store: Store) -> None:
    store.save(make_state(), step=1)
    a = store.load()
    b = store.load()
    a["model"]["w"][:] = 0
    a["model"]["b"][:] = 0
    assert b["model"]["w"].any() and b["model"]["b"].any()


def test_incremental_save_shares_unchanged_chunks(store: Store) -> None:
    # 4 MB = 62 chunks of 64 KiB (random, so no two chunks are equal)
    state = {"w": np.random.default_rng(0).random(1_000_000, np.float32)}
    first = store.save(state, step=1)
    state["w"][500_000:500_100] = 1.0
    second = store.save(state, step=2)
    assert first.written_bytes >= 4_000_000
    assert second.written_bytes <= 3 * 64 * 1024
    assert second.new_bytes <= 3 * 64 * 1024
    assert second.shared_bytes >= 3_800_000
    listed = store.list()
    assert [i.step for i in listed] == [1, 2] and listed[1].new_bytes == second.new_bytes


def test_identical_chunks_are_written_once(store: Store) -> None:
    info = store.save({"z": np.zeros(1_000_000, np.float32)}, step=1)
    assert info.written_bytes < 3 * 64 * 1024 and info.chunk_count <= 3
    assert store.load()["z"].shape == (1_000_000,)


def test_compression_roundtrip(where: str) -> None:
    with open_store(where, chunk_bytes=64 * 1024, compress=True) as store:
        state = {"z": np.zeros(200_000), "r": np.random.default_rng(0).random(1000)}
        info = store.save(state, step=1)
        assert info.stored_bytes < info.total_bytes / 10
        assert_same(store.load(), state)
        assert store.verify().ok


def test_delete_and_gc(store: Store) -> None:
    for step in range(1, 7):
        store.save({"w": np.full(70_000, step, np.float64)}, step=step)
    store.delete(2)
    assert 2 not in store.steps()
    with pytest.raises(CheckpointNotFound):
        store.delete(2)
    report = store.gc(keep_last=2, keep_every=3)
    assert set(report.kept_steps) == {3, 5, 6}
    assert store.steps() == [3, 5, 6]
    assert report.deleted_chunks > 0
    assert store.verify().ok
    for step in (3, 5, 6):
        assert store.load(step=step)["w"][0] == step
    chunks = len(store.backend.list_keys("chunks/"))
    assert store.gc().deleted_chunks == 0
    assert len(store.backend.list_keys("chunks/")) == chunks


def test_missing_steps_and_empty_store(store: Store) -> None:
    with pytest.raises(CheckpointNotFound, match="no committed checkpoint"):
        store.load()
    store.save({"a": 1}, step=1)
    with pytest.raises(CheckpointNotFound, match="steps: 1"):
        store.load(step=5)
    with pytest.raises(CheckpointNotFound):
        store.verify(step=5)


def test_bad_arguments_lose_nothing(store: Store) -> None:
    store.save(make_state(), step=1)
    with pytest.raises(ConfigError, match="already committed"):
        store.save(make_state(9), step=1)
    with pytest.raises(ConfigError):
        store.save({}, step=-1)
    with pytest.raises(ConfigError, match="JSON"):
        store.save({}, step=2, meta={"x": object()})
    with pytest.raises(EncodeError, match=r"state\['model'\]\['w'\]\[3\]"):
        store.save({"model": {"w": [1, 2, 3, object()]}}, step=2)
    assert store.steps() == [1]
    assert_same(store.load(), make_state())
    store.save(make_state(5), step=1, overwrite=True)
    assert_same(store.load(), make_state(5))


def test_pickle_opt_in(store: Store) -> None:
    store.save({"s": {1, 2}}, step=1, allow_pickle=True)
    with pytest.raises(ConfigError, match="allow_pickle"):
        store.load()
    assert store.load(allow_pickle=True) == {"s": {1, 2}}


def test_save_async_then_mutate(store: Store) -> None:
    state = make_state()
    expected = {k: v for k, v in make_state().items()}
    pending = store.save_async(state, step=1)
    state["model"]["w"][:] = -1.0  # the caller may mutate at once
    state["model"]["b"] += 100
    info = pending.result(timeout_s=30)
    assert info.step == 1 and pending.done()
    assert_same(store.load(step=1), expected)


def test_progress_callback(store: Store) -> None:
    seen: list[tuple[int, int]] = []
    store.save(make_state(), step=1, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    loaded: list[tuple[int, int]] = []
    store.load(progress=lambda d, t: loaded.append((d, t)))
    assert loaded[-1][0] == loaded[-1][1] > 400_000


def test_writer_lock_times_out_with_store_locked(where: str) -> None:
    with open_store(where, lock_timeout_s=0.2) as a, open_store(where, lock_timeout_s=0.2) as b:
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with a.backend.writer_lock(5):
                held.set()
                release.wait(5)

        t = threading.Thread(target=hold)
        t.start()
        held.wait(5)
        try:
            with pytest.raises(StoreLocked, match="locked"):
                b.save({"x": 1}, step=1)
        finally:
            release.set()
            t.join()
        b.save({"x": 1}, step=1)  # once released, the waiting writer proceeds
        assert b.steps() == [1]


def test_reopen_sees_the_same_checkpoints(where: str) -> None:
    with open_store(where) as a:
        a.save(make_state(), step=3)
    with open_store(where) as b:
        assert b.steps() == [3]
        assert_same(b.load(), make_state())


def test_closed_store_refuses(store: Store) -> None:
    store.close()
    with pytest.raises(snapline.StoreError, match="closed"):
        store.save({}, step=1)
