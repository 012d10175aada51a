"""The token ring app."""

from __future__ import annotations

from snapline.apps import APPS
from snapline.apps.spec import CutView
from snapline.apps.token_ring import check_cut, check_final, successor
from snapline.runtime.sim import SimConfig, run_simulation

PARAMS = APPS["token-ring"].resolve_params({"messages": 3})


def test_successor_follows_the_ring_and_wraps() -> None:
    assert successor(0, [1]) == 1
    assert successor(3, [0]) == 0
    assert successor(1, [0, 2, 3]) == 2
    assert successor(3, [0, 1, 2]) == 0


def test_every_rank_sees_the_token_once_per_round() -> None:
    result = run_simulation(SimConfig(app="token-ring", n=4, seed=1, app_params={"messages": 3}))
    assert result.results == [3, 3, 3, 3]
    assert result.stats["messages_delivered"] == 12


def test_complete_topology_uses_the_same_ring() -> None:
    result = run_simulation(
        SimConfig(app="token-ring", n=3, topology="complete", seed=1, app_params={"messages": 2})
    )
    assert result.results == [2, 2, 2]


def test_invariants() -> None:
    states = {0: {"visits": 1, "last_hop": 4}, 1: {"visits": 2, "last_hop": 2}}
    states[2] = {"visits": 1, "last_hop": 3}
    assert check_cut(CutView(n=3, params=PARAMS, states=states, in_transit=[5])) is None
    assert "2 tokens" in (
        check_cut(CutView(n=3, params=PARAMS, states=states, in_transit=[5, 6])) or ""
    )
    assert "visits add up" in (
        check_cut(CutView(n=3, params=PARAMS, states=states, in_transit=[9])) or ""
    )
    assert check_final([3, 3, 3], PARAMS, 3) is None
    assert "2 times" in (check_final([2, 3, 3], PARAMS, 3) or "")


def test_survives_crashes_with_a_coordinated_protocol() -> None:
    result = run_simulation(
        SimConfig(
            app="token-ring",
            n=4,
            protocol="chandy-lamport",
            seed=2,
            interval_s=2.0,
            app_params={"messages": 30},
            crash_at=((2, 1.5),),
        )
    )
    assert result.results == [30, 30, 30, 30] and result.stats["recoveries"] == 1
