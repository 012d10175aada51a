"""Moving a committed checkpoint between stores as its stored files, verified on the way.

A checkpoint is its manifest plus the files (pack files, chunk files) its chunks live in.
``copy_checkpoint`` reads those files from one store, checks every chunk's hash, writes the
files the destination lacks, syncs, and commits the manifest last -- the destination's own
commit point, so a copy killed halfway leaves nothing visible there (a later gc removes the
orphan files). ``pack_checkpoint``/``unpack_checkpoint`` do the same through one blob (what
the XOR level stripes over its group).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import xxhash
import zstandard

from snapline.errors import CorruptCheckpoint
from snapline.store.backend import MissingKey
from snapline.store.manifest import ChunkRef, Manifest, manifest_key, parse_manifest
from snapline.store.reader import check_chunk
from snapline.store.store import Store

_MAGIC = b"SLCKPT1\n"
_LEN = struct.Struct("<Q")


def checkpoint_files(manifest: Manifest) -> dict[str, list[ChunkRef]]:
    """The files ``manifest``'s chunks live in, each with the chunks it holds."""
    files: dict[str, list[ChunkRef]] = {}
    for ref in manifest.chunks:
        files.setdefault(ref.key, []).append(ref)
    return files


def read_checked(
    read: Callable[[str], bytes], key: str, refs: list[ChunkRef], *, step: int
) -> bytes:
    """Read file ``key`` whole (with ``read``) and check its size and every chunk in it."""
    try:
        data = read(key)
    except MissingKey as exc:
        raise CorruptCheckpoint(f"chunk file {key} of step {step} is missing ({exc})") from exc
    if len(data) != refs[0].file_size:
        raise CorruptCheckpoint(
            f"chunk file {key} of step {step} has {len(data)} bytes, expected {refs[0].file_size}"
        )
    view = memoryview(data)
    for ref in refs:
        stored = view[ref.offset : ref.offset + ref.stored_size]
        raw: Any = stored
        if ref.codec == "zstd":
            try:
                raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=ref.size)
            except zstandard.ZstdError as exc:
                raise CorruptCheckpoint(f"chunk {key} of step {step} is damaged ({exc})") from exc
        check_chunk(ref, raw, step=step)
    return data


def copy_checkpoint(src: Store, dst: Store, step: int, *, rewrite: bool = False) -> None:
    """Copy committed checkpoint ``step`` from ``src`` to ``dst`` (see the module docstring).

    Files ``dst`` already has at the right size are kept (content-addressed names), unless
    ``rewrite``: a restore rewrites them, since a damaged file may keep its size.
    Raises ``CorruptCheckpoint`` (nothing committed in ``dst``) when ``src``'s copy is damaged.
    """
    manifest = src.manifest(step)
    raw_manifest = src.backend.read(manifest_key(step))

    def copy_file(item: tuple[str, list[ChunkRef]]) -> None:
        key, refs = item
        if not rewrite and dst.backend.size(key) == refs[0].file_size:
            return  # content-addressed: the same name holds the same bytes
        dst.backend.write(key, [memoryview(read_checked(src.backend.read, key, refs, step=step))])

    files = list(checkpoint_files(manifest).items())
    with dst.backend.writer_lock(dst.lock_timeout_s):
        # Files in parallel, as the store writes them (each write is its own fsync).
        with ThreadPoolExecutor(max(1, min(dst.io_threads, len(files)))) as pool:
            list(pool.map(copy_file, files))
        dst.backend.sync()
        dst.backend.finalizer.commit(dst.backend, manifest_key(step), raw_manifest, replace=True)


def pack_checkpoint(src: Store, step: int) -> bytes:
    """Checkpoint ``step`` of ``src`` (manifest and files, verified) as one blob."""
    manifest = src.manifest(step)
    raw_manifest = src.backend.read(manifest_key(step))
    parts: list[bytes] = []
    files: list[list[Any]] = []
    for key, refs in checkpoint_files(manifest).items():
        data = read_checked(src.backend.read, key, refs, step=step)
        files.append([key, len(data)])
        parts.append(data)
    header = json.dumps(
        {"step": step, "manifest_bytes": len(raw_manifest), "files": files}
    ).encode()
    return b"".join([_MAGIC, _LEN.pack(len(header)), header, raw_manifest, *parts])


def _split(blob: bytes | memoryview) -> tuple[dict[str, Any], memoryview, int]:
    view = memoryview(blob)
    if bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise CorruptCheckpoint("not a packed checkpoint (bad magic)")
    pos = len(_MAGIC)
    (head_len,) = _LEN.unpack_from(view, pos)
    pos += _LEN.size
    try:
        header = json.loads(bytes(view[pos : pos + head_len]))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise CorruptCheckpoint(f"packed checkpoint header is unreadable ({exc})") from exc
    return header, view, pos + head_len


def packed_id(blob: bytes | memoryview) -> str:
    """The checkpoint id (digest of the manifest bytes) of a packed checkpoint."""
    header, view, pos = _split(blob)
    try:
        manifest_len = int(header["manifest_bytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"packed checkpoint header is unreadable ({exc})") from exc
    return xxhash.xxh3_128_hexdigest(view[pos : pos + manifest_len])


def unpack_checkpoint(blob: bytes | memoryview, dst: Store) -> int:
    """Write a ``pack_checkpoint`` blob into ``dst`` (files first, manifest last); its step.

    Every file is (re)written: this restores a damaged or lost copy."""
    header, view, pos = _split(blob)
    try:
        step = int(header["step"])
        manifest_len = int(header["manifest_bytes"])
        files = [(str(k), int(n)) for k, n in header["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"packed checkpoint header is unreadable ({exc})") from exc
    raw_manifest = bytes(view[pos : pos + manifest_len])
    pos += manifest_len
    manifest = parse_manifest(raw_manifest, where=f"packed checkpoint of step {step}")
    expected = {key: refs for key, refs in checkpoint_files(manifest).items()}
    with dst.backend.writer_lock(dst.lock_timeout_s):
        for key, size in files:
            if key not in expected:
                raise CorruptCheckpoint(f"packed checkpoint holds {key}, which it does not use")
            data = bytes(view[pos : pos + size])
            pos += size
            read_checked(_reading(data), key, expected[key], step=step)
            dst.backend.write(key, [memoryview(data)])
        dst.backend.sync()
        dst.backend.finalizer.commit(dst.backend, manifest_key(step), raw_manifest, replace=True)
    return step


def _reading(data: bytes) -> Callable[[str], bytes]:
    return lambda _key: data
