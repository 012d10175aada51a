"""Retention: keep_last, keep_every, newest always kept."""

from __future__ import annotations

import pytest

from snapline.errors import ConfigError
from snapline.store.retention import Retention


def test_keep_last_and_every() -> None:
    steps = list(range(1, 11))
    assert Retention(keep_last=3).keep(steps) == {8, 9, 10}
    assert Retention(keep_every=4).keep(steps) == {4, 8, 10}
    assert Retention(keep_last=2, keep_every=5).keep(steps) == {5, 9, 10}
    assert Retention().keep(steps) == set(steps)
    assert Retention(keep_last=3).keep([]) == set()


@pytest.mark.parametrize("kwargs", [{"keep_last": 0}, {"keep_every": 0}, {"keep_last": -1}])
def test_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        Retention(**kwargs)
