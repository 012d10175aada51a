"""Retention: keep_last counts intact steps, keep_every, the newest intact step always kept."""

from __future__ import annotations

import pytest

from snapline.errors import ConfigError
from snapline.store.retention import Retention


def all_intact(step: int) -> bool:
    return True


def test_keep_last_and_every() -> None:
    steps = list(range(1, 11))
    assert Retention(keep_last=3).keep(steps, intact=all_intact) == {8, 9, 10}
    assert Retention(keep_every=4).keep(steps, intact=all_intact) == {4, 8, 10}
    assert Retention(keep_last=2, keep_every=5).keep(steps, intact=all_intact) == {5, 9, 10}
    assert Retention().keep(steps, intact=all_intact) == set(steps)
    assert Retention(keep_last=3).keep([], intact=all_intact) == set()


def test_damaged_steps_do_not_count() -> None:
    steps = list(range(1, 11))
    damaged = {10, 8}

    def intact(step: int) -> bool:
        return step not in damaged

    # The two newest intact steps are 9 and 7; 10 and 8 are newer than 7: kept for inspection.
    assert Retention(keep_last=2).keep(steps, intact=intact) == {7, 8, 9, 10}
    # keep_every alone still keeps the newest intact step (9) and the damaged one above it.
    assert Retention(keep_every=4).keep(steps, intact=intact) == {4, 8, 9, 10}
    # A damaged step older than the retained intact ones goes like any other.
    assert Retention(keep_last=1).keep(steps, intact=lambda s: s != 3) == {10}


def test_nothing_intact_keeps_everything() -> None:
    steps = [1, 2, 3]
    assert Retention(keep_last=1).keep(steps, intact=lambda s: False) == {1, 2, 3}
    assert Retention(keep_last=5).keep(steps, intact=lambda s: s == 1) == {1, 2, 3}


def test_intact_is_asked_newest_first_and_only_as_far_as_needed() -> None:
    asked: list[int] = []

    def intact(step: int) -> bool:
        asked.append(step)
        return step != 9

    Retention(keep_last=2).keep(list(range(1, 11)), intact=intact)
    assert asked == [10, 9, 8]
    asked.clear()
    Retention().keep(list(range(1, 11)), intact=intact)
    assert asked == []


@pytest.mark.parametrize("kwargs", [{"keep_last": 0}, {"keep_every": 0}, {"keep_last": -1}])
def test_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        Retention(**kwargs)
