"""Hypothesis: encode -> store -> load returns an equal tree, types and dtypes included."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snapline.store import drop_memory_store, open_store

DTYPES = st.sampled_from(
    [
        "?",
        "i1",
        "i2",
        "<i4",
        "<i8",
        "u1",
        "<u2",
        "<u4",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
        "<c8",
        "<c16",
        "S3",
        "<U2",
        "<M8[s]",
        "<m8[ms]",
    ]
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    arr = draw(hnp.arrays(dtype, shape))
    if arr.ndim >= 1 and arr.shape[0] > 1 and draw(st.booleans()):
        arr = arr[::2]  # a non-contiguous view
    return arr


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = st.text(max_size=8) | st.integers(-5, 5) | st.tuples(st.integers(0, 3), st.text(max_size=3))
trees = st.recursive(
    scalars | arrays(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        # Bit-exact: NaN payloads, NaT and -0.0 must survive too.
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return bool(a == b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_roundtrip_through_a_store(tree: Any) -> None:
    name = f"prop-{uuid.uuid4().hex}"
    try:
        with open_store(f"memory://{name}", chunk_bytes=4096, io_threads=1) as store:
            store.save(tree, step=1)
            assert same(store.load(), tree), (tree, store.load())
    finally:
        drop_memory_store(name)
