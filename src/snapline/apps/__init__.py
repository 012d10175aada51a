"""Example apps with invariants, used by the simulator, the benchmarks and the demos.

``APPS`` maps each app's name to its ``AppSpec``: the Process factory, default topology,
parameters (messages per rank, rounds, grid size -- tiny in tests, big in benchmarks), the
invariant checks, and whether the app is deterministic (same result under any schedule).
"""

from __future__ import annotations

from snapline.apps import bank, chatter, heat, token_ring, wordcount
from snapline.apps.spec import AppSpec, CutView
from snapline.errors import ConfigError

APPS: dict[str, AppSpec] = {
    spec.name: spec
    for spec in (bank.SPEC, token_ring.SPEC, wordcount.SPEC, heat.SPEC, chatter.SPEC)
}


def app_spec(name: str) -> AppSpec:
    """The spec of the app called ``name``."""
    try:
        return APPS[name]
    except KeyError:
        raise ConfigError(f"unknown app {name!r}; choose one of: {', '.join(APPS)}") from None


__all__ = ["APPS", "AppSpec", "CutView", "app_spec"]
