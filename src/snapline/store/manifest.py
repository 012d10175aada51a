"""The checkpoint manifest: a versioned JSON file that names chunks.

Theory of operation
-------------------
A checkpoint exists exactly when its manifest ``manifests/<step:012d>.json`` is committed
(see ``backend.py``). The manifest lists the chunks the checkpoint uses (content address,
size, stored size, codec, and where the stored bytes live), the skeleton's place and, per
array leaf, its path in the tree, dtype, shape and the chunk byte ranges (extents) holding
its data. Chunks are shared between checkpoints through their content address.

Where a chunk lives depends on the format version:

* **version 1**: every chunk is its own file ``chunks/<id[:2]>/<id>[.zst]``. Version 2
  still uses such files for the skeleton (so an unchanged skeleton is never rewritten), and
  reads version 1 checkpoints, whose chunks stay where they are.
* **version 2**: data chunks live in **pack files** ``chunks/packs/<pack id>.pack`` at a byte
  offset (a chunk entry's ``pack`` indexes the ``packs`` list, ``offset`` is where its stored
  bytes start); ``packs`` gives each pack's size, so a truncated pack is damage. One
  file holds many chunks, so a save pays one create, fsync and rename per pack, not per
  chunk.
* **version 3**: as version 2, but ``leaves`` is **columnar**: an object with one list per
  field (``path``, ``kind``, ``dtype``, ``shape``, ``extents``), entry ``i`` of each list
  describing leaf ``i``. A state of thousands of small arrays then costs a few list entries
  per array to build, dump and parse instead of a JSON object each (for 5,000 arrays the
  leaf table dumps and parses in about half the time).

A manifest with pack files is written in version 3; one without (every chunk in a file of
its own, which only happens when a save reuses a version 1 store's chunks) in version 1, so
an older snapline reads whatever it could represent. ``Manifest.to_bytes(version=2)`` still
writes version 2, for an older reader. This code reads all three.

Integrity, version 1: the file is ``json.dumps(body, indent=1, sort_keys=True)`` with a
``checksum`` field equal to ``xxh3_128`` of the same dump of the body without that field.
Reading re-dumps what it parsed and requires the bytes to match exactly, so *any* flipped
bit or truncation is detected (a change to the content fails the checksum; a change to
formatting fails the byte comparison). Versions 2 and 3 are compact JSON whose first member is the
checksum: ``{"checksum":"xxh3_128:<hex>",`` followed by the compact dump of the body without
its opening brace; the checksum is ``xxh3_128`` of that dump. Reading hashes the
bytes as they are instead of re-dumping them, and the compact dump runs in json's C encoder
(an indented one does not): for a manifest of 5,000 small arrays that is about 20 ms instead
of 300 ms per save, more than writing the arrays takes. Everything read is validated before
use: the format version (``UnsupportedFormat`` when newer than this code), chunk and pack ids
(32 hex digits, so a manifest can never name a path outside the store), extents and pack
offsets (inside their chunk and pack).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import xxhash

from snapline.errors import CorruptCheckpoint, UnsupportedFormat

FORMAT_NAME = "snapline-checkpoint"
FORMAT_VERSION = 3
"""Newest manifest format version this code writes; it reads versions up to this one."""
LEAF_FIELDS = ("path", "kind", "dtype", "shape", "extents")
"""The fields of a leaf entry; version 3 stores them as columns (a list per field)."""

CODECS = ("raw", "zstd")
_CHUNK_ID = re.compile(r"^[0-9a-f]{32}$")
_MANIFEST_NAME = re.compile(r"^(\d{12})\.json$")
_ANY_ID = re.compile(rb"[0-9a-f]{32}")
_V2_HEAD = re.compile(rb'^\{"checksum":"xxh3_128:([0-9a-f]{32})",')


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


def pack_key(pack_id: str) -> str:
    """The backend key of a pack file (validated: never a path outside ``chunks/``)."""
    if not _CHUNK_ID.match(pack_id):
        raise CorruptCheckpoint(
            f"manifest names pack {pack_id!r}, which is not a valid pack id; refusing to read a "
            "path outside the store"
        )
    return f"chunks/packs/{pack_id}.pack"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRef:
    """A chunk a checkpoint uses: content address, raw size, stored size, codec and place.

    ``pack`` is None for a chunk in its own file (version 1, and skeletons); otherwise the
    chunk's stored bytes are ``[offset, offset + stored_size)`` of that pack file, whose full
    size is ``pack_size``.
    """

    id: str
    size: int
    stored_size: int
    codec: str
    pack: str | None = None
    offset: int = 0
    pack_size: int = 0

    @property
    def key(self) -> str:
        """The backend key of the file holding this chunk (its pack, or its own file)."""
        return chunk_key(self.id, self.codec) if self.pack is None else pack_key(self.pack)

    @property
    def identity(self) -> tuple[str, str]:
        """What makes two chunks interchangeable: the same content stored the same way."""
        return (self.id, self.codec)

    @property
    def file_size(self) -> int:
        """The size the chunk's file must have (anything else means it was damaged)."""
        return self.stored_size if self.pack is None else self.pack_size


