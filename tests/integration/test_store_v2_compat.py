"""Stores written with manifest version 2 (row-wise leaf table) still load, verify and grow.

Version 2 manifests are produced by committing ``Manifest.to_bytes(version=2)`` in place of
a fresh save's manifest; that is byte for byte what the version 2 writer (snapline up to the
columnar leaf table) wrote for the same checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.errors import CorruptCheckpoint
from snapline.store import Store, open_store
from snapline.store.manifest import manifest_key

CHUNK = 64 * 1024


def state_for(step: int) -> dict[str, Any]:
    w = np.random.default_rng(0).random(60_000)
    w[:1000] = step
    rng = np.random.default_rng(step)
    return {
        "w": w,
        "small": [np.full(3, step), np.arange(10.0)],
        # Small arrays that share segments; one of them changes every step.
        "many": {
            f"p{i}": rng.random(512) if i == 7 else np.full(512, i, np.float32) for i in range(200)
        },
        "step": step,
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    np.testing.assert_array_equal(a["w"], b["w"])
    for x, y in zip(a["small"], b["small"], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a["many"].keys() == b["many"].keys()
    for k in a["many"]:
        np.testing.assert_array_equal(a["many"][k], b["many"][k])


def save_as_v2(store: Store, state: Any, step: int) -> None:
    """Save ``state``, then commit its manifest again as the version 2 writer wrote it."""
    store.save(state, step=step)
    data = store.manifest(step).to_bytes(version=2)
    assert json.loads(data)["format_version"] == 2
    store.backend.finalizer.commit(store.backend, manifest_key(step), data)


def test_a_version_2_store_loads_verifies_and_takes_new_saves(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, chunk_bytes=CHUNK) as store:
        save_as_v2(store, state_for(1), 1)
        save_as_v2(store, state_for(2), 2)
    with open_store(root, chunk_bytes=CHUNK) as store:
        for step in (1, 2):
            raw = store.backend.read(manifest_key(step))
            assert json.loads(raw)["format_version"] == 2
        same(store.load(), state_for(2))
        same(store.load(step=1), state_for(1))
        assert store.verify().ok
        # A new save reuses the chunks the version 2 checkpoint has and is written as 3.
        info = store.save(state_for(3), step=3)
        assert info.shared_bytes > info.new_bytes
        assert json.loads(store.backend.read(manifest_key(3)))["format_version"] == 3
        same(store.load(), state_for(3))
        same(store.load(step=2), state_for(2))
        report = store.gc(keep_last=2)
        assert report.deleted_steps == (1,)
        assert store.verify().ok
        same(store.load(step=2), state_for(2))
        same(store.load(), state_for(3))


def test_a_flipped_bit_in_a_version_2_manifest_is_damage(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, chunk_bytes=CHUNK) as store:
        save_as_v2(store, state_for(1), 1)
        path = root / manifest_key(1)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptCheckpoint, match="damaged"):
            store.load(step=1)
        assert store.verify().damaged_steps == (1,)
