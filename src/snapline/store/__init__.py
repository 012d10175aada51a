"""Stable storage: checkpoints as manifests of content-addressed chunks, on pluggable backends.

Layout of a store (any backend)::

    snapline-store.json              marker: {"format": "snapline-store", "format_version": 1}
    manifests/<step:012d>.json       one committed checkpoint (see manifest.py)
    chunks/packs/<pack id>.pack      pack files: many chunks each, shared between checkpoints
    chunks/<id[:2]>/<id>[.zst]       a chunk in its own file (skeletons; every chunk of a
                                     checkpoint written before pack files)

``open_store(where)`` picks the backend from ``where``: a plain path or ``file://`` URL gives
``LocalDirectory`` (a missing directory is created; a non-empty directory that is not a store
raises ``NotAStore``); ``memory://name`` gives the process-wide ``Memory`` backend. One store
holds the checkpoints of one process; a job keeps one store per rank directory, e.g.
``open_store(root / "rank-3")``.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapline.errors import CheckpointDamagedWarning, ConfigError
from snapline.state.layout import DEFAULT_CHUNK_BYTES
from snapline.store.backend import Backend, Finalizer, MarkerFinalizer, RenameFinalizer
from snapline.store.local import LocalDirectory
from snapline.store.manifest import FORMAT_VERSION, Manifest
from snapline.store.memory import Memory, drop_memory_store
from snapline.store.retention import Retention, RetentionPolicy
from snapline.store.store import PendingSave, Store, open_backend
from snapline.store.types import (
    CheckpointInfo,
    Damage,
    GcReport,
    ProgressCallback,
    VerifyReport,
)


def backend_for(where: str | os.PathLike[str]) -> Backend:
    """The backend a path or URL names (``ConfigError`` for schemes not supported yet)."""
    if isinstance(where, os.PathLike):
        return LocalDirectory(where)
    if where.startswith("memory://"):
        name = where[len("memory://") :]
        if not name:
            raise ConfigError("memory:// URLs need a name, e.g. memory://scratch")
        return Memory(name)
    if where.startswith("file://"):
        return LocalDirectory(where[len("file://") :])
    if "://" in where:
        scheme = where.split("://", 1)[0]
        raise ConfigError(
            f"store URL scheme {scheme!r} is not supported yet; use a path, file:// or memory://"
        )
    return LocalDirectory(Path(where))


def open_store(
    where: str | os.PathLike[str] | Backend,
    *,
    create: bool = True,
    lock_timeout_s: float = 30.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compress: bool = False,
    io_threads: int = 4,
) -> Store:
    """Open (or create) the store at ``where``: a path, ``file://...``, ``memory://name``.

    ``lock_timeout_s``: how long a writer waits for another writer before ``StoreLocked``.
    ``chunk_bytes``: size of the chunks arrays are cut into (default 4 MiB). ``compress``:
    zstd-compress chunks (off by default). ``io_threads``: parallel chunk reads and writes.
    """
    backend = where if isinstance(where, Backend) else backend_for(where)
    return Store(
        open_backend(backend, create=create),
        lock_timeout_s=lock_timeout_s,
        chunk_bytes=chunk_bytes,
        compress=compress,
        io_threads=io_threads,
    )


__all__ = [
    "FORMAT_VERSION",
    "Backend",
    "CheckpointDamagedWarning",
    "CheckpointInfo",
    "Damage",
    "Finalizer",
    "GcReport",
    "LocalDirectory",
    "Manifest",
    "MarkerFinalizer",
    "Memory",
    "PendingSave",
    "ProgressCallback",
    "RenameFinalizer",
    "Retention",
    "RetentionPolicy",
    "Store",
    "VerifyReport",
    "backend_for",
    "drop_memory_store",
    "open_store",
]
