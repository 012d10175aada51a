"""One local Ray per test session, for the tests that need a real Ray.

The Ray tests need the ``ray`` extra. Where it is missing they are skipped with the reason, except
under CI (``CI`` set), where a skip would hide them: there they fail. Ray takes seconds to start
on two cores, so the first test that asks starts it and every later one shares it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType

import pytest


def require_ray() -> ModuleType:
    """The ``ray`` module; skip (or, under CI, fail) when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        message = f"needs the ray extra (pip install -e '.[test,ray]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ray


def local_ray() -> ModuleType:
    """``ray``, connected to the session's local Ray (2 CPUs, no dashboard; started if needed)."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_session() -> Iterator[ModuleType]:
    """The session's local Ray, shut down at the end of the session."""
    ray = local_ray()
    yield ray
    ray.shutdown()
