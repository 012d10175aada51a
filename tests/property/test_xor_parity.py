"""XOR parity: any one of the k segments can be lost and the blob comes back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapline.errors import CorruptCheckpoint
from snapline.store.multilevel import xor


@given(blob=st.binary(max_size=5000), k=st.integers(2, 9), data=st.data())
def test_any_one_lost_segment_is_rebuilt(blob: bytes, k: int, data: st.DataObject) -> None:
    segments: list[bytes | None] = list(xor.encode(blob, k))
    assert len(segments) == k
    assert len({len(s) for s in segments if s is not None}) == 1
    assert xor.rebuild(segments, len(blob)) == blob
    lost = data.draw(st.integers(0, k - 1), label="lost")
    segments[lost] = None
    assert xor.rebuild(segments, len(blob)) == blob


@given(blob=st.binary(min_size=1, max_size=500), k=st.integers(3, 6), data=st.data())
def test_two_lost_segments_are_refused(blob: bytes, k: int, data: st.DataObject) -> None:
    segments: list[bytes | None] = list(xor.encode(blob, k))
    first, second = data.draw(st.lists(st.integers(0, k - 1), min_size=2, max_size=2, unique=True))
    segments[first] = segments[second] = None
    with pytest.raises(CorruptCheckpoint, match="2 are lost"):
        xor.rebuild(segments, len(blob))


def test_parity_is_the_xor_of_the_data_segments() -> None:
    segments = xor.encode(bytes([0b1100, 0b1010, 0b0110]), 4)
    assert segments == [b"\x0c", b"\x0a", b"\x06", bytes([0b1100 ^ 0b1010 ^ 0b0110])]
