"""Trace validation: good traces parse; bad ones raise ConfigError naming what is wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from snapline.analysis.trace_view import view_trace
from snapline.errors import ConfigError, SnaplineError
from snapline.runtime.trace import load_trace


def _trace() -> dict[str, Any]:
    return {
        "format": "snapline-trace",
        "version": 1,
        "n": 2,
        "protocol": "two-phase",
        "app": "ring",
        "seed": 3,
        "edges": [[0, 1], [1, 0]],
        "time_unit": "s",
        "events": [
            {"t": 1.5, "rank": 1, "kind": "deliver", "src": 0, "seq": 1},
            {"t": 1.0, "rank": 0, "kind": "send", "dst": 1, "seq": 1, "piggyback_bytes": 4},
            {"t": 2.0, "rank": 0, "kind": "checkpoint", "index": 1, "forced": False},
            {"t": 2.1, "rank": 0, "kind": "hold", "what": "a kind from a newer driver"},
            {"t": 3.0, "rank": 1, "kind": "crash"},
        ],
        "recoveries": [
            {
                "t_detect": 3.2,
                "t_done": 3.9,
                "failed": [1],
                "restore": {"0": 1, "1": 0},
                "replayed": 0,
                "rolled_back_s": {"0": 1.2, "1": 3.0},
            }
        ],
        "stats": {"bytes_stored": 100},
    }


def test_good_trace_parses_sorted_and_typed() -> None:
    trace = view_trace(_trace())
    assert trace.n == 2 and trace.protocol == "two-phase" and trace.seed == 3
    assert [e.t for e in trace.events] == sorted(e.t for e in trace.events)
    assert trace.events[0].kind == "send" and trace.events[0].int_field("dst") == 1
    assert trace.recoveries[0].restore == {0: 1, 1: 0}
    assert trace.recoveries[0].rolled_back_s[1] == 3.0
    assert trace.edges == frozenset({(0, 1), (1, 0)})
    assert trace.end_t == 3.9


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(_trace())
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], "something-else", "format"),
        (["version"], 2, "version"),
        (["n"], 0, "n: must be an integer >= 1"),
        (["n"], True, "n: must be an integer"),
        (["time_unit"], "ms", "time_unit"),
        (["events"], {"not": "a list"}, "events"),
        (["events", 0, "t"], "soon", r"events\[0\]: time must be a number"),
        (["events", 0, "t"], -1.0, r"events\[0\]: time must be finite and >= 0"),
        (["events", 0, "rank"], 5, r"rank 5 is outside 0..1"),
        (["events", 0, "kind"], _DELETE, r"missing 'kind'"),
        (["events", 1, "seq"], _DELETE, r"'send' event has no 'seq'"),
        (["events", 1, "dst"], 9, r"rank 9 is outside"),
        (["events", 1, "piggyback_bytes"], -3, "piggyback_bytes"),
        (["events", 2, "forced"], 1, "forced must be true or false"),
        (["events", 2, "index"], "one", "checkpoint.index must be an integer"),
        (["edges", 0], [0, 1, 2], r"edges\[0\]"),
        (["recoveries", 0, "t_done"], 1.0, "t_done 1.0 is before t_detect"),
        (["recoveries", 0, "restore"], {"x": 1}, "rank key must be an integer"),
        (["recoveries", 0, "restore", "0"], -1, "checkpoint index >= 0"),
        (["recoveries", 0, "failed"], "1", "failed must be a list"),
        (["recoveries", 0, "replayed"], -1, "replayed must be a count"),
        (["stats"], [], "stats: must be an object"),
    ],
)
def test_invalid_trace_names_the_problem(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        view_trace(_broken(path, value))
    assert "invalid trace" in str(info.value)
    assert isinstance(info.value, SnaplineError)


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        view_trace([1, 2, 3])


def _as_written() -> dict[str, Any]:
    """The scenario as a driver writes it: time-ordered, only kinds the format lists."""
    raw = _trace()
    raw["events"] = sorted(
        (e for e in raw["events"] if e["kind"] != "hold"), key=lambda e: float(e["t"])
    )
    return raw


def test_file_read_by_load_trace_gives_the_same_view(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_as_written()))
    from_file = view_trace(load_trace(path))
    assert from_file == view_trace(_as_written())
    assert from_file.n == 2 and len(from_file.events) == 4


def test_view_checks_what_the_loader_lets_through(tmp_path: Path) -> None:
    raw = _as_written()
    raw["events"][0]["dst"] = "one"  # the loader checks presence, the view checks type
    path = tmp_path / "run.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"send\.dst must be an integer"):
        view_trace(load_trace(path))
