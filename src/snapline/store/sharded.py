"""Sharded arrays: save N shards of global arrays, load them back as M shards.

Theory of operation
-------------------
A job of N ranks that holds big arrays split along one axis saves one shard per rank, each in
its own ``Store`` (``save_shard``). Besides the arrays, the shard's manifest ``meta`` records,
per array, the global shape, the axis and the offset of the shard along it. A job of M ranks
loads its own piece with ``load_shard(stores, step=..., shard=ShardSpec(j, M, axis))``: for
every saved shard whose box overlaps the wanted box it reads only the chunks that hold the
overlapping bytes (the arrays are stored C-ordered and cut into chunks, so rows of a
row-sharded array are one byte range and columns are one range per row), checks each chunk's
hash as any load does, and copies the overlap into the result. Nothing else is read: a shard
that does not overlap is not touched beyond its manifest.

Shards follow ``numpy.array_split``: shard ``i`` of ``count`` along an axis of length ``L``
covers ``[i * L // count + min(i, L % count) ...)`` -- the first ``L % count`` shards are one
longer. The axis to load along may differ from the one saved along (columns of a row-sharded
array); the box arithmetic is the same.

Errors (``CheckpointNotFound``, ``ConfigError``) name the shard, the array and what differs:
a missing shard, shards saved with different global shapes, dtypes or counts, shards that do
not tile the global array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from snapline.errors import CheckpointNotFound, ConfigError, CorruptCheckpoint
from snapline.state.codec import dtype_from_json
from snapline.store.manifest import LeafRef, Manifest
from snapline.store.reader import read_chunk
from snapline.store.store import Store
from snapline.store.types import CheckpointInfo

#: The key of the shard description in a shard checkpoint's manifest ``meta``.
SHARD_META_KEY = "snapline_shard"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` of ``count`` along ``axis`` (``numpy.array_split`` boundaries)."""

    index: int
    count: int
    axis: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"a shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard index {self.index} is outside 0..{self.count - 1}")
        if self.axis < 0:
            raise ConfigError(f"shard axis must be >= 0, got {self.axis}")

    def bounds(self, length: int) -> tuple[int, int]:
        """``[lo, hi)`` of this shard along an axis of ``length`` elements."""
        return shard_bounds(length, self.index, self.count)


def shard_bounds(length: int, index: int, count: int) -> tuple[int, int]:
    """``[lo, hi)`` of shard ``index`` of ``count`` along ``length`` (as ``numpy.array_split``)."""
    base, extra = divmod(length, count)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def save_shard(
    store: Store,
    arrays: Mapping[str, np.ndarray[Any, Any]],
    *,
    step: int,
    shard: ShardSpec,
    global_shapes: Mapping[str, Sequence[int]],
    overwrite: bool = False,
) -> CheckpointInfo:
    """Save this rank's shard ``shard`` of each global array in ``arrays`` as ``step``.

    ``arrays[name]`` must have the shape of ``shard``'s piece of ``global_shapes[name]``
    (every axis whole except ``shard.axis``, which holds ``shard.bounds(...)``).
    """
    if set(arrays) != set(global_shapes):
        raise ConfigError(
            f"arrays {sorted(arrays)} and global_shapes {sorted(global_shapes)} name different "
            "arrays; give the global shape of every array saved"
        )
    described: dict[str, Any] = {}
    for name, data in arrays.items():
        shape = tuple(int(d) for d in global_shapes[name])
        if shard.axis >= len(shape):
            raise ConfigError(
                f"array {name!r} has {len(shape)} axes; it cannot be sharded along axis "
                f"{shard.axis}"
            )
        lo, hi = shard.bounds(shape[shard.axis])
        expected = (*shape[: shard.axis], hi - lo, *shape[shard.axis + 1 :])
        if tuple(data.shape) != expected:
            raise ConfigError(
                f"array {name!r}: shard {shard.index} of {shard.count} along axis {shard.axis} "
                f"of global shape {shape} must have shape {expected}, got {tuple(data.shape)}"
            )
        described[name] = {
            "global_shape": list(shape),
            "axis": shard.axis,
            "offset": lo,
            "dtype": data.dtype.str,
        }
    meta = {SHARD_META_KEY: {"index": shard.index, "count": shard.count, "arrays": described}}
    return store.save(dict(arrays), step=step, meta=meta, overwrite=overwrite)


