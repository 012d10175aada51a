"""``Memory``: a process-wide in-memory store (``memory://name``), modelled on object stores.

Theory of operation
-------------------
Stores live in a module-level registry keyed by name, so every ``open_store("memory://x")``
in one process sees the same checkpoints (handy for tests and for the simulator). Blobs are
immutable ``bytes`` in a dict; a ``write`` is one dict assignment under a mutex, which is
all-or-nothing like an object-store PUT. Commit uses ``MarkerFinalizer`` -- the object-store
finalizer -- so the conformance suite exercises it. The writer lock is a ``threading.Lock``
per store (waits up to ``lock_timeout_s``, then ``StoreLocked``), matching the local
backend's semantics within one process. Nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from snapline.errors import StoreLocked
from snapline.store.backend import MARKER_KEY, Backend, MarkerFinalizer, MissingKey


@dataclass(slots=True)
class _Space:
    blobs: dict[str, bytes] = field(default_factory=dict)
    mutex: threading.Lock = field(default_factory=threading.Lock)
    writer: threading.Lock = field(default_factory=threading.Lock)


_REGISTRY: dict[str, _Space] = {}
_REGISTRY_MUTEX = threading.Lock()


def drop_memory_store(name: str) -> None:
    """Forget the in-memory store ``name`` (tests use this to start from scratch)."""
    with _REGISTRY_MUTEX:
        _REGISTRY.pop(name, None)


class Memory(Backend):
    """An in-memory store shared by the whole process; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"memory://{name}"
        self.finalizer = MarkerFinalizer()
        with _REGISTRY_MUTEX:
            self._space = _REGISTRY.setdefault(name, _Space())

    def is_initialized(self) -> bool:
        """True once a marker was written."""
        with self._space.mutex:
            return MARKER_KEY in self._space.blobs

    def initialize(self, marker: bytes) -> None:
        """Write the marker."""
        self.write(MARKER_KEY, [memoryview(marker)])

    def read(self, key: str) -> bytes:
        """The stored bytes."""
        with self._space.mutex:
            try:
                return self._space.blobs[key]
            except KeyError:
                raise MissingKey(f"{self.url}/{key} is missing") from None

    def read_into(self, key: str, buffer: memoryview) -> int:
        """Copy the blob into ``buffer`` (one memcpy)."""
        blob = self.read(key)
        n = min(len(blob), buffer.nbytes)
        buffer[:n] = memoryview(blob)[:n]
        return len(blob)

    def size(self, key: str) -> int | None:
        """Length of the blob, or None."""
        with self._space.mutex:
            blob = self._space.blobs.get(key)
        return None if blob is None else len(blob)

    def write(self, key: str, pieces: Sequence[memoryview]) -> None:
        """Join the pieces into one immutable blob and publish it in one assignment."""
        blob = b"".join(pieces)
        with self._space.mutex:
            self._space.blobs[key] = blob

    def sync(self) -> None:
        """Nothing to do: memory writes are as durable as they will ever be."""

    def delete(self, key: str) -> None:
        """Drop the blob."""
        with self._space.mutex:
            self._space.blobs.pop(key, None)

    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys under ``prefix``."""
        with self._space.mutex:
            return sorted(k for k in self._space.blobs if k.startswith(prefix))

    def remove_partial_writes(self) -> int:
        """Writes are atomic here, so there is never anything partial to remove."""
        return 0

    @contextmanager
    def writer_lock(self, timeout_s: float) -> Iterator[None]:
        """The store's lock; ``StoreLocked`` after ``timeout_s``."""
        if not self._space.writer.acquire(timeout=max(0.0, timeout_s)):
            raise StoreLocked(
                f"store {self.url} is locked by another writer for more than {timeout_s:g} s; "
                "wait for its save/gc to finish or use a larger lock_timeout_s"
            )
        try:
            yield
        finally:
            self._space.writer.release()