class LeafRef(NamedTuple):
    """Where one array (or big ``bytes``) leaf lives: ``(chunk, offset, length)`` extents.

    A ``NamedTuple`` (immutable, several times cheaper to build than a frozen dataclass):
    a manifest holds one per array, and states may hold thousands of small arrays.
    """

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

    @property
    def format_version(self) -> int:
        """The version this manifest is written in: 3 once packs are used, else 1."""
        return FORMAT_VERSION if any(c.pack is not None for c in self.chunks) else 1

    @property
    def stored_bytes(self) -> int:
        """Bytes the checkpoint's chunks take in the store (after compression)."""
        return sum(c.stored_size for c in self.chunks)

    def body(self, version: int | None = None, *, leaves: bool = True) -> dict[str, Any]:
        """The JSON body without the checksum (to dump), in ``version`` (default: its own).

        An older ``version`` than the default is for writing what an older snapline reads
        (and for compatibility tests); version 1 cannot name packs. ``leaves=False`` leaves
        the leaf table out (a caller that has it dumped already).
        """
        version = self.format_version if version is None else version
        if not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"no manifest format version {version}")
        packs: dict[str, int] = {}
        pack_list: list[dict[str, Any]] = []
        chunks: list[dict[str, Any]] = []
        for c in self.chunks:
            entry: dict[str, Any] = {
                "id": c.id,
                "size": c.size,
                "stored_size": c.stored_size,
                "codec": c.codec,
            }
            if c.pack is not None:
                if c.pack not in packs:
                    packs[c.pack] = len(pack_list)
                    pack_list.append({"id": c.pack, "size": c.pack_size})
                entry["pack"] = packs[c.pack]
                entry["offset"] = c.offset
            chunks.append(entry)
        body: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": version,
            "step": self.step,
            "created_unix_s": self.created_unix_s,
            "chunk_bytes": self.chunk_bytes,
            "chunks": chunks,
            # Tuples dump as JSON arrays: no per-leaf list copies (thousands of leaves).
            "skeleton": self.skeleton,
            "leaves": (self._leaf_columns() if version >= 3 else self._leaf_rows())
            if leaves
            else None,
            "meta": self.meta,
            "pickle": self.uses_pickle,
            "total_bytes": self.total_bytes,
            "written_bytes": self.written_bytes,
        }
        if pack_list:
            if version < 2:
                raise ValueError("manifest format version 1 cannot name pack files")
            body["packs"] = pack_list
        return body

    def _leaf_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "path": leaf.path,
                "kind": leaf.kind,
                "dtype": leaf.dtype,
                "shape": leaf.shape,
                "extents": leaf.extents,
            }
            for leaf in self.leaves
        ]

    def _leaf_columns(self) -> dict[str, Any]:
        return _leaf_columns(self.leaves)

    def to_bytes(self, version: int | None = None, *, leaf_table: bytes | None = None) -> bytes:
        """The manifest file's bytes, checksum included (see the module docstring).

        ``leaf_table``: ``leaf_table_json(self.leaves)`` when the caller has it already (the
        writer dumps it while its streams write, or keeps it from the last save of the same
        layout).
        """
        version = self.format_version if version is None else version
        # A leaf table dumped already is not transposed again (thousands of leaves).
        body = self.body(version, leaves=leaf_table is None or version < 3)
        if body["format_version"] == 1:
            checksum = "xxh3_128:" + xxhash.xxh3_128_hexdigest(_dump(body))
            return _dump({**body, "checksum": checksum})
        if body["format_version"] >= 3:
            # The leaf table, the bulk of a manifest of many arrays, goes last as dumped.
            columns = body.pop("leaves")
            table = _dump_compact(columns) if leaf_table is None else leaf_table
            dumped = _dump_compact(body)[:-1] + b',"leaves":' + table + b"}"
        else:
            dumped = _dump_compact(body)
        head = b'{"checksum":"xxh3_128:' + xxhash.xxh3_128_hexdigest(dumped).encode() + b'",'
        return head + dumped[1:]


def _leaf_columns(leaves: tuple[LeafRef, ...]) -> dict[str, Any]:
    # One transposition in C instead of a dict per leaf; json dumps the columns in C too.
    columns = tuple(zip(*leaves, strict=True)) or ((),) * len(LEAF_FIELDS)
    return dict(zip(LEAF_FIELDS, columns, strict=True))


def leaf_table_json(leaves: tuple[LeafRef, ...]) -> bytes:
    """The version 3 leaf table of ``leaves`` as ``Manifest.to_bytes`` writes it."""
    return _dump_compact(_leaf_columns(leaves))


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode("ascii")


def _dump_compact(obj: dict[str, Any]) -> bytes:
    # Unsorted: the checksum covers the bytes as written, so no reader re-creates this order,
    # and sorting thousands of small objects is a third of the dump's time.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


