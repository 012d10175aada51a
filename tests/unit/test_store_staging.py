"""Staging for save_async: slots assigned first, writers wait until their chunk is copied."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from snapline.errors import StoreError
from snapline.state.codec import encode_tree
from snapline.state.layout import plan_chunks
from snapline.store.staging import COPY_STEP_BYTES, Staging


def test_a_writer_waits_until_its_chunk_is_copied() -> None:
    big = np.arange(3 * COPY_STEP_BYTES // 8, dtype=np.float64)
    tree = encode_tree({"a": big, "b": b"x" * 100_000})  # bytes leaves are owned: not copied
    staging = Staging()
    capture = staging.capture(tree)
    # The bytes leaf is not copied; the array's slot may start up to a page further in.
    assert big.nbytes <= staging.capacity_bytes < big.nbytes + 4096
    assert capture.staged.leaves[0].data.ctypes.data % 4096 == 0  # direct I/O can use it
    plan = plan_chunks(capture.staged.leaves, chunk_bytes=COPY_STEP_BYTES)
    last = plan.chunks[big.nbytes // COPY_STEP_BYTES - 1]
    owned = plan.chunks[-1]  # the bundle holding the bytes leaf
    capture.wait_for(owned)  # nothing to copy for it: returns at once
    got = threading.Event()

    def writer() -> None:
        capture.wait_for(last)
        got.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not got.wait(0.2)
    big_copy = big.copy()
    capture.copy()
    t.join(5)
    assert got.is_set()
    big[:] = -1  # the caller mutates: the staged copy keeps the captured values
    staged = capture.staged.leaves[0].data.view(np.float64)
    np.testing.assert_array_equal(staged, big_copy)


def test_a_failed_capture_wakes_the_writer_with_an_error() -> None:
    tree = encode_tree({"a": np.ones(1000)})
    capture = Staging().capture(tree)
    plan = plan_chunks(capture.staged.leaves, chunk_bytes=4096)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            capture.wait_for(plan.chunks[0])
        except StoreError as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    capture.fail()
    t.join(5)
    assert errors and "nothing was committed" in str(errors[0])
    with pytest.raises(StoreError):
        capture.wait_for(plan.chunks[0])
