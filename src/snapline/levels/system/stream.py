"""Cutting a QEMU migration stream into content-defined segments, so the store deduplicates it.

A migration stream is not page-aligned: a zero page takes 9 bytes, a dirty page 4104, device
state sits in between, so one page that changes from zero to data shifts everything after it.
Fixed-size chunks would then differ from the previous checkpoint's from that point on. Instead
the stream is cut where its content says so: a rolling sum of a byte-to-random-word table over
a 64-byte window; a cut falls after each position where the low bits of the sum are zero (one
in ``AVERAGE_BYTES``), within ``MIN_BYTES``..``MAX_BYTES``. An insertion moves only the cuts
near it, so the unchanged stretches of guest RAM come out as the same segments as last time and
the store, which names chunks by their content, keeps them once. Segments are views of the
stream (no copy); the whole cut is numpy, a few hundred MB/s.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

WINDOW = 64
AVERAGE_BYTES = 64 * 1024
MIN_BYTES = 16 * 1024
MAX_BYTES = 256 * 1024
_MASK = AVERAGE_BYTES - 1
_BLOCK = 8 * 1024 * 1024  # bytes hashed at once: bounds the temporary arrays


def _table() -> npt.NDArray[np.uint32]:
    table = np.random.default_rng(0x5EED5).integers(0, 2**32, 256, dtype=np.uint32)
    # A run of one byte value has a constant window sum; none may be a cut point, or a run of
    # zeros would be cut at every position (and then at MIN_BYTES, position-dependent).
    for byte in range(256):
        while (int(table[byte]) * WINDOW) & _MASK == 0:
            table[byte] ^= np.uint32(1)
    return table


_TABLE = _table()


def cut_points(data: npt.NDArray[np.uint8]) -> list[int]:
    """End offsets of the segments of ``data`` (the last is ``len(data)``)."""
    n = len(data)
    candidates: list[npt.NDArray[np.int64]] = []
    for start in range(0, n, _BLOCK):
        lo = max(0, start - WINDOW)
        words = _TABLE[data[lo : min(n, start + _BLOCK)]]
        sums = np.cumsum(words, dtype=np.uint32)
        # window sum ending at i (inclusive): sums[i] - sums[i - WINDOW]
        window = sums[WINDOW:] - sums[:-WINDOW] if len(sums) > WINDOW else sums[:0]
        hits = np.flatnonzero((window & np.uint32(_MASK)) == 0) + WINDOW + lo + 1
        candidates.append(hits[hits > start].astype(np.int64))
    points = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
    cuts: list[int] = []
    begin = 0
    while n - begin > MAX_BYTES:
        k = int(np.searchsorted(points, begin + MIN_BYTES))
        cut = (
            int(points[k])
            if k < len(points) and points[k] <= begin + MAX_BYTES
            else begin + MAX_BYTES
        )
        cuts.append(cut)
        begin = cut
    if n > begin:
        # The tail: one more content cut if it has one, so its end does not shift the rest.
        k = int(np.searchsorted(points, begin + MIN_BYTES))
        if k < len(points) and points[k] < n:
            cuts.append(int(points[k]))
        cuts.append(n)
    return cuts


def split(stream: bytes | bytearray | memoryview) -> list[npt.NDArray[np.uint8]]:
    """``stream`` as content-defined segments (read-only views, in order)."""
    data = np.frombuffer(stream, dtype=np.uint8)
    out: list[npt.NDArray[np.uint8]] = []
    begin = 0
    for end in cut_points(data):
        out.append(data[begin:end])
        begin = end
    return out


def join(segments: list[npt.NDArray[np.uint8]]) -> bytes:
    """The stream ``split`` cut (``b"".join`` of the segments' bytes)."""
    return b"".join(np.ascontiguousarray(s).data for s in segments)
