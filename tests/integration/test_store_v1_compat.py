"""Stores written before pack files (manifest version 1, a file per chunk) still load and grow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.errors import CorruptCheckpoint
from snapline.state.codec import encode_tree
from snapline.state.layout import ChunkSpec, chunk_bytes_of, chunk_id, plan_chunks
from snapline.store import open_store
from snapline.store.backend import Backend
from snapline.store.manifest import ChunkRef, LeafRef, Manifest, manifest_key

CHUNK = 64 * 1024


def write_v1(backend: Backend, state: Any, step: int) -> Manifest:
    """Save ``state`` exactly as the version 1 writer did: each chunk its own file."""
    encoded = encode_tree(state)
    plan = plan_chunks(encoded.leaves, chunk_bytes=CHUNK)
    skeleton = np.frombuffer(encoded.skeleton, np.uint8)
    leaf_data = [leaf.data for leaf in encoded.leaves] + [skeleton]
    specs = [
        *plan.chunks,
        ChunkSpec(
            pieces=((len(leaf_data) - 1, 0, skeleton.nbytes),), pad_after=(0,), size=skeleton.nbytes
        ),
    ]
    refs = []
    written = 0
    for spec in specs:
        data = chunk_bytes_of(spec, leaf_data)
        ref = ChunkRef(id=chunk_id(data), size=spec.size, stored_size=spec.size, codec="raw")
        if backend.size(ref.key) != spec.size:
            backend.write(ref.key, [data])
            written += spec.size
        refs.append(ref)
    backend.sync()
    manifest = Manifest(
        step=step,
        created_unix_s=time.time(),
        chunk_bytes=CHUNK,
        chunks=tuple(refs),
        skeleton=(len(specs) - 1, 0, skeleton.nbytes),
        leaves=tuple(
            LeafRef(
                path=leaf.path,
                kind=leaf.kind,
                dtype=leaf.dtype,
                shape=leaf.shape,
                extents=tuple((e.chunk, e.offset, e.length) for e in extents),
            )
            for leaf, extents in zip(encoded.leaves, plan.leaf_extents, strict=True)
        ),
        total_bytes=sum(spec.size for spec in specs),
        written_bytes=written,
    )
    data = manifest.to_bytes()
    assert b'"format_version": 1' in data and b"packs" not in data
    backend.finalizer.commit(backend, manifest_key(step), data)
    return manifest


def state_for(step: int) -> dict[str, Any]:
    w = np.random.default_rng(0).random(60_000)
    w[:1000] = step
    return {"w": w, "small": [np.full(3, step), np.arange(10.0)], "step": step}


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    np.testing.assert_array_equal(a["w"], b["w"])
    for x, y in zip(a["small"], b["small"], strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_version_1_store_loads_verifies_and_takes_new_saves(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, chunk_bytes=CHUNK) as store:
        write_v1(store.backend, state_for(1), 1)
        write_v1(store.backend, state_for(2), 2)
    with open_store(root, chunk_bytes=CHUNK) as store:
        assert [store.manifest(s).format_version for s in (1, 2)] == [1, 1]
        same(store.load(), state_for(2))
        same(store.load(step=1), state_for(1))
        assert store.verify().ok
        # A new save points at the version 1 chunk files it shares instead of copying them.
        info = store.save(state_for(3), step=3)
        assert info.written_bytes < 3 * CHUNK
        assert any(c.pack is None and c.size == CHUNK for c in store.manifest(3).chunks)
        same(store.load(), state_for(3))
        report = store.gc(keep_last=1)
        assert report.deleted_steps == (1, 2) and report.deleted_chunks > 0
        assert store.verify().ok
        same(store.load(), state_for(3))
        referenced = {c.key for c in store.manifest(3).chunks}
        assert set(store.backend.list_keys("chunks/")) == referenced


def test_damage_in_a_version_1_chunk_file_is_found(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, chunk_bytes=CHUNK) as store:
        write_v1(store.backend, state_for(1), 1)
        manifest = store.manifest(1)
        victim = next(c for c in manifest.chunks if c.size == CHUNK)
        path = root / victim.key
        data = bytearray(path.read_bytes())
        data[100] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpoint, match=victim.key):
            store.load(step=1)
        assert store.verify().damaged_steps == (1,)
