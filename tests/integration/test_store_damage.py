"""Real damage on disk: flipped bits, truncations, missing files, bad input to open_store."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xxhash

from snapline.errors import (
    CheckpointDamagedWarning,
    CorruptCheckpoint,
    NotAStore,
    UnsupportedFormat,
)
from snapline.store import Store, open_store
from snapline.store.manifest import ChunkRef, manifest_key

CHUNK = 64 * 1024


def fill(root: Path, *, compress: bool = False) -> Store:
    store = open_store(root, chunk_bytes=CHUNK, compress=compress)
    for step in (1, 2, 3):
        rng = np.random.default_rng(step)
        store.save(
            {"big": rng.random(40_000), "small": [np.full(5, step), np.arange(step)], "s": step},
            step=step,
        )
    return store


def only_in(store: Store, step: int, *, packed: bool | None = None) -> ChunkRef:
    others = {c.key for s in store.steps() if s != step for c in store.manifest(s).chunks}
    m = store.manifest(step)
    skeleton = m.chunks[m.skeleton[0]].key
    for c in m.chunks:
        if c.key in others or c.key == skeleton:
            continue
        is_pack = c.size < CHUNK and c.size != 40_000 * 8 % CHUNK
        if packed is None or packed == is_pack:
            return c
    raise AssertionError("no such chunk")


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def expect_fallback(store: Store, caplog: pytest.LogCaptureFixture, damaged: str) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="snapline.store"),
        pytest.warns(CheckpointDamagedWarning, match="step 3") as record,
    ):
        state = store.load()
    assert state["s"] == 2
    assert damaged in str(record[0].message)
    assert any(damaged in r.getMessage() for r in caplog.records)
    with pytest.raises(CorruptCheckpoint, match=damaged):
        store.load(step=3)
    report = store.verify()
    assert not report.ok and report.damaged_steps == (3,)
    assert store.verify(step=2).ok
    assert store.load(step=2)["s"] == 2


@pytest.mark.parametrize("packed", [False, True])
def test_flipped_bit_in_a_chunk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, packed: bool
) -> None:
    store = fill(tmp_path / "s")
    victim = only_in(store, 3, packed=packed)
    flip(tmp_path / "s" / victim.key, victim.size // 2)
    expect_fallback(store, caplog, victim.key)


def test_flipped_bit_in_a_compressed_chunk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = fill(tmp_path / "s", compress=True)
    victim = only_in(store, 3, packed=False)
    assert victim.codec == "zstd"
    flip(tmp_path / "s" / victim.key, victim.stored_size // 2)
    expect_fallback(store, caplog, victim.key)


def test_truncated_and_missing_chunks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = fill(tmp_path / "s")
    victim = only_in(store, 3, packed=False)
    path = tmp_path / "s" / victim.key
    path.write_bytes(path.read_bytes()[:-1])
    expect_fallback(store, caplog, victim.key)
    path.unlink()
    expect_fallback(store, caplog, victim.key)


def test_damaged_skeleton_chunk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = fill(tmp_path / "s")
    m = store.manifest(3)
    skeleton = m.chunks[m.skeleton[0]]
    flip(tmp_path / "s" / skeleton.key, 1)
    expect_fallback(store, caplog, skeleton.key)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_manifest(tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str) -> None:
    store = fill(tmp_path / "s")
    path = tmp_path / "s" / manifest_key(3)
    if how == "flip":
        flip(path, len(path.read_bytes()) // 3)
    else:
        path.write_bytes(path.read_bytes()[:100])
    expect_fallback(store, caplog, manifest_key(3))
    listed = {i.step: i for i in store.list()}
    assert listed[3].damaged and not listed[2].damaged
    report = store.gc()  # keeps the chunks the damaged manifest still names where it can
    assert store.load(step=2)["s"] == 2
    assert report.kept_steps == (1, 2, 3)


def test_every_checkpoint_damaged(tmp_path: Path) -> None:
    store = fill(tmp_path / "s")
    for step in store.steps():
        flip(tmp_path / "s" / manifest_key(step), 50)
    with pytest.warns(CheckpointDamagedWarning), pytest.raises(CorruptCheckpoint, match="every"):
        store.load()


def resign(path: Path, edit: dict[str, object]) -> None:
    obj = json.loads(path.read_bytes())
    obj.pop("checksum")
    obj.update(edit)
    body = json.dumps(obj, indent=1, sort_keys=True).encode()
    obj["checksum"] = "xxh3_128:" + xxhash.xxh3_128_hexdigest(body)
    path.write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode())


def test_manifest_naming_paths_outside_the_store(tmp_path: Path) -> None:
    store = fill(tmp_path / "s")
    (tmp_path / "secret").write_text("do not read")
    path = tmp_path / "s" / manifest_key(3)
    chunks = json.loads(path.read_bytes())["chunks"]
    chunks[0]["id"] = "../../../secret"
    resign(path, {"chunks": chunks})
    with pytest.raises(CorruptCheckpoint, match="outside the store"):
        store.load(step=3)


def test_newer_manifest_format_is_not_skipped(tmp_path: Path) -> None:
    store = fill(tmp_path / "s")
    resign(tmp_path / "s" / manifest_key(3), {"format_version": 99})
    with pytest.raises(UnsupportedFormat, match="version 99"):
        store.load()
    with pytest.raises(UnsupportedFormat):
        store.gc()
    assert store.load(step=2)["s"] == 2


def test_open_store_bad_places(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(NotAStore, match="not a snapline store"):
        open_store(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStore, match="is a file"):
        open_store(tmp_path / "file")
    with pytest.raises(NotAStore, match="no snapline store"):
        open_store(tmp_path / "missing", create=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    open_store(empty).close()  # an empty directory becomes a store
    marker = empty / "snapline-store.json"
    marker.write_text(json.dumps({"format": "snapline-store", "format_version": 7}))
    with pytest.raises(UnsupportedFormat, match="version 7"):
        open_store(empty)
    marker.write_text("{garbage")
    with pytest.raises(NotAStore, match="unreadable"):
        open_store(empty)


def test_nested_rank_directories(tmp_path: Path) -> None:
    for rank in range(3):
        with open_store(tmp_path / "job" / f"rank-{rank}") as store:
            store.save({"rank": rank}, step=1)
    for rank in range(3):
        with open_store(tmp_path / "job" / f"rank-{rank}") as store:
            assert store.load() == {"rank": rank}


def damage_step_3(root: Path, store: Store, how: str) -> None:
    if how == "manifest":
        flip(root / manifest_key(3), len((root / manifest_key(3)).read_bytes()) // 3)
        return
    victim = only_in(store, 3, packed=False)
    path = root / victim.key
    if how == "flip":
        flip(path, victim.size // 2)
    else:
        path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize("how", ["flip", "truncate", "manifest"])
def test_gc_keep_last_never_deletes_the_newest_intact_step(tmp_path: Path, how: str) -> None:
    root = tmp_path / "s"
    store = fill(root)
    damage_step_3(root, store, how)
    report = store.gc(keep_last=1)
    # Step 2 is what load() restores; the damaged step 3 stays for inspection; 1 goes.
    assert report.kept_steps == (2, 3)
    assert report.deleted_steps == (1,)
    assert report.kept_damaged_steps == (3,)
    with pytest.warns(CheckpointDamagedWarning, match="step 3"):
        assert store.load()["s"] == 2
    assert store.verify(step=2).ok
    # Once a newer intact step exists the damaged one is older than every kept step: it goes.
    store.save({"s": 4}, step=4)
    report = store.gc(keep_last=1)
    assert report.kept_steps == (4,)
    assert report.deleted_steps == (2, 3)
    assert store.load() == {"s": 4}
    assert store.verify().ok


def test_gc_keep_every_keeps_the_newest_intact_step(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = fill(root)
    damage_step_3(root, store, "flip")
    report = store.gc(keep_every=100)
    assert report.kept_steps == (2, 3)
    with pytest.warns(CheckpointDamagedWarning):
        assert store.load()["s"] == 2


def test_gc_with_every_step_damaged_deletes_no_step(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = fill(root)
    for step in store.steps():
        flip(root / manifest_key(step), 50)
    report = store.gc(keep_last=1)
    assert report.deleted_steps == ()
    assert report.kept_damaged_steps == (1, 2, 3)
    assert store.steps() == [1, 2, 3]


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_gc_cli_keep_last_keeps_the_newest_intact_step(tmp_path: Path, how: str) -> None:
    root = tmp_path / "s"
    damage_step_3(root, fill(root), how)
    done = subprocess.run(
        [sys.executable, "-m", "snapline", "gc", str(root), "--keep-last", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "deleted steps: 1;" in done.stdout
    assert "kept damaged step(s) 3" in done.stdout
    with open_store(root, create=False) as store:
        assert store.steps() == [2, 3]
        with pytest.warns(CheckpointDamagedWarning):
            assert store.load()["s"] == 2
