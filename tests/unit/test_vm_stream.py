"""Content-defined cutting of migration streams: lossless, and stable around an insertion."""

from __future__ import annotations

import random

from snapline.levels.system import stream


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_split_join_round_trip_and_bounds() -> None:
    data = _data(1, 3 * 2**20) + bytes(2**20) + _data(2, 2**20)
    segments = stream.split(data)
    assert stream.join(segments) == data
    assert all(len(s) <= stream.MAX_BYTES for s in segments)
    assert all(len(s) >= stream.MIN_BYTES for s in segments[:-2])
    assert stream.join(stream.split(b"")) == b""
    assert stream.join(stream.split(b"abc")) == b"abc"


def test_an_insertion_changes_only_the_segments_near_it() -> None:
    data = _data(3, 4 * 2**20)
    # A page that turns from zero to data in a migration stream shifts everything after it.
    changed = data[: 2**20] + _data(4, 4096) + data[2**20 :]
    before = {bytes(s) for s in stream.split(data)}
    after = [bytes(s) for s in stream.split(changed)]
    new = [s for s in after if s not in before]
    assert sum(map(len, new)) <= 2 * stream.MAX_BYTES + 4096


def test_runs_of_one_byte_are_cut_at_the_maximum_size() -> None:
    segments = stream.split(bytes(2**20) + b"\xff" * 2**20)
    assert [len(s) for s in segments[:-1]] == [stream.MAX_BYTES] * (len(segments) - 1)
