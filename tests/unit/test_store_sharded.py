"""Sharded arrays: N saved shards load back as M shards, reading only overlapping chunks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapline.errors import CheckpointNotFound, ConfigError
from snapline.store import LocalDirectory, ShardSpec, Store, load_shard, save_shard, shard_bounds
from snapline.store.store import open_backend

CHUNK_BYTES = 4096


class CountingDirectory(LocalDirectory):
    """A local directory that counts the chunk bytes read (``read_range``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.range_reads = 0
        self.range_bytes = 0

    def read_range(self, key: str, offset: int, buffers: Sequence[memoryview]) -> int:
        self.range_reads += 1
        self.range_bytes += sum(b.nbytes for b in buffers)
        return super().read_range(key, offset, buffers)


def _stores(root: Path, count: int) -> list[Store]:
    return [
        Store(
            open_backend(CountingDirectory(root / f"shard-{i}"), create=True),
            chunk_bytes=CHUNK_BYTES,
        )
        for i in range(count)
    ]


def _save_all(
    root: Path, arrays: dict[str, np.ndarray[Any, Any]], n: int, axis: int, step: int = 1
) -> list[Store]:
    stores = _stores(root, n)
    for i, store in enumerate(stores):
        spec = ShardSpec(i, n, axis)
        pieces = {}
        for name, full in arrays.items():
            lo, hi = spec.bounds(full.shape[axis])
            pieces[name] = np.take(full, np.arange(lo, hi), axis=axis)
        save_shard(
            store,
            pieces,
            step=step,
            shard=spec,
            global_shapes={k: v.shape for k, v in arrays.items()},
        )
    return stores


@given(length=st.integers(0, 40), count=st.integers(1, 9))
def test_shard_bounds_tile_the_axis_like_array_split(length: int, count: int) -> None:
    pieces = np.array_split(np.arange(length), count)
    for i, piece in enumerate(pieces):
        lo, hi = shard_bounds(length, i, count)
        assert list(range(lo, hi)) == piece.tolist()


@pytest.mark.parametrize("dtype", ["<f4", ">i8", "u1", "<c16"])
@pytest.mark.parametrize(("n", "m"), [(4, 6), (6, 3), (1, 5), (5, 1), (3, 3), (7, 2)])
@pytest.mark.parametrize("axis", [0, 1])
def test_n_shards_load_as_m_shards(tmp_path: Path, dtype: str, n: int, m: int, axis: int) -> None:
    rng = np.random.default_rng(7)
    full = (rng.random((37, 23)) * 200).astype(dtype)
    vec = np.arange(37 * 23, dtype=np.int32).reshape(37, 23)
    stores = _save_all(tmp_path, {"w": full, "v": vec}, n, axis)
    got = [load_shard(stores, step=1, shard=ShardSpec(j, m, axis)) for j in range(m)]
    for j, parts in enumerate(got):
        assert parts["w"].dtype == full.dtype
        np.testing.assert_array_equal(parts["w"], np.array_split(full, m, axis=axis)[j])
        np.testing.assert_array_equal(parts["v"], np.array_split(vec, m, axis=axis)[j])


def test_rows_of_a_column_sharded_array(tmp_path: Path) -> None:
    full = np.arange(30 * 50, dtype=np.float64).reshape(30, 50)
    stores = _save_all(tmp_path, {"a": full}, 4, axis=1)
    part = load_shard(stores, step=1, shard=ShardSpec(2, 3, axis=0))["a"]
    np.testing.assert_array_equal(part, np.array_split(full, 3, axis=0)[2])


def test_three_axes_and_names(tmp_path: Path) -> None:
    full = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    other = np.ones((6, 2))
    stores = _save_all(tmp_path, {"t": full, "o": other}, 3, axis=0)
    got = load_shard(stores, step=1, shard=ShardSpec(1, 2, axis=1), names=["t"])
    assert list(got) == ["t"]
    np.testing.assert_array_equal(got["t"], np.array_split(full, 2, axis=1)[1])


def test_reads_only_the_overlapping_chunks(tmp_path: Path) -> None:
    # 64 rows of 1 KiB: 16 chunks of 4 KiB per 64-row shard, one chunk per 4 rows.
    full = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)
    stores = _save_all(tmp_path, {"w": full}, 4, axis=0)
    backends = [s.backend for s in stores]
    assert all(isinstance(b, CountingDirectory) for b in backends)
    # Shard 1 of 8 holds rows 32..64: the second half of saved shard 0 only.
    part = load_shard(stores, step=1, shard=ShardSpec(1, 8))["w"]
    np.testing.assert_array_equal(part, full[32:64])
    reads = [b.range_bytes for b in backends if isinstance(b, CountingDirectory)]
    assert reads == [32 * 1024, 0, 0, 0]
    # Shard 2 of 5 holds rows 103..154 (rounded out to whole chunks: rows 100..156).
    for b in backends:
        assert isinstance(b, CountingDirectory)
        b.range_bytes = 0
    part = load_shard(stores, step=1, shard=ShardSpec(2, 5))["w"]
    np.testing.assert_array_equal(part, np.array_split(full, 5)[2])
    reads = [b.range_bytes for b in backends if isinstance(b, CountingDirectory)]
    assert reads == [0, 28 * 1024, 28 * 1024, 0]


