"""compare(): one crash schedule for every protocol, failures kept as rows, interval advice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapline.analysis.compare import (
    ComparisonConfig,
    compare,
    draw_crash_schedule,
    mean_delay_s,
)
from snapline.analysis.compare_report import (
    chart_title,
    comparison_table,
    interval_report,
    render_comparison,
)
from snapline.errors import ConfigError, SimulationError
from snapline.runtime.sim import SimConfig, SimResult, run_simulation


def test_crash_schedule_is_seeded_sorted_and_capped() -> None:
    a = draw_crash_schedule(n=4, crash_rate=0.05, horizon_s=100.0, max_crashes=6, seed=1)
    assert a == draw_crash_schedule(n=4, crash_rate=0.05, horizon_s=100.0, max_crashes=6, seed=1)
    assert a != draw_crash_schedule(n=4, crash_rate=0.05, horizon_s=100.0, max_crashes=6, seed=2)
    assert len(a) == 6 and [t for _, t in a] == sorted(t for _, t in a)
    assert all(0 <= rank < 4 and 0 < t <= 100.0 for rank, t in a)
    assert draw_crash_schedule(n=4, crash_rate=0.0, horizon_s=100.0, max_crashes=6, seed=1) == ()


def test_crash_schedule_rate_is_per_rank_per_second() -> None:
    schedule = draw_crash_schedule(
        n=10, crash_rate=0.01, horizon_s=10_000.0, max_crashes=10_000, seed=3
    )
    # Expected 10 ranks * 0.01/s * 10_000 s = 1000 crashes; Poisson sd ~ 32.
    assert 880 < len(schedule) < 1120


@pytest.mark.parametrize(
    ("spec", "mean"), [("const:0.3", 0.3), ("exp:0.2", 0.2), ("uniform:0.1:0.5", 0.3)]
)
def test_mean_delay(spec: str, mean: float) -> None:
    assert mean_delay_s(spec) == pytest.approx(mean)


def test_every_protocol_gets_the_same_crashes(tmp_path: Path) -> None:
    seen: dict[str, tuple[tuple[int, float], ...]] = {}

    def run(sim: SimConfig) -> SimResult:
        seen[sim.protocol] = sim.crash_at
        return run_simulation(sim)

    config = ComparisonConfig(
        app="bank",
        n=3,
        interval_s=4.0,
        crash_rate=0.1,
        max_crashes=2,
        seed=5,
        protocols=("uncoordinated",),
    )
    result = compare(config, run=run)
    assert [o.protocol for o in result.outcomes] == ["none", "uncoordinated"]
    assert len(result.crash_schedule) == 2
    assert seen["none"] == seen["uncoordinated"] == result.crash_schedule
    baseline = result.outcomes[0]
    assert baseline.ok and baseline.metrics is not None
    # The schedule lies inside the failure-free run, so every crash hits every protocol's job.
    assert result.crashes_seen() == {"none": 2, "uncoordinated": 2}
    assert result.crashes_everywhere() and result.warnings() == ()
    assert result.advice is not None
    assert result.advice.mtbf_s == pytest.approx(1 / (3 * 0.1))
    assert result.advice.checkpoint_cost_s == pytest.approx(0.2)  # mean of exp:0.2
    render_comparison(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_protocol_keeps_its_row_with_the_reason() -> None:
    def run(sim: SimConfig) -> SimResult:
        if sim.protocol == "uncoordinated":
            raise SimulationError("check failed: channel checker: message 3 lost")
        return run_simulation(sim)

    config = ComparisonConfig(app="bank", n=2, seed=1, protocols=("uncoordinated",))
    result = compare(config, run=run)
    failed = [o for o in result.outcomes if not o.ok]
    assert [o.protocol for o in failed] == ["uncoordinated"]
    assert failed[0].failure == "SimulationError: check failed: channel checker: message 3 lost"
    assert failed[0].metrics is None
    row = result.to_json()["protocols"][1]
    assert row["ok"] is False and "message 3 lost" in row["failure"]
    table = comparison_table(result)
    assert table.row_count == 2
    # No crash rate and no MTBF: the advice says what to give instead of guessing.
    assert result.advice is None
    assert any("--mtbf-s" in line for line in interval_report(result))


def test_unknown_protocol_and_bad_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown protocol"):
        compare(ComparisonConfig(n=2, protocols=("nope",)))
    with pytest.raises(ConfigError, match="bad simulator option"):
        compare(ComparisonConfig(n=2, protocols=("none",), sim_options={"no_such_field": 1}))


def test_defaults_give_several_checkpoints_and_crashes_inside_the_job(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from snapline.cli.main import app

    out = CliRunner().invoke(
        app, ["compare", "--protocols", "chandy-lamport", "--json", str(tmp_path / "r.json")]
    )
    assert out.exit_code == 0, out.output
    assert "warning" not in out.output
    report = json.loads((tmp_path / "r.json").read_text())
    schedule = report["crash_schedule"]
    assert len(schedule) >= 3
    rows = {row["protocol"]: row["metrics"] for row in report["protocols"]}
    makespan = rows["none"]["makespan_s"]
    assert all(t < makespan for _, t in schedule)
    for metrics in rows.values():
        assert metrics["crashes"] == len(schedule)
    n = report["config"]["n"]
    cl = rows["chandy-lamport"]
    # Several checkpoints per rank: the interval is well inside the job.
    assert cl["basic_checkpoints"] + cl["forced_checkpoints"] >= 3 * n
    assert report["config"]["interval_s"] * 3 < makespan
    assert report["warnings"] == []


def test_a_comparison_without_crashes_says_so() -> None:
    result = compare(ComparisonConfig(app="bank", n=2, seed=1, protocols=("chandy-lamport",)))
    assert result.crash_schedule == ()
    (warning,) = result.warnings()
    assert "no crash was scheduled" in warning
    assert "NO CRASH" in chart_title(result)
    assert "the same" not in chart_title(result)


def test_crashes_after_the_end_of_the_job_are_reported() -> None:
    config = ComparisonConfig(
        app="bank",
        n=2,
        seed=1,
        interval_s=500.0,
        protocols=("chandy-lamport",),
        sim_options={"crash_at": ((1, 5000.0),)},
    )
    result = compare(config)
    assert result.crashes_seen() == {"none": 0, "chandy-lamport": 0}
    warnings = result.warnings()
    assert any("none of the 1 scheduled crash(es) happened" in w for w in warnings)
    assert any("checkpoint interval (500 s) is not shorter than the job" in w for w in warnings)
    assert "NO CRASH" in chart_title(result)
