"""Chaos schedules: one seed, one schedule; the replay command names that seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from snapline.errors import ConfigError
from snapline.runtime.local.chaos import (
    DEFAULT_FAULTS,
    CampaignConfig,
    FaultKind,
    draw_schedule,
    parse_faults,
)
from snapline.runtime.local.config import format_duration_s, parse_duration_s


def test_same_seed_same_schedule() -> None:
    kinds = tuple(FaultKind)
    for seed in range(200):
        a = draw_schedule(seed, n=4, kinds=kinds, max_faults=4)
        b = draw_schedule(seed, n=4, kinds=kinds, max_faults=4)
        assert a == b
    schedules = {draw_schedule(s, n=4, kinds=kinds, max_faults=4) for s in range(200)}
    assert len(schedules) > 150  # seeds really vary the schedule


def test_schedules_respect_their_bounds() -> None:
    kinds = (FaultKind.KILL, FaultKind.WHOLE_JOB, FaultKind.PAUSE, FaultKind.RECOVERY_KILL)
    seen: set[FaultKind] = set()
    for seed in range(300):
        schedule = draw_schedule(seed, n=3, kinds=kinds, max_faults=3, heartbeat_timeout_s=2.0)
        assert 1 <= len(schedule) <= 3
        assert [f.at for f in schedule] == sorted(f.at for f in schedule)
        assert sum(f.kind is FaultKind.WHOLE_JOB for f in schedule) <= 1
        for fault in schedule:
            seen.add(fault.kind)
            assert fault.kind in kinds
            assert 0.0 < fault.at < 1.0
            if fault.kind is not FaultKind.WHOLE_JOB:
                assert 0 <= fault.rank < 3
            if fault.kind is FaultKind.PAUSE:
                # Well under the heartbeat timeout: a pause must not look like a hang.
                assert 0 < fault.pause_s <= 0.25 * 2.0
            if fault.kind is FaultKind.RECOVERY_KILL:
                assert 0 <= fault.second_rank < 3 and 0 <= fault.delay_s <= 0.3
    assert seen == set(kinds)


def test_run_i_of_a_campaign_is_replayed_by_its_seed(tmp_path: Path) -> None:
    config = CampaignConfig(
        apps=("bank", "heat"),
        protocols=("two-phase", "none"),
        out_dir=tmp_path,
        seed=40,
        faults=parse_faults("kill,hang"),
        params={"messages": 30},
    )
    assert config.pairs()[3] == ("none", "heat")
    replay = config.replay("none", "heat", 43)
    assert replay == (
        "snapline chaos heat --protocol none --seed 43 --runs 1 -n 3 --faults kill,hang "
        "--max-faults 3 --interval 200ms --heartbeat-timeout 3s -p messages=30"
    )
    # Defaults are spelled out, so a replay does not change when they do.
    assert config.replay("two-phase", "bank", 41).endswith(
        "--heartbeat-timeout 3s -p messages=30 -p step_s=0.01"
    )
    # The replayed campaign's only run draws with seed 43, as run 3 of the original did.
    replayed = CampaignConfig(
        apps=("heat",),
        protocols=("none",),
        out_dir=tmp_path,
        seed=43,
        runs=1,
        faults=config.faults,
    )
    assert replayed.planned_runs() == 1 and replayed.pairs() == [("none", "heat")]


def test_parse_faults() -> None:
    assert parse_faults("default") == DEFAULT_FAULTS
    assert FaultKind.STRANGER in DEFAULT_FAULTS  # the acceptors survive crafted frames
    assert parse_faults("all") == tuple(FaultKind)
    assert parse_faults("kill, hang,kill") == (FaultKind.KILL, FaultKind.HANG)
    assert parse_faults(["kill", "stranger"]) == (FaultKind.KILL, FaultKind.STRANGER)
    with pytest.raises(ConfigError, match="unknown fault 'nuke'"):
        parse_faults("kill,nuke")
    with pytest.raises(ConfigError):
        parse_faults("")


def test_durations_read_back() -> None:
    for seconds, text in ((0.25, "250ms"), (1.5, "1.5s"), (12.0, "12s"), (150.0, "2.5m")):
        assert format_duration_s(seconds) == text
        assert parse_duration_s(text) == seconds


def test_bad_campaigns_are_refused(tmp_path: Path) -> None:
    def config(**kwargs: Any) -> CampaignConfig:
        return CampaignConfig(
            **{"apps": ("bank",), "protocols": ("none",), "out_dir": tmp_path, **kwargs}
        )

    with pytest.raises(ConfigError, match="nosuch"):
        config(protocols=("nosuch",)).validate()
    with pytest.raises(ConfigError, match="nosuch"):
        config(apps=("nosuch",)).validate()
    with pytest.raises(ConfigError, match="has no parameter 'rounds'"):
        config(params={"rounds": 3}).validate()
    with pytest.raises(ConfigError, match="does not exist"):
        config(apps=("missing.py:App",)).validate()
    config(apps=("bank", "heat"), protocols=("none", "bcs")).validate()
    with pytest.raises(ConfigError, match="at least 2 ranks"):
        CampaignConfig(apps=("bank",), protocols=("none",), out_dir=tmp_path, n=1)
    with pytest.raises(ConfigError, match="--runs"):
        CampaignConfig(apps=("bank",), protocols=("none",), out_dir=tmp_path, runs=0)
