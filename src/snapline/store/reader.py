"""Reading and checking checkpoints: chunks straight into array memory, hash on every load.

Theory of operation
-------------------
Loading reads each chunk once. A chunk that holds exactly one whole extent of one leaf (the
common case: a big array cut into chunks) is read with ``readinto`` straight into the final
array's memory, then hashed there -- no intermediate copy. A pack chunk (small leaves packed
together) is read into its own buffer and the small arrays become zero-copy views of it
(``np.frombuffer``); they stay writable. Compressed chunks are decompressed then placed.
Chunks are read on a thread pool (reads release the GIL). Every chunk's size and xxh3_128
hash are checked before its bytes are used, so a flipped bit, a truncation or a missing file
raises ``CorruptCheckpoint`` naming the step and the chunk.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from snapline.errors import CorruptCheckpoint
from snapline.state.codec import decode_tree, dtype_from_json
from snapline.state.layout import chunk_id
from snapline.store.backend import Backend, MissingKey
from snapline.store.manifest import ChunkRef, Manifest
from snapline.store.types import ProgressCallback

_U8 = np.dtype(np.uint8)


@dataclass(slots=True)
class _Target:
    leaf: int  # leaf index, or -1 for the skeleton
    chunk_offset: int
    dst_offset: int
    length: int


def check_chunk(ref: ChunkRef, data: Any, *, step: int) -> None:
    """Raise ``CorruptCheckpoint`` unless ``data`` (the chunk's raw bytes) hashes to its id."""
    if chunk_id(data) != ref.id:
        raise CorruptCheckpoint(
            f"chunk {ref.key} of step {step} is damaged (hash mismatch); load another step, "
            "or run `snapline verify` to see all damage"
        )


def read_chunk(
    backend: Backend, ref: ChunkRef, *, step: int, into: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Read one chunk (into ``into`` when given), check size and hash, return its raw bytes."""
    key = ref.key
    try:
        if ref.codec == "raw":
            buf = np.empty(ref.size, np.uint8) if into is None else into
            size = backend.read_into(key, memoryview(buf))  # type: ignore[arg-type]
        else:
            stored = backend.read(key)
            size = len(stored)
    except MissingKey as exc:
        raise CorruptCheckpoint(f"chunk {key} of step {step} is missing ({exc})") from exc
    if size != ref.stored_size:
        raise CorruptCheckpoint(
            f"chunk {key} of step {step} is damaged: {size} bytes on disk, expected "
            f"{ref.stored_size} (truncated or overwritten)"
        )
    if ref.codec == "zstd":
        try:
            raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=ref.size)
        except zstandard.ZstdError as exc:
            raise CorruptCheckpoint(f"chunk {key} of step {step} is damaged ({exc})") from exc
        if len(raw) != ref.size:
            raise CorruptCheckpoint(f"chunk {key} of step {step} decompresses to a wrong size")
        buf = np.frombuffer(bytearray(raw), np.uint8) if into is None else into
        if into is not None:
            into[:] = np.frombuffer(raw, np.uint8)
    check_chunk(ref, buf, step=step)
    return buf


def load_state(
    backend: Backend,
    pool: ThreadPoolExecutor,
    manifest: Manifest,
    *,
    allow_pickle: bool,
    progress: ProgressCallback | None = None,
) -> Any:
    """Read, check and decode the whole checkpoint of ``manifest``."""
    step = manifest.step
    users: list[list[_Target]] = [[] for _ in manifest.chunks]
    for i, leaf in enumerate(manifest.leaves):
        dst = 0
        for c, off, length in leaf.extents:
            users[c].append(_Target(leaf=i, chunk_offset=off, dst_offset=dst, length=length))
            dst += length
    sc, soff, slen = manifest.skeleton
    users[sc].append(_Target(leaf=-1, chunk_offset=soff, dst_offset=0, length=slen))

    def is_direct(c: int) -> bool:
        t = users[c]
        return (
            len(t) == 1
            and t[0].leaf >= 0
            and t[0].chunk_offset == 0
            and t[0].length == manifest.chunks[c].size
        )

    # A leaf gets its own buffer unless it is one extent of a shared chunk (then: a view).
    leaf_bufs: list[np.ndarray[Any, Any] | None] = []
    for leaf in manifest.leaves:
        if len(leaf.extents) == 1 and not is_direct(leaf.extents[0][0]):
            leaf_bufs.append(None)
        else:
            leaf_bufs.append(np.empty(leaf.nbytes, np.uint8))
    chunk_bufs: list[np.ndarray[Any, Any] | None] = [None] * len(manifest.chunks)

    def fetch(c: int) -> int:
        ref = manifest.chunks[c]
        if not users[c]:
            return ref.size
        if is_direct(c):
            t = users[c][0]
            target = leaf_bufs[t.leaf]
            assert target is not None
            read_chunk(backend, ref, step=step, into=target[t.dst_offset : t.dst_offset + t.length])
            return ref.size
        buf = read_chunk(backend, ref, step=step)
        chunk_bufs[c] = buf
        for t in users[c]:
            dst = leaf_bufs[t.leaf] if t.leaf >= 0 else None
            if dst is not None:
                dst[t.dst_offset : t.dst_offset + t.length] = buf[
                    t.chunk_offset : t.chunk_offset + t.length
                ]
        return ref.size

    total = sum(ref.size for ref in manifest.chunks)
    done = 0
    for size in pool.map(fetch, range(len(manifest.chunks))):
        done += size
        if progress is not None:
            progress(done, total)

    skeleton_buf = chunk_bufs[sc]
    assert skeleton_buf is not None
    skeleton = skeleton_buf[soff : soff + slen].tobytes()

    def resolve(index: int) -> object:
        if not 0 <= index < len(manifest.leaves):
            raise CorruptCheckpoint(f"step {step}: skeleton names leaf {index}, which is absent")
        leaf = manifest.leaves[index]
        data = leaf_bufs[index]
        if data is None:
            c, off, length = leaf.extents[0]
            whole = chunk_bufs[c]
            assert whole is not None
            data = whole[off : off + length]
        if leaf.kind == "bytes":
            return data.tobytes()
        return leaf_array(leaf.dtype, leaf.shape, data, step=step)

    return decode_tree(skeleton, resolve, allow_pickle=allow_pickle)


def leaf_array(
    dtype_json: str | list[Any], shape: tuple[int, ...], data: Any, *, step: int
) -> np.ndarray[Any, Any]:
    """View ``data`` (uint8) as an array of ``dtype_json`` and ``shape``, checking the sizes."""
    dtype = dtype_from_json(dtype_json)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != data.nbytes:
        raise CorruptCheckpoint(
            f"step {step}: leaf of shape {shape} and dtype {dtype} does not match its "
            f"{data.nbytes} bytes"
        )
    if count == 0 or dtype.itemsize == 0:
        return np.zeros(shape, dtype)
    return data.view(dtype).reshape(shape)  # type: ignore[no-any-return]
