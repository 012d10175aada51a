"""LocalDirectory: ranged reads into many buffers, writes of many pieces, an interrupted create."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snapline.errors import NotAStore
from snapline.store import open_store
from snapline.store.backend import MissingKey
from snapline.store.local import LocalDirectory


def test_write_of_many_small_pieces_then_ranged_read_into_many_buffers(tmp_path: Path) -> None:
    backend = LocalDirectory(tmp_path / "s")
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 255, int(n), np.uint8) for n in rng.integers(1, 3000, 2000)]
    pieces.append(rng.integers(0, 255, 20 * 2**20, np.uint8))  # past a writeback hint
    backend.write("chunks/packs/x.pack", [memoryview(p) for p in pieces])
    whole = np.concatenate(pieces)
    assert backend.size("chunks/packs/x.pack") == whole.nbytes
    offset = 777
    outs = [np.empty(int(n), np.uint8) for n in rng.integers(1, 5000, 1500)]
    size = backend.read_range("chunks/packs/x.pack", offset, [memoryview(o) for o in outs])
    assert size == whole.nbytes
    np.testing.assert_array_equal(
        np.concatenate(outs), whole[offset : offset + sum(map(len, outs))]
    )


def test_ranged_read_past_the_end_reports_the_short_size(tmp_path: Path) -> None:
    backend = LocalDirectory(tmp_path / "s")
    backend.write("chunks/packs/y.pack", [memoryview(b"0123456789")])
    buf = bytearray(8)
    assert backend.read_range("chunks/packs/y.pack", 6, [memoryview(buf)]) == 10
    assert bytes(buf[:4]) == b"6789"
    with pytest.raises(MissingKey):
        backend.read_range("chunks/packs/missing.pack", 0, [memoryview(buf)])


def test_a_failing_piece_source_leaves_no_temporary_file(tmp_path: Path) -> None:
    backend = LocalDirectory(tmp_path / "s")

    class Broken(list[memoryview]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield memoryview(b"abc")
            raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        backend.write("chunks/packs/z.pack", Broken())
    assert not list((tmp_path / "s" / "chunks" / "packs").iterdir())


def test_a_create_killed_before_the_marker_is_completed_by_the_next_open(tmp_path: Path) -> None:
    # What initialize() leaves when killed between its mkdirs and the marker's rename.
    root = tmp_path / "store"
    (root / "chunks").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / ".snapline-store.json.tmp-123-0").write_bytes(b'{"format": "snapl')
    store = open_store(root)
    store.save({"x": 1}, step=1)
    assert open_store(root, create=False).load() == {"x": 1}


def test_a_directory_with_data_but_no_marker_is_still_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "chunks").mkdir(parents=True)
    (root / "manifests").mkdir()
    (root / "manifests" / "000000000001.json").write_text("{}")
    with pytest.raises(NotAStore, match=r"without snapline-store\.json"):
        open_store(root)
