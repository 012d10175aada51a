"""The checkpoint manifest: a versioned, human-readable JSON file that names chunks.

Theory of operation
-------------------
A checkpoint exists exactly when its manifest ``manifests/<step:012d>.json`` is committed
(see ``backend.py``). The manifest lists the chunks the checkpoint uses (content address,
size, stored size, codec), the skeleton's place and, per array leaf, its path in the tree,
dtype, shape and the chunk byte ranges (extents) holding its data. Chunks are shared between
checkpoints through their content address ``chunks/<id[:2]>/<id>[.zst]``.

Integrity: the file is written as ``json.dumps(body, indent=1, sort_keys=True)`` with a
``checksum`` field equal to ``xxh3_128`` of the same dump of the body without that field.
Reading re-dumps what it parsed and requires the bytes to match exactly, so *any* flipped
bit or truncation is detected (a change to the content fails the checksum; a change to
formatting fails the byte comparison). Everything read is validated before use: the format
version (``UnsupportedFormat`` when newer than this code), chunk ids (32 hex digits, so a
manifest can never name a path outside the store) and extents (inside their chunk).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import xxhash

from snapline.errors import CorruptCheckpoint, UnsupportedFormat

FORMAT_NAME = "snapline-checkpoint"
FORMAT_VERSION = 1
"""Version of the manifest format this code writes; it reads versions up to this one."""

CODECS = ("raw", "zstd")
_CHUNK_ID = re.compile(r"^[0-9a-f]{32}$")
_MANIFEST_NAME = re.compile(r"^(\d{12})\.json$")


def manifest_key(step: int) -> str:
    """The backend key of the manifest of ``step``."""
    return f"manifests/{step:012d}.json"


def step_of_manifest_key(key: str) -> int | None:
    """The step a manifest key names, or None when the key is not a manifest."""
    name = key.rsplit("/", 1)[-1]
    m = _MANIFEST_NAME.match(name)
    return int(m.group(1)) if m and key.startswith("manifests/") else None


def chunk_key(chunk_id: str, codec: str) -> str:
    """The backend key of a chunk (validated: never a path outside ``chunks/``)."""
    if not _CHUNK_ID.match(chunk_id) or codec not in CODECS:
        raise CorruptCheckpoint(
            f"manifest names chunk {chunk_id!r} (codec {codec!r}), which is not a valid chunk "
            "address; refusing to read a path outside the store"
        )
    suffix = ".zst" if codec == "zstd" else ""
    return f"chunks/{chunk_id[:2]}/{chunk_id}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRef:
    """A chunk a checkpoint uses: content address, raw size, stored size and codec."""

    id: str
    size: int
    stored_size: int
    codec: str

    @property
    def key(self) -> str:
        """The backend key of this chunk."""
        return chunk_key(self.id, self.codec)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeafRef:
    """Where one array (or big ``bytes``) leaf lives: ``(chunk, offset, length)`` extents."""

    path: str
    kind: str
    dtype: str | list[Any]
    shape: tuple[int, ...]
    extents: tuple[tuple[int, int, int], ...]

    @property
    def nbytes(self) -> int:
        """Size of the leaf's data in bytes."""
        return sum(length for _, _, length in self.extents)


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """One checkpoint's manifest (see the module docstring for the format)."""

    step: int
    created_unix_s: float
    chunk_bytes: int
    chunks: tuple[ChunkRef, ...]
    skeleton: tuple[int, int, int]
    leaves: tuple[LeafRef, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    uses_pickle: bool = False
    total_bytes: int = 0
    written_bytes: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def stored_bytes(self) -> int:
        """Bytes the checkpoint's chunks take in the store (after compression)."""
        return sum(c.stored_size for c in self.chunks)

    def body(self) -> dict[str, Any]:
        """The JSON body without the checksum."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "step": self.step,
            "created_unix_s": self.created_unix_s,
            "chunk_bytes": self.chunk_bytes,
            "chunks": [
                {"id": c.id, "size": c.size, "stored_size": c.stored_size, "codec": c.codec}
                for c in self.chunks
            ],
            "skeleton": list(self.skeleton),
            "leaves": [
                {
                    "path": leaf.path,
                    "kind": leaf.kind,
                    "dtype": leaf.dtype,
                    "shape": list(leaf.shape),
                    "extents": [list(e) for e in leaf.extents],
                }
                for leaf in self.leaves
            ],
            "meta": self.meta,
            "pickle": self.uses_pickle,
            "total_bytes": self.total_bytes,
            "written_bytes": self.written_bytes,
        }

    def to_bytes(self) -> bytes:
        """The manifest file's bytes, checksum included."""
        body = self.body()
        checksum = "xxh3_128:" + xxhash.xxh3_128_hexdigest(_dump(body))
        return _dump({**body, "checksum": checksum})


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode("ascii")


def parse_manifest(data: bytes, *, where: str) -> Manifest:
    """Parse and check a manifest file's bytes; ``where`` names it in error messages.

    Raises ``CorruptCheckpoint`` for any damage or malformed content and
    ``UnsupportedFormat`` for a format version newer than ``FORMAT_VERSION``.
    """
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"manifest {where} is damaged (not valid JSON: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise CorruptCheckpoint(f"manifest {where} is damaged or not a snapline manifest")
    # The envelope (format name, checksum field and scheme) is the same in every version, so
    # the checksum is checked first: a flipped bit in "format_version" is damage, not news.
    version = obj.get("format_version")
    checksum = obj.pop("checksum", None)
    expected = "xxh3_128:" + xxhash.xxh3_128_hexdigest(_dump(obj))
    if checksum != expected:
        raise CorruptCheckpoint(f"manifest {where} is damaged (checksum mismatch)")
    if _dump({**obj, "checksum": checksum}) != data:
        raise CorruptCheckpoint(f"manifest {where} is damaged (bytes differ from its content)")
    if type(version) is not int or version < 1:
        raise CorruptCheckpoint(f"manifest {where} has no valid format_version")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(
            f"manifest {where} uses format version {version}; this snapline reads versions "
            f"1..{FORMAT_VERSION}. Upgrade snapline to read it"
        )
    try:
        return _from_body(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"manifest {where} is malformed: {exc!r}") from exc


def chunk_ids_anyway(data: bytes) -> set[str]:
    """Chunk ids a possibly damaged manifest still names (for a conservative gc); may be empty."""
    try:
        obj = json.loads(data)
        return {c["id"] for c in obj["chunks"] if isinstance(c.get("id"), str)}
    except Exception:
        return set()


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _extent(value: Any, chunks: tuple[ChunkRef, ...]) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"bad extent {value!r}")
    c, off, length = (_int(v, "extent field") for v in value)
    if c >= len(chunks) or off + length > chunks[c].size:
        raise ValueError(f"extent {value!r} lies outside its chunk")
    return c, off, length


