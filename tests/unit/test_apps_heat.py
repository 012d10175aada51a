"""The numpy heat-diffusion stencil app."""

from __future__ import annotations

import numpy as np
import pytest

from snapline.apps import APPS
from snapline.apps.heat import check_cut, check_final, initial_grid, reference_grid, step_grid
from snapline.apps.spec import CutView
from snapline.errors import SimulationError
from snapline.runtime.sim import SimConfig, run_simulation

PARAMS = APPS["heat"].resolve_params({"messages": 4, "cells": 3})


def test_step_is_the_explicit_scheme_with_fixed_ends() -> None:
    u = np.array([0.0, 10.0, 0.0])
    assert np.array_equal(step_grid(u, 0.0, 0.0, 0.25), np.array([2.5, 5.0, 2.5]))
    ref = reference_grid(2, 3, 50, 0.25)
    assert ref.shape == (6,) and ref.max() < initial_grid(2, 3).max()


def test_distributed_grid_equals_the_sequential_reference_bit_for_bit() -> None:
    result = run_simulation(
        SimConfig(app="heat", n=4, seed=2, app_params={"messages": 30, "cells": 5})
    )
    grid = np.concatenate([np.asarray(r) for r in result.results])
    assert np.array_equal(grid, reference_grid(4, 5, 30, 0.25))


def test_invariants() -> None:
    cut = CutView(
        n=3, params=PARAMS, states={r: {"step": s} for r, s in enumerate((2, 3, 2))}, in_transit=[]
    )
    assert check_cut(cut) is None
    bad = CutView(
        n=3, params=PARAMS, states={r: {"step": s} for r, s in enumerate((1, 3, 2))}, in_transit=[]
    )
    assert "steps 1 and 3" in (check_cut(bad) or "")
    good = list(np.split(reference_grid(2, 3, 4, 0.25), 2))
    assert check_final(good, PARAMS, 2) is None
    good[1] = good[1] + 1e-12
    assert "differs" in (check_final(good, PARAMS, 2) or "")


def test_needs_the_line_topology() -> None:
    with pytest.raises(SimulationError, match="line topology"):
        run_simulation(SimConfig(app="heat", n=3, topology="ring", seed=0))


def test_exact_after_crashes_with_numpy_state_in_checkpoints() -> None:
    result = run_simulation(
        SimConfig(
            app="heat",
            n=4,
            protocol="two-phase",
            seed=5,
            interval_s=0.5,
            app_params={"messages": 40, "cells": 4},
            crash_at=((1, 1.0), (3, 2.0)),
        )
    )
    assert result.stats["recoveries"] >= 1
    grid = np.concatenate([np.asarray(r) for r in result.results])
    assert np.array_equal(grid, reference_grid(4, 4, 40, 0.25))
