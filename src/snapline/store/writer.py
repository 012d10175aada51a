"""Writing one checkpoint: chunks in parallel, then the manifest; and async staging.

Theory of operation
-------------------
``write_checkpoint`` runs under the writer lock. It plans chunks (``state.layout``), hashes
each one (xxh3_128, at memory speed) and writes it only when no blob of that address and
size is already in the store -- that is what makes a save incremental. Writes run on a small
thread pool because file writes and fsyncs release the GIL and a disk has several queues; a
chunk's bytes are zero-copy views of the arrays whenever the array is contiguous. When every
chunk is written, ``backend.sync()`` makes them durable and only then the finalizer commits
the manifest. A crash at any point before the commit leaves only unreferenced chunks (gc
reclaims them); after it, a complete checkpoint.

``Staging`` backs ``save_async``: one preallocated byte buffer per store, grown when a state
needs more and reused across saves. Capturing copies each array leaf with one ``memcpy``
(``np.copyto``) into its 64-byte aligned slot, after which the caller may mutate its arrays;
the background thread writes from the staging copy. The store keeps at most one staged
checkpoint, so memory held is bounded by the largest state saved asynchronously.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

import numpy as np
import zstandard

from snapline.state.codec import EncodedTree, Leaf
from snapline.state.layout import ChunkSpec, chunk_bytes_of, chunk_id, plan_chunks
from snapline.store.backend import Backend
from snapline.store.manifest import ChunkRef, LeafRef, Manifest, chunk_key, manifest_key
from snapline.store.types import ProgressCallback

ZSTD_LEVEL = 3
_ALIGN = 64


class Staging:
    """Reusable capture memory for ``save_async`` (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)

    @property
    def capacity_bytes(self) -> int:
        """Bytes currently held."""
        return int(self._buffer.nbytes)

    def capture(self, encoded: EncodedTree) -> EncodedTree:
        """Copy every leaf that aliases caller memory into staging; return the staged tree."""
        need = 0
        for leaf in encoded.leaves:
            if not leaf.owned:
                need += leaf.nbytes + (-leaf.nbytes % _ALIGN)
        if need > self._buffer.nbytes:
            self._buffer = np.empty(need, np.uint8)
        staged: list[Leaf] = []
        pos = 0
        for leaf in encoded.leaves:
            if leaf.owned:
                staged.append(leaf)
                continue
            n = leaf.nbytes
            slot = self._buffer[pos : pos + n]
            np.copyto(slot, leaf.data)
            staged.append(replace(leaf, data=slot, owned=True))
            pos += n + (-n % _ALIGN)
        return EncodedTree(
            skeleton=encoded.skeleton, leaves=staged, uses_pickle=encoded.uses_pickle
        )


def write_checkpoint(
    backend: Backend,
    pool: ThreadPoolExecutor,
    encoded: EncodedTree,
    *,
    step: int,
    meta: dict[str, Any],
    chunk_bytes: int,
    compress: bool,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Write the chunks of ``encoded`` that the store lacks, then commit its manifest.

    Must be called with the writer lock held.
    """
    plan = plan_chunks(encoded.leaves, chunk_bytes=chunk_bytes)
    leaf_data = [leaf.data for leaf in encoded.leaves]
    skeleton = np.frombuffer(encoded.skeleton, np.uint8)
    specs = [
        *plan.chunks,
        ChunkSpec(
            pieces=((len(leaf_data), 0, skeleton.nbytes),), pad_after=(0,), size=skeleton.nbytes
        ),
    ]
    leaf_data.append(skeleton)
    total = sum(spec.size for spec in specs)

    claimed: set[str] = set()
    claim_mutex = threading.Lock()

    def first_claim(cid: str) -> bool:
        # Identical chunks within one save (e.g. zero-filled arrays) are written once.
        with claim_mutex:
            if cid in claimed:
                return False
            claimed.add(cid)
            return True

    def write_one(spec: ChunkSpec) -> tuple[ChunkRef, int]:
        data = chunk_bytes_of(spec, leaf_data)
        cid = chunk_id(data)
        if not first_claim(cid):
            # The stored size is filled in from the first copy once every write is done.
            codec = "zstd" if compress else "raw"
            return ChunkRef(id=cid, size=spec.size, stored_size=-1, codec=codec), 0
        if compress:
            key = chunk_key(cid, "zstd")
            existing = backend.size(key)
            if existing:
                return ChunkRef(id=cid, size=spec.size, stored_size=existing, codec="zstd"), 0
            packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
            backend.write(key, [memoryview(packed)])
            ref = ChunkRef(id=cid, size=spec.size, stored_size=len(packed), codec="zstd")
            return ref, len(packed)
        key = chunk_key(cid, "raw")
        ref = ChunkRef(id=cid, size=spec.size, stored_size=spec.size, codec="raw")
        if backend.size(key) == spec.size:
            return ref, 0
        backend.write(key, [data])
        return ref, spec.size

    futures: dict[Future[tuple[ChunkRef, int]], int] = {
        pool.submit(write_one, spec): i for i, spec in enumerate(specs)
    }
    refs: list[ChunkRef | None] = [None] * len(specs)
    written = 0
    done = 0
    try:
        for fut in as_completed(futures):
            ref, wrote = fut.result()
            index = futures[fut]
            refs[index] = ref
            written += wrote
            done += specs[index].size
            if progress is not None:
                progress(done, total)
    finally:
        # On error, let in-flight writes finish before the caller releases the lock.
        for fut in futures:
            fut.cancel()
        for fut in futures:
            if not fut.cancelled():
                fut.exception()
    backend.sync()

    stored = {r.id: r.stored_size for r in refs if r is not None and r.stored_size >= 0}
    chunk_refs = tuple(
        replace(r, stored_size=stored[r.id]) if r.stored_size < 0 else r
        for r in refs
        if r is not None
    )
    assert len(chunk_refs) == len(specs)
    leaves = tuple(
        LeafRef(
            path=leaf.path,
            kind=leaf.kind,
            dtype=leaf.dtype,
            shape=leaf.shape,
            extents=tuple((e.chunk, e.offset, e.length) for e in extents),
        )
        for leaf, extents in zip(encoded.leaves, plan.leaf_extents, strict=True)
    )
    manifest = Manifest(
        step=step,
        created_unix_s=time.time(),
        chunk_bytes=chunk_bytes,
        chunks=chunk_refs,
        skeleton=(len(specs) - 1, 0, skeleton.nbytes),
        leaves=leaves,
        meta=meta,
        uses_pickle=encoded.uses_pickle,
        total_bytes=total,
        written_bytes=written,
    )
    backend.finalizer.commit(backend, manifest_key(step), manifest.to_bytes())
    return manifest
