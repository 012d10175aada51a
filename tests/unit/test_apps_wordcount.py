"""The keyed streaming word count app."""

from __future__ import annotations

from collections import Counter

from snapline.apps import APPS
from snapline.apps.spec import CutView
from snapline.apps.wordcount import check_cut, check_final, owner
from snapline.runtime.sim import SimConfig, run_simulation

PARAMS = APPS["wordcount"].resolve_params({"messages": 5})


def test_owner_is_stable_and_among_self_and_neighbours() -> None:
    for word in ("w0", "w1", "w17"):
        got = owner(word, 2, [0, 3])
        assert got in (0, 2, 3) and got == owner(word, 2, [3, 0])


def test_counts_are_exact_and_total_matches() -> None:
    # Enough words for the Zipf shape to show: each split's stream is fixed by its id.
    result = run_simulation(
        SimConfig(app="wordcount", n=4, seed=3, app_params={"messages": 250, "step_s": 0.1})
    )
    totals: Counter[str] = Counter()
    for counts in result.results:
        assert isinstance(counts, dict)
        totals.update(counts)
    assert sum(totals.values()) == 1000
    assert totals.most_common(1)[0][0] == "w0"  # Zipf: the first word is the most common


def test_invariants() -> None:
    states = {0: {"emitted": 3, "counts": {"a": 1}}, 1: {"emitted": 2, "counts": {"b": 2}}}
    assert check_cut(CutView(n=2, params=PARAMS, states=states, in_transit=["a", "b"])) is None
    assert "off" in (check_cut(CutView(n=2, params=PARAMS, states=states, in_transit=[])) or "")
    assert check_final([{"a": 6}, {"b": 4}], PARAMS, 2) is None
    assert "counted 9" in (check_final([{"a": 5}, {"b": 4}], PARAMS, 2) or "")


def test_exact_under_crashes_with_message_logging() -> None:
    result = run_simulation(
        SimConfig(
            app="wordcount",
            n=4,
            protocol="message-logging",
            seed=6,
            interval_s=3.0,
            app_params={"messages": 15},
            crash_at=((0, 4.0), (2, 8.0)),
        )
    )
    assert result.stats["recoveries"] == 2
    assert "failure-free result" in {c.name for c in result.checks}
