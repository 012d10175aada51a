"""Writing one checkpoint: chunks hashed and packed into pack files in parallel, then the manifest.

Theory of operation
-------------------
``write_checkpoint`` runs under the writer lock. It plans chunks (``state.layout``; every leaf
of 64 KiB or more gets its own chunks, smaller leaves share segments of up to 256 KiB) and
deals them, in order and a pack's worth at a time, to a few **streams** of similar size, one
per I/O thread. Each
stream hashes its chunks (xxh3_128, at memory speed) and keeps those the store lacks: a chunk
is reused when the newest committed checkpoint already has it (its pack file checked present
and whole) or another stream of this save writes it. The kept chunks are laid out back to
back, each at a 64-byte aligned offset, into pack files of at most ``PACK_MAX_CHUNKS`` chunk
sizes (16 MiB with the default 4 MiB chunks); a stream hands its packs to one
``backend.write_many``, each as soon as it is laid out (each a temporary name, one fsync,
rename; the local backend fsyncs a pack a few packs later, so no fsync holds up the next
copy). So a save pays one file, one fsync and a few system calls per
pack, not per chunk; and thousands of small arrays cost a hash call and a chunk
entry per 256 KiB segment, not per array. A save that changed 1% of them rewrites only the
segments holding changed arrays. The plan and the manifest's leaf table depend only on the
leaves' paths, kinds, dtypes, shapes and sizes; the store keeps the last ones it made
(``LayoutCache``), so a periodic save of the same arrays neither plans nor dumps them again.

The skeleton is its own content-addressed file (``chunks/<id[:2]>/<id>``) so an unchanged
one is never rewritten. When every write is done, ``backend.sync()`` makes the new names
durable and only then the finalizer commits the manifest. A crash at any point before the
commit leaves only unreferenced files (gc reclaims them); after it, a complete checkpoint.
Streams run on a thread pool: file writes and fsyncs release the GIL, so hashing one stream
overlaps writing another, and the local backend starts writeback while a pack is written.

``save_async`` writes from a staging copy (``staging.py``) and passes ``ready``: a stream
waits until the copy has reached a chunk before hashing it, so writing starts while the
caller's thread is still copying.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import zstandard

from snapline.state.codec import EncodedTree
from snapline.state.layout import (
    DEFAULT_CHUNK_BYTES,
    ChunkPlan,
    ChunkSpec,
    chunk_bytes_of,
    chunk_id,
    chunk_pieces,
    pieces_chunk_id,
    plan_chunks,
)
from snapline.store.backend import Backend
from snapline.store.manifest import (
    ChunkRef,
    LeafRef,
    Manifest,
    chunk_key,
    leaf_table_json,
    manifest_key,
    pack_key,
)
from snapline.store.types import ProgressCallback

ZSTD_LEVEL = 3
SMALL_LEAF_BYTES = 64 * 1024
"""Leaves below this share segments (bundle chunks); larger ones get chunks of their own."""
BUNDLE_BYTES = 256 * 1024
"""The most a segment holds. Smaller segments make a re-save after a scattered change of a
few small arrays write less, larger ones cost fewer hash calls and chunk entries per save;
BENCHMARKS.md has the measurements behind this choice."""
PACK_STREAM_MIN_BYTES = 32 * 1024 * 1024
"""Below this many bytes per stream, another stream would add a file and an fsync for little."""
PACK_MAX_CHUNKS = 4
"""A pack holds at most this many chunk sizes of data. gc keeps a pack while any chunk in it is
used, so the cap bounds the space a partly used pack holds to a few chunks; ``chunk_bytes``
stays the one knob for the granularity of incremental saves and of reclaiming space."""
_ALIGN = 64
_PAGE = 4096
_ZEROS = memoryview(bytes(_PAGE))

Identity: TypeAlias = tuple[str, str]
"""``(chunk id, codec)``: chunks with the same identity are interchangeable."""


def reusable_chunks(backend: Backend, manifest: Manifest) -> dict[Identity, ChunkRef]:
    """The chunks of ``manifest`` a new save may point at: those whose file is there, whole.

    One size check per file (a pack holds many chunks); a missing or truncated file is left
    out, so the new save writes those chunks again.
    """
    by_key: dict[str, list[ChunkRef]] = {}
    for ref in manifest.chunks:
        by_key.setdefault(ref.key, []).append(ref)
    out: dict[Identity, ChunkRef] = {}
    for key, refs in by_key.items():
        size = backend.size(key)
        for ref in refs:
            if size == ref.file_size:
                out[ref.identity] = ref
    return out


class _Claims:
    """Decides, across streams, whether each chunk is reused, written here, or written elsewhere."""

    def __init__(self, reusable: Mapping[Identity, ChunkRef]) -> None:
        self._reusable = reusable
        self._mutex = threading.Lock()
        self._claimed: set[Identity] = set()
        self.placed: dict[Identity, ChunkRef] = {}
        """Chunks written by this save, by identity (filled as packs are laid out)."""

    def claim(self, ident: Identity, size: int) -> ChunkRef | bool:
        """A stored chunk to point at; True: the caller writes it; False: another stream does."""
        ref = self._reusable.get(ident)
        if ref is not None and ref.size == size:
            return ref
        with self._mutex:
            if ident in self._claimed:
                return False
            self._claimed.add(ident)
            return True

    def place(self, refs: list[ChunkRef]) -> None:
        """Record where this save wrote chunks, for streams that found them claimed."""
        placed = {(ref.id, ref.codec): ref for ref in refs}  # identity, without the property
        with self._mutex:
            self.placed.update(placed)


@dataclass(slots=True)
class _StreamResult:
    refs: dict[int, ChunkRef]  # spec index -> where its chunk is
    elsewhere: list[tuple[int, Identity]]  # chunks another stream of this save writes
    logical_bytes: int
    written_bytes: int


def _write_stream(
    backend: Backend,
    indexes: list[int],
    specs: list[ChunkSpec],
    leaf_data: list[np.ndarray[Any, np.dtype[np.uint8]]],
    claims: _Claims,
    *,
    compress: bool,
    pack_max_bytes: int,
    ready: Callable[[ChunkSpec], None] | None,
) -> _StreamResult:
    """Hash one stream's chunks and write the new ones into pack files (see module doc)."""
    codec = "zstd" if compress else "raw"
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if compress else None
    result = _StreamResult(refs={}, elsewhere=[], logical_bytes=0, written_bytes=0)
    placed: list[ChunkRef] = []

    def packs() -> Iterator[tuple[str, list[memoryview]]]:
        # Each pack is handed to the backend as soon as it is laid out, so its write starts
        # while the stream hashes later chunks (or, in save_async, waits for their copy).
        # A bundle of small leaves is hashed and written piece by piece, never joined into a
        # copy (unless compressed).
        out: list[memoryview] = []
        entries: list[tuple[int, str, int, int]] = []  # spec index, id, stored size, offset
        pos = 0
        for i in indexes:
            spec = specs[i]
            result.logical_bytes += spec.size
            if ready is not None:
                ready(spec)
            pieces = chunk_pieces(spec, leaf_data)
            cid = pieces_chunk_id(pieces)
            got = claims.claim((cid, codec), spec.size)
            if isinstance(got, ChunkRef):
                result.refs[i] = got
                continue
            if not got:
                result.elsewhere.append((i, (cid, codec)))
                continue
            if compressor is not None:
                pieces = [memoryview(compressor.compress(chunk_bytes_of(spec, leaf_data)))]
            nbytes = sum(p.nbytes for p in pieces) if compressor is not None else spec.size
            # A chunk of a big leaf starts on a page boundary of the pack, so that from
            # page-aligned memory (save_async's staging) it can go to disk without a copy.
            big = compressor is None and len(pieces) == 1 and nbytes >= SMALL_LEAF_BYTES
            pad = -pos % (_PAGE if big else _ALIGN)
            if entries and pos + pad + nbytes > pack_max_bytes:
                yield _close_pack(out, entries, pos)
                out, entries, pos, pad = [], [], 0, 0
            if pad:
                out.append(_ZEROS[:pad])
            out.extend(pieces)
            entries.append((i, cid, nbytes, pos + pad))
            pos += pad + nbytes
        if entries:
            yield _close_pack(out, entries, pos)

    def _close_pack(
        out: list[memoryview], entries: list[tuple[int, str, int, int]], pack_size: int
    ) -> tuple[str, list[memoryview]]:
        # Chunks back to back at aligned offsets, up to pack_max_bytes.
        pack_id = os.urandom(16).hex()
        for i, cid, nbytes, offset in entries:
            ref = ChunkRef(
                id=cid,
                size=specs[i].size,
                stored_size=nbytes,
                codec=codec,
                pack=pack_id,
                offset=offset,
                pack_size=pack_size,
            )
            result.refs[i] = ref
            result.written_bytes += nbytes
            placed.append(ref)
        return pack_key(pack_id), out

    # One call for the stream's packs: the backend may overlap their durability.
    # From staging (ready is set), the memory stays as it is until the save is done.
    backend.write_many(packs(), direct=ready is not None)
    claims.place(placed)
    return result


