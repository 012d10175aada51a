"""Images: the whole state after a given txid, written atomically and checked on load.

Theory of operation
-------------------
``image_<txid>`` holds the state after applying every transaction ``<= txid`` (HDFS's fsimage).
It is written once, atomically (tmp, fsync, rename, directory fsync) and never changed::

    header = "SNLJIMG\\0" | u16 version | u16 reserved | u64 txid | u64 created_unix_ms
             | u64 entries (2**64-1: unknown) | u64 body_len | u64 checksum     (52 bytes)
    body   = zstd(msgpack(state))
    checksum = xxh3_64(header bytes before the checksum | body)

An image that fails any check (short, wrong magic, checksum, txid not matching its name,
undecodable) is *damaged*; recovery falls back to an older one (see ``_recovery``). An image
with an unknown format version is not damaged but unreadable: that is an error, not a fallback,
because silently using an older image would hide a version mismatch.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import xxhash
import zstandard

from snapline.errors import EncodeError, JournalError
from snapline.journal._format import FORMAT_VERSION, image_name
from snapline.journal._layout import write_atomic

IMAGE_MAGIC = b"SNLJIMG\0"
IMAGE_HEADER = struct.Struct("<8sHHQQQQQ")
_UNKNOWN_ENTRIES = 2**64 - 1
_BODY_BYTES_MAX = 16 * 1024**3


class DamagedImage(JournalError):
    """An image file failed its checks; an older image may still serve."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageInfo:
    """What an image's header says about it."""

    path: Path
    txid: int
    created_unix_s: float
    entries: int | None
    size_bytes: int


def write_image(
    directory: Path, txid: int, state: Any, *, entries: int | None, level: int = 3
) -> ImageInfo:
    """Write ``image_<txid>`` atomically and return its info."""
    try:
        packed = msgpack.packb(state, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"journal state is not plain data and cannot be imaged: {exc}") from exc
    body = zstandard.ZstdCompressor(level=level).compress(packed)
    created_ms = int(time.time() * 1000)
    head = IMAGE_HEADER.pack(
        IMAGE_MAGIC,
        FORMAT_VERSION,
        0,
        txid,
        created_ms,
        _UNKNOWN_ENTRIES if entries is None else entries,
        len(body),
        0,
    )[:-8]
    checksum = xxhash.xxh3_64_intdigest(head + body)
    data = head + struct.pack("<Q", checksum) + body
    path = directory / image_name(txid)
    write_atomic(path, data)
    return ImageInfo(
        path=path,
        txid=txid,
        created_unix_s=created_ms / 1000,
        entries=entries,
        size_bytes=len(data),
    )


def _parse(path: Path, data: bytes) -> tuple[ImageInfo, bytes]:
    if len(data) < IMAGE_HEADER.size:
        raise DamagedImage(f"{path}: image is torn ({len(data)} bytes)")
    magic, version, _, txid, created_ms, entries, body_len, checksum = IMAGE_HEADER.unpack_from(
        data, 0
    )
    if magic != IMAGE_MAGIC:
        raise DamagedImage(f"{path}: not a snapline journal image (bad magic)")
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{path}: image format version {version} is not supported (this snapline reads "
            f"version {FORMAT_VERSION}); open the journal with a matching snapline"
        )
    if body_len > _BODY_BYTES_MAX or IMAGE_HEADER.size + body_len != len(data):
        raise DamagedImage(f"{path}: image length does not match its header (torn or padded)")
    body = data[IMAGE_HEADER.size :]
    if xxhash.xxh3_64_intdigest(data[: IMAGE_HEADER.size - 8] + body) != checksum:
        raise DamagedImage(f"{path}: image checksum mismatch")
    if path.name != image_name(txid):
        raise DamagedImage(f"{path}: header says txid {txid}, the file name does not match")
    info = ImageInfo(
        path=path,
        txid=txid,
        created_unix_s=created_ms / 1000,
        entries=None if entries == _UNKNOWN_ENTRIES else entries,
        size_bytes=len(data),
    )
    return info, body


def read_image_info(path: Path) -> ImageInfo:
    """Check an image fully (checksum included) and return its header info."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedImage(f"cannot read image {path}: {exc}") from exc
    return _parse(path, data)[0]


def read_image(path: Path) -> tuple[ImageInfo, Any]:
    """Load an image: its info and the state it holds. Raises DamagedImage or JournalError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedImage(f"cannot read image {path}: {exc}") from exc
    info, body = _parse(path, data)
    try:
        packed = zstandard.ZstdDecompressor().decompress(body)
        state = msgpack.unpackb(packed, raw=False, strict_map_key=False, use_list=True)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise DamagedImage(f"{path}: image body cannot be decoded: {exc}") from exc
    return info, state