@dataclass(frozen=True, slots=True)
class _Saved:
    """One saved shard of one array: where it sits in the global array, where its bytes are."""

    manifest: Manifest
    leaf: LeafRef
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    dtype: str


def _describe(stores: Sequence[Store], step: int) -> dict[str, list[_Saved]]:
    """Read and cross-check the shard descriptions of ``step`` in every store."""
    if not stores:
        raise ConfigError("load_shard needs the stores of the saved shards (none given)")
    count = len(stores)
    saved: dict[str, list[_Saved]] = {}
    reference: dict[str, tuple[tuple[int, ...], str]] = {}
    for position, store in enumerate(stores):
        try:
            manifest = store.manifest(step)
        except CheckpointNotFound as exc:
            raise CheckpointNotFound(
                f"shard {position} of {count} (in {store.url}) has no step {step}: a saved "
                f"shard is missing; every shard must be saved before loading ({exc})"
            ) from None
        desc = manifest.meta.get(SHARD_META_KEY)
        if not isinstance(desc, dict):
            raise ConfigError(f"step {step} in {store.url} is no shard (saved without save_shard)")
        if (int(desc["index"]), int(desc["count"])) != (position, count):
            raise ConfigError(
                f"{store.url} holds shard {desc['index']} of {desc['count']} at step {step}, "
                f"but was given as shard {position} of {count}; pass the stores of all "
                f"{desc['count']} shards in shard order"
            )
        leaves = {leaf.path: leaf for leaf in manifest.leaves}
        names = set(desc["arrays"])
        if reference and names != set(reference):
            raise ConfigError(
                f"shard {position} saved arrays {sorted(names)}, shard 0 saved "
                f"{sorted(reference)}; all shards must save the same arrays"
            )
        for name, info in desc["arrays"].items():
            shape = tuple(int(d) for d in info["global_shape"])
            dtype = str(info["dtype"])
            if name not in reference:
                reference[name] = (shape, dtype)
            elif reference[name] != (shape, dtype):
                raise ConfigError(
                    f"array {name!r}: shard {position} was saved with global shape {shape} "
                    f"and dtype {dtype}, shard 0 with {reference[name][0]} and "
                    f"{reference[name][1]}; the shards belong to different arrays"
                )
            leaf = leaves.get(f"state[{name!r}]")
            if leaf is None or leaf.kind != "array":
                raise CorruptCheckpoint(f"shard {position} at step {step} lacks array {name!r}")
            axis, offset = int(info["axis"]), int(info["offset"])
            lo = tuple(offset if a == axis else 0 for a in range(len(shape)))
            hi = tuple(offset + leaf.shape[a] if a == axis else shape[a] for a in range(len(shape)))
            if tuple(leaf.shape) != tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True)):
                raise CorruptCheckpoint(
                    f"array {name!r} of shard {position}: stored shape {leaf.shape} does not "
                    f"match its description"
                )
            saved.setdefault(name, []).append(
                _Saved(manifest=manifest, leaf=leaf, lo=lo, hi=hi, dtype=dtype)
            )
    for name, pieces in saved.items():
        shape = reference[name][0]
        covered = sum(
            int(np.prod([h - lo for lo, h in zip(p.lo, p.hi, strict=True)])) for p in pieces
        )
        if covered != int(np.prod(shape)):
            raise ConfigError(
                f"array {name!r}: the {count} shards hold {covered} elements, the global shape "
                f"{shape} has {int(np.prod(shape))}; the shards do not tile the array"
            )
    return saved


def _byte_ranges(
    local_shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...], itemsize: int
) -> tuple[np.ndarray[Any, Any], int]:
    """Start offsets (bytes, C order) of the runs covering box ``[lo, hi)``, and run length."""
    ndim = len(local_shape)
    # The box is contiguous from the first axis after which it spans every axis whole.
    split = ndim
    while split > 0 and lo[split - 1] == 0 and hi[split - 1] == local_shape[split - 1]:
        split -= 1
    if split == 0:
        return np.zeros(1, np.int64), int(np.prod(local_shape)) * itemsize
    inner = int(np.prod(local_shape[split:], dtype=np.int64)) * itemsize
    run = (hi[split - 1] - lo[split - 1]) * inner
    strides = [int(np.prod(local_shape[a + 1 :], dtype=np.int64)) * itemsize for a in range(ndim)]
    starts = np.zeros(1, np.int64) + lo[split - 1] * strides[split - 1]
    for a in range(split - 2, -1, -1):
        idx = np.arange(lo[a], hi[a], dtype=np.int64) * strides[a]
        starts = (idx[:, None] + starts[None, :]).ravel()
    return starts, run


