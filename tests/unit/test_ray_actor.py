"""``snapline.ray.checkpointed`` without Ray: the schedule, state capture and restore by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.errors import CheckpointFailed, ConfigError
from snapline.ray import checkpointed
from snapline.store import open_store


def counter_class(store: Path, **options: Any) -> type:
    @checkpointed(store, key="c", **options)
    class Counter:
        """Counts."""

        def __init__(self, start: int = 0) -> None:
            self.n = start

        def incr(self, by: int = 1) -> int:
            self.n += by
            return self.n

        def set(self, value: object) -> None:
            self.n = value  # type: ignore[assignment]

        def fail(self) -> None:
            self.n += 100
            raise ValueError("boom")

    return Counter


def test_every_calls_checkpoints_after_that_many_calls_and_a_new_instance_restores(
    tmp_path: Path,
) -> None:
    Counter = counter_class(tmp_path, every_calls=3)
    first = Counter()
    for _ in range(7):
        first.incr()
    assert first.snapline_info()["last_step"] == 2  # after calls 3 and 6
    second = Counter()  # what the restarted actor's constructor does
    assert second.n == 6
    info = second.snapline_info()
    assert info["restored_step"] == 2 and info["calls"] == 0
    assert second.incr() == 7
    assert Counter.__name__ == "Counter" and Counter.__doc__ == "Counts."


def test_on_request_only_and_keep_last(tmp_path: Path) -> None:
    Counter = counter_class(tmp_path, keep_last=2)
    c = Counter()
    for step in range(1, 8):
        c.incr()
        assert c.snapline_checkpoint() == step
    store = open_store(tmp_path / "c")
    assert len(store.steps()) <= 4 and store.steps()[-1] == 7
    assert Counter().n == 7


def test_a_failing_call_counts_and_keeps_its_effect_in_memory(tmp_path: Path) -> None:
    Counter = counter_class(tmp_path, every_calls=2)
    c = Counter()
    with pytest.raises(ValueError, match="boom"):
        c.fail()
    assert c.snapline_info()["calls"] == 1 and c.n == 100
    c.incr()  # second call: due
    assert Counter().n == 101


def test_state_the_safe_codec_cannot_encode_fails_the_call_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    Counter = counter_class(tmp_path, every_calls=1)
    c = Counter()
    c.incr()
    with pytest.raises(CheckpointFailed, match="previous checkpoint is still the newest"):
        c.set({"f": lambda: 1})
    assert callable(c.n["f"])  # the call's effect stays in memory
    assert Counter().n == 1


def test_getstate_and_setstate_choose_what_is_saved(tmp_path: Path) -> None:
    @checkpointed(tmp_path, key="m", every_calls=1)
    class Model:
        def __init__(self) -> None:
            self.weights = np.zeros(4)
            self.cache: dict[str, object] = {"not": "saved"}

        def step(self) -> float:
            self.weights += 1.5
            return float(self.weights.sum())

        def __getstate__(self) -> dict[str, object]:
            return {"weights": self.weights}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.weights = np.asarray(state["weights"]).copy()

    m = Model()
    m.step()
    m.step()
    restored = Model()
    assert np.array_equal(restored.weights, np.full(4, 3.0))
    assert restored.cache == {"not": "saved"}  # from the constructor


def test_bad_arguments_and_use_outside_ray_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="every_calls"):
        checkpointed(tmp_path, every_calls=0)
    with pytest.raises(ConfigError, match="every_s"):
        checkpointed(tmp_path, every_s=-1)
    with pytest.raises(ConfigError, match="key"):
        checkpointed(tmp_path, key="../x")
    with pytest.raises(ConfigError, match="decorates a class"):
        checkpointed(tmp_path)(len)  # type: ignore[type-var]

    @checkpointed(tmp_path)
    class NoKey:
        pass

    with pytest.raises(ConfigError, match="pass key="):
        NoKey()

    class Has:
        def snapline_info(self) -> None: ...

    with pytest.raises(ConfigError, match="already has snapline_info"):
        checkpointed(tmp_path, key="h")(Has)
