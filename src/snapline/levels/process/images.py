"""Images in the store: one store step per global checkpoint of a process-level job.

A global checkpoint is one snapline checkpoint whose state is ``{"images": {file name: bytes
of that image file}, "output": {pipe name: output not yet released}}``. Image files are
memory-mapped and cut into content-addressed chunks like any array, so a second checkpoint of
a mostly unchanged process writes only the chunks that changed; the manifest is written last,
so the global checkpoint exists exactly when every image of every rank is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from snapline.errors import CheckpointNotFound, CorruptCheckpoint, UnsupportedFormat
from snapline.store import CheckpointInfo, Store

_SKIP = {"dump.log", "restore.log", "restored.pid"}


def _file_array(path: Path) -> np.ndarray[Any, Any]:
    if path.stat().st_size == 0:
        return np.empty(0, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)


def save_global(
    store: Store,
    step: int,
    image_dir: Path,
    output: dict[str, bytes],
    meta: dict[str, Any],
) -> CheckpointInfo:
    """Store every file of ``image_dir`` and the unreleased output as checkpoint ``step``."""
    images = {p.name: _file_array(p) for p in sorted(image_dir.iterdir()) if p.name not in _SKIP}
    return store.save({"images": images, "output": output}, step=step, meta=meta)


def newest_global(store: Store) -> int | None:
    """The newest step whose manifest can be read, None when the store holds none."""
    for step in reversed(store.steps()):
        try:
            store.manifest(step)
        except (CorruptCheckpoint, UnsupportedFormat, CheckpointNotFound):
            continue
        return step
    return None


def load_global(
    store: Store, step: int, image_dir: Path
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Write checkpoint ``step``'s images into ``image_dir``; (meta, unreleased output)."""
    state = store.load(step)
    meta = dict(store.manifest(step).meta)
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, data in state["images"].items():
        np.asarray(data, dtype=np.uint8).tofile(image_dir / name)
    output = {name: bytes(value) for name, value in state["output"].items()}
    return meta, output
