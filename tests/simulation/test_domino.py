"""The domino effect: uncoordinated checkpointing rolls far back, CIC does not.

First on the in-memory link: the same seeded workload (``protocols.domino``: transfers on a
bidirectional ring, staggered checkpoints taken right after a delivery and before the send it
causes) runs under each protocol; then rank 0 crashes and the protocol plans its recovery.
Then in the simulator: the bank app on a bidirectional ring, rank 0 killed at a fixed time,
the recovery carried out and checked; the useless checkpoints are counted from the trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from snapline.protocols.communication_induced import BCS, FDAS
from snapline.protocols.domino import run_domino_workload
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.uncoordinated import Uncoordinated
from snapline.protocols.zigzag import execution_from_trace, useless_indices
from snapline.runtime.sim import SimConfig, run_simulation

SEED = 0
K = 10


def test_uncoordinated_shows_a_domino_effect_that_cic_avoids() -> None:
    unco = run_domino_workload(Uncoordinated, random.Random(SEED))
    # The failed rank rolls back past K of its own checkpoints, and survivors follow it.
    assert unco.checkpoints_lost[0] >= K
    assert unco.restore[0] <= unco.newest[0] - K
    assert all(unco.checkpoints_lost[r] >= 2 for r in range(unco.n))
    assert unco.useless_checkpoints > unco.checkpoints_basic // 2
    for cls in (BCS, FDAS):
        cic = run_domino_workload(cls, random.Random(SEED))
        assert cic.checkpoints_basic == unco.checkpoints_basic  # same workload, same schedule
        assert cic.checkpoints_forced > 0
        assert cic.useless_checkpoints == 0
        # The failed rank restores its newest checkpoint: no domino.
        assert cic.restore[0] == cic.newest[0]
        assert cic.checkpoints_lost[0] == 0
        assert sum(cic.events_lost.values()) * 10 <= sum(unco.events_lost.values())


@pytest.mark.parametrize("cls", [BCS, FDAS], ids=lambda c: c.name)
def test_cic_failed_rank_always_restores_its_newest_checkpoint(
    cls: type[IndependentCheckpointing],
) -> None:
    for seed in range(15):
        for failed in (0, 2):
            out = run_domino_workload(cls, random.Random(seed), n=4, deliveries=120, failed=failed)
            assert out.useless_checkpoints == 0, seed
            assert out.restore[failed] == out.newest[failed], seed


def test_uncoordinated_domino_is_common_on_this_workload() -> None:
    far = 0
    for seed in range(15):
        out = run_domino_workload(Uncoordinated, random.Random(seed), deliveries=120)
        far += out.checkpoints_lost[0] >= 3
    assert far >= 5


# --------------------------------------------------------------------------------------------
# The same done-when in the real simulator: app processes, timers, network delays, a crash.

#: Bank transfers on a bidirectional ring, basic checkpoints every 3 s, rank 0 crashes at 40 s.
#: Shown by: snapline compare --app bank -n 4 --topology bidir-ring --interval 3
#:           --param messages=60 --seed 7 --crash-at 0@40 --protocols uncoordinated,bcs,fdas
SIM_SEED = 7
CRASH_S = 40.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SimDomino:
    """What one protocol did in the simulator up to the crash, and how far it rolled back."""

    protocol: str
    newest: int
    restored: int
    taken: int
    useless: int
    work_lost_s: float
    command: str

    @property
    def lost(self) -> int:
        """Committed checkpoints of the failed rank 0 newer than the one it restored."""
        return self.newest - self.restored


def sim_domino(protocol: str, seed: int = SIM_SEED) -> SimDomino:
    """Run the bank job under ``protocol`` with rank 0 crashing at ``CRASH_S``."""
    config = SimConfig(
        app="bank",
        n=4,
        protocol=protocol,
        topology="bidir-ring",
        seed=seed,
        interval_s=3.0,
        app_params={"messages": 60},
        crash_at=((0, CRASH_S),),
        trace=True,
    )
    result = run_simulation(config)  # every checker passes, or this raises with a repro
    assert result.trace is not None and len(result.recoveries) == 1
    before = [e for e in result.trace.to_json()["events"] if e["t"] < CRASH_S]
    execution = execution_from_trace({"n": config.n, "events": before})
    commits = [e["index"] for e in before if e["kind"] == "commit" and e["rank"] == 0]
    return SimDomino(
        protocol=protocol,
        newest=max(commits, default=0),
        restored=int(result.recoveries[0]["restore"]["0"]),
        taken=sum(len(c) for c in execution.checkpoints.values()),
        useless=len(useless_indices(execution)),
        work_lost_s=float(result.stats["work_lost_s"]),
        command=config.command(),
    )


def test_simulator_uncoordinated_dominoes_where_cic_does_not() -> None:
    unco = sim_domino("uncoordinated")
    cic = [sim_domino(p) for p in ("bcs", "fdas")]
    for out in (unco, *cic):
        print(
            f"{out.protocol}: rank 0 newest checkpoint {out.newest}, restored {out.restored} "
            f"({out.lost} lost); {out.useless}/{out.taken} checkpoints useless before the crash; "
            f"work lost {out.work_lost_s:.1f} s\n  {out.command}"
        )
    # Domino: the failed rank rolls back far past its newest checkpoint, most are useless.
    assert unco.lost >= 8, unco
    assert unco.useless * 2 > unco.taken, unco
    for out in cic:
        assert out.useless == 0, out
        assert out.lost == 0, out  # the failed rank restores its newest checkpoint
        assert out.work_lost_s * 10 <= unco.work_lost_s, (out, unco)


def test_simulator_cic_never_dominoes_on_other_seeds() -> None:
    unco_lost = 0
    for seed in range(4):
        for protocol in ("bcs", "fdas"):
            out = sim_domino(protocol, seed)
            assert out.useless == 0 and out.lost == 0, out
        unco = sim_domino("uncoordinated", seed)
        assert unco.useless > 0, unco
        unco_lost += unco.lost
    assert unco_lost >= 8, unco_lost
