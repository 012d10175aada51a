"""``snapline.testing``: users run their own Process classes under faults and checkers."""

from __future__ import annotations

from typing import Any

import pytest

import snapline
from snapline.errors import ConfigError, SimulationError
from snapline.runtime.process import Context, Process, State
from snapline.testing import SweepReport, assert_recovers, simulate, sweep


class Gossip(Process):
    """Each rank sends its running sum to every neighbour a few times; the sum is exact."""

    def __init__(self) -> None:
        self.rounds = 0
        self.total = 0

    def state(self) -> State:
        return {"rounds": self.rounds, "total": self.total}

    def restore(self, state: State) -> None:
        self.rounds, self.total = int(state["rounds"]), int(state["total"])

    def on_start(self, ctx: Context) -> None:
        ctx.set_timer("round", 1.0)

    def on_timer(self, ctx: Context, name: str) -> None:
        for dst in ctx.outbound:
            ctx.send(dst, ctx.rank + 1)
        ctx.output(self.rounds)
        self.rounds += 1
        if self.rounds < 8:
            ctx.set_timer("round", 1.0)
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.total += int(payload)

    def result(self) -> object:
        return self.total


def test_simulate_returns_results_stats_checks_and_trace() -> None:
    result = simulate(Gossip, n=3, protocol="chandy-lamport", seed=1, interval_s=2.0, trace=True)
    assert result.results == [8 * 5, 8 * 4, 8 * 3]
    assert result.stats["messages_delivered"] == 48
    assert result.trace is not None and result.trace.app == "custom"
    assert result.passed and {c.name for c in result.checks} >= {"consistent recovery"}
    # Output commit: released in order, the last ones only once a snapshot covers them.
    assert result.outputs[0] == list(range(len(result.outputs[0])))
    assert simulate(Gossip, n=3, seed=1).outputs[0] == list(range(8))


def test_assert_recovers_runs_seeds_with_crashes() -> None:
    report = assert_recovers(
        Gossip,
        n=3,
        protocol="uncoordinated",
        seeds=range(4),
        crash_rate=0.05,
        deterministic=True,
        interval_s=2.0,
    )
    assert isinstance(report, SweepReport)
    assert report.runs == 4 and report.crashes > 0 and report.recoveries > 0


def test_assert_recovers_refuses_to_pass_when_nothing_crashed() -> None:
    with pytest.raises(AssertionError, match="no crash happened"):
        assert_recovers(Gossip, n=2, seeds=range(2), crash_rate=0.0)


def test_a_factory_and_a_user_protocol_class_work_too() -> None:
    from snapline.protocols.none import NoCheckpointing

    result = simulate(lambda rank, n: Gossip(), n=2, protocol=NoCheckpointing, seed=0)
    assert result.results == [16, 8]


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"not a snapline\.Process"):
        simulate(int, n=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bad simulate"):
        simulate(Gossip, n=2, no_such_option=1)


def test_sweep_raises_with_the_seed_of_the_failing_run() -> None:
    class Broken(Gossip):
        def result(self) -> object:
            return self.total + self.rounds * 1000  # fine ...

        def on_message(self, ctx: Context, src: int, payload: Any) -> None:
            if self.total > 20:
                raise RuntimeError("boom")  # ... until a rank breaks
            super().on_message(ctx, src, payload)

    with pytest.raises(SimulationError, match="seed 0"):
        simulate(Broken, n=3, seed=0)
    report = sweep("none", "bank", None, range(3), app_params={"messages": 5})
    assert report.runs == 3 and report.messages == 3 * 4 * 5


def test_testing_is_reachable_from_the_package() -> None:
    assert snapline.testing.simulate is simulate
