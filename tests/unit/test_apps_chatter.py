"""The chatter app: every send and receipt is output; outputs per rank are a fixed multiset."""

from __future__ import annotations

from collections import Counter

from snapline.apps import APPS
from snapline.apps.chatter import check_cut, check_final
from snapline.apps.spec import CutView
from snapline.runtime.sim import SimConfig, run_simulation

PARAMS = APPS["chatter"].resolve_params({"messages": 5})


def test_every_send_and_receipt_is_output_once() -> None:
    result = run_simulation(SimConfig(app="chatter", n=3, seed=4, app_params={"messages": 5}))
    sent = [o for out in result.outputs for o in out if o[0] == "sent"]
    got = [o for out in result.outputs for o in out if o[0] == "got"]
    assert len(sent) == len(got) == 15
    # Each rank's sends are numbered 1..5; each receipt names a send that was made.
    for rank, out in enumerate(result.outputs):
        assert sorted(k for kind, _, k in out if kind == "sent") == [1, 2, 3, 4, 5]
        for kind, src, k in out:
            if kind == "got":
                assert ["sent", rank, k] in result.outputs[src]
    assert {"exactly-once output", "failure-free outputs"} <= {c.name for c in result.checks}


def test_outputs_are_the_same_multiset_under_another_schedule() -> None:
    def outputs(delay: str) -> list[list[object]]:
        config = SimConfig(app="chatter", n=4, seed=2, delay=delay, app_params={"messages": 8})
        return run_simulation(config).outputs

    fast, slow = outputs("uniform:0.01:0.1"), outputs("exp:2")
    assert fast != slow, "the order of receipts depends on the schedule"
    assert [Counter(map(repr, o)) for o in fast] == [Counter(map(repr, o)) for o in slow]


def test_invariants() -> None:
    states = {0: {"sent": 2, "got": 1, "checksum": 0}, 1: {"sent": 1, "got": 1, "checksum": 0}}
    assert check_cut(CutView(n=2, params=PARAMS, states=states, in_transit=[[0, 2]])) is None
    assert "in transit" in (
        check_cut(CutView(n=2, params=PARAMS, states=states, in_transit=[])) or ""
    )
    assert check_final([{"sent": 2, "got": 1}, {"sent": 1, "got": 2}], PARAMS, 2) is None
    assert "received" in (
        check_final([{"sent": 2, "got": 1}, {"sent": 0, "got": 0}], PARAMS, 2) or ""
    )
