"""XOR parity: cut a blob into ``k - 1`` data segments plus one parity segment.

Any one of the ``k`` segments can be lost: a lost data segment is the XOR of all the others
(parity included); a lost parity segment is not needed. This is RAID-5 over the nodes of an
XOR group (as in SCR's XOR scheme): ``1 / (k - 1)`` extra space instead of a partner's full
copy. Pure functions over bytes (numpy does the XOR at memory speed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snapline.errors import ConfigError, CorruptCheckpoint


def segment_bytes(length: int, k: int) -> int:
    """The size of each of the ``k`` segments of a blob of ``length`` bytes."""
    return max(1, -(-length // (k - 1)))


def encode(blob: bytes | memoryview, k: int) -> list[memoryview]:
    """Segments ``0 .. k-2`` hold ``blob`` (the last zero-padded), segment ``k-1`` their XOR."""
    if k < 2:
        raise ConfigError(f"XOR needs k >= 2 segments, got {k}")
    size = segment_bytes(len(blob), k)
    data = np.empty((k, size), np.uint8)
    flat = data[: k - 1].reshape(-1)
    flat[: len(blob)] = np.frombuffer(blob, np.uint8)
    flat[len(blob) :] = 0
    parity = data[k - 1]
    np.copyto(parity, data[0])
    for row in data[1 : k - 1]:
        np.bitwise_xor(parity, row, out=parity)
    return [memoryview(row) for row in data]  # type: ignore[arg-type]


def rebuild(segments: Sequence[bytes | memoryview | None], length: int) -> memoryview:
    """The blob of ``length`` bytes from ``k`` segments of which at most one is None."""
    k = len(segments)
    missing = [i for i, s in enumerate(segments) if s is None]
    if len(missing) > 1:
        raise CorruptCheckpoint(
            f"XOR can rebuild one lost segment of {k}; {len(missing)} are lost "
            f"(segments {', '.join(map(str, missing))})"
        )
    size = segment_bytes(length, k)
    if any(s is not None and len(s) != size for s in segments):
        raise CorruptCheckpoint(f"XOR segments must be {size} bytes each for {length} bytes")
    out = np.empty((k - 1, size), np.uint8)
    for i, s in enumerate(segments[: k - 1]):
        if s is not None:
            out[i] = np.frombuffer(s, np.uint8)
    if missing and missing[0] < k - 1:
        lost = out[missing[0]]
        present = [s for s in segments if s is not None]
        np.copyto(lost, np.frombuffer(present[0], np.uint8))
        for s in present[1:]:
            np.bitwise_xor(lost, np.frombuffer(s, np.uint8), out=lost)
    return memoryview(out.reshape(-1)[:length])  # type: ignore[arg-type]
