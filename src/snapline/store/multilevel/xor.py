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


def encode(blob: bytes | memoryview, k: int) -> list[bytes]:
    """Segments ``0 .. k-2`` hold ``blob`` (the last zero-padded), segment ``k-1`` their XOR."""
    if k < 2:
        raise ConfigError(f"XOR needs k >= 2 segments, got {k}")
    size = segment_bytes(len(blob), k)
    data = np.zeros((k - 1, size), np.uint8)
    data.reshape(-1)[: len(blob)] = np.frombuffer(blob, np.uint8)
    parity = np.bitwise_xor.reduce(data, axis=0)
    return [row.tobytes() for row in data] + [parity.tobytes()]


def rebuild(segments: Sequence[bytes | None], length: int) -> bytes:
    """The blob of ``length`` bytes from ``k`` segments of which at most one is None."""
    k = len(segments)
    missing = [i for i, s in enumerate(segments) if s is None]
    if len(missing) > 1:
        raise CorruptCheckpoint(
            f"XOR can rebuild one lost segment of {k}; {len(missing)} are lost "
            f"(segments {', '.join(map(str, missing))})"
        )
    size = segment_bytes(length, k)
    present = [s for s in segments if s is not None]
    if any(len(s) != size for s in present):
        raise CorruptCheckpoint(f"XOR segments must be {size} bytes each for {length} bytes")
    rows = [np.frombuffer(s, np.uint8) if s is not None else None for s in segments[: k - 1]]
    if missing and missing[0] < k - 1:
        lost = np.zeros(size, np.uint8)
        for s in present:
            np.bitwise_xor(lost, np.frombuffer(s, np.uint8), out=lost)
        rows[missing[0]] = lost
    out = np.concatenate([r for r in rows if r is not None])
    return out[:length].tobytes()
