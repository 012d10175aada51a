"""A finished rank's pending timers still run in the simulator, as on real processes.

The README's Counter finishes in ``on_start`` and passes its token on a timer; the simulator
used to end the job as soon as every rank had finished and no message was in flight, so the
token made one hop.
"""

from __future__ import annotations

from typing import Any

import pytest

from snapline.runtime.process import Context, Process
from snapline.testing import simulate


class Counter(Process):
    """The README's counter: a token travels a ring for 100 hops, held 30 ms at each rank."""

    def __init__(self) -> None:
        self.total = 0
        self.token: int | None = None

    def state(self) -> Any:
        return {"total": self.total, "token": self.token}

    def restore(self, state: Any) -> None:
        self.total, self.token = state["total"], state["token"]

    def on_start(self, ctx: Context) -> None:
        if ctx.rank == 0:
            ctx.send(ctx.outbound[0], 1)
        ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.total += payload
        if payload < 100:
            self.token = payload + 1
            ctx.set_timer("pass", 0.03)

    def on_timer(self, ctx: Context, name: str) -> None:
        ctx.send(ctx.outbound[0], self.token)
        self.token = None

    def result(self) -> object:
        return self.total


@pytest.mark.parametrize("protocol", ["none", "chandy-lamport", "message-logging"])
def test_a_finished_ranks_timers_still_run(protocol: str) -> None:
    result = simulate(Counter, n=3, topology="ring", protocol=protocol, seed=1)
    assert result.results == [1683, 1717, 1650]


def test_timers_still_run_across_crashes() -> None:
    result = simulate(
        Counter, n=3, topology="ring", protocol="chandy-lamport", seed=2, crash_at=((1, 1.0),)
    )
    assert result.results == [1683, 1717, 1650]
    assert result.stats["crashes"] == 1
