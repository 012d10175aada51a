"""Capture and encoding of application state: the safe codec, chunking and hashing.

``encode_tree``/``decode_tree`` turn a state (nested dicts, lists and tuples of numpy arrays,
numbers, str, bytes, bool and None) into a msgpack skeleton plus raw array leaves and back;
``plan_chunks`` cuts the leaves into content-addressed chunks. The store builds on these.
"""

from __future__ import annotations

from snapline.state.codec import (
    BIG_BYTES,
    EncodedTree,
    Leaf,
    decode_tree,
    dtype_from_json,
    dtype_to_json,
    encode_tree,
)
from snapline.state.layout import (
    DEFAULT_CHUNK_BYTES,
    ChunkPlan,
    ChunkSpec,
    Extent,
    chunk_id,
    plan_chunks,
)

__all__ = [
    "BIG_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "ChunkPlan",
    "ChunkSpec",
    "EncodedTree",
    "Extent",
    "Leaf",
    "chunk_id",
    "decode_tree",
    "dtype_from_json",
    "dtype_to_json",
    "encode_tree",
    "plan_chunks",
]
