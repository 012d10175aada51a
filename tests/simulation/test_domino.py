"""The domino effect: uncoordinated checkpointing rolls far back, CIC does not.

The same seeded workload (``protocols.domino``: transfers on a bidirectional ring, staggered
checkpoints taken right after a delivery and before the send it causes) runs under each
protocol; then rank 0 crashes and the protocol plans its recovery.
"""

from __future__ import annotations

import random

import pytest

from snapline.protocols.communication_induced import BCS, FDAS
from snapline.protocols.domino import run_domino_workload
from snapline.protocols.independent import IndependentCheckpointing
from snapline.protocols.uncoordinated import Uncoordinated

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
