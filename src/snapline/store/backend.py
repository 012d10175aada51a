"""The interface every store backend implements, and the pluggable commit finalizers.

Theory of operation
-------------------
A backend is a flat namespace of keys (``snapline-store.json``, ``chunks/ab/<id>``,
``chunks/packs/<id>.pack``, ``manifests/<step:012d>.json``) holding immutable blobs, plus a
writer lock. The store above
it never edits a blob in place: chunks are content-addressed and written once; a checkpoint
becomes visible only when its finalizer commits the manifest. The finalizer is pluggable
because "atomically visible" means different things on different media:

* ``RenameFinalizer`` (file systems): the manifest is written under a temporary name, fsync'd,
  renamed onto its final name, and the directory fsync'd. Visible = the name exists.
* ``MarkerFinalizer`` (object stores, and the memory backend that models them): the manifest
  is put, then an empty ``<manifest>.commit`` marker. Visible = the marker exists, so a
  manifest put by a writer that crashed before the marker is ignored.
* ``ConditionalPutFinalizer`` (``ObjectStore``, in ``objectstore.py``): the manifest is put
  with ``If-None-Match: *``, so it is both the commit point and the guard against two writers
  committing the same step. Visible = the manifest exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager

from snapline.errors import StoreError

MARKER_KEY = "snapline-store.json"


class MissingKey(StoreError):
    """A key the store expected is not there (a missing chunk or manifest)."""


class Backend(ABC):
    """Storage primitives of one store.

    Call order (the ``Store`` keeps to it; a new backend may rely on it):

    1. Open: ``is_initialized()``; if False, ``initialize()`` (creates the store marker).
    2. Save: ``writer_lock(timeout_s)`` is entered; ``size(key)`` checks that files the save
       reuses (packs, the skeleton) are present; the new pack files are written with
       ``write_many`` (one call per stream, several streams at once from a thread pool) and a
       changed skeleton with ``write(key, pieces)``; then
       ``sync()`` so every write is durable; then ``finalizer.commit(backend, manifest_key,
       data)``; the lock is left. Nothing is visible to readers before the commit returns.
    3. Load / verify / list: ``finalizer.visible(backend)`` lists committed manifest keys;
       ``read(key)`` reads a manifest; ``read_range(key, offset, buffers)`` reads chunks (a
       run of neighbouring chunks of a pack at once). Readers take no lock.
    4. Delete / gc: ``writer_lock`` entered; ``finalizer.retract`` hides manifests;
       ``list_keys("chunks/")`` and ``delete(key)`` remove unreferenced chunks;
       ``remove_partial_writes()`` clears what crashed writers left behind.

    ``write`` must be all-or-nothing under its key (a reader never sees a partial blob);
    durability may be deferred to ``sync()``. Errors are ``StoreError`` with a clear message
    (a missing key is ``MissingKey``).
    """

    url: str
    finalizer: Finalizer
    write_stream_min_bytes: int | None = None
    """Bytes per parallel write stream below which a save uses fewer streams (None: the
    writer's default, tuned for disks; object stores want every pack in flight at once)."""

    @abstractmethod
    def is_initialized(self) -> bool:
        """True when the store marker exists (``NotAStore`` when the place is something else)."""

    @abstractmethod
    def initialize(self, marker: bytes) -> None:
        """Create an empty store with the given marker contents."""

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole blob under ``key``."""

    @abstractmethod
    def read_into(self, key: str, buffer: memoryview) -> int:
        """Read the blob under ``key`` into ``buffer``; return the blob's full size.

        When the blob is larger than ``buffer`` only ``len(buffer)`` bytes are read; callers
        compare the returned size with what they expect.
        """

    def read_range(self, key: str, offset: int, buffers: Sequence[memoryview]) -> int:
        """Fill ``buffers``, in order, from the blob's bytes starting at ``offset``.

        Returns the blob's full size; when the blob is too short the buffers are only partly
        filled and the returned size tells the caller so. This default slices ``read(key)``
        (zero-copy for backends holding blobs in memory); file backends read just the range.
        """
        blob = memoryview(self.read(key))
        pos = offset
        for buffer in buffers:
            piece = blob[pos : pos + buffer.nbytes]
            buffer[: piece.nbytes] = piece
            pos += buffer.nbytes
        return blob.nbytes

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None when the key is absent."""

    @abstractmethod
    def write(self, key: str, pieces: Sequence[memoryview]) -> None:
        """Store the concatenation of ``pieces`` under ``key``, all or nothing."""

    def write_many(
        self, items: Iterable[tuple[str, Sequence[memoryview]]], *, direct: bool = False
    ) -> None:
        """``write`` each ``(key, pieces)`` as ``items`` yields it: all or nothing per key.

        For the pack files of one save stream, yielded as the stream lays them out (an error
        raised by ``items`` stops the call). A backend that can overlap their durability
        (``LocalDirectory`` fsyncs each a few files later) overrides this; the default
        writes them one after the other. ``direct``: the pieces are the store's own staging
        memory, unchanged until the call returns, so the backend may write them without a
        copy (``LocalDirectory`` bypasses the page cache for large aligned pieces).
        """
        for key, pieces in items:
            self.write(key, pieces)

    @abstractmethod
    def sync(self) -> None:
        """Make every ``write`` so far durable (fsync of directories on file systems)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is already gone."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every committed-or-not key under ``prefix`` (not partial writes)."""

    @abstractmethod
    def writer_lock(self, timeout_s: float) -> AbstractContextManager[None]:
        """Hold the store's writer lock; wait up to ``timeout_s``, then raise ``StoreLocked``."""

    @abstractmethod
    def remove_partial_writes(self) -> int:
        """Delete leftovers of writes that never completed (call under the writer lock)."""


class Finalizer(ABC):
    """Makes a manifest visible atomically, and lists or retracts visible ones."""

    @abstractmethod
    def commit(self, backend: Backend, key: str, data: bytes, *, replace: bool = False) -> None:
        """Publish ``data`` as the manifest ``key``; visible exactly when this returns.

        ``replace``: the caller means to overwrite a committed manifest of the same key. A
        finalizer that can tell (``ConditionalPutFinalizer``) refuses to replace otherwise.
        """

    @abstractmethod
    def visible(self, backend: Backend) -> list[str]:
        """Keys of the committed manifests."""

    @abstractmethod
    def retract(self, backend: Backend, key: str) -> None:
        """Hide then remove a committed manifest."""

    def abandoned(self, backend: Backend) -> list[str]:
        """Keys of manifests written but never committed (gc removes them)."""
        return []


class RenameFinalizer(Finalizer):
    """File systems: ``write`` is temp name + fsync + rename; ``sync`` fsyncs the directory."""

    def commit(self, backend: Backend, key: str, data: bytes, *, replace: bool = False) -> None:
        """Write the manifest atomically (rename) and fsync its directory."""
        backend.write(key, [memoryview(data)])
        backend.sync()

    def visible(self, backend: Backend) -> list[str]:
        """Every manifest that exists (partial writes never carry the final name)."""
        return [k for k in backend.list_keys("manifests/") if k.endswith(".json")]

    def retract(self, backend: Backend, key: str) -> None:
        """Remove the manifest and make the removal durable."""
        backend.delete(key)
        backend.sync()


class MarkerFinalizer(Finalizer):
    """Object stores: put the manifest, then a ``.commit`` marker that makes it visible."""

    def commit(self, backend: Backend, key: str, data: bytes, *, replace: bool = False) -> None:
        """Put the manifest, then its marker."""
        backend.write(key, [memoryview(data)])
        backend.sync()
        backend.write(key + ".commit", [memoryview(b"")])
        backend.sync()

    def visible(self, backend: Backend) -> list[str]:
        """Manifests whose marker exists."""
        keys = set(backend.list_keys("manifests/"))
        return sorted(k for k in keys if k.endswith(".json") and k + ".commit" in keys)

    def abandoned(self, backend: Backend) -> list[str]:
        """Manifests without a marker: their writer crashed between the two puts."""
        keys = set(backend.list_keys("manifests/"))
        return sorted(k for k in keys if k.endswith(".json") and k + ".commit" not in keys)

    def retract(self, backend: Backend, key: str) -> None:
        """Remove the marker first, so a crash in between leaves an invisible manifest."""
        backend.delete(key + ".commit")
        backend.sync()
        backend.delete(key)
        backend.sync()
