"""Chunk planning: big leaves cut at fixed offsets, small leaves packed and aligned."""

from __future__ import annotations

import numpy as np
import pytest

from snapline.errors import ConfigError
from snapline.state.codec import encode_tree
from snapline.state.layout import chunk_bytes_of, chunk_id, plan_chunks


def test_big_leaf_chunks_and_small_leaf_packs() -> None:
    chunk = 4096
    big = np.arange(5000, dtype=np.float32)  # 20000 bytes -> 5 chunks
    smalls = [np.full(i + 1, i, np.int16) for i in range(30)]
    enc = encode_tree({"big": big, "small": smalls})
    plan = plan_chunks(enc.leaves, chunk_bytes=chunk)
    big_ext = plan.leaf_extents[0]
    assert [e.length for e in big_ext] == [4096] * 4 + [20000 - 4 * 4096]
    assert all(e.offset == 0 for e in big_ext)
    data = [leaf.data for leaf in enc.leaves]
    for leaf, extents in zip(enc.leaves[1:], plan.leaf_extents[1:], strict=True):
        (ext,) = extents
        assert ext.offset % 64 == 0
        assert ext.chunk >= len(big_ext)
        piece = chunk_bytes_of(plan.chunks[ext.chunk], data)[ext.offset : ext.offset + ext.length]
        assert bytes(piece) == leaf.data.tobytes()
    assert all(spec.size <= chunk for spec in plan.chunks)
    assert plan.total_bytes == sum(leaf.nbytes for leaf in enc.leaves)


def test_change_in_one_array_changes_only_its_chunks() -> None:
    a = np.zeros(100_000, np.uint8)
    b = np.ones(100_000, np.uint8)
    enc1 = encode_tree([a, b])
    ids1 = [
        chunk_id(chunk_bytes_of(s, [x.data for x in enc1.leaves]))
        for s in plan_chunks(enc1.leaves, chunk_bytes=8192).chunks
    ]
    a[50_000] = 1
    enc2 = encode_tree([a, b])
    ids2 = [
        chunk_id(chunk_bytes_of(s, [x.data for x in enc2.leaves]))
        for s in plan_chunks(enc2.leaves, chunk_bytes=8192).chunks
    ]
    assert sum(x != y for x, y in zip(ids1, ids2, strict=True)) == 1


def test_single_piece_chunk_is_zero_copy() -> None:
    arr = np.arange(10_000, dtype=np.float64)
    enc = encode_tree(arr)
    plan = plan_chunks(enc.leaves, chunk_bytes=8192)
    view = chunk_bytes_of(plan.chunks[0], [enc.leaves[0].data])
    assert np.shares_memory(np.frombuffer(view, np.uint8), arr)


def test_tiny_chunk_size_refused() -> None:
    with pytest.raises(ConfigError):
        plan_chunks([], chunk_bytes=100)
