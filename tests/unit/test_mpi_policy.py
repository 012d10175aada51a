"""snapline.mpi's checkpoint schedules: pure decisions, the same on every rank for equal inputs."""

from __future__ import annotations

import math

import pytest

from snapline.analysis.interval import daly_interval, young_interval
from snapline.errors import ConfigError
from snapline.mpi import EverySeconds, EverySteps, YoungDaly
from snapline.mpi._policy import make_policy


def test_every_steps_is_due_at_positive_multiples_only_and_reads_no_clock() -> None:
    policy = EverySteps(50)
    assert not policy.needs_clock
    due = [s for s in range(0, 201) if policy.due(step=s, since_last_s=1e9, cost_s=None)]
    assert due == [50, 100, 150, 200]


def test_every_seconds_is_due_once_the_interval_has_passed() -> None:
    policy = EverySeconds(2.0)
    assert policy.needs_clock
    assert not policy.due(step=1, since_last_s=1.999, cost_s=None)
    assert policy.due(step=1, since_last_s=2.0, cost_s=None)


def test_young_daly_measures_first_then_uses_the_analysis_helpers() -> None:
    daly = YoungDaly(mtbf_s=3600.0)
    young = YoungDaly(mtbf_s=3600.0, formula="young")
    assert daly.due(step=0, since_last_s=0.0, cost_s=None)  # nothing measured yet
    assert daly.interval_s(5.0) == pytest.approx(daly_interval(5.0, 3600.0))
    assert young.interval_s(5.0) == pytest.approx(young_interval(5.0, 3600.0))
    tau = daly.interval_s(5.0)
    assert not daly.due(step=7, since_last_s=tau * 0.99, cost_s=5.0)
    assert daly.due(step=7, since_last_s=tau, cost_s=5.0)
    # A write too fast for the clock still gives a finite, positive interval.
    assert 0 < daly.interval_s(0.0) < math.inf


@pytest.mark.parametrize(
    "build",
    [
        lambda: EverySteps(0),
        lambda: EverySteps(2.5),  # type: ignore[arg-type]
        lambda: EverySeconds(0.0),
        lambda: EverySeconds(math.nan),
        lambda: EverySeconds(math.inf),
        lambda: YoungDaly(mtbf_s=-1.0),
        lambda: YoungDaly(mtbf_s=10.0, formula="other"),  # type: ignore[arg-type]
        lambda: make_policy(every=10, interval_s=1.0, mtbf_s=None),
        lambda: make_policy(every=None, interval_s=None, mtbf_s=None),
    ],
)
def test_bad_schedules_are_config_errors(build: object) -> None:
    with pytest.raises(ConfigError):
        build()  # type: ignore[operator]


def test_make_policy_picks_the_one_schedule_given() -> None:
    assert make_policy(every=5, interval_s=None, mtbf_s=None) == EverySteps(5)
    assert make_policy(every=None, interval_s=1.5, mtbf_s=None) == EverySeconds(1.5)
    assert make_policy(every=None, interval_s=None, mtbf_s=60.0) == YoungDaly(60.0)
