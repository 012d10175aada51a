"""Young's and Daly's optimal checkpoint intervals and Daly's wall-time model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snapline.analysis.interval import (
    advise_interval,
    daly_interval,
    expected_wall_time,
    waste_fraction,
    young_interval,
)
from snapline.errors import ConfigError


def test_young_known_values() -> None:
    # sqrt(2 * 60 * 86400) = sqrt(10_368_000)
    assert young_interval(60.0, 86400.0) == pytest.approx(3219.937887, rel=1e-9)
    assert young_interval(2.0, 100.0) == pytest.approx(20.0)


def test_daly_known_value() -> None:
    # Hand computation: C/(2M) = 60/172800; sqrt(2CM) = 3219.937887...
    ratio = 60.0 / 172800.0
    expected = 3219.937887 * (1 + math.sqrt(ratio) / 3 + ratio / 9) - 60.0
    assert daly_interval(60.0, 86400.0) == pytest.approx(expected, rel=1e-8)
    assert daly_interval(60.0, 86400.0) == pytest.approx(3180.07, abs=0.01)


def test_daly_is_mtbf_when_checkpoint_costs_more_than_two_mtbf() -> None:
    assert daly_interval(250.0, 100.0) == 100.0
    assert daly_interval(200.0, 100.0) == 100.0


def test_daly_close_to_young_when_checkpoints_are_cheap() -> None:
    young, daly = young_interval(1.0, 1e6), daly_interval(1.0, 1e6)
    assert daly < young
    assert daly == pytest.approx(young, rel=1e-3)


def test_wall_time_reduces_to_work_without_failures_or_cost() -> None:
    # With M -> infinity and C = 0, no time is wasted.
    assert expected_wall_time(1000.0, 10.0, 0.0, 1e15) == pytest.approx(1000.0, rel=1e-9)
    assert waste_fraction(10.0, 0.0, 1e15) == pytest.approx(0.0, abs=1e-9)


def test_wall_time_grows_with_restart_but_optimum_does_not_move() -> None:
    taus = np.linspace(5.0, 5000.0, 20000)
    no_restart = [expected_wall_time(1e4, t, 30.0, 3600.0) for t in taus]
    with_restart = [expected_wall_time(1e4, t, 30.0, 3600.0, 120.0) for t in taus]
    assert min(with_restart) > min(no_restart)
    assert int(np.argmin(no_restart)) == int(np.argmin(with_restart))


@pytest.mark.parametrize(
    ("cost_s", "mtbf_s"),
    [(60.0, 86400.0), (30.0, 3600.0), (5.0, 600.0), (1.0, 50.0), (20.0, 100.0)],
)
def test_daly_interval_minimises_modeled_wall_time(cost_s: float, mtbf_s: float) -> None:
    taus = np.linspace(mtbf_s * 1e-3, mtbf_s * 2.0, 4001)
    walls = np.array([expected_wall_time(1.0, t, cost_s, mtbf_s) for t in taus])
    scanned_best = float(taus[int(np.argmin(walls))])
    daly = daly_interval(cost_s, mtbf_s)
    best_wall = float(walls.min())
    # Daly's estimate lands within 1% of the scanned minimum of the exact model ...
    assert expected_wall_time(1.0, daly, cost_s, mtbf_s) <= best_wall * 1.01
    # ... and sits near the scanned minimiser.
    assert abs(daly - scanned_best) / scanned_best < 0.1
    # Young is a fair first-order answer but never better than Daly's by a margin.
    young = young_interval(cost_s, mtbf_s)
    assert expected_wall_time(1.0, daly, cost_s, mtbf_s) <= expected_wall_time(
        1.0, young, cost_s, mtbf_s
    ) * (1 + 1e-9)


def test_waste_is_higher_away_from_the_optimum() -> None:
    daly = daly_interval(30.0, 3600.0)
    at_opt = waste_fraction(daly, 30.0, 3600.0)
    assert waste_fraction(daly / 4, 30.0, 3600.0) > at_opt
    assert waste_fraction(daly * 4, 30.0, 3600.0) > at_opt
    assert 0.0 < at_opt < 1.0


def test_advice_reports_run_interval_and_its_waste() -> None:
    advice = advise_interval(30.0, 3600.0, restart_s=10.0, run_interval_s=50.0)
    assert advice.young_s == pytest.approx(young_interval(30.0, 3600.0))
    assert advice.daly_s == pytest.approx(daly_interval(30.0, 3600.0))
    assert advice.run_waste is not None and advice.run_waste > advice.daly_waste
    assert advice.run_vs_daly == pytest.approx(50.0 / advice.daly_s)
    assert advise_interval(30.0, 3600.0).run_waste is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_inputs_raise_config_error(bad: float) -> None:
    with pytest.raises(ConfigError, match="MTBF"):
        young_interval(1.0, bad)
    with pytest.raises(ConfigError, match="checkpoint cost"):
        daly_interval(bad, 10.0)
    with pytest.raises(ConfigError, match="interval"):
        expected_wall_time(1.0, bad, 1.0, 10.0)
