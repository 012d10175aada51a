"""The engine's fast path and message hooks change nothing a run can observe.

Each protocol that declares ``passes_through`` (or ``message_hooks``) is run once as declared
and once with the declaration removed (every event through ``handle``), under crashes; the two
runs must agree on everything but wall-clock figures, trace included.
"""

from __future__ import annotations

import pytest

from snapline.protocols import protocol_class
from snapline.runtime.sim import SimConfig, run_simulation

WALL_CLOCK = {"wall_s", "msgs_per_s"}


# (app, checkpoint interval, crashes): the token ring is over in about 3 simulated seconds.
WORKLOADS = {
    "bank": (4.0, ((2, 6.0), (4, 14.0))),
    "token-ring": (0.4, ((2, 0.9), (4, 1.7))),
}


def same_run_without(
    protocol: str, app: str, declaration: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run ``protocol`` on ``app`` as declared, then with ``declaration`` emptied: same run."""
    interval_s, crashes = WORKLOADS[app]
    cls = protocol_class(protocol)
    # The declaration counts on the class that defines ``handle``.
    owner = next(k for k in cls.__mro__ if "handle" in vars(k))
    assert vars(owner).get(declaration), f"{protocol} declares no {declaration}: nothing to check"
    config = SimConfig(
        app=app,
        n=5,
        seed=11,
        protocol=protocol,
        interval_s=interval_s,
        crash_at=crashes,
        detect_delay_s=0.1,
        restart_delay_s=0.1,
        trace=True,
    )
    fast = run_simulation(config)
    monkeypatch.setattr(owner, declaration, frozenset())
    full = run_simulation(config)
    assert fast.results == full.results
    assert fast.outputs == full.outputs
    assert fast.recoveries == full.recoveries
    assert fast.trace == full.trace
    strip = lambda stats: {k: v for k, v in stats.items() if k not in WALL_CLOCK}  # noqa: E731
    assert strip(fast.stats) == strip(full.stats)
    assert fast.stats["crashes"] == 2 and fast.stats["messages_delivered"] > 0
    if protocol != "none":
        assert fast.stats["checkpoints_committed"] > 0


@pytest.mark.parametrize(
    "protocol", ["none", "chandy-lamport", "two-phase", "uncoordinated", "bcs", "fdas"]
)
@pytest.mark.parametrize("app", sorted(WORKLOADS))
def test_fast_path_and_full_path_give_the_same_run(
    protocol: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    same_run_without(protocol, app, "passes_through", monkeypatch)


@pytest.mark.parametrize(
    "protocol", ["uncoordinated", "bcs", "fdas", "chandy-lamport", "message-logging"]
)
@pytest.mark.parametrize("app", sorted(WORKLOADS))
def test_message_hooks_and_full_path_give_the_same_run(
    protocol: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    same_run_without(protocol, app, "message_hooks", monkeypatch)