def test_missing_shard_is_named(tmp_path: Path) -> None:
    full = np.zeros((10, 3))
    stores = _save_all(tmp_path, {"w": full}, 3, axis=0)
    stores[2].delete(1)
    with pytest.raises(CheckpointNotFound, match=r"shard 2 of 3 .* has no step 1"):
        load_shard(stores, step=1, shard=ShardSpec(0, 2))
    with pytest.raises(ConfigError, match="was given as shard 0 of 2"):
        load_shard(stores[1:], step=1, shard=ShardSpec(0, 2))


def test_mismatched_global_shapes_are_refused(tmp_path: Path) -> None:
    stores = _stores(tmp_path, 2)
    save_shard(
        stores[0],
        {"w": np.zeros((5, 3))},
        step=1,
        shard=ShardSpec(0, 2),
        global_shapes={"w": (10, 3)},
    )
    save_shard(
        stores[1],
        {"w": np.zeros((6, 3))},
        step=1,
        shard=ShardSpec(1, 2),
        global_shapes={"w": (12, 3)},
    )
    with pytest.raises(ConfigError, match=r"global shape .*different arrays"):
        load_shard(stores, step=1, shard=ShardSpec(0, 1))


def test_bad_saves_are_refused(tmp_path: Path) -> None:
    (store,) = _stores(tmp_path, 1)
    with pytest.raises(ConfigError, match=r"must have shape \(5, 3\), got \(4, 3\)"):
        save_shard(
            store,
            {"w": np.zeros((4, 3))},
            step=1,
            shard=ShardSpec(0, 2),
            global_shapes={"w": (10, 3)},
        )
    with pytest.raises(ConfigError, match="name different arrays"):
        save_shard(store, {"w": np.zeros((5, 3))}, step=1, shard=ShardSpec(0, 2), global_shapes={})
    with pytest.raises(ConfigError, match=r"outside 0..1"):
        ShardSpec(2, 2)
    store.save({"w": np.zeros(3)}, step=2)
    with pytest.raises(ConfigError, match="is no shard"):
        load_shard([store], step=2, shard=ShardSpec(0, 1))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 12),
    n=st.integers(1, 6),
    m=st.integers(1, 6),
    axis=st.sampled_from([0, 1]),
)
def test_any_n_to_m(rows: int, cols: int, n: int, m: int, axis: int) -> None:
    import tempfile

    full = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    with tempfile.TemporaryDirectory() as tmp:
        stores = _save_all(Path(tmp), {"w": full}, n, axis)
        for j in range(m):
            got = load_shard(stores, step=1, shard=ShardSpec(j, m, axis))["w"]
            np.testing.assert_array_equal(got, np.array_split(full, m, axis=axis)[j])
