"""Checkpointed plain Ray actors on a real local Ray: kill -9 from outside, ray.kill, retries."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from snapline.ray import checkpointed


@pytest.fixture(autouse=True)
def _classes_by_value(ray_session: ModuleType) -> None:
    """Ray's workers cannot import this test module: ship its classes by value."""
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def value(self) -> int:
        return self.n

    def slow_incr(self, started: str, sleep_s: float) -> int:
        """Say it started (a file), sleep, then count: a call to kill in the middle of.

        Run again (a retry) once the file exists, it does not sleep.
        """
        if not Path(started).exists():
            Path(started).write_text(str(os.getpid()))
            time.sleep(sleep_s)
        self.n += 1
        return self.n


def actor(ray: Any, store: Path, *, retries: int = -1, name: str | None = None, **options: Any):
    remote = ray.remote(max_restarts=-1, max_task_retries=retries)(
        checkpointed(store, **options)(Counter)
    )
    return remote.options(name=name).remote() if name else remote.remote()


def kill_9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_an_actor_killed_from_outside_continues_from_its_last_checkpoint(
    ray_session: ModuleType, tmp_path: Path
) -> None:
    ray = ray_session
    c = actor(ray, tmp_path, every_calls=10)
    assert [ray.get(c.incr.remote()) for _ in range(25)][-1] == 25
    before = ray.get(c.snapline_info.remote())
    assert before["last_step"] == 2 and before["calls_since_checkpoint"] == 5
    kill_9(before["pid"])
    # Ray restarts the worker; the constructor restores checkpoint 2 (after call 20): calls
    # 21-25 ran after the last checkpoint and are lost, as the delivery semantics say.
    assert ray.get(c.incr.remote()) == 21
    after = ray.get(c.snapline_info.remote())
    assert after["pid"] != before["pid"] and after["restored_step"] == 2
    ray.kill(c)


def test_with_every_call_checkpointed_an_in_flight_call_is_retried_and_counted_once(
    ray_session: ModuleType, tmp_path: Path
) -> None:
    ray = ray_session
    c = actor(ray, tmp_path / "store", every_calls=1, retries=-1)
    for _ in range(5):
        ray.get(c.incr.remote())
    started = tmp_path / "started"
    ref = c.slow_incr.remote(str(started), 30.0)
    wait_for(started)
    kill_9(int(started.read_text()))
    # Ray submits the call again to the restarted actor (max_task_retries): it had started
    # before the kill but its effect was never checkpointed, so it counts once.
    assert ray.get(ref) == 6
    assert ray.get(c.value.remote()) == 6
    assert ray.get(c.snapline_info.remote())["restored_step"] == 5
    ray.kill(c)


def test_without_retries_the_in_flight_call_fails_and_the_actor_goes_on(
    ray_session: ModuleType, tmp_path: Path
) -> None:
    ray = ray_session
    c = actor(ray, tmp_path / "store", every_calls=1, retries=0)
    for _ in range(3):
        ray.get(c.incr.remote())
    started = tmp_path / "started"
    ref = c.slow_incr.remote(str(started), 30.0)
    wait_for(started)
    kill_9(int(started.read_text()))
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(ref)
    # Without retries, calls made while Ray restarts the actor fail too (ActorUnavailableError,
    # "may or may not have run"): wait with a read-only call until it answers again.
    deadline = time.monotonic() + 60
    while True:
        try:
            assert ray.get(c.value.remote()) == 3
            break
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "the actor never came back"
            time.sleep(0.1)
    assert ray.get(c.incr.remote()) == 4
    ray.kill(c)


def test_ray_kill_with_restart_restores_and_a_named_actor_carries_its_state_over(
    ray_session: ModuleType, tmp_path: Path
) -> None:
    ray = ray_session
    c = actor(ray, tmp_path, name="carried", every_calls=1)
    for _ in range(3):
        ray.get(c.incr.remote())
    ray.kill(c, no_restart=False)
    assert ray.get(c.value.remote()) == 3
    ray.kill(c)  # no restart: the actor is gone for good
    deadline = time.monotonic() + 30
    while True:  # the name is free once Ray has removed the dead actor
        try:
            again = actor(ray, tmp_path, name="carried", every_calls=1)
            break
        except ValueError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert ray.get(again.value.remote()) == 3  # a new actor, same name: same store
    assert (tmp_path / "carried").is_dir()
    ray.kill(again)


def test_on_request_checkpoints_and_numpy_state(ray_session: ModuleType, tmp_path: Path) -> None:
    ray = ray_session

    @ray.remote(max_restarts=1, max_task_retries=-1)
    @checkpointed(tmp_path)
    class Grid:
        def __init__(self) -> None:
            self.grid = np.zeros((64, 64))

        def relax(self) -> float:
            self.grid += 0.25
            return float(self.grid.sum())

        def pid(self) -> int:
            return os.getpid()

    g = Grid.remote()
    ray.get(g.relax.remote())
    assert ray.get(g.snapline_checkpoint.remote()) == 1
    ray.get(g.relax.remote())
    kill_9(ray.get(g.pid.remote()))
    assert ray.get(g.relax.remote()) == pytest.approx(64 * 64 * 0.5)
    ray.kill(g)