def _split_streams(
    specs: list[ChunkSpec],
    streams_max: int,
    min_bytes: int = PACK_STREAM_MIN_BYTES,
    group_bytes: int = PACK_MAX_CHUNKS * DEFAULT_CHUNK_BYTES,
) -> list[list[int]]:
    """Deal the chunk list, in order, to at most ``streams_max`` streams of similar size.

    Dealt in runs of about ``group_bytes`` (a pack's worth, less for a small state so the
    streams stay even) in turn, not one long run each: ``save_async`` copies the state in
    order, and every stream then works just behind the copy instead of the last one waiting
    for the copy to reach its part.
    """
    total = sum(spec.size for spec in specs)
    count = max(1, min(streams_max, -(-total // min_bytes)))
    group = max(1, min(group_bytes, -(-total // (2 * count))))
    out: list[list[int]] = [[] for _ in range(count)]
    acc = 0
    for i, spec in enumerate(specs):
        out[acc // group % count].append(i)
        acc += spec.size
    return [s for s in out if s]


def _write_skeleton(backend: Backend, skeleton: bytes, *, compress: bool) -> tuple[ChunkRef, int]:
    """The skeleton as its own content-addressed file, written only when not already there."""
    cid = chunk_id(skeleton)
    if compress:
        key = chunk_key(cid, "zstd")
        existing = backend.size(key)
        if existing:
            return ChunkRef(id=cid, size=len(skeleton), stored_size=existing, codec="zstd"), 0
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(skeleton)
        backend.write(key, [memoryview(packed)])
        return ChunkRef(id=cid, size=len(skeleton), stored_size=len(packed), codec="zstd"), len(
            packed
        )
    ref = ChunkRef(id=cid, size=len(skeleton), stored_size=len(skeleton), codec="raw")
    if backend.size(ref.key) == len(skeleton):
        return ref, 0
    backend.write(ref.key, [memoryview(skeleton)])
    return ref, len(skeleton)


class _Layout:
    """A state's chunk plan and leaf table, and the leaf columns they were made from."""

    __slots__ = ("_table", "chunk_bytes", "columns", "leaves", "plan")

    def __init__(
        self,
        chunk_bytes: int,
        columns: tuple[tuple[Any, ...], ...],  # paths, kinds, dtypes, shapes, sizes
        plan: ChunkPlan,
        leaves: tuple[LeafRef, ...],
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.columns = columns
        self.plan = plan
        self.leaves = leaves
        self._table: bytes | None = None

    def leaf_table(self) -> bytes:
        """The manifest's leaf table as JSON, dumped on first use (a save calls it while its
        streams write, so a new layout's dump overlaps their I/O)."""
        if self._table is None:
            self._table = leaf_table_json(self.leaves)
        return self._table


class LayoutCache:
    """The last layout a store saved, for the next save of a state of the same shape.

    Periodic checkpoints of one program save the same arrays every time: the same paths,
    dtypes, shapes and so sizes. The chunk plan and the manifest's leaf table depend on
    nothing else, so a save whose leaf columns equal the previous save's reuses both instead
    of planning thousands of small leaves and dumping their table again (comparing the
    columns is a few C-level tuple comparisons). One entry: a store that alternates between
    two layouts only pays what it paid before the cache.
    """

    def __init__(self) -> None:
        self._last: _Layout | None = None

    def layout(self, encoded: EncodedTree, chunk_bytes: int) -> _Layout:
        """The plan and leaf table of ``encoded``: the cached ones when its columns match."""
        leaves = encoded.leaves
        paths, kinds, dtypes, shapes, data = (
            tuple(zip(*leaves, strict=True))[:5] if leaves else ((),) * 5
        )
        sizes = tuple(d.nbytes for d in data)
        columns = (paths, kinds, dtypes, shapes, sizes)
        last = self._last
        if last is not None and last.chunk_bytes == chunk_bytes and last.columns == columns:
            return last
        plan = plan_chunks(
            leaves,
            chunk_bytes=chunk_bytes,
            small_leaf_bytes=SMALL_LEAF_BYTES,
            bundle_bytes=BUNDLE_BYTES,
        )
        # Column-wise (map, no per-leaf frame): thousands of small arrays make this hot.
        refs = tuple(map(LeafRef, paths, kinds, dtypes, shapes, plan.leaf_extents))
        made = _Layout(chunk_bytes, columns, plan, refs)
        self._last = made
        return made


def write_checkpoint(
    backend: Backend,
    pool: ThreadPoolExecutor,
    encoded: EncodedTree,
    *,
    step: int,
    meta: dict[str, Any],
    chunk_bytes: int,
    compress: bool,
    reusable: Mapping[Identity, ChunkRef],
    streams_max: int,
    progress: ProgressCallback | None = None,
    ready: Callable[[ChunkSpec], None] | None = None,
    replace: bool = False,
    layouts: LayoutCache | None = None,
) -> tuple[Manifest, bytes]:
    """Write what the store lacks of ``encoded``, then commit its manifest (and return it).

    ``reusable``: stored chunks the save may point at (see ``reusable_chunks``). ``ready``:
    called before a chunk's bytes are read; returns once they are there (raises to abort).
    ``replace``: the save may overwrite a committed manifest of the same step. ``layouts``:
    the store's ``LayoutCache`` (None: plan afresh).
    Must be called with the writer lock held. Returns the manifest and its committed bytes.
    """
    layout = (LayoutCache() if layouts is None else layouts).layout(encoded, chunk_bytes)
    specs = layout.plan.chunks
    leaf_data = [leaf.data for leaf in encoded.leaves]
    claims = _Claims(reusable)
    total = sum(spec.size for spec in specs) + len(encoded.skeleton)

    skeleton_job = pool.submit(_write_skeleton, backend, encoded.skeleton, compress=compress)
    jobs: list[Future[_StreamResult]] = [
        pool.submit(
            _write_stream,
            backend,
            indexes,
            specs,
            leaf_data,
            claims,
            compress=compress,
            pack_max_bytes=PACK_MAX_CHUNKS * chunk_bytes,
            ready=ready,
        )
        for indexes in _split_streams(
            specs,
            streams_max,
            backend.write_stream_min_bytes or PACK_STREAM_MIN_BYTES,
            PACK_MAX_CHUNKS * chunk_bytes,
        )
    ]
    refs: list[ChunkRef | None] = [None] * len(specs)
    elsewhere: list[tuple[int, Identity]] = []
    written = 0
    done = 0
    try:
        # A new layout's leaf table is dumped while the streams hash and write.
        leaf_table = layout.leaf_table()
        for fut in as_completed(jobs):
            result = fut.result()
            for i, ref in result.refs.items():
                refs[i] = ref
            elsewhere.extend(result.elsewhere)
            written += result.written_bytes
            done += result.logical_bytes
            if progress is not None:
                progress(done, total)
        skeleton_ref, skeleton_written = skeleton_job.result()
    finally:
        # On error, let in-flight writes finish before the caller releases the lock.
        every: list[Future[Any]] = [skeleton_job, *jobs]
        for job in every:
            job.cancel()
        for job in every:
            if not job.cancelled():
                job.exception()
    for i, ident in elsewhere:
        refs[i] = claims.placed[ident]
    written += skeleton_written
    if progress is not None:
        progress(total, total)
    backend.sync()

    chunk_refs = (*(r for r in refs if r is not None), skeleton_ref)
    assert len(chunk_refs) == len(specs) + 1
    manifest = Manifest(
        step=step,
        created_unix_s=time.time(),
        chunk_bytes=chunk_bytes,
        chunks=chunk_refs,
        skeleton=(len(specs), 0, len(encoded.skeleton)),
        leaves=layout.leaves,
        meta=meta,
        uses_pickle=encoded.uses_pickle,
        total_bytes=total,
        written_bytes=written,
    )
    data = manifest.to_bytes(leaf_table=leaf_table)
    backend.finalizer.commit(backend, manifest_key(step), data, replace=replace)
    return manifest, data
