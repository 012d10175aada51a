"""Staging memory for ``save_async``: copy the caller's arrays, let the writer start at once.

Theory of operation
-------------------
``save_async`` must return only once the state is captured (the caller may then mutate its
arrays), and the checkpoint should be durable about as soon as a sync save would be. So the
copy and the write overlap: ``Staging.capture`` assigns every leaf that aliases caller memory
a 64-byte aligned slot (page aligned for leaves of 64 KiB or more) in one preallocated buffer
(grown when a state needs more, reused across saves) and returns a ``Capture`` whose tree
already points at the slots. The store
starts the background write, then ``Capture.copy`` fills the slots in order, a few MiB at a
time (``np.copyto`` releases the GIL), publishing how far it got; a writer stream calls
``Capture.wait_for(chunk)`` before reading a chunk, which returns once the chunk's bytes
are copied. Leaves the caller cannot change (private copies, ``bytes``) are not copied.

The store keeps at most one staged checkpoint, so memory held is bounded by the largest
state saved asynchronously. If the copy fails, ``fail`` wakes the writer with an error and
nothing is committed.
"""

from __future__ import annotations

import threading

import numpy as np

from snapline.errors import StoreError
from snapline.state.codec import EncodedTree, Leaf
from snapline.state.layout import ChunkSpec

_ALIGN = 64
_PAGE = 4096
_PAGE_ALIGNED_MIN_BYTES = 64 * 1024
"""Leaves of at least this size get page-aligned slots: the local backend can then write
their chunks to disk straight from staging (``O_DIRECT``), without a page cache copy."""
COPY_STEP_BYTES = 8 * 1024 * 1024
"""How much is copied between two progress updates: small enough for the writer to start
early, large enough that the updates cost nothing next to the copy."""


class Capture:
    """One state being copied into staging (see the module docstring)."""

    def __init__(self, staged: EncodedTree, sources: list[Leaf | None], starts: list[int]) -> None:
        self.staged = staged
        self._sources = sources  # the caller's leaf, or None when the leaf is not copied
        self._starts = starts  # each leaf's offset in staging (copy order)
        self._copied = 0
        self._failed = False
        self._cond = threading.Condition()

    def copy(self) -> None:
        """Copy every leaf into its slot, in staging order, publishing progress."""
        try:
            for source, start, leaf in zip(
                self._sources, self._starts, self.staged.leaves, strict=True
            ):
                if source is None:
                    continue
                for lo in range(0, leaf.nbytes, COPY_STEP_BYTES):
                    hi = min(leaf.nbytes, lo + COPY_STEP_BYTES)
                    np.copyto(leaf.data[lo:hi], source.data[lo:hi])
                    self._publish(start + hi)
            self._publish(-1)
        except BaseException:
            self.fail()
            raise

    def fail(self) -> None:
        """Wake every waiting writer with an error: the capture will not complete."""
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def _publish(self, copied: int) -> None:
        with self._cond:
            self._copied = copied
            self._cond.notify_all()

    def wait_for(self, spec: ChunkSpec) -> None:
        """Return once every byte of the chunk ``spec`` is in staging."""
        need = 0
        for leaf, _start, stop in spec.pieces:
            if self._sources[leaf] is not None:
                need = max(need, self._starts[leaf] + stop)
        with self._cond:
            while not (self._copied < 0 or self._copied >= need or self._failed):
                self._cond.wait()
            if self._failed:
                raise StoreError("save_async: capturing the state failed; nothing was committed")


def _slot_align(nbytes: int) -> int:
    return _PAGE if nbytes >= _PAGE_ALIGNED_MIN_BYTES else _ALIGN


class Staging:
    """Reusable capture memory for ``save_async`` (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)

    @property
    def capacity_bytes(self) -> int:
        """Bytes currently held."""
        return int(self._buffer.nbytes)

    def capture(self, encoded: EncodedTree) -> Capture:
        """Assign slots to every leaf that aliases caller memory; ``copy`` is still to run."""
        need = 0
        for leaf in encoded.leaves:
            if not leaf.owned:
                # Slots start 64-byte aligned, so a page-aligned one skips at most this.
                skip_max = _slot_align(leaf.nbytes) - _ALIGN
                need += skip_max + leaf.nbytes + (-leaf.nbytes % _ALIGN)
        if need > self._buffer.nbytes:
            # One page more, so the buffer can start on a page boundary.
            raw = np.empty(need + _PAGE, np.uint8)
            skip = -raw.ctypes.data % _PAGE
            self._buffer = raw[skip : skip + need]
        staged: list[Leaf] = []
        sources: list[Leaf | None] = []
        starts: list[int] = []
        pos = 0
        for leaf in encoded.leaves:
            if not leaf.owned:
                pos += -pos % _slot_align(leaf.nbytes)
            starts.append(pos)
            if leaf.owned:
                staged.append(leaf)
                sources.append(None)
                continue
            n = leaf.nbytes
            staged.append(leaf._replace(data=self._buffer[pos : pos + n], owned=True))
            sources.append(leaf)
            pos += n + (-n % _ALIGN)
        tree = EncodedTree(
            skeleton=encoded.skeleton, leaves=staged, uses_pickle=encoded.uses_pickle
        )
        return Capture(tree, sources, starts)