def _from_body(obj: dict[str, Any]) -> Manifest:
    chunks = []
    for c in obj["chunks"]:
        ref = ChunkRef(
            id=str(c["id"]),
            size=_int(c["size"], "chunk size"),
            stored_size=_int(c["stored_size"], "stored size"),
            codec=str(c["codec"]),
        )
        chunk_key(ref.id, ref.codec)  # validates id and codec
        chunks.append(ref)
    chunk_refs = tuple(chunks)
    leaves = []
    for leaf in obj["leaves"]:
        if leaf["kind"] not in ("array", "bytes"):
            raise ValueError(f"unknown leaf kind {leaf['kind']!r}")
        shape = tuple(_int(n, "shape entry") for n in leaf["shape"])
        dtype = leaf["dtype"]
        if not isinstance(dtype, str | list):
            raise ValueError(f"bad dtype {dtype!r}")
        leaves.append(
            LeafRef(
                path=str(leaf["path"]),
                kind=leaf["kind"],
                dtype=dtype,
                shape=shape,
                extents=tuple(_extent(e, chunk_refs) for e in leaf["extents"]),
            )
        )
    meta = obj["meta"]
    if not isinstance(meta, dict):
        raise ValueError("meta must be an object")
    created = obj["created_unix_s"]
    if not isinstance(created, int | float):
        raise ValueError("created_unix_s must be a number")
    return Manifest(
        step=_int(obj["step"], "step"),
        created_unix_s=float(created),
        chunk_bytes=_int(obj["chunk_bytes"], "chunk_bytes", minimum=1),
        chunks=chunk_refs,
        skeleton=_extent(obj["skeleton"], chunk_refs),
        leaves=tuple(leaves),
        meta=meta,
        uses_pickle=bool(obj["pickle"]),
        total_bytes=_int(obj["total_bytes"], "total_bytes"),
        written_bytes=_int(obj["written_bytes"], "written_bytes"),
        format_version=obj["format_version"],
    )