def _read_box(
    store: Store, piece: _Saved, lo: tuple[int, ...], hi: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray[Any, Any]:
    """The box ``[lo, hi)`` (global coordinates) of one saved shard, reading only its chunks."""
    leaf = piece.leaf
    local_lo = tuple(a - b for a, b in zip(lo, piece.lo, strict=True))
    local_hi = tuple(a - b for a, b in zip(hi, piece.lo, strict=True))
    starts, run = _byte_ranges(tuple(leaf.shape), local_lo, local_hi, dtype.itemsize)
    extent_starts = np.zeros(len(leaf.extents) + 1, np.int64)
    extent_starts[1:] = np.cumsum([e[2] for e in leaf.extents])
    first = np.searchsorted(extent_starts, starts, side="right") - 1
    last = np.searchsorted(extent_starts, starts + run - 1, side="right") - 1
    mark = np.zeros(len(leaf.extents) + 1, np.int64)
    np.add.at(mark, first, 1)
    np.add.at(mark, last + 1, -1)
    needed = np.flatnonzero(np.cumsum(mark[:-1]) > 0)
    buf = np.empty(leaf.nbytes, np.uint8)
    for e in needed:
        chunk, offset, length = leaf.extents[int(e)]
        raw = read_chunk(store.backend, piece.manifest.chunks[chunk], step=piece.manifest.step)
        at = int(extent_starts[e])
        buf[at : at + length] = raw[offset : offset + length]
    local = buf.view(dtype).reshape(leaf.shape) if leaf.nbytes else np.zeros(leaf.shape, dtype)
    return local[tuple(slice(a, b) for a, b in zip(local_lo, local_hi, strict=True))]


def load_shard(
    stores: Sequence[Store],
    *,
    step: int,
    shard: ShardSpec,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Load shard ``shard`` (of any count, along any axis) of the arrays saved in ``stores``.

    ``stores[i]`` holds saved shard ``i`` (of ``len(stores)``) at ``step``. ``names`` picks
    arrays (default: all). Only the chunks that overlap the wanted shard are read.
    """
    saved = _describe(stores, step)
    wanted = list(saved) if names is None else list(names)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name in wanted:
        if name not in saved:
            raise ConfigError(f"no array {name!r} was saved at step {step}; saved: {sorted(saved)}")
        pieces = saved[name]
        dtype = dtype_from_json(pieces[0].leaf.dtype)
        # The stored bytes are little-endian; the result has the dtype the arrays were saved in.
        saved_dtype = np.dtype(pieces[0].dtype)
        shape = tuple(max(p.hi[a] for p in pieces) for a in range(len(pieces[0].hi)))
        if shard.axis >= len(shape):
            raise ConfigError(
                f"array {name!r} has {len(shape)} axes; it cannot be loaded along axis {shard.axis}"
            )
        lo_ax, hi_ax = shard.bounds(shape[shard.axis])
        want_lo = tuple(lo_ax if a == shard.axis else 0 for a in range(len(shape)))
        want_hi = tuple(hi_ax if a == shard.axis else shape[a] for a in range(len(shape)))
        result = np.empty(
            tuple(h - lo for lo, h in zip(want_lo, want_hi, strict=True)), saved_dtype
        )
        for position, piece in enumerate(pieces):
            box_lo = tuple(max(a, b) for a, b in zip(want_lo, piece.lo, strict=True))
            box_hi = tuple(min(a, b) for a, b in zip(want_hi, piece.hi, strict=True))
            if any(a >= b for a, b in zip(box_lo, box_hi, strict=True)):
                continue
            part = _read_box(stores[position], piece, box_lo, box_hi, dtype)
            dst = tuple(
                slice(a - w, b - w) for a, b, w in zip(box_lo, box_hi, want_lo, strict=True)
            )
            result[dst] = part
        out[name] = result
    return out
