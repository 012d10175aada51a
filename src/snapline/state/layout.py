"""Cutting encoded leaves into content-addressed chunks.

Theory of operation
-------------------
A save should write only what changed. Each leaf of at least ``small_leaf_bytes`` is cut on
its own at fixed offsets ``0, C, 2C, ...`` (``C`` = the chunk size), so a change inside one
array touches only the chunks covering the changed bytes, and changes elsewhere never shift
them. Leaves smaller than that are bundled together, each at a 64-byte aligned offset (so a
loaded array view is aligned for any dtype), into bundle chunks of at most ``bundle_bytes``;
a change to a small leaf rewrites one bundle.

The default chunk size is 4 MiB: a contiguous 1% change of a 1 GiB state (10 MiB) then
writes 12-16 MiB (about 1.2-1.6%). The store keeps chunks in pack files (many chunks per
file, see ``store/writer.py``), so a chunk costs a hash call and a manifest entry, not a file.
Small leaves are where those per-chunk costs add up: the store bundles every leaf under
64 KiB into **segments** (bundle chunks) of up to 256 KiB, so a state of thousands of small
arrays pays a hash call and a chunk entry per segment, and a change to a few of them
rewrites just the segments holding those (a bundle is hashed and written piece by piece,
never copied into one buffer: ``chunk_pieces``, ``pieces_chunk_id``).

A chunk's id is the xxh3_128 hash (hex) of its uncompressed bytes; it is checked on every
load. The hash runs at memory speed (about 15-20 GB/s on one core).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import xxhash

from snapline.errors import ConfigError
from snapline.state.codec import Leaf

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
"""Default chunk size (see the module docstring for the trade-off)."""

MIN_CHUNK_BYTES = 4096
ALIGN_BYTES = 64


def chunk_id(data: bytes | memoryview | np.ndarray[Any, Any]) -> str:
    """The content address of a chunk: xxh3_128 of its bytes, as 32 hex digits."""
    return str(xxhash.xxh3_128_hexdigest(data))  # type: ignore[arg-type]


class Extent(NamedTuple):
    """A byte range ``[offset, offset+length)`` of chunk number ``chunk`` of the plan.

    A ``NamedTuple`` (immutable, cheap to build): a plan holds one per small array.
    """

    chunk: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkSpec:
    """One chunk to write: the pieces of leaf data (in order) that make up its bytes.

    ``pieces`` are ``(leaf_index, start, stop)`` byte ranges of leaf data; ``pad_after`` holds
    the zero padding, in bytes, to place after each piece (for alignment inside bundles).
    """

    pieces: tuple[tuple[int, int, int], ...]
    pad_after: tuple[int, ...]
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkPlan:
    """How the leaves of one state map onto chunks."""

    chunks: list[ChunkSpec]
    leaf_extents: list[tuple[Extent, ...]]
    total_bytes: int


def plan_chunks(
    leaves: list[Leaf],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    small_leaf_bytes: int | None = None,
    bundle_bytes: int | None = None,
) -> ChunkPlan:
    """Cut ``leaves`` into chunks of at most ``chunk_bytes`` (see the module docstring).

    ``small_leaf_bytes`` (default ``chunk_bytes // 4``): leaves below it are bundled.
    ``bundle_bytes`` (default ``chunk_bytes``): the most a bundle of small leaves holds.
    """
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise ConfigError(f"chunk size {chunk_bytes} is below the minimum {MIN_CHUNK_BYTES}")
    small = chunk_bytes // 4 if small_leaf_bytes is None else min(small_leaf_bytes, chunk_bytes)
    bundle = chunk_bytes if bundle_bytes is None else min(max(bundle_bytes, 1), chunk_bytes)
    chunks: list[ChunkSpec] = []
    # Each leaf's extents; a small leaf has exactly one, a big one one per chunk.
    extents: list[tuple[Extent, ...]] = [()] * len(leaves)
    sizes = [leaf.data.nbytes for leaf in leaves]
    total = sum(sizes)

    for index, n in enumerate(sizes):
        if n < small or n == 0:
            continue
        own: list[Extent] = []
        for start in range(0, n, chunk_bytes):
            stop = min(n, start + chunk_bytes)
            own.append(Extent(len(chunks), 0, stop - start))
            chunks.append(
                ChunkSpec(pieces=((index, start, stop),), pad_after=(0,), size=stop - start)
            )
        extents[index] = tuple(own)

    # Bundles come after every big leaf's chunks, so the open bundle's index is len(chunks).
    pieces: list[tuple[int, int, int]] = []
    pads: list[int] = []
    used = 0

    def close_bundle() -> None:
        nonlocal pieces, pads, used
        if pieces:
            # The last piece needs no padding after it.
            size = used - pads[-1]
            chunks.append(ChunkSpec(pieces=tuple(pieces), pad_after=(*pads[:-1], 0), size=size))
        pieces, pads, used = [], [], 0

    for index, n in enumerate(sizes):
        if n >= small or n == 0:
            continue
        if used + n > bundle:
            close_bundle()
        pad = -(used + n) % ALIGN_BYTES
        extents[index] = (Extent(len(chunks), used, n),)
        pieces.append((index, 0, n))
        pads.append(pad)
        used += n + pad
    close_bundle()
    return ChunkPlan(chunks=chunks, leaf_extents=extents, total_bytes=total)


_ZERO_PAD = memoryview(bytes(ALIGN_BYTES))


def chunk_pieces(
    spec: ChunkSpec, leaf_data: list[np.ndarray[Any, np.dtype[np.uint8]]]
) -> list[memoryview]:
    """The byte pieces of one chunk, in order, without copying (padding as zero blocks)."""
    out: list[memoryview] = []
    for (leaf_index, start, stop), pad in zip(spec.pieces, spec.pad_after, strict=True):
        data = leaf_data[leaf_index]
        whole = start == 0 and stop == data.nbytes
        out.append(memoryview(data if whole else data[start:stop]))  # type: ignore[arg-type]
        if pad:
            out.append(_ZERO_PAD[:pad])
    return out


def pieces_chunk_id(pieces: list[memoryview]) -> str:
    """``chunk_id`` of the concatenation of ``pieces``, hashed in place (no joined copy)."""
    if len(pieces) == 1:
        return chunk_id(pieces[0])
    hasher = xxhash.xxh3_128()
    for piece in pieces:
        hasher.update(piece)
    return str(hasher.hexdigest())


def chunk_bytes_of(
    spec: ChunkSpec, leaf_data: list[np.ndarray[Any, np.dtype[np.uint8]]]
) -> memoryview:
    """One contiguous buffer holding the chunk (no copy for a single-piece chunk)."""
    pieces = chunk_pieces(spec, leaf_data)
    if len(pieces) == 1:
        return pieces[0]
    buf = bytearray(spec.size)
    pos = 0
    for view in pieces:
        buf[pos : pos + view.nbytes] = view
        pos += view.nbytes
    assert pos == spec.size
    return memoryview(buf)
