"""A 1-D heat-diffusion stencil in numpy, exchanging halos with its neighbours each step.

The global grid of ``n * cells`` points (fixed zero temperature outside both ends) is cut
into ``n`` contiguous chunks, one per rank. Each step, a rank sends its first value to its left
neighbour and its last value to its right one, waits for both halos of that step, and computes
``u + alpha * (left - 2u + right)``. Ranks talk only to ``rank - 1`` and ``rank + 1``, so the
job runs on the ``line`` topology (or any topology containing it). A neighbour can be at most
one step ahead; early halos wait in the state. After ``messages`` steps the concatenated
chunks equal, bit for bit, the sequential numpy computation (``reference_grid``): the app is
deterministic. Invariant at every consistent cut: neighbours are at most one step apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from snapline.apps.spec import AppSpec, CutView
from snapline.errors import ConfigError
from snapline.runtime.process import Context, Process, State

Grid = npt.NDArray[np.float64]


def initial_grid(n: int, cells: int) -> Grid:
    """The whole initial grid: a smooth bump plus a deterministic ripple."""
    size = n * cells
    x = np.arange(1, size + 1, dtype=np.float64) / (size + 1)
    return 100.0 * np.sin(np.pi * x) + (np.arange(size) % 7).astype(np.float64)


def step_grid(u: Grid, left: float, right: float, alpha: float) -> Grid:
    """One explicit diffusion step of ``u`` with the given halo values."""
    padded = np.concatenate(([left], u, [right]))
    result: Grid = u + alpha * (padded[:-2] - 2.0 * u + padded[2:])
    return result


def reference_grid(n: int, cells: int, steps: int, alpha: float) -> Grid:
    """The sequential computation the distributed one must reproduce exactly."""
    u = initial_grid(n, cells)
    for _ in range(steps):
        u = step_grid(u, 0.0, 0.0, alpha)
    return u


class HeatChunk(Process):
    """One chunk of the grid."""

    def __init__(self, *, rank: int, n: int, cells: int, steps: int, alpha: float) -> None:
        self.rank = rank
        self.steps = steps
        self.alpha = alpha
        self.u: Grid = initial_grid(n, cells)[rank * cells : (rank + 1) * cells].copy()
        self.step = 0
        self.halos: dict[str, float] = {}
        self.left: int | None = rank - 1 if rank > 0 else None
        self.right: int | None = rank + 1 if rank < n - 1 else None

    def state(self) -> State:
        """The chunk, the step reached and the halos received ahead of time."""
        return {"u": self.u, "step": self.step, "halos": dict(self.halos)}

    def restore(self, state: State) -> None:
        """Put back a saved chunk."""
        self.u = np.array(state["u"], dtype=np.float64)
        self.step = int(state["step"])
        self.halos = {str(k): float(v) for k, v in state["halos"].items()}

    def on_start(self, ctx: Context) -> None:
        """Check the topology, send the first halos, maybe finish at once."""
        for nb in (self.left, self.right):
            if nb is not None and (nb not in ctx.outbound or nb not in ctx.inbound):
                raise ConfigError(
                    f"heat needs channels both ways between rank {self.rank} and {nb}: "
                    "run it on the line topology"
                )
        self._send_halos(ctx)
        self._advance(ctx)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Store a halo and advance as far as the halos allow."""
        step, value = int(payload[0]), float(payload[1])
        side = "L" if src == self.left else "R"
        self.halos[f"{step}:{side}"] = value
        self._advance(ctx)

    def _send_halos(self, ctx: Context) -> None:
        if self.step >= self.steps:
            return
        if self.left is not None:
            ctx.send(self.left, [self.step, float(self.u[0])])
        if self.right is not None:
            ctx.send(self.right, [self.step, float(self.u[-1])])

    def _advance(self, ctx: Context) -> None:
        while self.step < self.steps:
            left_key, right_key = f"{self.step}:L", f"{self.step}:R"
            if (self.left is not None and left_key not in self.halos) or (
                self.right is not None and right_key not in self.halos
            ):
                return
            left = self.halos.pop(left_key, 0.0)
            right = self.halos.pop(right_key, 0.0)
            self.u = step_grid(self.u, left, right, self.alpha)
            self.step += 1
            self._send_halos(ctx)
        ctx.finish()

    def result(self) -> object:
        """The final chunk."""
        return self.u


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return HeatChunk(
        rank=rank,
        n=n,
        cells=int(params["cells"]),
        steps=int(params["messages"]),
        alpha=float(params["alpha"]),
    )


def check_cut(cut: CutView) -> str | None:
    """Neighbours are at most one step apart."""
    steps = [int(cut.states[r]["step"]) for r in sorted(cut.states)]
    for rank in range(len(steps) - 1):
        if abs(steps[rank] - steps[rank + 1]) > 1:
            return f"ranks {rank} and {rank + 1} are at steps {steps[rank]} and {steps[rank + 1]}"
    return None


def check_final(results: Sequence[object], params: Mapping[str, Any], n: int) -> str | None:
    """The grid equals the sequential numpy reference exactly."""
    grid = np.concatenate([np.asarray(r, dtype=np.float64) for r in results])
    expected = reference_grid(n, int(params["cells"]), int(params["messages"]), params["alpha"])
    if grid.shape != expected.shape or not np.array_equal(grid, expected):
        diff = float(np.max(np.abs(grid - expected))) if grid.shape == expected.shape else -1.0
        return f"final grid differs from the sequential reference (max abs diff {diff:g})"
    return None


SPEC = AppSpec(
    name="heat",
    description="1-D heat diffusion in numpy with halo exchange; equals the sequential run",
    factory=_factory,
    default_topology="line",
    deterministic=True,
    params={"messages": 20, "cells": 16, "alpha": 0.25},
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
)
