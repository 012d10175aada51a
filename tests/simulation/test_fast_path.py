"""The engine's fast path changes nothing a run can observe: same seed, same run, with or without.

Each protocol that declares ``passes_through`` is run once as declared and once with the
declaration removed (every event through ``handle``), under crashes; the two runs must agree
on everything but wall-clock figures, trace included.
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


@pytest.mark.parametrize("protocol", ["none", "chandy-lamport", "two-phase"])
@pytest.mark.parametrize("app", sorted(WORKLOADS))
def test_fast_path_and_full_path_give_the_same_run(
    protocol: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval_s, crashes = WORKLOADS[app]
    cls = protocol_class(protocol)
    assert cls.passes_through, f"{protocol} declares no fast path: this test checks nothing"
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
    monkeypatch.setattr(cls, "passes_through", frozenset())
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
