"""Stable storage: checkpoints as manifests of content-addressed chunks, on pluggable backends.

Layout of a store (any backend)::

    snapline-store.json              marker: {"format": "snapline-store", "format_version": 1}
    manifests/<step:012d>.json       one committed checkpoint (see manifest.py)
    chunks/packs/<pack id>.pack      pack files: many chunks each, shared between checkpoints
    chunks/<id[:2]>/<id>[.zst]       a chunk in its own file (skeletons; every chunk of a
                                     checkpoint written before pack files)

``open_store(where)`` picks the backend from ``where``: a plain path or ``file://`` URL gives
``LocalDirectory`` (a missing directory is created; a non-empty directory that is not a store
raises ``NotAStore``); ``memory://name`` gives the process-wide ``Memory`` backend; any other
URL that fsspec knows (``s3://bucket/prefix``, ``gs://``, ...) gives ``ObjectStore`` (the ``s3``
extra; the bucket must exist). One store
holds the checkpoints of one process; a job keeps one store per rank directory, e.g.
``open_store(root / "rank-3")``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snapline.errors import CheckpointDamagedWarning, ConfigError
from snapline.state.layout import DEFAULT_CHUNK_BYTES
from snapline.store.backend import Backend, Finalizer, MarkerFinalizer, RenameFinalizer
from snapline.store.local import LocalDirectory
from snapline.store.manifest import FORMAT_VERSION, Manifest
from snapline.store.memory import Memory, drop_memory_store
from snapline.store.objectstore import ConditionalPutFinalizer, ObjectStore, StoreUnreachable
from snapline.store.retention import Retention, RetentionPolicy
from snapline.store.sharded import ShardSpec, load_shard, save_shard, shard_bounds
from snapline.store.store import PendingSave, Store, open_backend
from snapline.store.types import (
    CheckpointInfo,
    Damage,
    GcReport,
    ProgressCallback,
    VerifyReport,
)


def backend_for(
    where: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> Backend:
    """The backend a path or URL names (``ConfigError`` for schemes not supported).

    ``storage_options`` go to the fsspec file system of an object store URL (for S3, e.g.
    ``{"endpoint_url": ...}``); they are refused for local paths and ``memory://``.
    """
    remote = isinstance(where, str) and "://" in where
    remote = remote and not str(where).startswith(("memory://", "file://"))
    if storage_options is not None and not remote:
        raise ConfigError("storage_options apply to object store URLs (s3://...) only")
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
        return ObjectStore(where, storage_options=storage_options)
    return LocalDirectory(Path(where))


def open_store(
    where: str | os.PathLike[str] | Backend,
    *,
    create: bool = True,
    lock_timeout_s: float = 30.0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    compress: bool = False,
    io_threads: int = 4,
    storage_options: Mapping[str, Any] | None = None,
) -> Store:
    """Open (or create) the store at ``where``: a path, ``file://...``, ``memory://name``,
    ``s3://bucket/prefix`` (or another fsspec URL).

    ``lock_timeout_s``: how long a writer waits for another writer before ``StoreLocked``.
    ``chunk_bytes``: size of the chunks arrays are cut into (default 4 MiB). ``compress``:
    zstd-compress chunks (off by default). ``io_threads``: parallel chunk reads and writes
    (for object stores, parallel requests). ``storage_options``: options of an object
    store's file system (credentials normally come from the environment or a profile).
    """
    backend = (
        where if isinstance(where, Backend) else backend_for(where, storage_options=storage_options)
    )
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
    "ConditionalPutFinalizer",
    "Damage",
    "Finalizer",
    "GcReport",
    "LocalDirectory",
    "Manifest",
    "MarkerFinalizer",
    "Memory",
    "ObjectStore",
    "PendingSave",
    "ProgressCallback",
    "RenameFinalizer",
    "Retention",
    "RetentionPolicy",
    "ShardSpec",
    "Store",
    "StoreUnreachable",
    "VerifyReport",
    "backend_for",
    "drop_memory_store",
    "load_shard",
    "open_store",
    "save_shard",
    "shard_bounds",
]
