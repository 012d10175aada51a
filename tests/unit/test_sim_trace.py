"""The trace format: what the simulator writes, and validation when it is read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import ConfigError
from snapline.runtime.sim import SimConfig, run_simulation
from snapline.runtime.trace import EVENT_FIELDS, Trace, load_trace, parse_trace


@pytest.fixture(scope="module")
def trace() -> Trace:
    result = run_simulation(
        SimConfig(
            app="bank",
            n=4,
            protocol="chandy-lamport",
            seed=5,
            interval_s=4.0,
            app_params={"messages": 12},
            crash_at=((2, 6.0),),
            trace=True,
        )
    )
    assert result.trace is not None
    return result.trace


def test_simulated_trace_has_every_kind_the_run_produced(trace: Trace) -> None:
    kinds = {e["kind"] for e in trace.events}
    expected = {"send", "deliver", "control_send", "control_recv", "checkpoint", "persisted"}
    expected |= {"commit", "crash", "restore", "finish"}
    assert expected <= kinds
    assert kinds <= set(EVENT_FIELDS)
    assert len(trace.of_kind("deliver")) == trace.stats["messages_delivered"]
    assert len(trace.of_kind("send")) == trace.stats["messages_sent"]
    (recovery,) = trace.recoveries
    assert recovery["failed"] == [2] and set(recovery["restore"]) == {"0", "1", "2", "3"}
    assert recovery["t_detect"] <= recovery["t_done"]


def test_round_trip_through_a_file(trace: Trace, tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    trace.write(path)
    loaded = load_trace(path)
    assert loaded.to_json() == json.loads(trace.dumps())
    assert loaded.n == 4 and loaded.protocol == "chandy-lamport" and loaded.seed == 5


def _broken(trace: Trace, mutate: Any) -> dict[str, Any]:
    data = json.loads(trace.dumps())
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d.update(format="other"), "not a snapline trace"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d["events"][0].pop("kind"), "missing field 'kind'"),
        (lambda d: d["events"][0].update(kind="teleport"), "unknown kind"),
        (lambda d: d["events"][0].update(rank=77), "rank 77"),
        (lambda d: d["events"][1].update(t=-5.0), "goes backwards"),
        (lambda d: d["edges"].append([0, 9]), "bad edge"),
        (lambda d: d["recoveries"][0].pop("restore"), "missing field 'restore'"),
        (lambda d: d.update(n="4"), "wrong type"),
    ],
)
def test_validation_names_what_is_wrong(trace: Trace, mutate: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_trace(_broken(trace, mutate), source="x.json")


def test_unreadable_or_non_json_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_trace(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_trace(bad)