def parse_manifest(data: bytes, *, where: str) -> Manifest:
    """Parse and check a manifest file's bytes; ``where`` names it in error messages.

    Raises ``CorruptCheckpoint`` for any damage or malformed content and
    ``UnsupportedFormat`` for a format version newer than ``FORMAT_VERSION``.
    """
    head = _V2_HEAD.match(data)
    obj = _checked_v2(data, head, where) if head else _checked_v1(data, where)
    # The envelope is checked first: a flipped bit in "format_version" is damage, not news.
    version = obj.get("format_version")
    if type(version) is not int or version < 1:
        raise CorruptCheckpoint(f"manifest {where} has no valid format_version")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(
            f"manifest {where} uses format version {version}; this snapline reads versions "
            f"1..{FORMAT_VERSION}. Upgrade snapline to read it"
        )
    try:
        return _from_body(obj, version)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptCheckpoint(f"manifest {where} is malformed: {exc!r}") from exc


def _checked_v1(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"manifest {where} is damaged (not valid JSON: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise CorruptCheckpoint(f"manifest {where} is damaged or not a snapline manifest")
    checksum = obj.pop("checksum", None)
    expected = "xxh3_128:" + xxhash.xxh3_128_hexdigest(_dump(obj))
    if checksum != expected:
        raise CorruptCheckpoint(f"manifest {where} is damaged (checksum mismatch)")
    if _dump({**obj, "checksum": checksum}) != data:
        raise CorruptCheckpoint(f"manifest {where} is damaged (bytes differ from its content)")
    return obj


def _checked_v2(data: bytes, head: re.Match[bytes], where: str) -> dict[str, Any]:
    body = b"{" + data[head.end() :]
    if xxhash.xxh3_128_hexdigest(body).encode() != head.group(1):
        raise CorruptCheckpoint(f"manifest {where} is damaged (checksum mismatch)")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"manifest {where} is damaged (not valid JSON: {exc})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise CorruptCheckpoint(f"manifest {where} is damaged or not a snapline manifest")
    return obj


def referenced_keys_anyway(data: bytes) -> set[str]:
    """Keys a possibly damaged manifest may still name (for a conservative gc); may be empty.

    Every run of 32 hex digits is taken as a chunk or pack id, whatever JSON is left around
    it: keeping a few unreferenced files is harmless, deleting a referenced one is not.
    """
    keys: set[str] = set()
    for match in _ANY_ID.finditer(data):
        ident = match.group().decode("ascii")
        keys.update((chunk_key(ident, "raw"), chunk_key(ident, "zstd"), pack_key(ident)))
    return keys


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


def _leaf(
    path: Any, kind: Any, dtype: Any, shape: Any, extents: Any, chunks: tuple[ChunkRef, ...]
) -> LeafRef:
    if kind not in ("array", "bytes"):
        raise ValueError(f"unknown leaf kind {kind!r}")
    if not isinstance(dtype, str | list):
        raise ValueError(f"bad dtype {dtype!r}")
    return LeafRef(
        str(path),
        kind,
        dtype,
        tuple(_int(n, "shape entry") for n in shape),
        tuple(_extent(e, chunks) for e in extents),
    )


def _from_body(obj: dict[str, Any], version: int) -> Manifest:
    packs: list[tuple[str, int]] = []
    if version >= 2:
        for p in obj["packs"]:
            pack_key(str(p["id"]))  # validates the id
            packs.append((str(p["id"]), _int(p["size"], "pack size")))
    elif "packs" in obj:
        raise ValueError("a version 1 manifest has no packs")
    chunks = []
    for c in obj["chunks"]:
        ref = ChunkRef(
            id=str(c["id"]),
            size=_int(c["size"], "chunk size"),
            stored_size=_int(c["stored_size"], "stored size"),
            codec=str(c["codec"]),
        )
        chunk_key(ref.id, ref.codec)  # validates id and codec
        if "pack" in c:
            pack_id, pack_size = packs[_int(c["pack"], "pack index")]
            offset = _int(c["offset"], "pack offset")
            if offset + ref.stored_size > pack_size:
                raise ValueError(f"chunk {ref.id} lies outside its pack")
            ref = replace(ref, pack=pack_id, offset=offset, pack_size=pack_size)
        chunks.append(ref)
    chunk_refs = tuple(chunks)
    table = obj["leaves"]
    if version >= 3:
        if (
            not isinstance(table, dict)
            or sorted(table) != sorted(LEAF_FIELDS)
            or not all(isinstance(column, list) for column in table.values())
        ):
            raise ValueError("leaves must be an object of the columns " + ", ".join(LEAF_FIELDS))
        rows: Iterable[Any] = zip(*(table[name] for name in LEAF_FIELDS), strict=True)
    else:
        rows = ([leaf[name] for name in LEAF_FIELDS] for leaf in table)
    leaves = [
        _leaf(path, kind, dtype, shape, extents, chunk_refs)
        for path, kind, dtype, shape, extents in rows
    ]
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
    )
