"""Reading and checking checkpoints: chunks straight into array memory, hash on every load.

Theory of operation
-------------------
Loading reads each chunk once. A chunk that holds exactly one whole extent of one leaf (the
common case: a big array cut into chunks, or a small array with a chunk of its own) is read
straight into the final array's memory, then hashed there -- no intermediate copy. A bundle
chunk (tiny leaves bundled together) is read into its own buffer and the tiny arrays become
zero-copy views of it (``np.frombuffer``); they stay writable. Compressed chunks are read,
then decompressed into place.

Chunks of one pack file that lie next to each other are read as one **run**: one
``read_range`` (``preadv``) scatters the run into the chunks' destinations, so thousands of
small arrays cost a few system calls, not one open and read each. Runs are read on a thread
pool (reads release the GIL), which also keeps several requests in flight on a cold cache.
Every file's size and every chunk's xxh3_128 hash are checked before its bytes are used, so a
flipped bit, a truncation or a missing file raises ``CorruptCheckpoint`` naming the step and
the file.
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
RUN_MAX_BYTES = 16 * 1024 * 1024
"""A run is cut here so the thread pool has several runs to spread over a big pack."""
RUN_MAX_CHUNKS = 1000
RUN_GAP_MAX_BYTES = 256 * 1024
"""Chunks closer than this are read together, the gap into scratch memory, not separately."""


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


def read_run(
    backend: Backend,
    refs: list[ChunkRef],
    into: list[np.ndarray[Any, Any] | None],
    *,
    step: int,
) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    """Read neighbouring chunks of one file with one ``read_range``; check and return each.

    ``refs`` are sorted by offset and do not overlap. ``into[i]`` is where chunk ``i``'s raw
    bytes go (a slice of the final array), or None for a fresh buffer.
    """
    key = refs[0].key
    buffers: list[memoryview] = []
    stored: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
    pos = refs[0].offset
    for ref, dst in zip(refs, into, strict=True):
        if ref.offset > pos:
            buffers.append(memoryview(np.empty(ref.offset - pos, np.uint8)))  # type: ignore[arg-type]
        if ref.codec == "raw":
            buf = np.empty(ref.size, np.uint8) if dst is None else dst
        else:
            buf = np.empty(ref.stored_size, np.uint8)
        buffers.append(memoryview(buf))  # type: ignore[arg-type]
        stored.append(buf)
        pos = ref.offset + ref.stored_size
    try:
        size = backend.read_range(key, refs[0].offset, buffers)
    except MissingKey as exc:
        raise CorruptCheckpoint(f"chunk {key} of step {step} is missing ({exc})") from exc
    if size != refs[0].file_size:
        raise CorruptCheckpoint(
            f"chunk {key} of step {step} is damaged: {size} bytes on disk, expected "
            f"{refs[0].file_size} (truncated or overwritten)"
        )
    out: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
    for ref, dst, buf in zip(refs, into, stored, strict=True):
        raw = buf
        if ref.codec == "zstd":
            try:
                data = zstandard.ZstdDecompressor().decompress(
                    memoryview(buf),  # type: ignore[arg-type]
                    max_output_size=ref.size,
                )
            except zstandard.ZstdError as exc:
                raise CorruptCheckpoint(f"chunk {key} of step {step} is damaged ({exc})") from exc
            if len(data) != ref.size:
                raise CorruptCheckpoint(f"chunk {key} of step {step} decompresses to a wrong size")
            if dst is None:
                raw = np.frombuffer(bytearray(data), np.uint8)
            else:
                dst[:] = np.frombuffer(data, np.uint8)
                raw = dst
        check_chunk(ref, raw, step=step)
        out.append(raw)
    return out


def read_chunk(
    backend: Backend, ref: ChunkRef, *, step: int, into: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Read one chunk (into ``into`` when given), check size and hash, return its raw bytes."""
    return read_run(backend, [ref], [into], step=step)[0]


def _runs(manifest: Manifest, wanted: list[int]) -> list[list[int]]:
    """Group chunk indexes into runs: same file, increasing offsets, small gaps, bounded size."""
    by_key: dict[str, list[int]] = {}
    for c in wanted:
        by_key.setdefault(manifest.chunks[c].key, []).append(c)
    runs: list[list[int]] = []
    for indexes in by_key.values():
        indexes.sort(key=lambda c: manifest.chunks[c].offset)
        run: list[int] = []
        end = start = 0
        for c in indexes:
            ref = manifest.chunks[c]
            if run and (
                ref.offset < end
                or ref.offset - end > RUN_GAP_MAX_BYTES
                or ref.offset + ref.stored_size - start > RUN_MAX_BYTES
                or len(run) >= RUN_MAX_CHUNKS
            ):
                runs.append(run)
                run = []
            if not run:
                start = ref.offset
            run.append(c)
            end = ref.offset + ref.stored_size
        if run:
            runs.append(run)
    return runs


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

    def fetch(run: list[int]) -> int:
        into: list[np.ndarray[Any, Any] | None] = []
        for c in run:
            if is_direct(c):
                t = users[c][0]
                target = leaf_bufs[t.leaf]
                assert target is not None
                into.append(target[t.dst_offset : t.dst_offset + t.length])
            else:
                into.append(None)
        got = read_run(backend, [manifest.chunks[c] for c in run], into, step=step)
        for c, dst, buf in zip(run, into, got, strict=True):
            if dst is not None:
                continue
            chunk_bufs[c] = buf
            for t in users[c]:
                leaf_dst = leaf_bufs[t.leaf] if t.leaf >= 0 else None
                if leaf_dst is not None:
                    leaf_dst[t.dst_offset : t.dst_offset + t.length] = buf[
                        t.chunk_offset : t.chunk_offset + t.length
                    ]
        return sum(manifest.chunks[c].size for c in run)

    # Chunks nobody uses (possible in a hand-made manifest) are not read.
    runs = _runs(manifest, [c for c in range(len(manifest.chunks)) if users[c]])
    total = sum(ref.size for ref in manifest.chunks)
    done = total - sum(manifest.chunks[c].size for run in runs for c in run)
    for size in pool.map(fetch, runs):
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
