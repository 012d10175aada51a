"""Writing checkpoints into pack files: few files, one copy of each chunk, cheap re-saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snapline.state.codec import encode_tree
from snapline.store import open_store
from snapline.store.manifest import pack_key
from snapline.store.writer import BUNDLE_BYTES, PACK_MAX_CHUNKS, LayoutCache, reusable_chunks


def small_arrays(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"a{i}": rng.random(1024) for i in range(count)}  # 8 KiB each


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "chunks").rglob("*") if p.is_file())


def test_thousands_of_small_arrays_take_a_few_files(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        state = small_arrays(2000)  # 16 MB
        info = store.save(state, step=1)
        packs = {c.pack for c in store.manifest(1).chunks if c.pack is not None}
        # One pack per 4 chunk sizes (4 MiB chunks by default), plus the skeleton's file.
        assert 1 <= len(packs) <= 16 * 2**20 // (PACK_MAX_CHUNKS * 4 * 2**20) + 4
        assert len(data_files(tmp_path / "s")) == len(packs) + 1
        # Small arrays share segments (bundle chunks): one hash and manifest entry per segment.
        per_segment = BUNDLE_BYTES // 8192
        assert info.chunk_count == -(-2000 // per_segment) + 1  # and the skeleton
        assert info.written_bytes >= 16_000_000
        loaded = store.load()
        for k, v in state.items():
            np.testing.assert_array_equal(loaded[k], v)
            assert loaded[k].flags.aligned and loaded[k].flags.writeable


def test_resave_after_changing_one_percent_writes_about_one_percent(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        state = small_arrays(2000)
        store.save(state, step=1)
        for a in list(state.values())[::100]:
            a[3] = -1.0
        info = store.save(state, step=2)
        # Only the 20 segments holding a changed array are written again (and the skeleton,
        # which is unchanged here); every other segment is shared with step 1.
        assert info.written_bytes <= 20 * BUNDLE_BYTES
        assert info.shared_bytes >= 2000 * 8192 - 20 * BUNDLE_BYTES
        loaded = store.load(step=2)
        for k, v in state.items():
            np.testing.assert_array_equal(loaded[k], v)
        assert store.verify().ok


def test_a_big_state_is_split_into_streams_and_capped_packs(tmp_path: Path) -> None:
    chunk = 64 * 1024
    with open_store(tmp_path / "s", chunk_bytes=chunk, io_threads=3) as store:
        state = {"w": np.random.default_rng(0).random(200_000)}  # 1.6 MB: 25 chunks
        store.save(state, step=1)
        manifest = store.manifest(1)
        sizes = {c.pack: c.pack_size for c in manifest.chunks if c.pack is not None}
        assert all(size <= PACK_MAX_CHUNKS * chunk for size in sizes.values())
        assert len(sizes) >= 200_000 * 8 // (PACK_MAX_CHUNKS * chunk)
        np.testing.assert_array_equal(store.load()["w"], state["w"])


def test_reusable_chunks_leave_out_missing_and_truncated_packs(tmp_path: Path) -> None:
    chunk = 64 * 1024
    with open_store(tmp_path / "s", chunk_bytes=chunk) as store:
        state = {"w": np.random.default_rng(0).random(100_000)}  # 800 kB, 4 packs
        store.save(state, step=1)
        manifest = store.manifest(1)
        packs = sorted({c.pack for c in manifest.chunks if c.pack is not None})
        assert len(packs) >= 2
        truncated = tmp_path / "s" / pack_key(packs[0])
        truncated.write_bytes(truncated.read_bytes()[:-1])
        (tmp_path / "s" / pack_key(packs[1])).unlink()
        reusable = reusable_chunks(store.backend, manifest)
        assert {r.pack for r in reusable.values()}.isdisjoint(packs[:2])
        assert len(reusable) < len(manifest.chunks)
        # A new save writes what it cannot reuse again, so it is whole.
        info = store.save(state, step=2)
        assert info.written_bytes > 0
        np.testing.assert_array_equal(store.load(step=2)["w"], state["w"])
        assert store.verify(step=2).ok


def test_identical_small_arrays_are_stored_once(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        info = store.save({f"z{i}": np.zeros(2048) for i in range(300)}, step=1)
        # Deduplication works per segment: every full segment of zeros is the same chunk.
        per_segment = BUNDLE_BYTES // 16384
        assert 300 % per_segment  # so the last segment is partial, a chunk of its own
        assert info.chunk_count == 3  # a full segment, the last one, the skeleton
        assert info.written_bytes < 2 * BUNDLE_BYTES
        assert all((v == 0).all() for v in store.load().values())


def test_layout_cache_reuses_a_plan_only_for_the_same_leaf_columns() -> None:
    cache = LayoutCache()
    state = {f"p{i}": np.zeros(100 + i) for i in range(50)}
    first = cache.layout(encode_tree(state), 4096 * 16)
    assert cache.layout(encode_tree(state), 4096 * 16) is first
    assert cache.layout(encode_tree(state), 4096 * 32) is not first  # another chunk size
    changed = {**state, "p3": np.zeros((103, 1))}  # same bytes, another shape
    relaid = cache.layout(encode_tree(changed), 4096 * 32)
    assert relaid.leaves[3].shape == (103, 1)
    grown = {**state, "p3": np.zeros(104)}  # same shape column but for p3, other size
    assert cache.layout(encode_tree(grown), 4096 * 32).plan.total_bytes == (
        relaid.plan.total_bytes + 8
    )


def test_saves_of_a_changing_layout_load_back(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        states = [
            {"a": np.arange(10.0), "b": np.arange(5)},
            {"a": np.arange(10.0), "b": np.arange(5)},
            {"a": np.arange(12.0), "b": np.arange(5)},
            {"a": np.arange(12.0).reshape(3, 4), "b": np.arange(5)},
            {"a": np.arange(12.0).reshape(3, 4), "b": np.arange(5, dtype=np.int32)},
        ]
        for step, state in enumerate(states):
            store.save(state, step=step)
        for step, state in enumerate(states):
            got = store.load(step=step)
            for k, v in state.items():
                assert got[k].dtype == v.dtype and got[k].shape == v.shape
                assert (got[k] == v).all()
