"""Figures as people read them: human units, checkpoint names instead of internal ids."""

from __future__ import annotations

import pytest

from snapline.analysis.units import human_bytes, human_count, human_seconds
from snapline.protocols.reachability import INDEX_INCARNATION_SHIFT
from snapline.runtime.local.jobdir import checkpoint_label


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (179_255, "175 KiB"), (3 << 30, "3 GiB")],
)
def test_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [(0, "0 s"), (0.0285, "28.5 ms"), (0.133, "133 ms"), (4.2, "4.2 s"), (2e-5, "20 µs")],
)
def test_seconds(s: float, text: str) -> None:
    assert human_seconds(s) == text


def test_counts() -> None:
    assert [human_count(v) for v in (0, 12, 18_648, 2.5e6)] == ["0", "12", "18.6k", "2.5M"]


def test_checkpoint_labels_hide_the_incarnation_bits() -> None:
    assert checkpoint_label(0) == "none"  # the initial state is no checkpoint
    assert checkpoint_label(4) == "4"
    assert checkpoint_label((1 << INDEX_INCARNATION_SHIFT) + 2) == "2 (inc 1)"
    assert checkpoint_label(4294967298) == "2 (inc 1)"
